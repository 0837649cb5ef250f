"""Embedding matching against a live teacher's embeddings, as a sentence-transformers loss."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from student_trainer.integrations.online import OnlineTeacherLoss, TeacherTargets, teacher_tensor
from student_trainer.losses._checks import check_choice, check_same_shape
from student_trainer.losses.embedding_matching import embedding_distance
from student_trainer.teacher_signals import as_tensor
from teacher_service.client import TeacherClient
from teacher_service.schemas import Role

Targets = Literal["own", "first"]
Distance = Literal["mse", "l2"]
ROLES: tuple[str, ...] = ("query", "document")


def student_dimension(model: nn.Module, owner: str) -> int:
    """The student's sentence-embedding dimension (sentence-transformers 6 names the getter
    ``get_embedding_dimension``, earlier versions ``get_sentence_embedding_dimension``)."""
    getter = getattr(model, "get_embedding_dimension", None) or getattr(model, "get_sentence_embedding_dimension", None)
    dim = getter() if getter is not None else None
    if not dim:
        raise ValueError(f"{owner}: cannot tell the student's embedding dimension (the model reports {dim!r}); "
                         "give it a Pooling module with embedding_dimension set")
    return int(dim)


class OnlineEmbeddingMSELoss(OnlineTeacherLoss):
    """Distance between the student's embeddings (projected if need be) and the live teacher's.

    Papers: Reimers & Gurevych, "Making Monolingual Sentence Embeddings Multilingual using Knowledge
    Distillation" (EMNLP 2020, arXiv:2004.09813), and EmbedDistill (Kim et al., 2023,
    arXiv:2301.12005) §4.1, Eq. 7 (queries) and Eq. 8 (documents). Per text column ``c`` of ``B``
    texts, with ``s`` the student's embedding, ``t`` the teacher's and ``P`` the projection::

        distance="mse" (default, Reimers & Gurevych):  L_c = 1/(B d_t) sum_r || t_r - P(s_r) ||_2^2
        distance="l2"  (EmbedDistill Eq. 7/8):           L_c = 1/B        sum_r || t_r - P(s_r) ||_2

    and ``L = mean_c L_c``. Which teacher embedding a row is pulled to (``targets``):

    * ``"own"`` (EmbedDistill): each column's texts encoded by the teacher, column 0 with role
      ``"query"`` and the others ``"document"`` (override with ``roles``); one ``encode``
      request per role, both sent before the student's forward pass.
    * ``"first"`` (Reimers & Gurevych's multilingual distillation): every column is pulled to the
      teacher's embedding of column 0 (the source sentence; the other columns are its
      translations); one ``encode`` request.

    Dimensions: if the teacher's embedding dimension differs from the student's, this loss owns a
    trainable ``nn.Linear(d_student, d_teacher)`` (``self.projection``, as EmbedDistill's ``proj``),
    which the trainer's optimizer updates with the student (sentence-transformers builds the
    optimizer from the loss's parameters). It is not part of the saved student: save it with
    ``torch.save(loss.projection.state_dict(), path)`` if you need the student in the teacher's
    space. ``projection=False`` refuses a dimension mismatch instead; ``projection=True`` adds the
    map even when the dimensions agree.

    Inputs: one or more text columns; a label column is ignored. Build the loss before the
    trainer. The teacher must give pooled embeddings (dual-encoder, ColBERT).

    Args:
        model: the student ``SentenceTransformer``.
        client: the service's URL or a :class:`TeacherClient` (see :class:`OnlineTeacherLoss`).
        teacher: the teacher's name on the service.
        targets: ``"own"`` or ``"first"``.
        roles: the teacher role of each column (``"query"``/``"document"``); None: column 0 is the
            query, the rest documents.
        distance: ``"mse"`` or ``"l2"``.
        projection: None: a projection only when the dimensions differ; True: always; False: never
            (a mismatch is an error).
        timeout_s: how long a batch waits for the teacher.
        keep_texts: keep the batch's texts through the student's ``preprocess`` (default), so the
            trainer needs no ``data_collator``; see :class:`OnlineTeacherLoss`.

    Related: sentence-transformers' ``MSELoss`` / ``EmbedDistillLoss`` (the same with precomputed
    teacher embeddings as labels), ``student_trainer.losses.QueryEmbeddingMatchingLoss``.

    Example::

        loss = OnlineEmbeddingMSELoss(model, "http://127.0.0.1:8000", teacher="minilm")
    """

    signal = "pooled_embeddings"
    min_columns = 1
    columns_hint = "any text columns"

    def __init__(self, model: nn.Module, client: TeacherClient | str, teacher: str, targets: Targets = "own",
                 roles: Sequence[Role] | None = None, distance: Distance = "mse", projection: bool | None = None,
                 timeout_s: float = 300.0, keep_texts: bool = True) -> None:
        name = type(self).__name__
        targets = check_choice("targets", targets, ("own", "first"), name)
        distance = check_choice("distance", distance, ("mse", "l2"), name)
        if projection not in (None, True, False):
            raise ValueError(f"{name}: projection must be None, True or False, got {projection!r}")
        for role in roles or ():
            check_choice("roles[...]", role, ROLES, name)
        super().__init__(model, client, teacher, timeout_s, keep_texts)
        self.targets, self.distance = targets, distance
        self.roles: tuple[str, ...] | None = tuple(roles) if roles is not None else None
        self.teacher_dim = int(self.teacher_info["dim"])
        self.student_dim = student_dimension(model, name)
        mismatch = self.student_dim != self.teacher_dim
        if projection is False and mismatch:
            raise ValueError(f"{name}: teacher '{teacher}' embeds in {self.teacher_dim} dimensions but the student in "
                             f"{self.student_dim}; pass projection=True (a trainable linear map owned by this loss) or "
                             "use a student with the teacher's dimension")
        self.projection: nn.Linear | None = None
        if projection or (projection is None and mismatch):
            device = getattr(model, "device", None)
            self.projection = nn.Linear(self.student_dim, self.teacher_dim, device=device)

    def column_roles(self, columns: int) -> list[str]:
        if self.roles is None:
            return ["query"] + ["document"] * (columns - 1)
        if len(self.roles) < columns:
            raise ValueError(f"{type(self).__name__}: roles names {len(self.roles)} columns but the batch has {columns}")
        return list(self.roles[:columns])

    def request_teacher(self, texts: list[list[str]]) -> TeacherTargets:
        roles = self.column_roles(len(texts))
        encoded = [0] if self.targets == "first" else list(range(len(texts)))
        by_role = {role: [c for c in encoded if roles[c] == role] for role in dict.fromkeys(roles[c] for c in encoded)}
        futures = {role: self.client.submit_encode([t for c in columns for t in texts[c]], role=role)
                   for role, columns in by_role.items()}

        def embeddings() -> list[Tensor]:
            out: dict[int, Tensor] = {}
            for role, columns in by_role.items():
                rows = as_tensor(self.wait(futures[role])["embeddings"])
                out.update(zip(columns, rows.split([len(texts[c]) for c in columns])))
            return [out[0]] * len(texts) if self.targets == "first" else [out[c] for c in range(len(texts))]

        return embeddings

    def compute_loss_from_embeddings(self, embeddings: list[Tensor], teacher_targets: list[Tensor]) -> Tensor:
        """Args: ``embeddings`` one ``[B, d_s]`` student tensor per column; ``teacher_targets`` one
        ``[B, d_t]`` teacher tensor per column (the same tensor for every column with ``targets="first"``)."""
        if len(teacher_targets) != len(embeddings):
            raise ValueError(f"{type(self).__name__}: {len(embeddings)} student columns but {len(teacher_targets)} "
                             "teacher targets")
        losses = []
        for student, teacher in zip(embeddings, teacher_targets):
            if self.projection is not None:
                student = self.projection(student)
            teacher = teacher_tensor(teacher, student)
            check_same_shape("student embeddings", student, "teacher embeddings", teacher, ndim=2)
            if self.distance == "mse":
                losses.append(F.mse_loss(student.float(), teacher))
            else:
                losses.append(embedding_distance(student, teacher))
        return torch.stack(losses).mean()

    def get_config_dict(self) -> dict[str, Any]:
        return {**super().get_config_dict(), "targets": self.targets, "roles": self.roles, "distance": self.distance,
                "projection": None if self.projection is None else [self.student_dim, self.teacher_dim]}

    @property
    def citation(self) -> str:
        return """
@inproceedings{reimers-2020-multilingual-sentence-bert,
    title={Making Monolingual Sentence Embeddings Multilingual using Knowledge Distillation},
    author={Reimers, Nils and Gurevych, Iryna},
    booktitle={Proceedings of the 2020 Conference on Empirical Methods in Natural Language Processing},
    year={2020},
    url={https://arxiv.org/abs/2004.09813}
}
@article{kim2023embeddistill,
    title={EmbedDistill: A Geometric Knowledge Distillation for Information Retrieval},
    author={Kim, Seungyeon and Rawat, Ankit Singh and Zaheer, Manzil and Jayasumana, Sadeep and Sadhanala, Veeranjaneyulu and Jitkrittum, Wittawat and Menon, Aditya Krishna and Fergus, Rob and Kumar, Sanjiv},
    year={2023},
    eprint={2301.12005},
    archivePrefix={arXiv},
    primaryClass={cs.IR}
}
"""
