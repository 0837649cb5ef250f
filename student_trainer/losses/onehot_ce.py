"""One-hot loss: softmax cross-entropy of each query's positive over all in-batch documents."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from student_trainer.losses.batch import DistillBatch


def onehot_cross_entropy(student_scores: Tensor, labels: Tensor) -> Tensor:
    """``mean_i -log softmax(student_scores[i])[labels[i]]``.

    Args:
        student_scores: ``[B, N]`` scores (logits; no temperature applied).
        labels: ``[B]`` long, the column of each row's positive.

    Returns:
        A scalar tensor.
    """
    if student_scores.dim() != 2:
        raise ValueError(f"student_scores must be 2-D [B, N], got shape {tuple(student_scores.shape)}")
    if labels.shape != student_scores.shape[:1]:
        raise ValueError(f"labels {tuple(labels.shape)} must have one entry per row of student_scores "
                         f"{tuple(student_scores.shape)}")
    # float32: log-softmax over a few hundred columns loses the positive's mass in bf16.
    return F.cross_entropy(student_scores.float(), labels)


class OneHotCrossEntropyLoss(nn.Module):
    """Softmax cross-entropy of the labelled positive against every in-batch candidate.

    Paper: EmbedDistill (Kim et al., 2023), App. A Eq. 9 ("one-hot loss"); TCT-ColBERT (Lin et al.,
    2021) §3.1 Eq. 6, first term. For query ``q_i`` with student scores ``s_i`` over the ``N``
    in-batch documents ``D_B`` (its positive and negatives plus every other query's documents)::

        P(d | q_i) = exp(s_i(d)) / sum_{d' in D_B} exp(s_i(d'))
        L = -(1/B) sum_i log P(d_i^+ | q_i)

    The student scores are used as they are (no temperature); students built by
    ``DualEncoderStudent`` already multiply them by ``StudentConfig.score_scale``. Averaged over
    queries (Eq. 6 sums; the mean keeps the loss scale independent of the batch size).

    Inputs (``DistillBatch``): ``student_scores [B, N]`` and ``labels [B]``. Needs no teacher.

    Hyper-parameters: none.

    Related: ``InBatchKLLoss`` (adds the teacher's soft labels; ``gamma=1`` is this loss),
    ``ScoreBCELoss``.

    Example:
        >>> loss_fn = OneHotCrossEntropyLoss()
        >>> batch = DistillBatch(student_scores=torch.randn(2, 4),
        ...                      labels=DistillBatch.layout_labels(2, 1), num_negatives=1)
        >>> loss_fn(batch).shape
        torch.Size([])
    """

    def forward(self, batch: DistillBatch) -> Tensor:
        return onehot_cross_entropy(batch.student_scores, batch.labels)

    def get_config_dict(self) -> dict[str, Any]:
        return {}
