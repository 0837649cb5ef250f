"""Shared helpers for the benchmarks: timing, machine description and result files."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        with open("/proc/meminfo") as fh:
            info["mem_total_gib"] = round(int(fh.readline().split()[1]) / 2**20, 1)
    except OSError:
        pass
    return info


# CPU flags of native bfloat16 arithmetic (what dtype/precision "auto" looks for).
BF16_FLAGS = ("avx512_bf16", "amx_bf16", "amx_tile")


def cpu_bf16() -> dict[str, Any]:
    """Whether this CPU computes bfloat16 natively, from ``/proc/cpuinfo``'s flags:
    ``{"kind": "bf16-capable" | "no native bf16" | "unknown", "flags": [...]}``."""
    try:
        with open("/proc/cpuinfo") as fh:
            line = next((ln for ln in fh if ln.startswith("flags")), "")
    except OSError:
        return {"kind": "unknown", "flags": []}
    flags = [f for f in BF16_FLAGS if f in line.split()]
    return {"kind": "bf16-capable" if flags else ("no native bf16" if line else "unknown"), "flags": flags}


def timed(fn: Callable[[], Any], repeats: int = 1) -> float:
    """Best wall time of ``repeats`` runs (the least disturbed by other processes)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def write_result(name: str, payload: dict[str, Any], path: Path | None = None) -> Path:
    """Write ``payload`` with the machine description to ``path`` (default: ``RESULTS/<name>.json``)."""
    path = path or RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"benchmark": name, "machine": machine(), **payload}, indent=2))
    return path


def print_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    widths = [max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for r in rows:
        print("  ".join(_fmt(r.get(c)).ljust(w) for c, w in zip(columns, widths)))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"
    return "" if value is None else str(value)
