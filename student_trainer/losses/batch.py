"""``DistillBatch``: what every loss receives, one training step's student and teacher signals.

Document layout (fixed; every loss relies on it): the ``N = B * (1 + num_negatives)`` in-batch
documents come in groups, one per query. Column ``i * (1 + num_negatives)`` is query ``i``'s
positive, followed by its ``num_negatives`` negatives; then query ``i + 1``'s group. Every query is
scored against all ``N`` documents, so the other queries' documents act as extra in-batch negatives
(TCT-ColBERT §3.1, "in-batch subsampling").

Shapes and dtypes are checked once, when the batch is built, so a loss never sees a malformed one.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal

import torch
from torch import Tensor

Scope = Literal["in_batch", "triplet"]
SCOPES: tuple[str, ...] = ("in_batch", "triplet")

# Where each optional field comes from, so a loss can say how to get it when it is missing.
FIELD_SOURCES: dict[str, str] = {
    "teacher_scores": "teacher scores on the in-batch layout (TeacherClient.signals(..., mode='matrix')['scores'])",
    "student_query_emb": "the student's projected query embeddings (StudentOutput.query_embeddings)",
    "teacher_query_emb": ("the teacher's pooled query embeddings (TeacherClient.signals(..., embeddings=True)"
                          "['query_embeddings']; needs a teacher that has pooled embeddings)"),
    "student_doc_emb": ("the student's projected document embeddings (StudentOutput.document_embeddings); only "
                        "symmetric students encode documents (StudentConfig.asymmetric=False)"),
    "teacher_doc_emb": ("the teacher's pooled document embeddings (TeacherClient.signals(..., embeddings=True)"
                        "['document_embeddings']; needs a teacher that has pooled embeddings)"),
    "student_joint_emb": ("the student's joint embedding of each query with its positive "
                          "(StudentOutput.joint_embeddings); symmetric students with a joint head only"),
    "teacher_joint_emb": ("a [CLS]-pooled cross-encoder's joint [CLS] embedding of each query with its positive "
                          "(TeacherClient.signals(..., embeddings=True)['joint_embeddings'])"),
    "candidate_doc_emb": ("the teacher's embeddings of each scored query's top-K documents in its own index "
                          "(DocEmbeddings.top_k_embeddings of the teacher's query embeddings)"),
}


@dataclass
class DistillBatch:
    """Student and teacher signals for one batch of ``B`` queries and ``N`` in-batch documents.

    Attributes:
        student_scores: ``[B, N]`` float, student scores of every query against every in-batch
            document, already multiplied by ``score_scale`` (logits for the softmax losses).
        labels: ``[B]`` long, column of each query's positive; must equal the layout,
            ``labels[i] == i * (1 + num_negatives)`` (see ``layout_labels``).
        teacher_scores: ``[B, N]`` teacher scores on the same layout, or None.
            ``labels`` and the teacher fields are moved to the device of the student tensor they are
            compared with, so CPU teacher signals can meet a GPU student.
        student_query_emb: ``[Bq, d_t]`` student query embeddings already projected into the
            teacher's space, or None. ``Bq >= B`` is allowed: extra queries (e.g. generated ones)
            take part in embedding matching only.
        teacher_query_emb: ``[Bq, d_t]`` teacher query embeddings, or None.
        student_doc_emb: ``[N, d_t]`` projected student document embeddings (symmetric students
            only), or None.
        teacher_doc_emb: ``[N, d_t]`` teacher document embeddings, or None.
        student_joint_emb: ``[B, d_j]`` the student's joint embedding of each query with its
            positive (a learned map of the pair's two embeddings), or None.
        teacher_joint_emb: ``[B, d_j]`` a cross-encoder's joint [CLS] embedding of the same pairs, or None.
        candidate_doc_emb: ``[B, K, d_t]`` the teacher's embeddings of each scored query's top-``K``
            documents in its own index (the candidates of ``CandidateKLLoss``), or None.
        candidate_teacher_scores: ``[B, K]`` a (pair-scoring or ensemble) teacher's calibrated scores
            of those candidates (``TeacherSignalSource.score_candidates``), or None: then
            ``CandidateKLLoss`` ranks them with the dual-encoder's own query embedding.
        num_negatives: negatives per query in the layout (``>= 0``).
        score_scale: the factor ``student_scores`` carry (``StudentConfig.score_scale``, > 0).
            Losses that match scores in the teacher's own units (Margin-MSE, score MSE) divide it
            out through :meth:`student_similarity`; the softmax losses use the scaled logits.

    Example:
        >>> B, k = 2, 1
        >>> batch = DistillBatch(student_scores=torch.randn(B, B * (1 + k)),
        ...                      labels=DistillBatch.layout_labels(B, k), num_negatives=k)
        >>> batch.group_columns().tolist()
        [[0, 1], [2, 3]]
    """

    student_scores: Tensor
    labels: Tensor
    teacher_scores: Tensor | None = None
    student_query_emb: Tensor | None = None
    teacher_query_emb: Tensor | None = None
    student_doc_emb: Tensor | None = None
    teacher_doc_emb: Tensor | None = None
    student_joint_emb: Tensor | None = None
    teacher_joint_emb: Tensor | None = None
    candidate_doc_emb: Tensor | None = None
    candidate_teacher_scores: Tensor | None = None
    num_negatives: int = 1
    score_scale: float = 1.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name not in ("num_negatives", "score_scale") and value is not None and not isinstance(value, Tensor):
                raise ValueError(f"DistillBatch.{f.name} must be a torch.Tensor or None, got {type(value).__name__}")
        self._move_targets_to_student_device()
        k = self.num_negatives
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ValueError(f"DistillBatch.num_negatives must be an int >= 0, got {k!r}")
        if isinstance(self.score_scale, bool) or not isinstance(self.score_scale, (int, float)) or not self.score_scale > 0:
            raise ValueError(f"DistillBatch.score_scale must be a number > 0, got {self.score_scale!r}")
        s = self.student_scores
        if s.dim() != 2 or not s.is_floating_point():
            raise ValueError(f"DistillBatch.student_scores must be a 2-D float tensor [B, N], got "
                             f"{s.dtype} of shape {tuple(s.shape)}")
        B, N = s.shape
        if B == 0:
            raise ValueError("DistillBatch.student_scores is empty: a batch needs at least one query")
        if N != B * (1 + k):
            raise ValueError(f"DistillBatch.student_scores has {N} columns but B={B} queries with num_negatives={k} "
                             f"need N = B * (1 + num_negatives) = {B * (1 + k)}; check num_negatives and that "
                             "every query brings its positive and exactly num_negatives negatives")
        if self.labels.shape != (B,) or self.labels.dtype != torch.long:
            raise ValueError(f"DistillBatch.labels must be a long tensor of shape ({B},), got "
                             f"{self.labels.dtype} of shape {tuple(self.labels.shape)}")
        # Margin-MSE and the triplet scope find positives from the layout, so labels that disagree
        # with it would make the losses silently train on different positives.
        expected = self.layout_labels(B, k, device=self.labels.device)
        if not torch.equal(self.labels, expected):
            i = int((self.labels != expected).nonzero()[0, 0])
            raise ValueError(f"DistillBatch.labels[{i}] is {int(self.labels[i])} but the document layout puts "
                             f"query {i}'s positive at column {i} * (1 + num_negatives) = {int(expected[i])}; "
                             f"build labels with DistillBatch.layout_labels({B}, {k})")
        if self.teacher_scores is not None and self.teacher_scores.shape != s.shape:
            raise ValueError(f"DistillBatch.teacher_scores {tuple(self.teacher_scores.shape)} must have the shape "
                             f"of student_scores {tuple(s.shape)}")
        self._check_embeddings("student_query_emb", "teacher_query_emb", rows=None, min_rows=B)
        self._check_embeddings("student_doc_emb", "teacher_doc_emb", rows=N, min_rows=None)
        self._check_embeddings("student_joint_emb", "teacher_joint_emb", rows=B, min_rows=None, per="scored query")
        c = self.candidate_doc_emb
        if c is not None and (c.dim() != 3 or c.shape[0] != B or not c.is_floating_point()):
            raise ValueError(f"DistillBatch.candidate_doc_emb must be a float tensor [B={B}, K, d], got "
                             f"{c.dtype} of shape {tuple(c.shape)}")
        cs = self.candidate_teacher_scores
        if cs is not None and (c is None or tuple(cs.shape) != tuple(c.shape[:2])):
            raise ValueError(f"DistillBatch.candidate_teacher_scores must be [B, K] scores of candidate_doc_emb's "
                             f"candidates, got shape {tuple(cs.shape)} for candidates "
                             f"{None if c is None else tuple(c.shape)}")

    def _move_targets_to_student_device(self) -> None:
        # Teacher signals arrive as CPU tensors (from the service's numpy arrays) while the student may
        # run on a GPU; the targets have to go there anyway, and doing it here keeps every loss simple.
        device = self.student_scores.device
        self.labels = self.labels.to(device, non_blocking=True)
        for name in ("teacher_scores", "candidate_teacher_scores"):
            if getattr(self, name) is not None:
                setattr(self, name, getattr(self, name).to(device, non_blocking=True))
        for student, teacher in (("student_query_emb", "teacher_query_emb"), ("student_doc_emb", "teacher_doc_emb"),
                                 ("student_joint_emb", "teacher_joint_emb")):
            s, t = getattr(self, student), getattr(self, teacher)
            if s is not None and t is not None:
                setattr(self, teacher, t.to(s.device, non_blocking=True))

    def _check_embeddings(self, student: str, teacher: str, rows: int | None, min_rows: int | None,
                          per: str = "in-batch document") -> None:
        present = {name: getattr(self, name) for name in (student, teacher) if getattr(self, name) is not None}
        for name, emb in present.items():
            if emb.dim() != 2 or not emb.is_floating_point():
                raise ValueError(f"DistillBatch.{name} must be a 2-D float tensor, got {emb.dtype} of shape "
                                 f"{tuple(emb.shape)}")
            if rows is not None and emb.shape[0] != rows:
                raise ValueError(f"DistillBatch.{name} has {emb.shape[0]} rows, expected one per {per} ({rows})")
            if min_rows is not None and emb.shape[0] < min_rows:
                raise ValueError(f"DistillBatch.{name} has {emb.shape[0]} rows, expected at least one per scored "
                                 f"query ({min_rows})")
        if len(present) == 2 and present[student].shape != present[teacher].shape:
            raise ValueError(f"DistillBatch.{student} {tuple(present[student].shape)} and {teacher} "
                             f"{tuple(present[teacher].shape)} must have the same shape; project the student "
                             "embeddings into the teacher's dimension first (StudentConfig.projection)")

    @staticmethod
    def layout_labels(batch_size: int, num_negatives: int, device: torch.device | str | None = None) -> Tensor:
        """The labels the layout implies: ``[0, 1 + k, 2 (1 + k), ...]``, shape ``[batch_size]``."""
        return torch.arange(batch_size, device=device, dtype=torch.long) * (1 + num_negatives)

    @property
    def batch_size(self) -> int:
        """``B``, the number of scored queries."""
        return self.student_scores.shape[0]

    @property
    def num_documents(self) -> int:
        """``N = B * (1 + num_negatives)``, the number of in-batch documents."""
        return self.student_scores.shape[1]

    @property
    def group_size(self) -> int:
        """``1 + num_negatives``: a query's own positive and negatives."""
        return 1 + self.num_negatives

    def group_columns(self) -> Tensor:
        """``[B, 1 + num_negatives]`` long: row ``i`` holds the columns of query ``i``'s own
        documents, its positive first (column 0 of the row), then its negatives."""
        start = self.labels[:, None]
        return start + torch.arange(self.group_size, device=start.device, dtype=torch.long)[None, :]

    def student_similarity(self) -> Tensor:
        """``[B, N]`` the student's scores in its similarity's own units (``student_scores / score_scale``):
        what a loss compares with the teacher's scores when it matches values, not distributions."""
        return self.student_scores / self.score_scale

    def group_scores(self, scores: Tensor) -> Tensor:
        """Each query's scores on its own documents: ``[B, N] -> [B, 1 + num_negatives]``, positive first."""
        if scores.shape != self.student_scores.shape:
            raise ValueError(f"scores {tuple(scores.shape)} must have the batch's score shape "
                             f"{tuple(self.student_scores.shape)}")
        return scores.gather(1, self.group_columns())

    def scoped(self, scope: Scope, need_teacher: bool, owner: str,
               similarity: bool = False) -> tuple[Tensor, Tensor | None, Tensor]:
        """``(student_scores, teacher_scores, labels)`` restricted to ``scope``; with ``similarity``
        the student's side is :meth:`student_similarity` (unscaled) instead of the logits.

        ``"in_batch"``: all ``N`` columns and the batch labels. ``"triplet"``: each query's own
        group only (``[B, 1 + num_negatives]``), where the positive is column 0.
        """
        teacher = self.require("teacher_scores", owner) if need_teacher else self.teacher_scores
        student = self.student_similarity() if similarity else self.student_scores
        if scope == "in_batch":
            return student, teacher, self.labels
        if scope == "triplet":
            labels = torch.zeros_like(self.labels)
            own_teacher = None if teacher is None else self.group_scores(teacher)
            return self.group_scores(student), own_teacher, labels
        raise ValueError(f"{owner}: scope must be one of {list(SCOPES)}, got {scope!r}")

    def require(self, name: str, owner: str) -> Tensor:
        """The field ``name``, or ValueError naming it, the loss that needs it and where it comes from."""
        value = getattr(self, name)
        if value is None:
            raise ValueError(f"{owner} needs DistillBatch.{name}, which is None; it holds "
                             f"{FIELD_SOURCES.get(name, name)}")
        return value
