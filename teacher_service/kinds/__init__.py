"""Teacher kinds: one class per kind behind the interface in :mod:`teacher_service.kinds.base`."""

from __future__ import annotations

from common.config import parse_config
from common.text_encoder import resolve_dtype
from teacher_service.kinds.base import Encoded, PairOutput, Teacher, TeacherInfo
from teacher_service.kinds.colbert import ColBERTTeacher
from teacher_service.kinds.cross_encoder import CrossEncoderTeacher
from teacher_service.kinds.dual_encoder import DualEncoderTeacher
from teacher_service.spec import TeacherSpec

KINDS: dict[str, type[Teacher]] = {
    DualEncoderTeacher.kind: DualEncoderTeacher,
    ColBERTTeacher.kind: ColBERTTeacher,
    CrossEncoderTeacher.kind: CrossEncoderTeacher,
}


def build_teacher(spec: TeacherSpec) -> Teacher:
    """Instantiate the teacher a spec describes (loads its weights)."""
    if spec.kind not in KINDS:
        raise ValueError(f"teacher '{spec.name}': kind '{spec.kind}' is not available; known kinds: {sorted(KINDS)}")
    cls = KINDS[spec.kind]
    options = parse_config(cls.Options, spec.options, source=f"teacher '{spec.name}' options")
    return cls(spec.name, spec.checkpoint, options, device=spec.device, dtype=resolve_dtype(spec.dtype, spec.device),
               token_budget=spec.token_budget)


__all__ = ["KINDS", "Encoded", "PairOutput", "Teacher", "TeacherInfo", "build_teacher"]
