"""EmbedDistill embedding matching: pull projected student embeddings onto the teacher's."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from student_trainer.losses._checks import check_bool, check_same_shape
from student_trainer.losses.batch import DistillBatch


def embedding_distance(student_emb: Tensor, teacher_emb: Tensor, normalize: bool = False) -> Tensor:
    """``mean_r ||teacher_emb[r] - student_emb[r]||_2`` (Euclidean distance, not squared).

    Args:
        student_emb: ``[n, d]`` student embeddings, already projected into the teacher's space.
        teacher_emb: ``[n, d]`` teacher embeddings (detached: frozen teacher).
        normalize: L2-normalise both sides first, so only directions are matched (for cosine
            scorers, or when teacher norms are large).

    Returns:
        A scalar tensor.
    """
    check_same_shape("student_emb", student_emb, "teacher_emb", teacher_emb, ndim=2)
    s = student_emb.float()
    t = teacher_emb.detach().float()
    if normalize:
        s, t = F.normalize(s, dim=-1), F.normalize(t, dim=-1)
    # vector_norm's gradient at a zero difference is 0 (not NaN), so a student that already matches is safe.
    return torch.linalg.vector_norm(t - s, ord=2, dim=-1).mean()


class _EmbeddingMatchingLoss(nn.Module):
    """Shared body: the subclasses differ only in which pair of ``DistillBatch`` fields they match."""

    student_field: ClassVar[str]
    teacher_field: ClassVar[str]

    def __init__(self, normalize: bool = False) -> None:
        super().__init__()
        self.normalize = check_bool("normalize", normalize, type(self).__name__)

    def forward(self, batch: DistillBatch) -> Tensor:
        name = type(self).__name__
        student = batch.require(self.student_field, name)
        teacher = batch.require(self.teacher_field, name)
        return embedding_distance(student, teacher, normalize=self.normalize)

    def get_config_dict(self) -> dict[str, Any]:
        return {"normalize": self.normalize}

    def extra_repr(self) -> str:
        return f"normalize={self.normalize}"


class QueryEmbeddingMatchingLoss(_EmbeddingMatchingLoss):
    """Mean Euclidean distance between teacher and projected student query embeddings.

    Paper: EmbedDistill (Kim et al., 2023) §4.1, Eq. 7::

        R_Emb,Q = (1/n) sum_q || emb_q^t - proj(emb_q^s) ||_2

    (the distance, not its square). ``proj`` is the student's learned linear map into the teacher's
    dimension (``StudentConfig.projection``), applied before the batch is built. EmbedDistill adds
    this to the score-distillation loss with weight 1.0 (5.0 for the smallest students trained on
    generated queries); it is the only loss that needs no documents, so extra queries
    (``Bq > B`` rows) count too. For asymmetric students, whose documents keep the teacher's
    embeddings, it aligns queries with the frozen document index.

    Args:
        normalize: L2-normalise both embeddings first (default False, as in the paper).

    Inputs (``DistillBatch``): ``student_query_emb [Bq, d_t]``, ``teacher_query_emb [Bq, d_t]``.

    Related: ``DocumentEmbeddingMatchingLoss`` (Eq. 8), combined with ``InBatchKLLoss`` or
    ``ScoreBCELoss`` through ``CombinedLoss``.

    Example:
        >>> loss_fn = QueryEmbeddingMatchingLoss()
        >>> emb = torch.randn(2, 8)
        >>> batch = DistillBatch(student_scores=torch.randn(2, 4), labels=DistillBatch.layout_labels(2, 1),
        ...                      student_query_emb=emb, teacher_query_emb=emb.clone())
        >>> float(loss_fn(batch))
        0.0
    """

    student_field = "student_query_emb"
    teacher_field = "teacher_query_emb"


class DocumentEmbeddingMatchingLoss(_EmbeddingMatchingLoss):
    """Mean Euclidean distance between teacher and projected student document embeddings.

    Paper: EmbedDistill (Kim et al., 2023) §4.1, Eq. 8::

        R_Emb,D = (1/n) sum_d || emb_d^t - proj(emb_d^s) ||_2

    over the ``N`` in-batch documents. Only symmetric students (``StudentConfig.asymmetric=False``)
    encode documents; asymmetric ones inherit the teacher's document embeddings, which are aligned
    by design, so this loss does not apply to them.

    Args:
        normalize: L2-normalise both embeddings first (default False, as in the paper).

    Inputs (``DistillBatch``): ``student_doc_emb [N, d_t]``, ``teacher_doc_emb [N, d_t]``.

    Related: ``QueryEmbeddingMatchingLoss`` (Eq. 7).

    Example:
        >>> loss_fn = DocumentEmbeddingMatchingLoss(normalize=True)
        >>> emb = torch.randn(4, 8)
        >>> batch = DistillBatch(student_scores=torch.randn(2, 4), labels=DistillBatch.layout_labels(2, 1),
        ...                      student_doc_emb=emb, teacher_doc_emb=2 * emb)
        >>> round(float(loss_fn(batch)), 6)
        0.0
    """

    student_field = "student_doc_emb"
    teacher_field = "teacher_doc_emb"


class JointEmbeddingMatchingLoss(_EmbeddingMatchingLoss):
    """Naive joint embedding matching for cross-encoder teachers (EmbedDistill §4.2, Table 5).

    A [CLS]-pooled cross-encoder has no query or document embedding of its own, only the joint
    embedding of a pair, ``emb_t(q, d) = Enc([CLS] q [SEP] d [SEP])[CLS]``. The naive way to match
    it from a dual-encoder is to map the student's two embeddings of the same pair into its
    space::

        R_Emb,joint = (1/B) sum_i || emb_t(q_i, d_i+) - W [emb_s(q_i); emb_s(d_i+)] ||_2

    over each query and its positive, with ``W`` a learned linear map (the student's
    ``joint_head``; our reading of the paper's "joint matching", which it reports as hurting:
    the joint embedding mixes both texts in a way no function of two separate embeddings
    recovers, which is why EmbedDistill introduces dual-pooled cross-encoders).

    Args:
        normalize: L2-normalise both embeddings first.

    Inputs (``DistillBatch``): ``student_joint_emb [B, d_j]``, ``teacher_joint_emb [B, d_j]``.

    Example:
        >>> emb = torch.randn(2, 8)
        >>> batch = DistillBatch(student_scores=torch.randn(2, 4), labels=DistillBatch.layout_labels(2, 1),
        ...                      student_joint_emb=emb, teacher_joint_emb=emb.clone())
        >>> float(JointEmbeddingMatchingLoss()(batch))
        0.0
    """

    student_field = "student_joint_emb"
    teacher_field = "teacher_joint_emb"

