"""The teacher-kind interface: what every frozen teacher (DE, ColBERT, cross-encoder) provides.

A kind implements two *primitives* that hold all the model compute:

* ``encode(texts, role, with_tokens)`` -> :class:`Encoded` (representation-based kinds), and
* ``forward_pairs(queries, documents, with_embeddings)`` -> :class:`PairOutput` (interaction kinds, i.e. CEs);

and the three *operations* clients ask for (``encode``, ``score``, ``signals``) are written once on
top of a :class:`Primitives` object. In-process the kind is its own primitives; inside a Serve
replica the primitives are dynamic batchers that merge concurrent requests before calling the
kind, so both paths run the same operation code and give the same numbers.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Literal, Protocol

import numpy as np
import torch
from pydantic import BaseModel, Field

from common.batching import default_token_budget
from common.model_registry import checkpoint_fingerprint, resolve_model
from teacher_service.errors import UnsupportedSignal
from teacher_service.kinds.backend import Backend, GraphOutputs, OnnxEncoder, onnx_encoder
from teacher_service.schemas import AnyRequest, EncodeRequest, Role, ScoreRequest, SignalsRequest

Arrays = dict[str, np.ndarray]
# Kind options that bound requests and never change a single output (left out of the fingerprint,
# so a replica whose service limit tightens the option shares caches with the in-process teacher).
OUTPUT_NEUTRAL_OPTIONS = frozenset({"max_matrix_pairs"})
Signal = Literal["scores", "pooled_embeddings", "token_embeddings", "proxy_embeddings", "joint_embeddings"]


@dataclass
class Encoded:
    """Encodings of ``n`` texts: pooled ``[n, dim]`` and optionally ragged token embeddings.

    Token embeddings are stored flat, ``tokens`` ``[sum(lengths), token_dim]`` with ``lengths``
    ``[n]``, the layout that crosses process boundaries without Python lists.
    """

    pooled: np.ndarray
    tokens: np.ndarray | None = None
    lengths: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.pooled)

    def take(self, start: int, stop: int) -> Encoded:
        """Rows ``start:stop`` (used to split a merged batch back into requests)."""
        if self.tokens is None or self.lengths is None:
            return Encoded(self.pooled[start:stop])
        offsets = np.concatenate([[0], np.cumsum(self.lengths)])
        return Encoded(self.pooled[start:stop], self.tokens[offsets[start] : offsets[stop]], self.lengths[start:stop])

    def select(self, rows: np.ndarray | list[int]) -> Encoded:
        """Arbitrary rows, in the given order (e.g. one query's candidate documents)."""
        rows = np.asarray(rows, dtype=np.int64)
        if self.tokens is None or self.lengths is None:
            return Encoded(self.pooled[rows])
        offsets = np.concatenate([[0], np.cumsum(self.lengths)])
        tokens = np.concatenate([self.tokens[offsets[r] : offsets[r + 1]] for r in rows]) if len(rows) else self.tokens[:0]
        return Encoded(self.pooled[rows], tokens, self.lengths[rows])

    @staticmethod
    def concat(parts: list[Encoded]) -> Encoded:
        pooled = np.concatenate([p.pooled for p in parts])
        if any(p.tokens is None for p in parts):
            return Encoded(pooled)
        return Encoded(pooled, np.concatenate([p.tokens for p in parts]), np.concatenate([p.lengths for p in parts]))


@dataclass
class PairOutput:
    """Scores of aligned (query, document) pairs, with the CE's embeddings of each pair: the
    dual-pooled CE's query/document proxies, or a [CLS]-pooled CE's joint [CLS] embedding."""

    scores: np.ndarray  # [n]
    query_proxy: np.ndarray | None = None  # [n, dim]
    document_proxy: np.ndarray | None = None  # [n, dim]
    joint: np.ndarray | None = None  # [n, hidden]

    def rows(self, index: slice) -> PairOutput:
        return PairOutput(**{f.name: None if (v := getattr(self, f.name)) is None else v[index] for f in fields(self)})

    @staticmethod
    def concat(parts: list[PairOutput]) -> PairOutput:
        first = parts[0]
        return PairOutput(**{f.name: None if getattr(first, f.name) is None else np.concatenate([getattr(p, f.name) for p in parts])
                             for f in fields(first)})


class TeacherInfo(BaseModel):
    """What ``GET /v1/teachers`` reports about one teacher."""

    name: str
    kind: str
    checkpoint: str
    dim: int | None = Field(description="Pooled (or proxy) embedding dimension.")
    joint_dim: int | None = Field(None, description="Joint [CLS] embedding dimension ([CLS]-pooled cross-encoders).")
    token_dim: int | None = Field(None, description="Token embedding dimension (ColBERT).")
    similarity: str = Field(description="How the teacher scores: dot, cosine, maxsim or cross-attention.")
    signals: list[str] = Field(description="Signals this teacher can return.")
    max_query_length: int
    max_document_length: int
    matrix_cost: str = Field(description="What an in-batch matrix of B queries x N documents costs.")
    max_matrix_pairs: int | None = Field(None, description="Largest matrix (queries x documents) accepted, where capped.")
    parameters: int | None = Field(None, description="Number of model parameters.")
    dtype: str = Field("float32", description="Dtype the teacher computes in (part of what determines its embeddings).")
    backend: str | None = Field(None, description="Engine and precision where not torch ('onnx-fp32', 'onnx-int8'): "
                                "part of what determines its outputs.")
    fingerprint: str | None = Field(None, description=(
        "Hash of the checkpoint's files and the kind options that change outputs (prefixes, pooling, "
        "normalisation, lengths...): caches of this teacher's outputs are keyed on it."))


# One ``encode`` call's arguments: (texts, role, with_tokens).
EncodeCall = tuple[list[str], Role, bool]


class Primitives(Protocol):
    def encode(self, texts: list[str], role: Role, with_tokens: bool = False) -> Encoded: ...

    def encode_many(self, calls: list[EncodeCall]) -> list[Encoded]:
        """Several ``encode`` calls at once: batched primitives queue them all before waiting, so
        a request's queries and documents share one batching window instead of two in a row."""
        ...

    def forward_pairs(self, queries: list[str], documents: list[str], with_embeddings: bool = False) -> PairOutput:
        """Scores of aligned pairs; the pairs' embeddings (proxies, joint states) only when asked."""
        ...


class Teacher(ABC):
    """A frozen teacher. Subclasses set ``kind`` and implement their primitives and ``describe``."""

    kind: ClassVar[str]
    signals_offered: ClassVar[tuple[str, ...]]

    def __init__(self, name: str, checkpoint: str, options: Any = None, device: str = "cpu",
                 token_budget: int | None = None, dtype: str = "float32", backend: Backend | None = None) -> None:
        self.name = name
        self.dtype = dtype  # the weights dtype, resolved ("auto" never reaches a teacher)
        self.backend = backend or Backend()
        self.backend_choice: dict[str, Any] | None = None  # backend auto's decision record, where it chose
        self.checkpoint = checkpoint
        self.options = options
        self.device = torch.device(device)
        # Padded tokens per forward pass (length-sorted batches); small on a CPU, large on a GPU.
        self.token_budget = token_budget or default_token_budget(self.device.type)
        # Hashed once, as the weights are loaded: describing the teacher (which requests do) never touches files.
        self.weights_fingerprint = checkpoint_fingerprint(resolve_model(checkpoint))

    @abstractmethod
    def _info(self) -> TeacherInfo:
        """The kind's own description (``describe`` adds what every kind shares)."""

    def describe(self) -> TeacherInfo:
        info = self._info()
        info.parameters = self.parameter_count()
        info.dtype = self.dtype
        # Left unset for torch, so a torch teacher's description (and the caches keyed on it) stays as it was.
        info.backend = None if self.backend.engine == "torch" else self.backend.label
        info.fingerprint = self.fingerprint()
        return info

    def fingerprint(self) -> str:
        """What fixes this teacher's outputs beyond its description: the checkpoint's file contents
        (a checkpoint retrained in place keeps its path) and its options (a document prefix or a
        pooling leaves every described field alone). Request limits do not change outputs and stay out."""
        options = self.options.model_dump(mode="json") if isinstance(self.options, BaseModel) else self.options
        if isinstance(options, dict):
            options = {k: v for k, v in options.items() if k not in OUTPUT_NEUTRAL_OPTIONS}
        payload = json.dumps({"weights": self.weights_fingerprint, "options": options},
                             sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def parameter_count(self) -> int:
        """Parameters of every torch module this teacher holds (each counted once), and of the
        models its ONNX encoders replaced."""
        seen: dict[int, int] = {}
        for value in vars(self).values():
            if isinstance(value, torch.nn.Module):
                seen.update((id(p), p.numel()) for p in value.parameters())
                seen.update((id(m), m.source_parameters) for m in value.modules() if isinstance(m, OnnxEncoder))
            elif isinstance(value, torch.Tensor):
                seen[id(value)] = value.numel()
        return sum(seen.values())

    def on_backend(self, model: torch.nn.Module, outputs: GraphOutputs = "hidden_states",
                   token_types: bool = False) -> torch.nn.Module:
        """The encoder a kind runs: ``model`` itself on torch, or its ONNX Runtime stand-in (called
        the same way) on onnx. ``outputs`` says what the kind reads from it (final hidden states,
        or a [CLS] cross-encoder's logits and [CLS] state); ``token_types``, whether it is fed
        segment ids (pairs)."""
        if self.backend.engine == "torch":
            return model
        return onnx_encoder(model, self.weights_fingerprint, self.backend.precision, outputs, token_types)

    def calibration_outputs(self, texts: list[str]) -> np.ndarray:
        """One row per text of what this teacher computes (``backend: auto`` times candidate
        backends on it and compares their rows): pooled document embeddings by default."""
        return self.encode(texts, "document").pooled

    # --- primitives: default to "not this kind" ------------------------------------------------
    def encode(self, texts: list[str], role: Role, with_tokens: bool = False) -> Encoded:
        raise self.unsupported("embeddings (encode)")

    def encode_many(self, calls: list[EncodeCall]) -> list[Encoded]:
        return [self.encode(*call) for call in calls]  # in-process: one pass after the other

    def forward_pairs(self, queries: list[str], documents: list[str], with_embeddings: bool = False) -> PairOutput:
        raise self.unsupported("pair forward passes")

    # --- operations ----------------------------------------------------------------------------
    def run(self, request: AnyRequest, prims: Primitives | None = None) -> Arrays:
        """Answer a validated request; ``prims`` defaults to this teacher's own (unbatched) ones."""
        prims = prims or self
        if isinstance(request, EncodeRequest):
            return self.op_encode(request, prims)
        if isinstance(request, ScoreRequest):
            return self.op_score(request, prims)
        if isinstance(request, SignalsRequest):
            return self.op_signals(request, prims)
        raise TypeError(f"not a teacher request: {type(request).__name__}")

    def op_encode(self, req: EncodeRequest, prims: Primitives) -> Arrays:
        if req.tokens and "token_embeddings" not in self.signals_offered:
            raise self.unsupported("token embeddings")
        enc = prims.encode(req.texts, req.role, with_tokens=req.tokens)
        return encoded_arrays(enc, "")

    @abstractmethod
    def op_score(self, req: ScoreRequest, prims: Primitives) -> Arrays: ...

    @abstractmethod
    def op_signals(self, req: SignalsRequest, prims: Primitives) -> Arrays: ...

    def unsupported(self, what: str) -> UnsupportedSignal:
        return UnsupportedSignal(
            f"teacher '{self.name}' ({self.kind}) does not give {what}; it gives: {', '.join(self.signals_offered)}"
        )


def encoded_arrays(enc: Encoded, prefix: str) -> Arrays:
    """Name an :class:`Encoded`'s arrays for a response (``embeddings`` or ``query_embeddings`` ...)."""
    key = f"{prefix}_" if prefix else ""
    out = {f"{key}embeddings": enc.pooled}
    if enc.tokens is not None:
        out[f"{key}token_embeddings"] = enc.tokens
        out[f"{key}token_lengths"] = enc.lengths
    return out


class RepresentationTeacher(Teacher):
    """A teacher that encodes queries and documents independently (DE, ColBERT).

    The in-batch matrix costs one encoding pass per text plus one similarity computation, never
    ``B x N`` forward passes.
    """

    @abstractmethod
    def score_encoded(self, q: Encoded, d: Encoded, mode: str) -> np.ndarray:
        """Scores from encodings: ``[n]`` for mode 'pairs', ``[nq, nd]`` for 'matrix'."""

    def _encode_both(self, req: ScoreRequest | SignalsRequest, prims: Primitives, tokens: bool) -> tuple[Encoded, Encoded]:
        q, d = prims.encode_many([(req.queries, "query", tokens), (req.documents, "document", tokens)])
        return q, d

    def needs_tokens_to_score(self) -> bool:
        return False

    def op_score(self, req: ScoreRequest, prims: Primitives) -> Arrays:
        q, d = self._encode_both(req, prims, self.needs_tokens_to_score())
        return {"scores": self.score_encoded(q, d, req.mode)}

    def op_signals(self, req: SignalsRequest, prims: Primitives) -> Arrays:
        if req.tokens and "token_embeddings" not in self.signals_offered:
            raise self.unsupported("token embeddings")
        q, d = self._encode_both(req, prims, req.tokens or self.needs_tokens_to_score())
        out = {"scores": self.score_encoded(q, d, req.mode)}
        if req.embeddings or req.tokens:
            if not req.tokens:  # scoring may have needed tokens the caller did not ask for
                q, d = Encoded(q.pooled), Encoded(d.pooled)
            out.update(encoded_arrays(q, "query"))
            out.update(encoded_arrays(d, "document"))
        return out
