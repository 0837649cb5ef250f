"""Hard negatives mined by the student itself during training, re-scored on demand by the live teacher.

ANCE (Xiong et al. 2021) refreshes hard negatives from the model being trained, because the
negatives mined once before training stop being hard as the student learns; it re-encodes the
corpus asynchronously and needs a separate re-scoring pass for distillation. With the teacher
in the loop that pass disappears: every ``data.refresh.every`` steps a worker

1. encodes the next ``data.refresh.queries`` training queries (in turn, from a seeded order of
   all of them) with the *current* student;
2. retrieves the student's own top ``data.refresh.top_k`` documents with FAISS
   (:class:`common.retrieval.DenseIndex`): an asymmetric student searches the teacher's
   document index it inherits; a symmetric student re-encodes a seeded sample of
   ``data.refresh.corpus_sample`` documents and searches those;
3. asks the teacher (the ensemble, calibrated) for the scores of each query's positives and
   fresh candidates through the service, and drops as likely false negatives the candidates it
   scores above the query's weakest positive by more than ``data.refresh.false_negative_margin``;
4. keeps the survivors as the query's negative pool. From then on a batch row of that query
   trains on negatives drawn from its pool instead of the ones mined before training; the
   in-batch teacher scores for them come online, like every other signal.

Pools live in the worker and are not checkpointed: a resumed worker refreshes at once from the
restored student. A failed refresh (teacher unavailable) keeps the previous negatives and is
logged, it does not stop training.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from common.retrieval import DenseIndex
from student_trainer.config import NegativeRefreshConfig
from student_trainer.students import DualEncoderStudent
from student_trainer.teacher_index import DocEmbeddings
from student_trainer.teacher_signals import TeacherSignalSource

log = logging.getLogger(__name__)


@dataclass
class TrainingQueries:
    """The training queries a refresh can pick from, with their positives, and the corpus texts."""

    queries: list[str]
    positives: list[list[str]]  # relevant document ids of queries[i]
    doc_ids: list[str]
    doc_texts: list[str]

    @classmethod
    def from_examples(cls, query: list[str], positive_id: list[str], doc_ids: list[str],
                      doc_texts: list[str]) -> TrainingQueries:
        """From the examples table's ``query`` and ``positive_id`` columns (one row per positive)."""
        grouped: dict[str, list[str]] = {}
        for q, p in zip(query, positive_id):
            grouped.setdefault(q, []).append(p)
        return cls(list(grouped), [sorted(set(v)) for v in grouped.values()], list(doc_ids), list(doc_texts))


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)


@torch.inference_mode()
def student_doc_embeddings(student: DualEncoderStudent, texts: list[str], batch_size: int = 64) -> np.ndarray:
    """A symmetric student's projected document embeddings ``[n, d_t]`` (inference, no gradients)."""
    was_training = student.training
    student.eval()
    try:
        parts = [student.embed_documents(texts[i : i + batch_size]).float().cpu().numpy()
                 for i in range(0, len(texts), batch_size)]
    finally:
        student.train(was_training)
    return np.concatenate(parts) if parts else np.empty((0, student.teacher_dim), dtype=np.float32)


class NegativeRefresher:
    """Per-worker pools of student-mined, teacher-checked negatives (see the module docstring)."""

    def __init__(self, config: NegativeRefreshConfig, data: TrainingQueries, source: TeacherSignalSource,
                 doc_index: DocEmbeddings | None, seed: int, rank: int = 0, world_size: int = 1) -> None:
        if config.every is None:
            raise ValueError("NegativeRefresher needs data.refresh.every")
        self.config = config
        self.data = data
        self.source = source
        self.doc_index = doc_index
        self.seed = seed
        self.rank = rank
        self._text = dict(zip(data.doc_ids, data.doc_texts))
        self._order = np.random.default_rng(seed).permutation(len(data.queries))
        self._per_refresh = min(config.queries or len(data.queries), len(data.queries))
        # Workers start at different places in the same order, so together they cover more queries.
        self._offset = (rank * len(data.queries)) // max(1, world_size)
        self.pools: dict[str, list[str]] = {}
        self.refreshes = 0

    def due(self, step: int) -> bool:
        return step > 0 and step % self.config.every == 0

    def _next_queries(self, step: int) -> list[int]:
        start = self._offset + (step // self.config.every - 1) * self._per_refresh
        return [int(self._order[(start + j) % len(self._order)]) for j in range(self._per_refresh)]

    def _student_index(self, student: DualEncoderStudent, step: int) -> tuple[DenseIndex, bool]:
        """The index the student retrieves from, and whether its vectors are normalised."""
        cosine = student.config.similarity == "cosine"
        if student.asymmetric:
            if self.doc_index is None:
                raise ValueError("an asymmetric student refreshes from the teacher's document index, which is missing")
            if not cosine:
                return self.doc_index.index, False
            return DenseIndex.from_embeddings(self.doc_index.ids, _normalize(self.doc_index.emb), use_gpu=False), True
        rng = np.random.default_rng([self.seed, self.rank, step])
        n = min(self.config.corpus_sample, len(self.data.doc_ids))
        ids = [self.data.doc_ids[i] for i in sorted(rng.choice(len(self.data.doc_ids), n, replace=False))]
        emb = student_doc_embeddings(student, [self._text[d] for d in ids])
        return DenseIndex.from_embeddings(ids, _normalize(emb) if cosine else emb, use_gpu=False), cosine

    def refresh(self, student: DualEncoderStudent, step: int) -> dict[str, float]:
        """Mine and check fresh negatives for the next queries; returns what happened (for the log)."""
        t0 = time.perf_counter()
        picked = self._next_queries(step)
        queries = [self.data.queries[i] for i in picked]
        index, cosine = self._student_index(student, step)
        q_emb = student.encode_queries(queries).cpu().numpy()
        if cosine:
            q_emb = _normalize(q_emb)
        most_positives = max(len(self.data.positives[i]) for i in picked)
        _, ranked = index.search(q_emb, self.config.top_k + most_positives)
        candidates = []
        for i, ranking in zip(picked, ranked):
            positives = set(self.data.positives[i])
            candidates.append([d for d in ranking if d not in positives][: self.config.top_k])
        requests_before = self.source.requests_sent
        kept = candidates
        dropped = 0
        if self.config.false_negative_margin is not None:
            try:
                kept, dropped = self._guard(picked, queries, candidates)
            except Exception as exc:  # noqa: BLE001 - keep training on the previous negatives
                log.warning("negative refresh at step %d failed (%s: %s); keeping the previous negatives",
                            step, type(exc).__name__, str(exc).splitlines()[0][:200])
                return {"refresh/failed": 1.0}
        changed = 0
        for q, negs in zip(queries, kept):
            if negs:
                changed += self.pools.get(q) != negs
                self.pools[q] = negs
        self.refreshes += 1
        return {
            "refresh/queries": float(len(queries)),
            "refresh/candidates": float(sum(map(len, candidates))),
            "refresh/dropped_false_negatives": float(dropped),
            "refresh/pools_changed": float(changed),
            "refresh/teacher_requests": float(self.source.requests_sent - requests_before),
            "refresh/seconds": time.perf_counter() - t0,
        }

    def _guard(self, picked: list[int], queries: list[str], candidates: list[list[str]]) -> tuple[list[list[str]], int]:
        """The teacher scores each query's positives and candidates; candidates scored above the
        weakest positive by more than the margin are dropped."""
        lists = [self.data.positives[i] + cands for i, cands in zip(picked, candidates)]
        scores = self.source.score_candidates(queries, lists, [[self._text[d] for d in ids] for ids in lists])
        kept, dropped = [], 0
        for i, cands, row in zip(picked, candidates, scores):
            n_pos = len(self.data.positives[i])
            threshold = float(np.min(row[:n_pos])) + float(self.config.false_negative_margin)
            keep = [d for d, s in zip(cands, row[n_pos:]) if s <= threshold]
            dropped += len(cands) - len(keep)
            kept.append(keep)
        return kept, dropped

    def substitute(self, rows: dict[str, Any], num_negatives: int, rng: np.random.Generator) -> tuple[dict[str, Any], int]:
        """``rows`` (a batch of examples) with each refreshed query's negatives drawn from its pool
        (topped up with its pre-mined ones when the pool is short); returns the rows changed too."""
        if not self.pools or num_negatives == 0:
            return rows, 0
        neg_ids, negs = list(rows["negative_ids"]), list(rows["negatives"])
        changed = 0
        for r, query in enumerate(rows["query"]):
            pool = self.pools.get(str(query))
            if not pool:
                continue
            take = min(num_negatives, len(pool))
            fresh = [pool[j] for j in sorted(rng.choice(len(pool), take, replace=False))]
            old = [str(d) for d in neg_ids[r] if str(d) not in fresh]
            ids = (fresh + old)[:num_negatives]
            neg_ids[r] = ids
            negs[r] = [self._text[d] for d in ids]
            changed += 1
        return {**rows, "negative_ids": neg_ids, "negatives": negs}, changed


__all__ = ["NegativeRefresher", "TrainingQueries", "student_doc_embeddings"]
