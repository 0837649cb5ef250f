"""Tightly-coupled in-batch KL distillation (TCT-ColBERT) with a one-hot term."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from student_trainer.losses._checks import check_choice, check_positive, check_same_shape, check_unit_interval
from student_trainer.losses.batch import SCOPES, DistillBatch, Scope


def kl_teacher_student(student_scores: Tensor, teacher_scores: Tensor, tau: float) -> Tensor:
    """``mean_i KL(softmax(teacher_scores[i] / tau) || softmax(student_scores[i]))`` (batchmean).

    The teacher side is detached: the teacher is frozen (TCT-ColBERT §3.1).
    """
    check_same_shape("student_scores", student_scores, "teacher_scores", teacher_scores, ndim=2)
    log_p = F.log_softmax(student_scores.float(), dim=-1)
    log_p_hat = F.log_softmax(teacher_scores.detach().float() / tau, dim=-1)
    # log_target keeps teacher probabilities that underflow to 0 exact (0 * log 0 = 0) instead of NaN.
    return F.kl_div(log_p, log_p_hat, reduction="batchmean", log_target=True)


def in_batch_kl(student_scores: Tensor, teacher_scores: Tensor, labels: Tensor, tau: float = 0.25,
                gamma: float = 0.1) -> Tensor:
    """TCT-ColBERT Eq. 5-6, averaged over queries.

    Args:
        student_scores: ``[B, C]`` student logits (not divided by ``tau``).
        teacher_scores: ``[B, C]`` teacher scores; ``P_hat = softmax(teacher_scores / tau)``.
        labels: ``[B]`` long, the column of each row's positive.
        tau: teacher temperature (> 0).
        gamma: weight of the one-hot term, in [0, 1].

    Returns:
        ``gamma * CE(P, labels) + (1 - gamma) * KL(P_hat || P)``, a scalar.
    """
    check_same_shape("student_scores", student_scores, "teacher_scores", teacher_scores, ndim=2)
    if labels.shape != student_scores.shape[:1]:
        raise ValueError(f"labels {tuple(labels.shape)} must have one entry per row of student_scores "
                         f"{tuple(student_scores.shape)}")
    onehot = F.cross_entropy(student_scores.float(), labels)
    return gamma * onehot + (1.0 - gamma) * kl_teacher_student(student_scores, teacher_scores, tau)


class InBatchKLLoss(nn.Module):
    """One-hot cross-entropy plus KL from the teacher's tempered in-batch distribution.

    Paper: TCT-ColBERT (Lin, Yang, Lin, 2021) §3.1, Eq. 5-6. For query ``q_i`` and the candidate
    set ``C_i``::

        P(d | q_i)     = softmax_{d in C_i}(s_student(q_i, d))
        P_hat(d | q_i) = softmax_{d in C_i}(s_teacher(q_i, d) / tau)
        L = (1/B) sum_i [ gamma * -log P(d_i^+ | q_i) + (1 - gamma) * KL(P_hat(.|q_i) || P(.|q_i)) ]

    Only the teacher is divided by ``tau`` (as in TCT Eq. 5): the student's scores are its logits.
    TCT's student is an unnormalised dot product that learns its own scale; a normalised student's
    similarity lies in [-1, 1], so ``DualEncoderStudent`` multiplies it by
    ``StudentConfig.score_scale``. The KL is zero when ``score_scale * s_s = s_t / tau``: the
    student reproduces the teacher's own scores exactly when ``score_scale = 1 / tau``, which is
    the scale's default in a run with this loss (tied to ``tau``; 4 for TCT's 0.25). Another scale
    makes the optimum a rescaled teacher (``s_s = s_t / (tau * score_scale)``): the same ranking,
    other numbers, pulled apart by any loss that matches values (embedding matching, Margin-MSE).
    Eq. 6 sums over queries; this mean keeps the scale independent of ``B`` (``reduction="batchmean"``).

    Scope (TCT Table 3):
        * ``"in_batch"`` (default, TCT condition 3): ``C_i`` is all ``N`` in-batch documents,
          every other query's documents included; retrieves better (MRR@10 0.328 -> 0.335).
        * ``"triplet"`` (TCT condition 2, "triplet distillation"): ``C_i`` is query ``i``'s own
          positive and negatives only, for both distributions and for the one-hot term; other
          queries' documents do not affect the loss. Named after TCT's triplets; works for any
          ``num_negatives``.

    Args:
        tau: teacher temperature, > 0 (TCT: 0.25). Small ``tau`` sharpens ``P_hat`` towards the
            teacher's top document; large ``tau`` flattens it towards uniform.
        gamma: weight of the one-hot term in [0, 1] (TCT: 0.1); ``gamma=1`` is
            ``OneHotCrossEntropyLoss``, ``gamma=0`` pure KL.
        scope: ``"in_batch"`` or ``"triplet"``.

    Inputs (``DistillBatch``): ``student_scores [B, N]``, ``labels [B]``, ``teacher_scores [B, N]``.

    Related: ``OneHotCrossEntropyLoss``, ``MarginMSELoss`` (scale-free pairwise alternative),
    ``ScoreBCELoss`` / ``ScoreMSELoss`` (pointwise).

    Example:
        >>> loss_fn = InBatchKLLoss(tau=0.25, gamma=0.1)
        >>> batch = DistillBatch(student_scores=torch.randn(2, 4), teacher_scores=torch.randn(2, 4),
        ...                      labels=DistillBatch.layout_labels(2, 1), num_negatives=1)
        >>> loss_fn(batch).shape
        torch.Size([])
    """

    def __init__(self, tau: float = 0.25, gamma: float = 0.1, scope: Scope = "in_batch") -> None:
        super().__init__()
        name = type(self).__name__
        self.tau = check_positive("tau", tau, name)
        self.gamma = check_unit_interval("gamma", gamma, name)
        self.scope = check_choice("scope", scope, SCOPES, name)

    def forward(self, batch: DistillBatch) -> Tensor:
        student, teacher, labels = batch.scoped(self.scope, need_teacher=True, owner=type(self).__name__)
        return in_batch_kl(student, teacher, labels, tau=self.tau, gamma=self.gamma)

    def get_config_dict(self) -> dict[str, Any]:
        return {"tau": self.tau, "gamma": self.gamma, "scope": self.scope}

    def extra_repr(self) -> str:
        return f"tau={self.tau}, gamma={self.gamma}, scope={self.scope!r}"
