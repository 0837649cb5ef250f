"""Pointwise score distillation: regress student scores on teacher scores (MSE) or teacher
probabilities (BCE), EmbedDistill Eq. 3 with the App. A choices of the per-query loss ``l_d``."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from student_trainer.losses._checks import check_choice, check_positive, check_same_shape
from student_trainer.losses.batch import SCOPES, DistillBatch, Scope


def score_mse(student_scores: Tensor, teacher_scores: Tensor) -> Tensor:
    """``mean_{i, j} (student_scores[i, j] - teacher_scores[i, j])^2`` over all given pairs.

    Args:
        student_scores: ``[B, C]``.
        teacher_scores: ``[B, C]`` (detached: frozen teacher).
    """
    check_same_shape("student_scores", student_scores, "teacher_scores", teacher_scores, ndim=2)
    return F.mse_loss(student_scores.float(), teacher_scores.detach().float())


def score_bce(student_scores: Tensor, teacher_scores: Tensor, tau: float = 1.0) -> Tensor:
    """Binary cross-entropy of ``sigmoid(student)`` against soft targets ``sigmoid(teacher / tau)``,
    averaged over all given pairs.

    ``-mean_{i, j} [ p_ij log sigmoid(s_ij) + (1 - p_ij) log(1 - sigmoid(s_ij)) ]``,
    ``p_ij = sigmoid(t_ij / tau)``. Minimised (not zero) at ``s_ij = t_ij / tau``.

    Args:
        student_scores: ``[B, C]`` student logits (no temperature).
        teacher_scores: ``[B, C]`` (detached: frozen teacher).
        tau: teacher temperature, > 0.
    """
    check_same_shape("student_scores", student_scores, "teacher_scores", teacher_scores, ndim=2)
    targets = torch.sigmoid(teacher_scores.detach().float() / tau)
    # The logits form is the numerically stable one (no log(sigmoid) of large scores).
    return F.binary_cross_entropy_with_logits(student_scores.float(), targets)


class ScoreMSELoss(nn.Module):
    """Mean squared error between student and teacher scores.

    Paper: EmbedDistill (Kim et al., 2023) Eq. 3, ``R(s^s, s^t; S_n) = (1/n) sum_i l_d(s^s_{q_i}, s^t_{q_i})``
    with ``l_d`` the squared error (App. A)::

        L = mean_{i, j in C_i} (s_s(q_i, d_j) - s_t(q_i, d_j))^2

    Averaged over every scored pair, so the scale does not depend on ``B`` or ``N``. Values are
    matched, so ``s_s`` is the student's similarity itself (``DistillBatch.student_similarity``,
    without ``StudentConfig.score_scale``) and the teacher must score in the same units (a cosine
    dual-encoder does; bring other teachers there with ``teacher.calibration``). Offsets count too:
    ``MarginMSELoss`` ignores a per-query offset, not a scale.

    Args:
        scope: ``"in_batch"`` (default): all ``B x N`` pairs; ``"triplet"``: each query's own
            positive and negatives only (``B x (1 + num_negatives)`` pairs).

    Inputs (``DistillBatch``): ``student_scores [B, N]`` with their ``score_scale``, ``teacher_scores [B, N]``.

    Related: ``ScoreBCELoss``, ``MarginMSELoss``, ``InBatchKLLoss``.

    Example:
        >>> loss_fn = ScoreMSELoss(scope="triplet")
        >>> batch = DistillBatch(student_scores=torch.randn(2, 4), teacher_scores=torch.randn(2, 4),
        ...                      labels=DistillBatch.layout_labels(2, 1), num_negatives=1)
        >>> loss_fn(batch).shape
        torch.Size([])
    """

    def __init__(self, scope: Scope = "in_batch") -> None:
        super().__init__()
        self.scope = check_choice("scope", scope, SCOPES, type(self).__name__)

    def forward(self, batch: DistillBatch) -> Tensor:
        student, teacher, _ = batch.scoped(self.scope, need_teacher=True, owner=type(self).__name__, similarity=True)
        return score_mse(student, teacher)

    def get_config_dict(self) -> dict[str, Any]:
        return {"scope": self.scope}

    def extra_repr(self) -> str:
        return f"scope={self.scope!r}"


class ScoreBCELoss(nn.Module):
    """Binary cross-entropy with the teacher's tempered sigmoid probabilities as soft targets.

    Paper: EmbedDistill (Kim et al., 2023) Eq. 3 with ``l_d`` the binary cross-entropy (App. A,
    Eq. 12; the loss Theorem 3.1 assumes)::

        p_ij = sigmoid(s_t(q_i, d_j) / tau)
        L = -mean_{i, j in C_i} [ p_ij log sigmoid(s_s(q_i, d_j)) + (1 - p_ij) log(1 - sigmoid(s_s(q_i, d_j))) ]

    Each (query, document) pair is an independent binary relevance estimate, unlike the listwise
    ``InBatchKLLoss``. Only the teacher is tempered (``tau=1`` uses its scores as they are, as
    in Theorem 3.1); the optimum is ``s_s = s_t / tau`` in logits, i.e. the student's similarity
    equals the teacher's score when ``StudentConfig.score_scale = 1 / tau`` (its default when this
    is the run's tempered loss). Averaged
    over every scored pair (the paper sums over documents; the mean keeps the scale independent of
    ``N``).

    Args:
        tau: teacher temperature, > 0 (default 1.0: the teacher's raw scores as logits).
        scope: ``"in_batch"`` (default): all ``B x N`` pairs; ``"triplet"``: each query's own
            positive and negatives only.

    Inputs (``DistillBatch``): ``student_scores [B, N]``, ``teacher_scores [B, N]``.

    Related: ``ScoreMSELoss``, ``InBatchKLLoss``, ``OneHotCrossEntropyLoss``.

    Example:
        >>> loss_fn = ScoreBCELoss(tau=1.0)
        >>> batch = DistillBatch(student_scores=torch.randn(2, 4), teacher_scores=torch.randn(2, 4),
        ...                      labels=DistillBatch.layout_labels(2, 1), num_negatives=1)
        >>> loss_fn(batch).shape
        torch.Size([])
    """

    def __init__(self, tau: float = 1.0, scope: Scope = "in_batch") -> None:
        super().__init__()
        name = type(self).__name__
        self.tau = check_positive("tau", tau, name)
        self.scope = check_choice("scope", scope, SCOPES, name)

    def forward(self, batch: DistillBatch) -> Tensor:
        student, teacher, _ = batch.scoped(self.scope, need_teacher=True, owner=type(self).__name__)
        return score_bce(student, teacher, tau=self.tau)

    def get_config_dict(self) -> dict[str, Any]:
        return {"tau": self.tau, "scope": self.scope}

    def extra_repr(self) -> str:
        return f"tau={self.tau}, scope={self.scope!r}"
