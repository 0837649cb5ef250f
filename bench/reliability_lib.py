"""Fault injection and observation for the reliability scripts and tests: find this session's Ray
processes (teacher replicas, the HTTP ingress, Train workers), kill a teacher replica at a moment
when its answered-request count is exact, wait for Serve to bring it back, read checkpoints.

Only processes below this driver are ever touched: Ray starts its raylet (and through it every
worker) as children of the driver that called ``ray.init``, so other Ray sessions on the same
machine are never matched.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil


def our_processes(needle: str) -> list[psutil.Process]:
    """Live descendants of this process whose command line contains ``needle``."""
    out = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if needle in " ".join(proc.cmdline()) and proc.status() != psutil.STATUS_ZOMBIE:
                out.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_local_serve(num_cpus: int = 4) -> int:
    """An embedded Ray and Serve with HTTP on 127.0.0.1 at a free port (returned)."""
    from ray import serve

    from common.ray_runtime import init_ray

    init_ray(num_cpus=num_cpus)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config={"enable_access_log": False})
    return port


def rss_mib(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def wait_until(predicate: Callable[[], Any], timeout_s: float, interval_s: float = 0.05, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; TimeoutError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise TimeoutError(f"{what} not reached within {timeout_s:.0f}s")


def replica_stats(app_name: str, teacher: str, timeout_s: float = 60) -> dict[str, Any]:
    """The teacher replica's counters and pid (``TeacherReplica.stats``)."""
    from ray import serve

    return serve.get_deployment_handle(f"teacher-{teacher}", app_name).stats.remote().result(timeout_s=timeout_s)


def kill_replica_between_batches(app_name: str, teacher: str, hold_s: float, limit_s: float = 120) -> dict[str, Any]:
    """SIGKILL the teacher replica while the trainer's next requests wait in its batcher, at a
    moment when its count of answered requests is known exactly.

    The teacher must run with ``batch_wait_timeout_s=hold_s`` (a few tenths of a second): a batch
    then fires ``hold_s`` after its first request arrived. The replica counts a request when it
    answers it, so reading the count and then killing could miss an answer given in between.
    Right after a batch is answered the trainer computes its steps and sends the next requests,
    which wait ``hold_s`` in the batcher: killing half-way through that wait hits requests in
    flight, and no answer can come between the count and the kill.
    """
    last = replica_stats(app_name, teacher)["requests"]
    answered_at = wait_until(lambda: replica_stats(app_name, teacher)["requests"] != last and time.monotonic(),
                             limit_s, 0.01, "a batch answered")
    stats = replica_stats(app_name, teacher)  # the other requests of that batch have finished too
    time.sleep(max(0.0, answered_at + hold_s / 2 - time.monotonic()))
    os.kill(stats["pid"], signal.SIGKILL)
    return {"answered_before": stats["requests"], "pid": stats["pid"], "killed_at": time.monotonic(),
            "kill_after_answer_s": time.monotonic() - answered_at}


def wait_for_new_replica(app_name: str, teacher: str, old_pid: int, killed_at: float, limit_s: float = 300) -> dict[str, Any]:
    """Block until a replica other than ``old_pid`` answers; returns its stats and the seconds
    from the kill until it answered (Serve noticing the death, a new process, the model loaded)."""
    deadline = killed_at + limit_s
    while time.monotonic() < deadline:
        try:
            stats = replica_stats(app_name, teacher, timeout_s=5)
        except Exception:  # noqa: BLE001 - while no replica is up, calls time out or fail
            continue
        if stats["pid"] != old_pid:
            return {**stats, "restart_s": time.monotonic() - killed_at}
        time.sleep(0.1)
    raise TimeoutError(f"no new replica of teacher-{teacher} within {limit_s:.0f}s")


def checkpoint_steps(run_dir: Path) -> list[int]:
    """Global steps of the checkpoint folders a run has on disk (``<run>/ray/train``), committed or not."""
    steps = []
    for state in (Path(run_dir) / "ray" / "train").glob("checkpoint_*/state.json"):
        try:
            steps.append(json.loads(state.read_text())["global_step"])
        except (OSError, ValueError, KeyError):
            continue  # being written
    return sorted(steps)


def committed_checkpoint(run_dir: Path) -> dict[str, Any] | None:
    """The checkpoint Ray Train would resume from: the latest one its controller has registered
    in the run snapshot (a folder already on disk but not yet registered is not used), as
    ``{"step", "path"}``; None before the first."""
    snapshot = Path(run_dir) / "ray" / "train" / "checkpoint_manager_snapshot.json"
    try:
        latest = json.loads(snapshot.read_text()).get("latest_checkpoint_result")
    except (OSError, ValueError):
        return None  # absent, or being rewritten
    if not latest:
        return None
    return {"step": latest["metrics"]["step"], "path": snapshot.parent / latest["checkpoint_dir_name"]}


def prepare_training(run: Any) -> dict[str, Any]:
    """What ``train_student`` needs for ``run`` (a ``RunConfig``), made the way ``run_distillation``
    makes it: the teacher's description and document index, and the training examples."""
    from common.datasets import load_beir
    from student_trainer.run import connect_teacher, prepare_examples
    from student_trainer.teacher_index import teacher_doc_embeddings

    client = connect_teacher(run.teacher)
    dataset = load_beir(run.data.dataset)
    index = teacher_doc_embeddings(client, dataset, show_progress=False)
    examples, n = prepare_examples(run, dataset, client, index)
    return {"info": client.describe(), "index": index, "examples": examples, "n": n}


def start_training(run: Any, prepared: dict[str, Any]) -> Future:
    """``train_student`` on a background thread (Ray Train runs the loop in its own workers), so
    the caller can inject faults while it runs; the future holds ``(checkpoint, history)``."""
    from student_trainer.run import train_student

    pool = ThreadPoolExecutor(1, thread_name_prefix="train")
    job = pool.submit(train_student, run, prepared["info"], prepared["examples"], prepared["n"], prepared["index"], [], False)
    pool.shutdown(wait=False)
    return job


def checkpoint_step(checkpoint: Any, run: Any, teacher_info: dict[str, Any]) -> int:
    """The global step stored in a Ray Train checkpoint of ``run``."""
    from student_trainer.train_loop import build_student, load_checkpoint

    return load_checkpoint(checkpoint, build_student(run, teacher_info))["global_step"]


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by linear interpolation; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)
