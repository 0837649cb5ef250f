"""Scaling on one machine: teacher throughput with 1 vs 2 replicas, student training with 1 vs 2
Ray Train workers, each against the single-process configuration measured in the same run.

* **Teacher replicas**: the packaged all-MiniLM-L6-v2 on Serve (signal cache off, so every text is
  computed), saturated by ``--concurrency`` clients encoding scifact documents through handles.
  Configurations: 1 replica x 1 thread (the baseline), 1 replica x ``--threads`` threads, and
  ``--threads`` replicas x 1 thread (the same cores split between replicas).
* **Train workers**: the default run (``deploy/default.yaml``) for ``--steps`` steps with 1 worker
  x ``--threads`` torch threads (the baseline) and ``--threads`` workers x 1 thread (DDP, the same
  cores), via ``tightdistill train``; throughput is training examples per second from the run's
  own per-step times (Ray Train's start-up excluded). The teacher's document index is cached
  after the first run.

Prints each configuration's throughput and its ratio to the baseline; writes
bench/results/scaling.json. On a 2-core machine the ceiling is the cores: splitting them between
replicas or workers cannot add compute, only remove contention or add communication.

    python bench/scaling.py [--threads 2] [--steps 24] [--docs 192] [--skip-train] [--skip-teacher]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from benchlib import print_table, timed, write_result

REPO = Path(__file__).resolve().parents[1]


def teacher_scaling(args: argparse.Namespace) -> list[dict]:
    import ray
    from ray import serve

    from common.datasets import load_beir
    from common.ray_runtime import init_ray
    from teacher_service.app import deploy
    from teacher_service.client import TeacherClient
    from teacher_service.spec import ServiceConfig

    docs = load_beir("scifact").doc_texts[: args.docs]
    requests = [docs[i : i + args.request_size] for i in range(0, len(docs), args.request_size)]
    configs = [(1, 1), (1, args.threads), (args.threads, 1)]  # (replicas, threads per replica)
    # Logical CPUs for every replica at once; the physical cores stay what they are.
    init_ray(num_cpus=2 * args.threads + 2)
    rows = []
    for replicas, threads in configs:
        spec = {"name": "de", "kind": "dual_encoder", "checkpoint": "minilm-l6", "num_replicas": replicas,
                "torch_threads": threads, "ray_actor_options": {"num_cpus": threads}, "cache": {"max_bytes": 0}}
        app = f"scale-{replicas}x{threads}"
        deploy(ServiceConfig.model_validate({"teachers": [spec]}), app_name=app, route_prefix=f"/{app}",
               http_options={"host": "127.0.0.1", "port": 8000})
        client = TeacherClient.from_serve(app, teacher="de")
        for batch in requests[: replicas * 2]:  # warm every replica
            client.encode(batch, role="document")

        def run() -> None:
            with ThreadPoolExecutor(args.concurrency) as pool:
                list(pool.map(lambda texts: client.encode(texts, role="document"), requests))

        seconds = timed(run, repeats=args.repeats)
        rows.append({"part": "teacher", "config": f"{replicas} replica(s) x {threads} thread(s)",
                     "per_s": len(docs) / seconds, "unit": "texts/s"})
        serve.delete(app)
    serve.shutdown()
    ray.shutdown()
    base = rows[0]["per_s"]
    for row in rows:
        row["ratio"] = row["per_s"] / base
    return rows


def train_scaling(args: argparse.Namespace) -> list[dict]:
    configs = [(1, args.threads), (args.threads, 1)]  # (workers, torch threads per worker)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-scaling-") as out:
        for workers, threads in configs:
            name = f"scale-w{workers}"
            cmd = [sys.executable, "-m", "common.cli", "train", "--config", "deploy/default.yaml", "--no-progress",
                   "--set", f"name={name}", "--set", f"output_dir={out}", "--set", f"train.max_steps={args.steps}",
                   "--set", f"train.num_workers={workers}", "--set", f"train.torch_threads={threads}",
                   "--set", f"train.report_every={args.report_every}", "--set", "eval.evaluate_untrained=false"]
            print("$", " ".join(cmd[2:]), flush=True)
            subprocess.run(cmd, cwd=REPO, check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
            history = json.loads((Path(out) / name / "history.json").read_text())
            # Each entry's step_s is the mean over its report window; the first window holds warm-up.
            step_s = float(np.mean([h["step_s"] for h in history[1:] if "step_s" in h]))
            metrics = json.loads((Path(out) / name / "metrics.json").read_text())
            config = json.loads((Path(out) / name / "config.json").read_text())
            examples_per_step = config["train"]["batch_size"] * workers  # batch_size is per worker
            rows.append({"part": "train", "config": f"{workers} worker(s) x {threads} thread(s)", "step_s": step_s,
                         "per_s": examples_per_step / step_s, "unit": "examples/s",
                         "train_s": metrics["timings"]["train_s"], "steps": metrics["steps"]})
    base = rows[0]["per_s"]
    for row in rows:
        row["ratio"] = row["per_s"] / base
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2, help="cores to spread over replicas / workers")
    ap.add_argument("--docs", type=int, default=192, help="documents per teacher measurement")
    ap.add_argument("--request-size", type=int, default=16, help="texts per client request")
    ap.add_argument("--concurrency", type=int, default=8, help="concurrent client requests")
    ap.add_argument("--repeats", type=int, default=2, help="teacher measurements per configuration (best kept)")
    ap.add_argument("--steps", type=int, default=24, help="training steps per worker configuration")
    ap.add_argument("--report-every", type=int, default=4, help="report window of the training runs")
    ap.add_argument("--skip-teacher", action="store_true")
    ap.add_argument("--skip-train", action="store_true")
    args = ap.parse_args()

    rows = []
    if not args.skip_teacher:
        rows += teacher_scaling(args)
    if not args.skip_train:
        rows += train_scaling(args)
    print_table(rows, ["part", "config", "per_s", "unit", "ratio"])
    print(f"wrote {write_result('scaling', {'args': vars(args), 'rows': rows})}")


if __name__ == "__main__":
    main()
