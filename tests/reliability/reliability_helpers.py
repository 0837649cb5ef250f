"""Helpers shared by the reliability tests: bounded Hypothesis settings, a tiny teacher spec, apps
of their own in the shared Ray session, replica counters, and concurrent bursts of calls."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings

# The fault-injection helpers live with the reliability scripts in bench/, which use them too.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from reliability_lib import (  # noqa: E402,F401 - re-exported for the tests
    checkpoint_step,
    checkpoint_steps,
    committed_checkpoint,
    our_processes,
    prepare_training,
    replica_stats,
    start_training,
    wait_until,
)

# Bounded so every fuzz module runs in well under a minute; no example database in the tree.
FUZZ = settings(max_examples=40, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def tiny_spec(tiny_bert_dir: Path, name: str = "tiny", **overrides: Any) -> dict[str, Any]:
    """A tiny dual-encoder teacher on a quarter CPU (the shared session has 8 logical CPUs), with
    no signal cache: every request reaches the batcher and the model, as these tests need."""
    return {"name": name, "kind": "dual_encoder", "checkpoint": str(tiny_bert_dir), "cache": {"max_bytes": 0},
            "ray_actor_options": {"num_cpus": 0.25}, "batch_wait_timeout_s": 0.02, **overrides}


def deploy_own_app(app_name: str, teachers: list[dict[str, Any]], http_port: int,
                   limits: dict[str, Any] | None = None) -> dict[str, Any]:
    """Deploy a teacher app under its own name and route prefix (``/<app_name>``) on 127.0.0.1."""
    from teacher_service.app import deploy
    from teacher_service.spec import ServiceConfig

    config = ServiceConfig.model_validate({"teachers": teachers, **({"limits": limits} if limits else {})})
    deploy(config, app_name=app_name, route_prefix=f"/{app_name}", http_options={"host": "127.0.0.1", "port": http_port})
    return {"app_name": app_name, "url": f"http://127.0.0.1:{http_port}/{app_name}", "config": config}


def burst(n: int, call: Callable[[], Any]) -> list[Any]:
    """``n`` calls released at the same instant from ``n`` threads."""
    gate = threading.Barrier(n)

    def one(_: int) -> Any:
        gate.wait()
        return call()

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))
