"""Connecting to Ray: an embedded local instance by default, or an existing cluster."""

from __future__ import annotations

import os
from typing import Any

import ray


class RayConnectError(RuntimeError):
    """No Ray cluster could be reached at the given address."""


def init_ray(address: str | None = None, num_cpus: float | None = None, **kwargs: Any) -> dict[str, Any]:
    """Start an embedded local Ray bound to 127.0.0.1, or join the cluster at ``address``.

    ``address`` may be ``"auto"`` (the cluster ``ray start`` created on this machine) or
    ``host:port`` / ``ray://host:port``. Returns Ray's context info.
    """
    if ray.is_initialized():
        return ray.get_runtime_context().__dict__
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Worker logs stay in Ray's log files unless asked for (TIGHTDISTILL_RAY_LOGS=1): Serve and
    # Train are chatty, and a run's own progress bars say what a user needs.
    log_to_driver = kwargs.pop("log_to_driver", os.environ.get("TIGHTDISTILL_RAY_LOGS") == "1")
    common = {"include_dashboard": False, "log_to_driver": log_to_driver, "ignore_reinit_error": True}
    if address:
        try:
            return ray.init(address=address, **common, **kwargs).__dict__
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise RayConnectError(f"no Ray cluster reachable at --address {address} ({str(exc).splitlines()[0]}); "
                                  "start one with `ray start --head` or drop --address to run locally") from None
    # The teacher replica and the trainer compute at the same time (the next batch's signals are
    # prefetched), each with an OpenMP pool as wide as the machine; spinning idle OpenMP threads
    # then steal the other process's cores. Passive waiting took the served-teacher training
    # step from 1.15x to 1.02x an in-process teacher's (bench/coupling_overhead.py). It costs a
    # lone replica ~9% (26.9 against 29.1-29.4 documents/s in a Ray actor, where OpenMP's threads
    # spin 10,000 times or by default), but bounded spinning (GOMP_SPINCOUNT=10000) slowed the
    # default run's training from 188 to 203-204 s: the job, where both share the cores, wins.
    # Set before Ray starts: its worker processes inherit the environment and OpenMP reads it on start.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # Ray's CPUs are logical scheduling units. Teacher replicas and Train workers each hold some;
    # on a 2-core laptop their sum exceeds the physical count and
    # one of them would wait forever, so the embedded instance declares at least 4.
    if num_cpus is None:
        num_cpus = max(4, os.cpu_count() or 1)
    # Ask for loopback; Ray 2.60 still binds its GCS on all interfaces, guarded by its token auth (docs/reliability.md).
    return ray.init(num_cpus=num_cpus, _node_ip_address="127.0.0.1", **common, **kwargs).__dict__
