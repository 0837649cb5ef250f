"""ONNX export, int8 quantisation and ONNX Runtime sessions: shared by exported students
(:mod:`student_trainer.export`) and the teacher service's ONNX backend (:mod:`teacher_service.kinds.backend`).

Why one module: both export a torch encoder with a dynamic batch and sequence axis, quantise it
dynamically to int8 and run it on ONNX Runtime's CPU provider; a fix to any of those steps (an
exporter flag, a thread setting) then reaches both. Teacher graphs are exported once per
checkpoint and cached on disk (:func:`cached_graph`), keyed on the weights, the export settings and
the versions of the packages that write and run the graph.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from common.model_registry import cache_dir

# Packages whose versions change the graph a checkpoint exports to (the exporter, the modelling
# code it traces, the ONNX IR and the quantiser): any of them moving re-exports.
EXPORT_PACKAGES = ("torch", "transformers", "onnx", "onnxscript", "onnxruntime")
# Graphs written by this process (a cache hit writes none); the tests read it.
exports_written = 0


class OnnxUnavailable(RuntimeError):
    """The ONNX packages are not installed (``pip install 'tightdistill[onnx]'``) or the export failed."""


def require_onnxruntime() -> None:
    """Fail early, with the install command, where ONNX Runtime is missing (before a slow export)."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise OnnxUnavailable(f"ONNX needs the onnx extra ({exc.name} is missing): pip install 'tightdistill[onnx]'") from None


def package_versions() -> dict[str, str | None]:
    """Installed versions of :data:`EXPORT_PACKAGES` (``None`` where one is missing)."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for name in EXPORT_PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def export_graph(module: nn.Module, inputs: Mapping[str, torch.Tensor], path: str | Path, output_names: list[str]) -> None:
    """Export ``module`` (called with ``inputs`` as positional tensors, in order) to one ONNX file
    at ``path``, every input's first two axes (batch, sequence) dynamic.

    The dynamo exporter, not TorchScript tracing: it is the one torch keeps developing and it
    exports today's transformers' attention (SDPA) without falling back to eager code paths.
    Weights stay inside the file (no external data), so one file is the whole graph; that caps a
    graph at protobuf's 2 GB.
    """
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    names = list(inputs)
    # The exporter's notes on axis names, opsets and absent torchvision ops are not the user's business.
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module.eval(), tuple(inputs.values()), str(path), input_names=names, output_names=output_names,
                              dynamic_shapes={name: {0: batch, 1: seq} for name in names},
                              dynamo=True, external_data=False, verbose=False)
    except Exception as exc:  # noqa: BLE001 - the exporter fails in many ways; the message says which
        first = str(exc).splitlines()[0][:300] if str(exc) else ""
        raise OnnxUnavailable(f"ONNX export failed: {type(exc).__name__}: {first}") from exc
    finally:
        registration.setLevel(level)


class _DropPreprocessingHint(logging.Filter):
    """ONNX Runtime's quantiser logs a hint to pre-process the graph (shape inference and
    optimisation for convolutional image models) on every call; it is no advice for these graphs."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Please consider to run pre-processing before quantization")


def quantize_int8(source: str | Path, target: str | Path, per_channel: bool = True) -> None:
    """Dynamic int8 quantisation of ``source`` into ``target`` (ONNX Runtime: int8 weights,
    activations quantised per batch at run time, so no calibration data is needed).

    ``per_channel`` (the default, for teachers and students alike) gives every output column of a
    weight matrix its own scale. On
    all-MiniLM-L6-v2 it decides whether int8 is usable at all: 64 scifact documents' embeddings
    kept a mean cosine of 0.995 (min 0.992) to fp32 with it, 0.934 (min 0.903) with one scale per
    matrix, where a few large weights leave the rest only a handful of int8 steps.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    hint = _DropPreprocessingHint()
    logging.getLogger().addFilter(hint)
    try:
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=per_channel)
    finally:
        logging.getLogger().removeFilter(hint)


def make_session(path: str | Path, threads: int | None = None, spinning: bool = True) -> Any:
    """An ONNX Runtime CPU session over the graph at ``path``.

    ``threads`` sets the intra-op pool (ORT's default otherwise: one per physical core), so a
    comparison with torch can give both the same threads. ``spinning=False`` makes idle pool
    threads sleep rather than spin: the ORT counterpart of ``OMP_WAIT_POLICY=PASSIVE``, which a
    teacher replica sharing cores with a trainer needs (see :mod:`common.ray_runtime`).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def passive_waiting() -> bool:
    """Whether this process was asked to wait passively (``OMP_WAIT_POLICY=PASSIVE``, as Ray's
    processes are here): ORT sessions then follow suit with ``spinning=False``."""
    return os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE"


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine of each row of ``a`` with the same row of ``b`` (how graphs are checked against torch)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)).clip(1e-12)


def graph_key(settings: Mapping[str, Any]) -> str:
    """Hash of what fixes an exported graph: ``settings`` (the weights' fingerprint, what the graph
    computes, its precision) plus the versions of :data:`EXPORT_PACKAGES`."""
    payload = json.dumps({"settings": dict(settings), "versions": package_versions()}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def cached_graph(settings: Mapping[str, Any], build: Callable[[Path], None], cache: Path | None = None) -> Path:
    """The cached graph for ``settings``, calling ``build(path)`` to write it on a miss.

    A graph is written to a temporary file beside the cache entry and renamed into place, so a
    crash never leaves a half-written graph, and two replicas starting at once both end with a
    whole one (the last rename wins; both wrote the same graph). ``settings`` go into a JSON file
    beside the graph, so the cache can be read by hand.
    """
    global exports_written
    root = cache or cache_dir() / "onnx"
    key = graph_key(settings)
    path = root / f"{key}.onnx"
    if path.is_file():
        return path
    root.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=root, prefix=f".{key}-", suffix=".onnx")
    os.close(fd)
    try:
        build(Path(tmp))
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    (root / f"{key}.json").write_text(json.dumps({"settings": dict(settings), "versions": package_versions()},
                                                 indent=2, default=str))
    exports_written += 1
    return path
