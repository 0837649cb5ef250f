"""The candidate lists ``CandidateKLLoss`` ranks, built on the Train worker at every step.

Each scored query's list holds ``top_k`` documents of the teacher's cached index: the teacher's
own top documents (from its query embedding, which the batch's signals carry), of which up to
``student_candidates`` of the lowest-ranked are replaced by the student's current top documents
that the teacher did not rank there. The student's picks come from the query embeddings of the
very forward pass being trained, so they follow the student as it changes, at no extra cost.

Who ranks the list:

* a single dual-encoder teacher: nobody is asked; the loss scores the candidates with the
  teacher's query embedding and its own document embeddings (the numbers its service would give);
* an ensemble (``teacher.teachers``, e.g. the DE plus a zero-shot ColBERT or a cross-encoder):
  the live service scores every (query, candidate) pair (``TeacherSignalSource.score_candidates``:
  each member calibrated per query over the list, then the weighted mean). The answer is waited
  for within the step, because the student's picks exist only after its forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from student_trainer.teacher_index import DocEmbeddings
from student_trainer.teacher_signals import TeacherSignalSource, as_tensor


@dataclass
class CandidateLists:
    ids: list[list[str]]  # B lists of top_k document ids
    doc_emb: torch.Tensor  # [B, K, d] the teacher's embeddings of them
    teacher_scores: torch.Tensor | None  # [B, K] the ensemble's calibrated scores, or None (the DE's own)
    student_share: float  # fraction of the candidates that came from the student's picks


def merge_candidates(teacher_ids: list[str], student_ids: list[str], top_k: int, student_candidates: int) -> list[str]:
    """``top_k`` ids: the teacher's best first, its lowest-ranked replaced by up to
    ``student_candidates`` of the student's best that the teacher's list lacks.

    Example:
        >>> merge_candidates(["a", "b", "c", "d"], ["c", "x", "y"], 4, 2)
        ['a', 'b', 'x', 'y']
    """
    kept = set(teacher_ids[:top_k])
    fresh = [d for d in student_ids if d not in kept][:student_candidates]
    return teacher_ids[: top_k - len(fresh)] + fresh


class CandidateBuilder:
    """Builds each step's candidate lists (see the module docstring)."""

    def __init__(self, doc_index: DocEmbeddings, source: TeacherSignalSource, top_k: int, student_candidates: int = 0,
                 corpus: dict[str, str] | None = None) -> None:
        self.doc_index, self.source = doc_index, source
        self.top_k, self.student_candidates = top_k, student_candidates
        self.scored_by_service = source.is_ensemble
        if self.scored_by_service and corpus is None:
            raise ValueError("an ensemble scores the candidates through the service and needs the corpus texts")
        self.corpus = corpus

    def build(self, queries: list[str], teacher_query_emb: np.ndarray, student_query_emb: torch.Tensor | None) -> CandidateLists:
        B = len(queries)
        k = min(self.top_k, len(self.doc_index.ids))  # a corpus smaller than top_k: all of it
        ids = self.doc_index.top_k_ids(teacher_query_emb[:B], k)
        share = 0.0
        if self.student_candidates and student_query_emb is not None:
            mine = self.doc_index.top_k_ids(student_query_emb[:B].detach().float().cpu().numpy(),
                                            min(k + self.student_candidates, len(self.doc_index.ids)))
            merged = [merge_candidates(t, s, k, self.student_candidates) for t, s in zip(ids, mine)]
            share = float(np.mean([len(set(m) - set(t)) for m, t in zip(merged, ids)])) / k
            ids = merged
        emb = as_tensor(self.doc_index.lookup([d for row in ids for d in row]).reshape(B, k, -1))
        scores = None
        if self.scored_by_service:
            texts = [[self.corpus[d] for d in row] for row in ids]
            scores = torch.from_numpy(np.stack(self.source.score_candidates(queries, ids, texts)).astype(np.float32))
        return CandidateLists(ids, emb, scores, share)
