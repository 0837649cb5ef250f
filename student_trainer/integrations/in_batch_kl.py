"""Tightly-coupled in-batch KL (TCT-ColBERT) against a live teacher, as a sentence-transformers loss."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from sentence_transformers.util import dot_score, similarity_fct_name
from torch import Tensor, nn

from student_trainer.integrations.online import OnlineTeacherLoss, TeacherTargets, teacher_tensor
from student_trainer.integrations.texts import interleave
from student_trainer.losses._checks import check_choice, check_positive, check_unit_interval
from student_trainer.losses.batch import SCOPES, DistillBatch, Scope
from student_trainer.losses.in_batch_kl import in_batch_kl
from student_trainer.teacher_signals import as_tensor
from teacher_service.client import TeacherClient


class OnlineInBatchKLLoss(OnlineTeacherLoss):
    """One-hot cross-entropy plus KL from the live teacher's tempered in-batch distribution.

    Paper: TCT-ColBERT (Lin, Yang, Lin, "Distilling Dense Representations for Ranking using
    Tightly-Coupled Teachers", 2021, arXiv:2010.11386) §3.1, Eq. 5-6. For query ``q_i`` and its
    candidate documents ``C_i``::

        P(d | q_i)     = softmax_{d in C_i}( scale * s(q_i, d) )
        P_hat(d | q_i) = softmax_{d in C_i}( t(q_i, d) / tau )
        L = (1/B) sum_i [ gamma * -log P(d_i^+ | q_i) + (1 - gamma) * KL(P_hat(.|q_i) || P(.|q_i)) ]

    ``s`` is the student's ``similarity_fct``, ``t`` the teacher's score. ``scope="in_batch"``
    (default, TCT's best condition): ``C_i`` is every document of the batch, each query's positive
    and negatives *and* every other query's, scored by the teacher in one ``matrix`` request
    (``[B, B * (1 + k)]``); the other queries' documents are the in-batch negatives.
    ``scope="triplet"``: ``C_i`` is query ``i``'s own positive and negatives (one ``pairs``
    request; the cheaper choice for a cross-encoder teacher, whose matrix costs ``B x N`` forward
    passes).

    Only the teacher is divided by ``tau`` (TCT Eq. 5); the student's scores are multiplied by
    ``scale``, by default ``1 / tau``, so a student whose scores live on the teacher's scale (e.g.
    both cosine) is tempered alike. That default equals sentence-transformers' ``DistillKLDivLoss``
    with ``temperature=tau`` (up to its ``temperature**2`` factor) plus TCT's one-hot term.

    Inputs: text columns ``(query, positive[, negative_1, ...])``; the positive is the second
    column. A label column is ignored. Build the loss before the trainer.

    Args:
        model: the student ``SentenceTransformer``.
        client: the service's URL or a :class:`TeacherClient` (see :class:`OnlineTeacherLoss`).
        teacher: the teacher's name on the service.
        tau: teacher temperature, > 0 (TCT: 0.25).
        gamma: weight of the one-hot term, in [0, 1] (TCT: 0.1; 0 is pure KL).
        scope: ``"in_batch"`` or ``"triplet"``.
        scale: multiplier of the student's scores, > 0; None: ``1 / tau``.
        similarity_fct: the student's score *matrix* function ``[B, d] x [N, d] -> [B, N]``
            (default ``dot_score``; ``cos_sim`` for unnormalised students).
        timeout_s: how long a batch waits for the teacher.
        keep_texts: keep the batch's texts through the student's ``preprocess`` (default), so the
            trainer needs no ``data_collator``; see :class:`OnlineTeacherLoss`.

    Related: :class:`OnlineMarginMSELoss` (pairwise), ``student_trainer.losses.InBatchKLLoss``
    (the same maths in tightdistill's own trainer).

    Example::

        loss = OnlineInBatchKLLoss(model, "http://127.0.0.1:8000", teacher="minilm", tau=0.25)
    """

    signal = "scores"
    min_columns = 2
    columns_hint = "query, positive, optional negatives"

    def __init__(self, model: nn.Module, client: TeacherClient | str, teacher: str, tau: float = 0.25,
                 gamma: float = 0.1, scope: Scope = "in_batch", scale: float | None = None,
                 similarity_fct: Callable[[Tensor, Tensor], Tensor] = dot_score, timeout_s: float = 300.0,
                 keep_texts: bool = True) -> None:
        name = type(self).__name__
        # Checked before the base class asks the service anything: a typo fails without a network call.
        tau = check_positive("tau", tau, name)
        gamma = check_unit_interval("gamma", gamma, name)
        scope = check_choice("scope", scope, SCOPES, name)
        scale = 1.0 / tau if scale is None else check_positive("scale", scale, name)
        super().__init__(model, client, teacher, timeout_s, keep_texts)
        self.tau, self.gamma, self.scope, self.scale = tau, gamma, scope, scale
        self.similarity_fct = similarity_fct

    def request_teacher(self, texts: list[list[str]]) -> TeacherTargets:
        if self.scope == "triplet":
            if len(texts) < 3:
                raise ValueError(f"{type(self).__name__}: scope='triplet' needs at least one negative column "
                                 f"(query, positive, negative_1, ...), got {len(texts)} columns; use scope='in_batch'")
            return self.request_group_scores(texts)
        future = self.client.submit_score(texts[0], interleave(texts[1:]), mode="matrix")
        return lambda: as_tensor(self.wait(future)["scores"])

    def compute_loss_from_embeddings(self, embeddings: list[Tensor], teacher_targets: Tensor) -> Tensor:
        """Args: ``embeddings`` one ``[B, d]`` tensor per column (query, positive, negatives);
        ``teacher_targets`` the teacher's scores: ``[B, B * (1 + k)]`` over the in-batch documents
        in row-major order (query 0's positive and negatives, then query 1's, ...) for
        ``scope="in_batch"``, ``[B, 1 + k]`` (positive first) for ``"triplet"``."""
        query = embeddings[0]
        batch_size, group = query.shape[0], len(embeddings) - 1
        documents = torch.stack(embeddings[1:], dim=1).reshape(batch_size * group, -1)  # row-major, as the teacher's
        student = self.scale * self.similarity_fct(query, documents)
        labels = DistillBatch.layout_labels(batch_size, group - 1, device=student.device)
        if self.scope == "triplet":
            own = DistillBatch(student_scores=student, labels=labels, num_negatives=group - 1)
            student, labels = own.group_scores(student), torch.zeros_like(labels)
        if student.shape[1] < 2:
            raise ValueError(f"{type(self).__name__}: a softmax over {student.shape[1]} candidate is constant; "
                             "use batches of at least 2 queries or add negative columns")
        return in_batch_kl(student, teacher_tensor(teacher_targets, student), labels, tau=self.tau, gamma=self.gamma)

    def get_config_dict(self) -> dict[str, Any]:
        return {**super().get_config_dict(), "tau": self.tau, "gamma": self.gamma, "scope": self.scope,
                "scale": self.scale, "similarity_fct": similarity_fct_name(self.similarity_fct)}

    @property
    def citation(self) -> str:
        return """
@inproceedings{lin-etal-2021-batch,
    title={In-Batch Negatives for Knowledge Distillation with Tightly-Coupled Teachers for Dense Retrieval},
    author={Lin, Sheng-Chieh and Yang, Jheng-Hong and Lin, Jimmy},
    booktitle={Proceedings of the 6th Workshop on Representation Learning for NLP (RepL4NLP-2021)},
    year={2021},
    pages={163--173},
    note={arXiv:2010.11386}
}
"""
