"""Listwise KL over the teacher's own top-K candidates from its document index."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from student_trainer.losses._checks import check_bool, check_positive
from student_trainer.losses.batch import DistillBatch


def candidate_kl(student_query_emb: Tensor, teacher_query_emb: Tensor | None, candidate_doc_emb: Tensor,
                 tau: float = 0.05, normalize: bool = True, teacher_scores: Tensor | None = None,
                 target_tau: float = 0.5) -> Tensor:
    """``mean_i KL(softmax(t_i . D_i / tau) || softmax(s_i . D_i / tau))`` over each query's candidates,
    or, given ``teacher_scores``, ``mean_i KL(softmax(T_i / target_tau) || softmax(s_i . D_i / tau))``.

    Args:
        student_query_emb: ``[B, d]`` projected student query embeddings (rows beyond
            ``candidate_doc_emb``'s ``B``, e.g. extra queries, are ignored).
        teacher_query_emb: ``[B, d]`` teacher query embeddings (detached: frozen teacher); unused
            (may be None) with ``teacher_scores``.
        candidate_doc_emb: ``[B, K, d]`` the teacher's embeddings of each query's ``K`` candidates.
        tau: temperature of the student's scores, and of the teacher's embedding scores (> 0).
        normalize: L2-normalise both query embeddings first, so the query's norm cannot act as a
            temperature the student learns (the ranking does not depend on it).
        teacher_scores: ``[B, K]`` another teacher's (calibrated) scores of the same candidates,
            e.g. a ColBERT's or a cross-encoder's z-scored per query; None: the dual-encoder's own.
        target_tau: temperature of ``teacher_scores`` (> 0): z-scores spread by ~1 per standard
            deviation, cosines / 0.05 by several, so the two need their own.

    Returns:
        A scalar tensor.
    """
    if candidate_doc_emb.dim() != 3:
        raise ValueError(f"candidate_doc_emb must be [B, K, d], got shape {tuple(candidate_doc_emb.shape)}")
    B, K, d = candidate_doc_emb.shape
    s = student_query_emb[:B].float()
    t = teacher_query_emb[:B].detach().float() if teacher_query_emb is not None else None
    if s.shape != (B, d) or (teacher_scores is None and (t is None or t.shape != (B, d))):
        raise ValueError(f"query embeddings {tuple(s.shape)} / {None if t is None else tuple(t.shape)} must be "
                         f"[{B}, {d}] to score candidates of shape {tuple(candidate_doc_emb.shape)}")
    if teacher_scores is not None and tuple(teacher_scores.shape) != (B, K):
        raise ValueError(f"teacher_scores must be [{B}, {K}], got shape {tuple(teacher_scores.shape)}")
    if normalize:
        s = F.normalize(s, dim=-1)
    docs = candidate_doc_emb.detach().float().to(s.device)
    student = torch.einsum("bd,bkd->bk", s, docs) / tau
    if teacher_scores is not None:
        teacher = teacher_scores.detach().float().to(s.device) / target_tau
    else:
        t = F.normalize(t, dim=-1) if normalize else t
        teacher = torch.einsum("bd,bkd->bk", t.to(s.device), docs) / tau
    return F.kl_div(F.log_softmax(student, dim=-1), F.log_softmax(teacher, dim=-1), reduction="batchmean", log_target=True)


class CandidateKLLoss(nn.Module):
    """KL from the teacher's distribution over its own top-K documents to the student's.

    The in-batch KL of TCT-ColBERT (Lin, Yang, Lin, 2021, §3.1, Eq. 5) taken over another
    candidate set: instead of the batch's documents (a positive, a few negatives and the other
    queries' documents, mostly easy), each query ``q_i`` is scored against ``C_i``, the ``K``
    documents the teacher ranks highest in its own cached index, as listwise distillation over a
    retrieved list does (RocketQAv2, Ren et al. 2021, §3.2). Those are the documents nDCG@10
    is decided among, so the student learns the teacher's order where it matters::

        P_hat(d | q_i) = softmax_{d in C_i}(<t_i, e_d> / tau)
        P(d | q_i)     = softmax_{d in C_i}(<s_i, e_d> / tau)
        L = (1/B) sum_i KL(P_hat(.|q_i) || P(.|q_i))

    ``t_i`` and ``s_i`` are the teacher's and the (projected) student's query embeddings, ``e_d``
    the teacher's document embedding (an asymmetric student searches exactly these). Both sides
    share ``tau``, so the loss is zero exactly when the student's query embedding ranks the
    candidates with the teacher's scores; with ``normalize`` only directions count. It needs no
    labels and no extra teacher call: the candidates come from the teacher's query embedding and
    its document index, which an asymmetric student's run holds anyway (``DocEmbeddings.top_k_embeddings``).
    On scifact's training queries as dev (label-free, 2-layer student from layers 0 and 5, seed 13,
    1,000 steps), adding it to embedding matching raised nDCG@10 from 0.630 to 0.647 (teacher 0.660).

    **A stronger teacher ranks the candidates** (GPL, Wang et al. 2022, with the teacher online):
    when the run's teacher is an ensemble (``teacher.teachers``, e.g. the DE plus a zero-shot
    ColBERT or a cross-encoder), the candidates are scored by the ensemble through the service
    (each member calibrated per query over the list, then their weighted mean ``T_i``) and
    ``P_hat(d | q_i) = softmax_{d in C_i}(T_i(d) / target_tau)``: the student learns the stronger
    teacher's order among the documents its index can return. With ``student_candidates = m``, the
    student's own current top documents (up to ``m`` not already among the teacher's) replace the
    teacher's lowest-ranked candidates at every step, so the teacher also judges what the student
    now wrongly ranks high (ANCE's refreshed negatives, scored by the live teacher).

    Example:
        >>> B, K, d = 2, 8, 4
        >>> batch = DistillBatch(student_scores=torch.randn(B, B), labels=DistillBatch.layout_labels(B, 0),
        ...                      num_negatives=0, student_query_emb=torch.randn(B, d),
        ...                      teacher_query_emb=torch.randn(B, d), candidate_doc_emb=torch.randn(B, K, d))
        >>> CandidateKLLoss(tau=0.05)(batch).shape
        torch.Size([])
    """

    def __init__(self, tau: float = 0.05, normalize: bool = True, top_k: int = 64, target_tau: float = 0.5,
                 student_candidates: int = 0) -> None:
        super().__init__()
        self.tau = check_positive("tau", tau, "CandidateKLLoss")
        self.target_tau = check_positive("target_tau", target_tau, "CandidateKLLoss")
        self.normalize = check_bool("normalize", normalize, "CandidateKLLoss")
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 2:
            raise ValueError(f"CandidateKLLoss: top_k must be an int >= 2, got {top_k!r}")
        if isinstance(student_candidates, bool) or not isinstance(student_candidates, int) or not 0 <= student_candidates < top_k:
            raise ValueError(f"CandidateKLLoss: student_candidates must be an int in [0, top_k), got {student_candidates!r}")
        # Both read by the training loop, which fetches the candidates.
        self.top_k, self.student_candidates = top_k, student_candidates

    def forward(self, batch: DistillBatch) -> Tensor:
        name = type(self).__name__
        scores = batch.candidate_teacher_scores
        return candidate_kl(batch.require("student_query_emb", name),
                            batch.require("teacher_query_emb", name) if scores is None else None,
                            batch.require("candidate_doc_emb", name), self.tau, self.normalize, scores, self.target_tau)

    def get_config_dict(self) -> dict[str, Any]:
        return {"tau": self.tau, "normalize": self.normalize, "top_k": self.top_k, "target_tau": self.target_tau,
                "student_candidates": self.student_candidates}

    def extra_repr(self) -> str:
        return (f"tau={self.tau}, normalize={self.normalize}, top_k={self.top_k}, target_tau={self.target_tau}, "
                f"student_candidates={self.student_candidates}")
