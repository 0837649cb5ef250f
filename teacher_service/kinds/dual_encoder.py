"""Dual-encoder (DE) teacher: pooled query and document embeddings, dot or cosine scores."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import Field

from common.config import StrictModel
from common.scoring import similarity_fns
from common.text_encoder import TextEncoder
from teacher_service.kinds.backend import Backend
from teacher_service.kinds.base import Encoded, RepresentationTeacher, TeacherInfo
from teacher_service.schemas import Role


class DualEncoderOptions(StrictModel):
    pooling: Literal["cls", "mean"] | None = Field(None, description="Pooling; default: what the checkpoint declares (sentence-transformers), else mean.")
    normalize: bool | None = Field(None, description="L2-normalise embeddings; default: what the checkpoint declares.")
    similarity: Literal["dot", "cosine"] = Field("dot", description="Score function over pooled embeddings.")
    max_query_length: int | None = Field(None, ge=1, description="Query truncation, in tokens; default: same as documents.")
    max_document_length: int | None = Field(None, ge=1, description="Document truncation; default: the checkpoint's max_seq_length, else 256.")
    query_prefix: str = Field("", description="Text prepended to queries (e.g. 'query: ' for E5 models).")
    document_prefix: str = Field("", description="Text prepended to documents (e.g. 'passage: ').")


class DualEncoderTeacher(RepresentationTeacher):
    kind = "dual_encoder"
    signals_offered = ("scores", "pooled_embeddings")
    Options = DualEncoderOptions

    def __init__(self, name: str, checkpoint: str, options: DualEncoderOptions, device: str = "cpu",
                 dtype: str = "float32", token_budget: int | None = None, backend: Backend | None = None) -> None:
        super().__init__(name, checkpoint, options, device, token_budget, dtype, backend)
        self.encoder = TextEncoder.from_pretrained(
            checkpoint, pooling=options.pooling, normalize=options.normalize,
            max_length=options.max_document_length, device=device, dtype=dtype,
        ).eval()
        # Tokenising, length-sorted batching and pooling stay TextEncoder's; only the forward pass moves.
        self.encoder.model = self.on_backend(self.encoder.model)
        self._matrix, self._pairs = similarity_fns(options.similarity)

    def _info(self) -> TeacherInfo:
        return TeacherInfo(
            name=self.name, kind=self.kind, checkpoint=self.checkpoint, dim=self.encoder.dim,
            similarity=self.options.similarity, signals=list(self.signals_offered),
            max_query_length=self.options.max_query_length or self.encoder.max_length, max_document_length=self.encoder.max_length,
            matrix_cost="one encoder pass per query and per document, then one matrix product",
        )

    def encode(self, texts: list[str], role: Role, with_tokens: bool = False) -> Encoded:
        if with_tokens:
            raise self.unsupported("token embeddings")
        if role == "query":
            texts, max_length = [self.options.query_prefix + t for t in texts], self.options.max_query_length
        else:
            texts, max_length = [self.options.document_prefix + t for t in texts], None
        return Encoded(self.encoder.encode(texts, token_budget=self.token_budget, max_length=max_length))

    def score_encoded(self, q: Encoded, d: Encoded, mode: str) -> np.ndarray:
        fn = self._matrix if mode == "matrix" else self._pairs
        return fn(torch.from_numpy(q.pooled), torch.from_numpy(d.pooled)).numpy()
