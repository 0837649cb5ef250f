"""Teacher kinds: one class per kind behind the interface in :mod:`teacher_service.kinds.base`."""

from __future__ import annotations

import hashlib
import json
import logging

from common.config import parse_config
from common.model_registry import checkpoint_fingerprint, resolve_model
from common.text_encoder import resolve_dtype
from teacher_service.kinds.backend import Backend, choose_backend, parse_label
from teacher_service.kinds.base import Encoded, PairOutput, Teacher, TeacherInfo
from teacher_service.kinds.colbert import ColBERTTeacher
from teacher_service.kinds.cross_encoder import CrossEncoderTeacher
from teacher_service.kinds.dual_encoder import DualEncoderTeacher
from teacher_service.spec import DTYPE_PRECISIONS, PRECISION_DTYPES, TeacherSpec

log = logging.getLogger(__name__)

KINDS: dict[str, type[Teacher]] = {
    DualEncoderTeacher.kind: DualEncoderTeacher,
    ColBERTTeacher.kind: ColBERTTeacher,
    CrossEncoderTeacher.kind: CrossEncoderTeacher,
}
# Kinds whose encoder runs on ONNX Runtime: all three hand it only the encoder's forward pass.
ONNX_KINDS = tuple(KINDS)


def resolve_backend(spec: TeacherSpec) -> Backend:
    """The backend a torch or onnx spec runs (``auto`` is :func:`choose_backend`'s): torch at the
    dtype its precision or ``dtype`` resolves to on the device, onnx at fp32 unless int8 is asked."""
    if spec.backend == "onnx":
        return Backend("onnx", spec.requested_precision() or "fp32")
    dtype = resolve_dtype(PRECISION_DTYPES[spec.precision] if spec.precision else spec.dtype, spec.device)
    return Backend("torch", DTYPE_PRECISIONS[dtype])


def build_with(spec: TeacherSpec, backend: Backend) -> Teacher:
    """Instantiate the teacher a spec describes on ``backend`` (loads its weights, exports on a cache miss)."""
    cls = KINDS[spec.kind]
    options = parse_config(cls.Options, spec.options, source=f"teacher '{spec.name}' options")
    return cls(spec.name, spec.checkpoint, options, device=spec.device, dtype=backend.torch_dtype(),
               token_budget=spec.token_budget, backend=backend)


def build_teacher(spec: TeacherSpec) -> Teacher:
    """Instantiate the teacher a spec describes (loads its weights); ``backend: auto`` measures the
    candidates once per checkpoint and machine (see :mod:`teacher_service.kinds.backend`)."""
    if spec.kind not in KINDS:
        raise ValueError(f"teacher '{spec.name}': kind '{spec.kind}' is not available; known kinds: {sorted(KINDS)}")
    if spec.backend != "auto":
        return build_with(spec, resolve_backend(spec))
    options = hashlib.sha256(json.dumps(spec.options, sort_keys=True, default=str).encode()).hexdigest()[:16]
    weights = checkpoint_fingerprint(resolve_model(spec.checkpoint))
    teacher, record = choose_backend(spec, build_with, weights, options, ONNX_KINDS)
    log.info("teacher '%s': backend auto chose %s (%s)", spec.name, record["chosen"],
             "measured now" if teacher is not None else "cached decision" if record.get("measured") else record.get("why"))
    teacher = teacher or build_with(spec, parse_label(record["chosen"]))
    teacher.backend_choice = record
    return teacher


__all__ = ["KINDS", "ONNX_KINDS", "Encoded", "PairOutput", "Teacher", "TeacherInfo", "build_teacher", "resolve_backend"]
