"""Online teacher signals for a training batch: requested while the previous step computes.

For each batch the trainer needs the teacher's in-batch score matrix and, for embedding matching,
its query (and document) embeddings. They always come from the live service, never a score file:

* a dual-encoder teacher whose document embeddings the run already holds (the inherited index)
  is asked only for the batch's **query embeddings**; the matrix is then ``sim(q_t, d_t)`` over the
  teacher's own document embeddings, the same numbers its ``signals`` route would compute, without
  re-encoding documents it has already encoded;
* any other teacher (ColBERT, cross-encoder, or a DE without an index) is asked for ``signals``:
  the full matrix and the embeddings it has, in one round trip.

A request that fails because the teacher is restarting is re-sent with backoff until
``timeout_s``; then the run fails with a clear :class:`TeacherUnavailable`.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from common.scoring import similarity_fns
from student_trainer.teacher_index import DocEmbeddings
from teacher_service.client import TeacherClient
from teacher_service.errors import TeacherServiceError

log = logging.getLogger(__name__)


def as_tensor(x: np.ndarray) -> torch.Tensor:
    """A tensor over ``x``; arrays straight from Ray's object store are read-only, and torch
    needs a writable buffer, so those (only those) are copied."""
    return torch.from_numpy(np.require(x, requirements="W"))


class TeacherUnavailable(RuntimeError):
    """The teacher did not answer within the configured time, retries included."""


@dataclass
class TrainBatch:
    """One batch in the documented layout: query ``i``'s positive then its negatives, per query."""

    queries: list[str]  # B scored queries
    extra_queries: list[str]  # unlabelled queries, embedding matching only
    doc_ids: list[str]  # N = B * (1 + num_negatives)
    documents: list[str]
    num_negatives: int

    @property
    def all_queries(self) -> list[str]:
        return self.queries + self.extra_queries


@dataclass
class TeacherSignals:
    scores: np.ndarray  # [B, N]
    query_embeddings: np.ndarray | None  # [B + extra, d]
    document_embeddings: np.ndarray | None  # [N, d]


@dataclass
class Pending:
    batch: TrainBatch
    futures: dict[str, Any]
    sent_at: float


class TeacherSignalSource:
    """Submits and collects a batch's teacher signals (with retries), for one training worker."""

    def __init__(self, client: TeacherClient, teacher: str, info: dict[str, Any], doc_index: DocEmbeddings | None,
                 want_query_embeddings: bool, timeout_s: float = 300.0) -> None:
        self.client = client.with_teacher(teacher)
        self.info = info
        self.doc_index = doc_index
        self.want_query_embeddings = want_query_embeddings
        self.timeout_s = timeout_s
        self.local_matrix = info["kind"] == "dual_encoder" and doc_index is not None
        if self.local_matrix:
            self._matrix, _ = similarity_fns(info["similarity"])
        self.requests_sent = 0

    def submit(self, batch: TrainBatch) -> Pending:
        return Pending(batch, self._send(batch), time.monotonic())

    def _send(self, batch: TrainBatch) -> dict[str, Any]:
        if self.local_matrix:
            self.requests_sent += 1
            return {"query": self.client.submit_encode(batch.all_queries, role="query")}
        futures = {"signals": self.client.submit_signals(batch.queries, batch.documents, mode="matrix",
                                                          embeddings=self._teacher_has_pooled())}
        self.requests_sent += 1
        if batch.extra_queries and self.want_query_embeddings:
            futures["extra"] = self.client.submit_encode(batch.extra_queries, role="query")
            self.requests_sent += 1
        return futures

    def _teacher_has_pooled(self) -> bool:
        return bool({"pooled_embeddings", "proxy_embeddings"} & set(self.info["signals"]))

    def collect(self, pending: Pending) -> TeacherSignals:
        """Wait for a batch's signals, re-sending the request while the teacher is down."""
        deadline = pending.sent_at + self.timeout_s
        attempt = 0
        while True:
            try:
                return self._assemble(pending.batch, {k: f.result() for k, f in pending.futures.items()})
            except TeacherServiceError as exc:
                if exc.status < 500:
                    raise  # the request itself is wrong: retrying cannot help
                error: Exception = exc
            except Exception as exc:  # noqa: BLE001 - replica death surfaces as several Ray error types
                error = exc
            attempt += 1
            if time.monotonic() >= deadline:
                raise TeacherUnavailable(
                    f"teacher '{self.info['name']}' gave no signals for {self.timeout_s:.0f}s "
                    f"({attempt} tries; last error: {type(error).__name__}: {str(error).splitlines()[0][:200]})"
                ) from None
            delay = min(10.0, 0.5 * 2 ** min(attempt, 5)) * (0.5 + random.random())
            log.warning("teacher request failed (%s); retrying in %.1fs", type(error).__name__, delay)
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            pending.futures = self._send(pending.batch)

    def _assemble(self, batch: TrainBatch, results: dict[str, dict[str, np.ndarray]]) -> TeacherSignals:
        b = len(batch.queries)
        if self.local_matrix:
            q = results["query"]["embeddings"]
            d = self.doc_index.lookup(batch.doc_ids)
            scores = self._matrix(as_tensor(q[:b]), as_tensor(d)).numpy()
            return TeacherSignals(scores, q, d)
        sig = results["signals"]
        q = sig.get("query_embeddings")
        if q is not None and "extra" in results:
            q = np.concatenate([q, results["extra"]["embeddings"]])
        d = sig.get("document_embeddings")
        if d is None and self.doc_index is not None:
            d = self.doc_index.lookup(batch.doc_ids)
        return TeacherSignals(sig["scores"], q, d)
