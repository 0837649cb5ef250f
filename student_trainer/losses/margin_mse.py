"""Margin-MSE (Hofstätter et al.): match the teacher's positive-minus-negative score margins."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from student_trainer.losses._checks import check_same_shape
from student_trainer.losses.batch import DistillBatch


def margin_mse(student_group_scores: Tensor, teacher_group_scores: Tensor) -> Tensor:
    """Mean over queries and negatives of ``((s+ - s-) - (t+ - t-))^2``.

    Args:
        student_group_scores: ``[B, 1 + k]`` each query's scores on its own documents, the
            positive in column 0, its ``k >= 1`` negatives after it.
        teacher_group_scores: ``[B, 1 + k]`` the teacher's, same layout (detached: frozen teacher).

    Returns:
        A scalar tensor.
    """
    check_same_shape("student_group_scores", student_group_scores, "teacher_group_scores", teacher_group_scores, ndim=2)
    if student_group_scores.shape[1] < 2:
        raise ValueError("margin_mse needs at least one negative per query (group scores with >= 2 columns), got "
                         f"shape {tuple(student_group_scores.shape)}")
    s = student_group_scores.float()
    t = teacher_group_scores.detach().float()
    return F.mse_loss(s[:, :1] - s[:, 1:], t[:, :1] - t[:, 1:])


class MarginMSELoss(nn.Module):
    """MSE between the student's and the teacher's score margins on each query's own triplets.

    Paper: Hofstätter et al., "Improving Efficient Neural Ranking Models with Cross-Architecture
    Knowledge Distillation" (2020, arXiv:2010.02666), the Margin-MSE loss::

        L = mean_{i, j} ( (s_s(q_i, d_i^+) - s_s(q_i, d_ij^-)) - (s_t(q_i, d_i^+) - s_t(q_i, d_ij^-)) )^2

    over every query ``i`` and each of its own ``num_negatives`` negatives ``j`` (with one negative
    per query this is the paper's triplet loss). Other queries' documents are not used.

    Scale: only margins are matched, so an offset shared by a query's scores does not matter, but
    the *scale* does: a student whose margins are ``c`` times the teacher's has loss
    ``(c - 1)^2 margin^2``, and its optimum is the teacher only when both score in the same units.
    ``s_s`` is therefore the student's similarity itself (``DistillBatch.student_similarity``, the
    scores without ``StudentConfig.score_scale``, which exists for the softmax losses), and ``s_t``
    the teacher's score after ``teacher.calibration``. A cosine dual-encoder teacher and a
    normalised student share units as they are; a teacher on another scale (a cross-encoder's
    logits, ColBERT's MaxSim sums) is brought to the student's with ``teacher.calibration:
    temperature`` (``teacher.temperature`` = the ratio of the two scales) — the paper's students
    are unnormalised dot products that learn any scale, a normalised one cannot.

    Inputs (``DistillBatch``): ``student_scores [B, N]`` with their ``score_scale``,
    ``teacher_scores [B, N]``, ``num_negatives >= 1``; the groups come from ``DistillBatch.group_scores``.

    Hyper-parameters: none.

    Related: ``InBatchKLLoss`` (listwise, uses all in-batch documents), ``ScoreMSELoss`` (matches
    raw scores, so it is sensitive to scale and offset).

    Example:
        >>> loss_fn = MarginMSELoss()
        >>> batch = DistillBatch(student_scores=torch.randn(2, 6), teacher_scores=torch.randn(2, 6),
        ...                      labels=DistillBatch.layout_labels(2, 2), num_negatives=2)
        >>> loss_fn(batch).shape
        torch.Size([])
    """

    def forward(self, batch: DistillBatch) -> Tensor:
        name = type(self).__name__
        teacher = batch.require("teacher_scores", name)
        if batch.num_negatives < 1:
            raise ValueError(f"{name} needs at least one negative per query, but the batch has num_negatives=0; "
                             "sample hard negatives or use OneHotCrossEntropyLoss / InBatchKLLoss")
        return margin_mse(batch.group_scores(batch.student_similarity()), batch.group_scores(teacher))

    def get_config_dict(self) -> dict[str, Any]:
        return {}
