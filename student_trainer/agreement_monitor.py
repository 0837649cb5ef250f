"""Teacher-student agreement of a run: measured on held-out queries during training, and at the end.

Wraps :func:`common.agreement.agreement_metrics` with what a run knows: the primary teacher's
document index, similarity and score calibration, the student's similarity and score scale, the
temperature of the run's in-batch KL loss. During training (``eval.agreement_every``) rank 0
measures a fixed sample of held-out queries whose teacher embeddings the driver fetched once; the
numbers go into the history as ``agreement/<metric>``.

An asymmetric student ranks the teacher's whole index; a symmetric student ranks a candidate pool
(the teacher's top ``4k`` documents of the sampled queries), which it re-encodes at each
measurement, and the teacher's rankings are taken over the same pool.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from common.agreement import Agreement, agreement_metrics
from student_trainer.config import RunConfig
from student_trainer.losses import InBatchKLLoss
from student_trainer.negative_refresh import student_doc_embeddings
from student_trainer.score_calibration import calibrate
from student_trainer.students import DualEncoderStudent
from student_trainer.teacher_index import DocEmbeddings


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)


def kl_temperature(run: RunConfig) -> float:
    """The teacher temperature the run's in-batch KL uses (1.0 when it has none)."""
    if "in_batch_kl" not in run.train.losses:
        return 1.0
    return InBatchKLLoss(**{k: v for k, v in (run.train.losses["in_batch_kl"] or {}).items() if k != "weight"}).tau


def run_agreement(run: RunConfig, teacher_similarity: str, teacher_q: np.ndarray, teacher_docs: np.ndarray,
                  student_q: np.ndarray, student_docs: np.ndarray | None = None) -> Agreement:
    """:func:`agreement_metrics` with the run's settings; ``student_docs`` None for an asymmetric
    student (it scores the teacher's document embeddings)."""
    if teacher_similarity == "cosine":
        teacher_q, teacher_docs = _normalize(teacher_q), _normalize(teacher_docs)
    if run.student.similarity == "cosine":
        student_q = _normalize(student_q)
        student_docs = _normalize(student_docs if student_docs is not None else teacher_docs)
    primary = run.teacher.members()[0]  # the KL is to its distribution, calibrated as in training
    return agreement_metrics(teacher_q, teacher_docs, student_q, student_docs, k=run.eval.agreement_k,
                             p=run.eval.rbo_p, kl_group=1 + max(1, run.data.num_negatives),
                             kl_batch_size=run.train.batch_size, kl_tau=kl_temperature(run),
                             student_scale=run.student.score_scale,
                             kl_calibrate=lambda s: calibrate(s, primary.calibration or "none", primary.temperature or 1.0))


class AgreementMonitor:
    """Agreement on a fixed held-out query sample, measured with the current student."""

    def __init__(self, run: RunConfig, teacher_info: dict[str, Any], queries: list[str], teacher_q: np.ndarray,
                 doc_index: DocEmbeddings, doc_texts: dict[str, str] | None = None) -> None:
        self.run = run
        self.similarity = teacher_info.get("similarity", "dot")
        self.queries = queries
        self.teacher_q = np.asarray(teacher_q, dtype=np.float32)
        self.doc_index = doc_index
        self.pool: list[str] | None = None
        if not run.student.asymmetric:
            if doc_texts is None:
                raise ValueError("a symmetric student's agreement needs the corpus texts")
            _, ranked = doc_index.index.search(self.teacher_q, 4 * run.eval.agreement_k)
            self.pool = list(dict.fromkeys(d for row in ranked for d in row))
            self.pool_texts = [doc_texts[d] for d in self.pool]

    def due(self, step: int) -> bool:
        every = self.run.eval.agreement_every
        return every is not None and step % every == 0

    def measure(self, student: DualEncoderStudent) -> dict[str, float]:
        student_q = student.encode_queries(self.queries).cpu().numpy()
        if self.pool is None:
            result = run_agreement(self.run, self.similarity, self.teacher_q, self.doc_index.emb, student_q)
        else:
            result = run_agreement(self.run, self.similarity, self.teacher_q, self.doc_index.lookup(self.pool),
                                   student_q, student_doc_embeddings(student, self.pool_texts))
        return {f"agreement/{name}": value for name, value in result.aggregate.items()}


__all__ = ["AgreementMonitor", "kl_temperature", "run_agreement"]
