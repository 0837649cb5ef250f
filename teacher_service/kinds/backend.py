"""Where a teacher's encoder runs: torch, or ONNX Runtime from a cached graph (fp32 or dynamic
int8), and how ``backend: auto`` chooses between them.

Every kind keeps its own tokenisation, batching, pooling and scoring; only the encoder's forward
pass (token ids -> final hidden states; for a [CLS] cross-encoder, its relevance logit and [CLS]
state) moves to the backend. :func:`onnx_encoder` exports that pass once per checkpoint (the graph
is cached under ``TIGHTDISTILL_CACHE/onnx``, keyed on the weights' hash, what the graph computes,
its precision and the package versions, see :mod:`common.onnx_runtime`) and returns an
:class:`OnnxEncoder`, a stand-in for the Hugging Face model that the kinds call the same way.

``auto`` (:func:`choose_backend`) measures, once per checkpoint, kind options, thread count, CPU
and package versions: every candidate the machine offers (torch fp32, torch bf16 where the CPU
computes bf16 natively, onnx fp32, and onnx int8 only for the checkpoints in :data:`INT8_VERIFIED`)
encodes the same calibration texts in interleaved rounds; an fp32 or bf16 candidate whose outputs
fall below cosine :data:`AUTO_MIN_COSINE` of torch fp32 on any text is not faithful, and the
fastest faithful one wins, unless an earlier candidate is within :data:`AUTO_MARGIN` of it. The
decision and its measurements are cached as JSON (``TIGHTDISTILL_CACHE/backend-choice``); delete
the file to measure again.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import nn

from common.model_registry import cache_dir
from common.onnx_runtime import (
    OnnxUnavailable, cached_graph, export_graph, make_session, package_versions, passive_waiting, quantize_int8,
    require_onnxruntime, row_cosines,
)
from common.text_encoder import resolve_dtype

if TYPE_CHECKING:  # the kinds import this module; the spec only for type hints
    from teacher_service.kinds.base import Teacher
    from teacher_service.spec import TeacherSpec

Engine = Literal["torch", "onnx"]
GraphOutputs = Literal["hidden_states", "classifier"]
OUTPUT_NAMES: dict[str, list[str]] = {"hidden_states": ["last_hidden_state"], "classifier": ["logits", "cls_state"]}
# Bumped when what an exported graph computes changes in this file (a cache key part).
GRAPH_VERSION = 1
# An fp32 graph must reproduce the torch model's outputs this closely (largest difference over the
# output's largest magnitude, on the export's check batch), or it is not cached and the teacher
# does not start.
EXPORT_TOLERANCE = 1e-3
# ``auto`` keeps an fp32 or bf16 candidate only if it is at least this close to torch fp32 on every
# calibration text (issue #23: fp32 and bf16 backends must reach 0.999).
AUTO_MIN_COSINE = 0.999
# int8 changes the numbers by design (embeddings at cosine ~0.99 of fp32): what makes it faithful is
# that the ranking holds, the teacher's nDCG@10 within 0.003 of fp32 (issue #23), which
# bench/teacher_backends.py measures and a replica starting up cannot (it has no queries or
# labels). So ``auto`` considers onnx int8 only for the checkpoints listed here, by the hash of
# their weights (``checkpoint_fingerprint``), with the bench figure that admitted them; and even
# then only if its calibration embeddings keep a mean cosine of AUTO_INT8_MIN_MEAN_COSINE on this
# CPU (a guard against a quantised kernel that misbehaves on another instruction set).
INT8_VERIFIED: dict[str, dict[str, Any]] = {}
AUTO_INT8_MIN_MEAN_COSINE = 0.99
# A candidate displaces an earlier one in ``auto_candidates``' order (torch first: the reference,
# nothing to export) only if it is more than this much faster. Timings on a shared machine are
# noisy: measured under a load average of 30, onnx fp32 came out 11% ahead of torch bf16 here,
# which a quiet measurement put 5x ahead of it (175 against 33 calibration texts/s).
AUTO_MARGIN = 0.15


@dataclass(frozen=True)
class Backend:
    """A resolved backend: the engine and its precision (``auto`` never reaches a teacher)."""

    engine: Engine = "torch"
    precision: str = "fp32"  # fp32, bf16 or fp16 (torch), fp32 or int8 (onnx)

    @property
    def label(self) -> str:
        return f"{self.engine}-{self.precision}"

    def torch_dtype(self) -> str:
        """The dtype the torch weights load in: the precision's for torch; float32 for onnx,
        which exports (and quantises) from the float32 model."""
        if self.engine == "onnx":
            return "float32"
        return {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[self.precision]


@dataclass
class EncoderOutput:
    """What an :class:`OnnxEncoder` returns, named as the Hugging Face outputs the kinds read."""

    last_hidden_state: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    cls_state: torch.Tensor | None = None


class EncoderGraph(nn.Module):
    """The forward pass that is exported: the model's final hidden states, or for a [CLS]
    cross-encoder its logits and final [CLS] state (the joint embedding the scoring head reads;
    ``hidden_states[-1]`` is the encoder's output, and the exporter prunes the layers' other states)."""

    def __init__(self, model: nn.Module, outputs: GraphOutputs) -> None:
        super().__init__()
        self.model = model
        self.outputs = outputs

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        if self.outputs == "hidden_states":
            return self.model(**inputs).last_hidden_state
        out = self.model(**inputs, output_hidden_states=True)
        return out.logits, out.hidden_states[-1][:, 0]


class OnnxEncoder(nn.Module):
    """An exported encoder run by ONNX Runtime, called like the Hugging Face model it replaces
    (``model(input_ids=..., attention_mask=...).last_hidden_state``).

    It holds no torch weights: the graph has its own copy, and the torch model is dropped.
    ``device_anchor`` is an empty parameter so code that finds a model's device from its
    parameters (``TextEncoder.device``) sees the CPU; ``source_parameters`` keeps the count of
    the model it replaces for the teacher's description.
    """

    def __init__(self, session: Any, config: Any, outputs: GraphOutputs, source_parameters: int, path: Path) -> None:
        super().__init__()
        self.session = session
        self.path = path  # the cached graph it runs
        self.config = config
        self.outputs = outputs
        self.input_names = [i.name for i in session.get_inputs()]
        self.source_parameters = source_parameters
        self.device_anchor = nn.Parameter(torch.empty(0), requires_grad=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> EncoderOutput:
        given = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        if given["token_type_ids"] is None:
            given["token_type_ids"] = torch.zeros_like(input_ids)  # what the torch model assumes without them
        feed = {name: given[name].cpu().numpy().astype(np.int64, copy=False) for name in self.input_names}
        arrays = self.session.run(OUTPUT_NAMES[self.outputs], feed)
        return EncoderOutput(**{name: torch.from_numpy(a) for name, a in zip(OUTPUT_NAMES[self.outputs], arrays)})


def check_inputs(config: Any, token_types: bool) -> dict[str, torch.Tensor]:
    """A fixed batch the export traces and is checked on: two rows of ordinary vocabulary ids,
    the second padded (so masking is exercised), with segment ids for pair models."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, min(int(config.vocab_size), 20000), (2, 24), generator=generator)
    mask = torch.ones_like(ids)
    mask[1, 15:] = 0
    inputs = {"input_ids": ids, "attention_mask": mask}
    if token_types:
        segments = torch.zeros_like(ids)
        segments[:, 10:] = 1
        inputs["token_type_ids"] = segments * mask
    return inputs


def export_checked(graph: EncoderGraph, inputs: dict[str, torch.Tensor], path: Path) -> None:
    """Export ``graph`` to ``path`` and check that ONNX Runtime reproduces torch on ``inputs``: no
    output may differ by more than :data:`EXPORT_TOLERANCE` of its largest magnitude, else
    :class:`OnnxUnavailable`, and a graph that does not match is never cached."""
    names = OUTPUT_NAMES[graph.outputs]
    export_graph(graph, inputs, path, names)
    with torch.inference_mode():
        ours = graph(**inputs)
    ours = [t.numpy() for t in (ours if isinstance(ours, tuple) else (ours,))]
    theirs = make_session(path, 1).run(names, {k: v.numpy() for k, v in inputs.items()})
    for name, a, b in zip(names, ours, theirs):
        error = float(np.abs(a - b).max() / max(float(np.abs(a).max()), 1e-6))
        if error > EXPORT_TOLERANCE:
            raise OnnxUnavailable(f"the exported graph does not reproduce torch: its {name} differs by {error:.2e} of "
                                  f"its scale (tolerance {EXPORT_TOLERANCE})")


def onnx_encoder(model: nn.Module, weights_fingerprint: str, precision: str, outputs: GraphOutputs = "hidden_states",
                 token_types: bool = False, threads: int | None = None) -> OnnxEncoder:
    """``model`` (a float32 Hugging Face model) as an :class:`OnnxEncoder` at ``precision`` (fp32
    or int8), exporting and quantising only on a cache miss.

    ``threads`` (default: torch's intra-op threads, which the replica sets from its spec) sizes
    ONNX Runtime's pool, so both engines get the same cores; its threads sleep rather than spin
    where the process waits passively (Ray's processes, :mod:`common.ray_runtime`).
    """
    require_onnxruntime()
    if precision not in ("fp32", "int8"):
        raise ValueError(f"the onnx backend runs fp32 or int8, not {precision}")
    model = model.float().eval()
    inputs = check_inputs(model.config, token_types)
    settings = {"weights": weights_fingerprint, "model": type(model).__name__, "outputs": outputs, "inputs": list(inputs),
                "graph_version": GRAPH_VERSION, "precision": "fp32"}
    path = cached_graph(settings, lambda target: export_checked(EncoderGraph(model, outputs), inputs, target))
    if precision == "int8":
        # Per-channel weight scales (see quantize_int8: one scale per matrix lost MiniLM's ranking).
        fp32_path = path
        path = cached_graph({**settings, "precision": "int8", "per_channel": True},
                            lambda target: quantize_int8(fp32_path, target))
    session = make_session(path, threads or torch.get_num_threads(), spinning=not passive_waiting())
    return OnnxEncoder(session, model.config, outputs, sum(p.numel() for p in model.parameters()), path)


# --- auto ----------------------------------------------------------------------------------------
# Calibration texts ``auto`` times and compares backends on: sentences of scientific prose joined
# into texts of 12 to about 240 words, the lengths of scifact's queries and abstracts.
CALIBRATION_SENTENCES = [
    "Vitamin D deficiency is associated with reduced bone mineral density in older adults.",
    "The glacier retreated by several kilometres over the last century, exposing new moraines.",
    "Randomised controlled trials remain the strongest evidence for the efficacy of a treatment.",
    "Transformer encoders attend to every token of the input sequence at once.",
    "Mutations in the BRCA1 gene impair the repair of double-strand DNA breaks.",
    "Higher doses did not improve survival, and adverse events were more frequent.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "The cohort included 1,204 patients followed for a median of 6.3 years.",
    "Antibiotic resistance spreads between bacteria through horizontal gene transfer.",
    "Sleep deprivation alters glucose metabolism and appetite-regulating hormones.",
    "Dense retrieval ranks documents by the inner product of learned embeddings.",
    "Macrophages switch between pro-inflammatory and reparative states in injured tissue.",
]


def calibration_texts(count: int = 24) -> list[str]:
    """``count`` deterministic texts of growing length built from :data:`CALIBRATION_SENTENCES`."""
    n = len(CALIBRATION_SENTENCES)
    return [" ".join(CALIBRATION_SENTENCES[(i + j) % n] for j in range(1 + (i * 17) // count)) for i in range(count)]


def auto_candidates(spec: TeacherSpec, onnx_kinds: tuple[str, ...], weights: str) -> list[Backend]:
    """The backends ``auto`` may choose for ``spec`` (whose checkpoint's weights hash to ``weights``)
    on this machine, in order of preference on a tie."""
    if spec.device != "cpu":  # ONNX Runtime's CPU provider only: a GPU teacher keeps torch at its fastest dtype
        return [Backend("torch", {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}[resolve_dtype("auto", spec.device)])]
    out = [Backend("torch", "fp32")]
    if resolve_dtype("auto", "cpu") == "bfloat16":
        out.append(Backend("torch", "bf16"))
    if spec.kind in onnx_kinds:
        out.append(Backend("onnx", "fp32"))
        if weights in INT8_VERIFIED or spec.requested_precision() == "int8":
            out.append(Backend("onnx", "int8"))
    wanted = spec.requested_precision()
    return [c for c in out if wanted is None or c.precision == wanted]


def cpu_identity() -> dict[str, Any]:
    """What makes one CPU faster at one backend than another: its model name and instruction set
    flags (the decision cache is keyed on it, so a copied cache never carries a choice to another CPU)."""
    name, flags = platform.processor(), ""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name") and not name.strip():
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = line.split(":", 1)[1]
                    break
    except OSError:
        pass
    isa = sorted(f for f in flags.split() if f.startswith(("avx", "amx", "fma", "sse4")))
    return {"cpu": name or platform.machine(), "isa": isa}


def is_faithful(label: str, cosines: np.ndarray) -> bool:
    """Whether a candidate reproduces torch fp32 closely enough for ``auto`` (see AUTO_MIN_COSINE,
    and for int8 INT8_VERIFIED)."""
    if label.endswith("-int8"):
        return bool(cosines.mean() >= AUTO_INT8_MIN_MEAN_COSINE)
    return bool(cosines.min() >= AUTO_MIN_COSINE)


def choose_backend(spec: TeacherSpec, build: Callable[[TeacherSpec, Backend], Teacher], weights: str, options_hash: str,
                   onnx_kinds: tuple[str, ...], rounds: int = 3) -> tuple[Teacher | None, dict[str, Any]]:
    """Resolve ``backend: auto``: the cached decision for this checkpoint (``weights``: its files'
    hash; ``options_hash``: its kind options') and machine, or a fresh measurement (see the module
    docstring). Returns the chosen teacher when it was built while measuring (``None`` on a cache
    hit: the caller builds it) and the decision record."""
    candidates = auto_candidates(spec, onnx_kinds, weights)
    if not candidates:
        raise ValueError(f"teacher '{spec.name}': backend auto has no backend that runs precision "
                         f"{spec.requested_precision()} for a {spec.kind} on device {spec.device}")
    threads = torch.get_num_threads()
    key_payload = {"kind": spec.kind, "weights": weights, "options": options_hash, "device": spec.device, "threads": threads,
                   "candidates": [c.label for c in candidates], "machine": cpu_identity(), "versions": package_versions(),
                   "auto_min_cosine": AUTO_MIN_COSINE, "int8_min_mean_cosine": AUTO_INT8_MIN_MEAN_COSINE,
                   "margin": AUTO_MARGIN}
    key = hashlib.sha256(json.dumps(key_payload, sort_keys=True).encode()).hexdigest()[:20]
    path = cache_dir() / "backend-choice" / f"{key}.json"
    if path.is_file():
        return None, json.loads(path.read_text())
    if len(candidates) == 1:
        record = {"chosen": candidates[0].label, "measured": False, "why": "the only candidate on this device", **key_payload}
        return None, record
    teachers = {c.label: build(spec, c) for c in candidates}
    texts = calibration_texts()
    outputs = {label: t.calibration_outputs(texts) for label, t in teachers.items()}  # also the warm-up
    best = dict.fromkeys(teachers, float("inf"))
    for _ in range(rounds):  # interleaved, so a burst of load from another process hits every candidate alike
        for label, teacher in teachers.items():
            start = time.perf_counter()
            teacher.calibration_outputs(texts)
            best[label] = min(best[label], time.perf_counter() - start)
    rows = []
    for label in teachers:  # with more than one candidate, torch fp32 is always among them
        cos = row_cosines(outputs[label], outputs["torch-fp32"])
        rows.append({"backend": label, "texts_per_s": len(texts) / best[label], "min_cosine": float(cos.min()),
                     "mean_cosine": float(cos.mean()), "faithful": is_faithful(label, cos)})
    faithful = [r for r in rows if r["faithful"]]
    fastest = max((r["texts_per_s"] for r in faithful), default=0.0)
    # The first faithful candidate, in preference order, within AUTO_MARGIN of the fastest.
    chosen = next((r["backend"] for r in faithful if r["texts_per_s"] * (1 + AUTO_MARGIN) >= fastest), candidates[0].label)
    record = {"chosen": chosen, "measured": True, "rows": rows, "calibration_texts": len(texts), "rounds": rounds,
              "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"), **key_payload}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(path)
    return teachers[chosen], record


def parse_label(label: str) -> Backend:
    engine, precision = label.split("-", 1)
    return Backend(engine, precision)  # type: ignore[arg-type]
