"""Margin-MSE against a live teacher, as a sentence-transformers loss."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sentence_transformers.util import pairwise_dot_score, similarity_fct_name
from torch import Tensor, nn

from student_trainer.integrations.online import OnlineTeacherLoss, TeacherTargets, student_group_scores, teacher_tensor
from student_trainer.losses.margin_mse import margin_mse
from teacher_service.client import TeacherClient


class OnlineMarginMSELoss(OnlineTeacherLoss):
    """Margin-MSE with the teacher's scores fetched from the teacher service for every batch.

    Paper: Hofstätter et al., "Improving Efficient Neural Ranking Models with Cross-Architecture
    Knowledge Distillation" (2020, arXiv:2010.02666)::

        L = mean_{i, j} ( (s(q_i, d_i^+) - s(q_i, d_ij^-)) - (t(q_i, d_i^+) - t(q_i, d_ij^-)) )^2

    over the ``B`` queries of the batch and each of their ``k`` negatives, ``s`` the student's
    ``similarity_fct`` of the embeddings, ``t`` the teacher's score. Only margins are matched, so a
    per-query offset does not matter, but the scale does: a student whose margins are ``c`` times
    the teacher's keeps a loss of ``(c - 1)^2 margin^2``. The paper's students are unnormalised
    dot products that can learn the teacher's scale (a cross-encoder's logits, ColBERT's MaxSim
    sums); a student with normalised embeddings (cosine scores in [-1, 1]) can match only a
    teacher that scores in the same units, such as a cosine dual-encoder.

    The same loss as sentence-transformers' ``MarginMSELoss`` given the teacher's scores as labels
    ``[M(q, pos), M(q, neg_1), ...]``; here the scores come from the live teacher (one ``pairs``
    request per batch, sent before the student's forward pass), so switching from a precomputed
    label column is a one-line change of the loss.

    Inputs: text columns ``(query, positive, negative_1, ..., negative_k)``, ``k >= 1``; a label
    column is ignored. Build the loss before the trainer (it keeps the batch's texts for the
    teacher through the student's ``preprocess``).

    Args:
        model: the student ``SentenceTransformer``.
        client: the service's URL or a :class:`TeacherClient` (see :class:`OnlineTeacherLoss`).
        teacher: the teacher's name on the service.
        similarity_fct: the student's pairwise score (default dot product, as sentence-transformers'
            ``MarginMSELoss``).
        timeout_s: how long a batch waits for the teacher.
        keep_texts: keep the batch's texts through the student's ``preprocess`` (default), so the
            trainer needs no ``data_collator``; see :class:`OnlineTeacherLoss`.

    Related: :class:`OnlineInBatchKLLoss` (listwise over all in-batch documents),
    ``student_trainer.losses.MarginMSELoss`` (the same maths in tightdistill's own trainer).

    Example::

        loss = OnlineMarginMSELoss(model, "http://127.0.0.1:8000", teacher="minilm")  # was: losses.MarginMSELoss(model)
        trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=triples, loss=loss)
    """

    signal = "scores"
    min_columns = 3
    columns_hint = "query, positive, negative_1, ..."

    def __init__(self, model: nn.Module, client: TeacherClient | str, teacher: str,
                 similarity_fct: Callable[[Tensor, Tensor], Tensor] = pairwise_dot_score, timeout_s: float = 300.0,
                 keep_texts: bool = True) -> None:
        super().__init__(model, client, teacher, timeout_s, keep_texts)
        self.similarity_fct = similarity_fct

    def request_teacher(self, texts: list[list[str]]) -> TeacherTargets:
        return self.request_group_scores(texts)

    def compute_loss_from_embeddings(self, embeddings: list[Tensor], teacher_targets: Tensor) -> Tensor:
        """Args: ``embeddings`` one ``[B, d]`` tensor per column (query, positive, negatives);
        ``teacher_targets`` the teacher's ``[B, 1 + k]`` scores, positive first."""
        student = student_group_scores(embeddings, self.similarity_fct)
        return margin_mse(student, teacher_tensor(teacher_targets, student))

    def get_config_dict(self) -> dict[str, Any]:
        return {**super().get_config_dict(), "similarity_fct": similarity_fct_name(self.similarity_fct)}

    @property
    def citation(self) -> str:
        return """
@misc{hofstatter2020improving,
    title={Improving Efficient Neural Ranking Models with Cross-Architecture Knowledge Distillation},
    author={Sebastian Hofst{\\"a}tter and Sophia Althammer and Michael Schr{\\"o}der and Mete Sertkan and Allan Hanbury},
    year={2020},
    eprint={2010.02666},
    archivePrefix={arXiv},
    primaryClass={cs.IR}
}
"""
