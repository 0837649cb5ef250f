"""Peak memory of a whole run, per process role: the teacher replica, each Train worker, Ray's own
processes and the driver.

Runs a command (default: the default distillation, what ``make run`` runs) and samples its process
tree every ``--interval`` seconds. Ray names its worker processes (``ray::ServeReplica:...``,
``ray::RayTrainWorker...``), which gives each one its role. RSS counts shared pages (the object
store's mapped segments, shared libraries) once per process, so the sum over processes
overstates the machine's use; the script also reports the sum of PSS (shared pages split between
the processes that map them), which is the figure to hold against the machine's memory.
Writes bench/results/memory_<name>.json; the command's own output goes to the terminal.

    python bench/memory_profile.py [--name default_run] [-- tightdistill train --config deploy/default.yaml]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections import defaultdict

import psutil

from benchlib import print_table, write_result

ROLES = (  # first match wins: (substring of the command line, role)
    ("ServeReplica", "teacher replica"),
    ("RayTrainWorker", "train worker"),
    ("TrainController", "train controller"),
    ("ServeController", "serve controller"),
    ("ProxyActor", "serve proxy"),
    ("raylet", "raylet"),
    ("gcs_server", "gcs"),
    ("dashboard", "dashboard"),
    ("ray::", "other ray workers"),
    ("default_worker.py", "other ray workers"),
)
GIB = 2**30


def role(proc: psutil.Process, driver_pid: int) -> str:
    if proc.pid == driver_pid:
        return "driver"
    try:
        cmd = " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return "gone"
    for needle, name in ROLES:
        if needle in cmd:
            return name
    return "other"


def sample(root: psutil.Process) -> dict[int, tuple[str, float, float]]:
    """pid -> (role, RSS, PSS) for the root and all its descendants."""
    out = {}
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return out
    for p in procs:
        try:
            mem = p.memory_full_info()
            out[p.pid] = (role(p, root.pid), float(mem.rss), float(getattr(mem, "pss", mem.rss)))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--name", default="default_run")
    ap.add_argument("--interval", type=float, default=2.0)
    ap.add_argument("command", nargs=argparse.REMAINDER, help="command to profile (after --)")
    args = ap.parse_args()
    command = [c for c in args.command if c != "--"] or ["tightdistill", "train", "--config", "deploy/default.yaml"]

    start = time.perf_counter()
    child = subprocess.Popen(command)
    root = psutil.Process(child.pid)
    peak_proc: dict[int, tuple[str, float, float]] = {}
    peak_total_rss = peak_total_pss = 0.0
    timeline = []
    while child.poll() is None:
        now = sample(root)
        total_rss, total_pss = sum(v[1] for v in now.values()), sum(v[2] for v in now.values())
        peak_total_rss, peak_total_pss = max(peak_total_rss, total_rss), max(peak_total_pss, total_pss)
        for pid, (r, rss, pss) in now.items():
            old = peak_proc.get(pid)
            peak_proc[pid] = (r, max(rss, old[1] if old else 0.0), max(pss, old[2] if old else 0.0))
        per_role: dict[str, float] = defaultdict(float)
        for r, _, pss in now.values():
            per_role[r] += pss / GIB
        # Per-role PSS over time tells growth (a leak, workers piling up) from a one-off peak.
        timeline.append({"t_s": round(time.perf_counter() - start, 1), "rss_gib": total_rss / GIB, "pss_gib": total_pss / GIB,
                         "pss_gib_by_role": {r: round(v, 3) for r, v in sorted(per_role.items())}})
        time.sleep(args.interval)
    wall = time.perf_counter() - start

    by_role: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for r, rss, pss in peak_proc.values():
        by_role[r].append((rss, pss))
    rows = [{"role": r, "processes": len(v), "peak_rss_gib_each_max": max(x[0] for x in v) / GIB,
             "peak_pss_gib_each_max": max(x[1] for x in v) / GIB} for r, v in sorted(by_role.items())]
    print(f"\n{' '.join(command)}: exit {child.returncode}, {wall:.0f} s wall")
    print_table(rows, ["role", "processes", "peak_rss_gib_each_max", "peak_pss_gib_each_max"])
    print(f"peak of the whole tree: RSS sum {peak_total_rss / GIB:.2f} GiB, PSS sum {peak_total_pss / GIB:.2f} GiB")
    path = write_result(f"memory_{args.name}", {
        "command": command, "exit_code": child.returncode, "wall_s": wall, "peak_total_rss_gib": peak_total_rss / GIB,
        "peak_total_pss_gib": peak_total_pss / GIB, "roles": rows, "timeline": timeline[:: max(1, len(timeline) // 300)]})
    print(f"wrote {path}")
    sys.exit(child.returncode)


if __name__ == "__main__":
    main()
