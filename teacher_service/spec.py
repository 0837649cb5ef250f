"""Configuration of the teacher service: which teachers, how they scale, and the service limits.

This is the ``args`` block of the Serve application in ``deploy/teachers.yaml``; the same file
works with ``serve run deploy/teachers.yaml`` and ``tightdistill serve --config ...``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from common.config import StrictModel
from teacher_service.schemas import ServiceLimits


# TeacherInfo fields added after caches were first keyed on a teacher's description: left out
# of the key while unset, so a teacher that does not use them keeps the caches it has (a torch
# teacher reports no ``backend``).
LATER_INFO_FIELDS = ("joint_dim", "backend")

# What each precision means for the torch backend's weights (``dtype``), and back.
PRECISION_DTYPES = {"fp32": "float32", "bf16": "bfloat16"}
DTYPE_PRECISIONS = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
# Why the ONNX backend refuses bf16: ONNX Runtime's CPU execution provider has no bfloat16 kernels
# for a transformer's MatMul, Add or Softmax (probed with onnxruntime 1.32: a one-node bfloat16
# graph of each fails to load with NOT_IMPLEMENTED), so bf16 could only be emulated by casts
# around every node, slower than fp32.
ONNX_BF16_REFUSAL = ("precision bf16 is not offered by backend onnx: ONNX Runtime's CPU provider has no bfloat16 "
                     "kernels for a transformer's MatMul, Add and Softmax; use backend torch with precision bf16 "
                     "(fast on CPUs with AVX512-BF16/AMX), or backend onnx with precision fp32 or int8")


def teacher_identity(info: dict[str, Any]) -> dict[str, Any]:
    """The part of a teacher's self-description (``GET /v1/teachers``) that fixes its outputs: all
    of it but its service name, so the same model served under two names shares its caches."""
    return {k: v for k, v in info.items() if k != "name" and not (k in LATER_INFO_FIELDS and v is None)}


class CacheConfig(StrictModel):
    """A teacher's signal cache (see :mod:`teacher_service.signal_cache`)."""

    max_bytes: int = Field(256 * 2**20, ge=0, description="Memory budget of each replica's encoding cache in bytes (0 disables it).")
    disk_dir: str | None = Field(None, description="Also keep encodings as parquet under this folder (one subfolder per teacher), read back on start.")


class TeacherSpec(StrictModel):
    """One frozen teacher, deployed as its own Serve deployment so it scales on its own nodes."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="Name clients use to address this teacher.")
    kind: Literal["dual_encoder", "colbert", "cross_encoder"] = Field(description="Teacher kind.")
    checkpoint: str = Field(description="Registry name (minilm-l6, mpnet-base), local directory or hub id.")
    device: str = Field("cpu", description="'cpu', 'cuda' or 'cuda:N'; use with ray_actor_options.num_gpus.")
    dtype: Literal["float32", "float16", "bfloat16", "auto"] = Field(
        "float32", description="Weights dtype. 'auto': bfloat16 on CPUs with native bf16 (AVX512-BF16, AMX) and on GPUs "
        "that support it, float16 on other GPUs, float32 on other CPUs.")
    backend: Literal["torch", "onnx", "auto"] = Field(
        "torch", description="Engine the encoder runs on. 'onnx': ONNX Runtime on the CPU, from a graph exported once from the "
        "checkpoint and cached (keyed on the weights, the export settings and the package versions). 'auto': the fastest "
        "engine and precision that reproduces torch float32 (cosine >= 0.999) on this CPU, measured once per checkpoint "
        "and machine and cached (teacher_service/kinds/backend.py).")
    precision: Literal["fp32", "bf16", "int8"] | None = Field(
        None, description="Numeric precision of the backend: fp32; bf16 (torch only, fast where the CPU has AVX512-BF16/AMX); "
        "int8 (onnx only: dynamic quantisation, int8 weights, activations quantised per batch). Where set it decides "
        "over dtype. Default: what dtype says (torch), fp32 (onnx), the fastest faithful one (auto).")
    options: dict[str, Any] = Field(default_factory=dict, description="Kind-specific options (pooling, similarity, lengths...).")
    num_replicas: int | Literal["auto"] = Field(1, description="Replicas, or 'auto' with autoscaling_config.")
    autoscaling_config: dict[str, Any] | None = Field(None, description="Ray Serve autoscaling settings (min_replicas, max_replicas, ...).")
    ray_actor_options: dict[str, Any] = Field(default_factory=lambda: {"num_cpus": 1}, description="Resources per replica (num_cpus, num_gpus, resources).")
    max_ongoing_requests: int = Field(64, ge=1, description="Concurrent requests a replica accepts before queueing.")
    max_queued_requests: int = Field(256, ge=-1, description="Requests queued per deployment before the service answers 429 (-1: unbounded).")
    batch_max_tokens: int = Field(32768, ge=1024, description="Dynamic batching: most (estimated) tokens merged into one batch across requests.")
    batch_wait_timeout_s: float = Field(0.005, ge=0, description="Dynamic batching: how long a batch waits for more requests.")
    token_budget: int | None = Field(None, ge=64, description="Padded tokens per forward pass (length-sorted batching); "
                                     "default: 2048 on a CPU (passes that stay in cache), 65536 on a GPU.")
    torch_threads: int | None = Field(None, ge=1, description="Intra-op threads; default: the replica's num_cpus.")
    cache: CacheConfig = Field(default_factory=CacheConfig, description="Cache of computed encodings, so repeated texts are never re-encoded.")

    @model_validator(mode="after")
    def _autoscaling_needs_auto(self) -> TeacherSpec:
        if self.autoscaling_config and self.num_replicas != "auto":
            raise ValueError("autoscaling_config needs num_replicas: auto")
        return self

    @model_validator(mode="after")
    def _backend_and_precision_agree(self) -> TeacherSpec:
        # dtype's default (float32) and auto never disagree with a precision: precision, where set, decides.
        dtype_pins = self.dtype not in ("float32", "auto")
        if self.precision is not None and dtype_pins and PRECISION_DTYPES.get(self.precision) != self.dtype:
            raise ValueError(f"teacher '{self.name}': precision {self.precision} and dtype {self.dtype} disagree; set only one")
        wanted = self.requested_precision()
        if self.backend == "torch" and wanted == "int8":
            raise ValueError(f"teacher '{self.name}': precision int8 needs backend onnx (ONNX Runtime's dynamic "
                             "quantisation); the torch backend runs fp32 or bf16")
        if self.backend == "onnx" and self.device != "cpu":
            raise ValueError(f"teacher '{self.name}': backend onnx runs on ONNX Runtime's CPU provider; got device "
                             f"'{self.device}' (use backend torch on a GPU)")
        if self.backend != "torch" and self.dtype == "float16":
            raise ValueError(f"teacher '{self.name}': dtype float16 is the torch backend's (GPUs); with backend "
                             f"{self.backend} set precision instead")
        if self.backend == "onnx" and wanted == "bf16":
            raise ValueError(f"teacher '{self.name}': {ONNX_BF16_REFUSAL}")
        return self

    def requested_precision(self) -> str | None:
        """The precision this spec pins: ``precision``; else, for torch, its ``dtype`` (``None`` for
        ``dtype: auto``); else fp32 for onnx; ``None`` (free) for auto, unless ``dtype`` names a
        precision other than its float32 default. A spec re-validated from its own dump (as a Serve
        replica receives it) pins the same precision."""
        if self.precision is not None:
            return self.precision
        if self.backend == "torch" or self.dtype not in ("float32", "auto"):
            return None if self.dtype == "auto" else DTYPE_PRECISIONS[self.dtype]
        return "fp32" if self.backend == "onnx" else None

    def deployment_options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {
            "name": deployment_name(self.name),
            "ray_actor_options": self.ray_actor_options,
            "max_ongoing_requests": self.max_ongoing_requests,
            "max_queued_requests": self.max_queued_requests,
        }
        if self.num_replicas == "auto":
            opts["autoscaling_config"] = self.autoscaling_config or {"min_replicas": 1, "max_replicas": 2}
        else:
            opts["num_replicas"] = self.num_replicas
        return opts


class ServiceConfig(StrictModel):
    """The teacher service: its teachers and request limits."""

    teachers: list[TeacherSpec] = Field(min_length=1)
    limits: ServiceLimits = Field(default_factory=ServiceLimits)
    auth_token_env: str = Field("TIGHTDISTILL_TOKEN", description="Environment variable holding the bearer token; unset or empty means no auth.")
    default_teacher: str | None = Field(None, description="Teacher the TEI-style routes (/embed, /rerank) use when a request names none; default: the first teacher.")

    @field_validator("teachers")
    @classmethod
    def _unique_names(cls, teachers: list[TeacherSpec]) -> list[TeacherSpec]:
        names = [t.name for t in teachers]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate teacher names: {', '.join(dupes)}")
        return teachers

    @model_validator(mode="after")
    def _default_teacher_exists(self) -> ServiceConfig:
        names = [t.name for t in self.teachers]
        if self.default_teacher is not None and self.default_teacher not in names:
            raise ValueError(f"default_teacher '{self.default_teacher}' is not one of the teachers ({', '.join(names)})")
        return self


def deployment_name(teacher: str) -> str:
    return f"teacher-{teacher}"


APP_NAME = "tightdistill"
