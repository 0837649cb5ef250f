"""Helpers shared by the reliability tests: bounded Hypothesis settings, a tiny teacher spec,
replica counters, and concurrent bursts of calls."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings

# Bounded so every fuzz module runs in well under a minute; no example database in the tree.
FUZZ = settings(max_examples=40, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def tiny_spec(tiny_bert_dir: Path, name: str = "tiny", **overrides: Any) -> dict[str, Any]:
    """A tiny dual-encoder teacher on a quarter CPU (the shared session has 8 logical CPUs), with
    no signal cache: every request reaches the batcher and the model, as these tests need."""
    return {"name": name, "kind": "dual_encoder", "checkpoint": str(tiny_bert_dir), "cache": {"max_bytes": 0},
            "ray_actor_options": {"num_cpus": 0.25}, "batch_wait_timeout_s": 0.02, **overrides}


def replica_stats(app_name: str, teacher: str) -> dict[str, Any]:
    """The teacher replica's counters and pid (``TeacherReplica.stats``)."""
    from ray import serve

    return serve.get_deployment_handle(f"teacher-{teacher}", app_name).stats.remote().result(timeout_s=60)


def burst(n: int, call: Callable[[], Any]) -> list[Any]:
    """``n`` calls released at the same instant from ``n`` threads."""
    gate = threading.Barrier(n)

    def one(_: int) -> Any:
        gate.wait()
        return call()

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))
