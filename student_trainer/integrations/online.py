"""``OnlineTeacherLoss``: what the sentence-transformers losses with a live teacher share.

Each such loss is called like any sentence-transformers loss, ``loss(sentence_features, labels)``,
and per batch it

1. takes the batch's raw texts out of the features (:func:`~student_trainer.integrations.texts.split_texts`),
2. sends the teacher request for them (one or two requests, through a :class:`TeacherClient` over
   HTTP or Ray handles),
3. runs the student's forward pass while the teacher computes, then waits for the answer,
4. computes the loss from the student embeddings and the teacher's targets
   (``compute_loss_from_embeddings``, a function of tensors, testable without a service).

The dataset's label column, if any, is ignored: the live teacher supplies the targets. A loss
cannot ask for the *next* batch ahead (it never sees it), so only step 3 overlaps.
"""

from __future__ import annotations

import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import torch
from sentence_transformers.base.losses.merged_forward import embed_columns
from torch import Tensor, nn

from student_trainer.integrations.texts import keep_raw_texts, split_texts
from student_trainer.losses._checks import check_positive
from student_trainer.teacher_signals import as_tensor
from teacher_service.client import ResultFuture, TeacherClient
from teacher_service.errors import UnknownTeacher, UnsupportedSignal

log = logging.getLogger(__name__)

TOKEN_ENV = "TIGHTDISTILL_TOKEN"  # the service's default auth_token_env

# What the loss waits on: returns the teacher's targets for the batch once the service answers.
TeacherTargets = Callable[[], Any]


def describe_teacher(client: TeacherClient, teacher: str, signal: str, owner: str) -> dict[str, Any]:
    """The service's description of ``teacher``; a typed one-line error if it is unknown or does
    not give ``signal`` ("scores" or "pooled_embeddings")."""
    infos = {info["name"]: info for info in client.teachers()}
    if teacher not in infos:
        raise UnknownTeacher(f"{owner}: unknown teacher '{teacher}'; the service has: {', '.join(sorted(infos)) or 'none'}")
    info = infos[teacher]
    if signal not in info["signals"]:
        raise UnsupportedSignal(f"{owner}: teacher '{teacher}' ({info['kind']}) does not give {signal}; it gives: "
                                f"{', '.join(info['signals'])}")
    return info


class OnlineTeacherLoss(nn.Module, ABC):
    """Base of the live-teacher losses: the student ``model``, the ``client`` and the teacher's name.

    Args:
        model: the student ``SentenceTransformer`` (the trainer swaps in its wrapped copy, as for
            every sentence-transformers loss with a ``model`` attribute).
        client: the service's URL (``"http://host:8000"``; the bearer token, if any, is read from
            ``$TIGHTDISTILL_TOKEN``), or a :class:`TeacherClient`: ``TeacherClient.from_url(...)``
            with your own options, ``TeacherClient.from_serve()`` inside a Ray cluster.
        teacher: the teacher's name on the service (``GET /v1/teachers``).
        timeout_s: how long one batch waits for the teacher (the HTTP client's own retries and
            backoff on overload happen within it).
        keep_texts: wrap the student's ``preprocess`` so the trainer's default collator keeps the
            batch's raw texts for the teacher (:func:`~student_trainer.integrations.texts.keep_raw_texts`):
            build the loss before the trainer and nothing else in the script changes. ``False``:
            pass ``data_collator=TeacherTextCollator(model.preprocess)`` to the trainer instead.

    Subclasses set ``signal`` (what the teacher must offer), ``min_columns`` and implement
    :meth:`request_teacher` and :meth:`compute_loss_from_embeddings`.
    """

    signal: ClassVar[str]
    min_columns: ClassVar[int]
    columns_hint: ClassVar[str]

    def __init__(self, model: nn.Module, client: TeacherClient | str, teacher: str, timeout_s: float = 300.0,
                 keep_texts: bool = True) -> None:
        super().__init__()
        name = type(self).__name__
        if isinstance(client, str):
            client = TeacherClient.from_url(client, token=os.environ.get(TOKEN_ENV) or None)
        if not isinstance(client, TeacherClient):
            raise ValueError(f"{name}: client must be the service's URL or a TeacherClient (TeacherClient.from_url(...) "
                             f"or TeacherClient.from_serve()), got {type(client).__name__}")
        self.model = model
        self.teacher = teacher
        self.client = client.with_teacher(teacher)
        self.timeout_s = check_positive("timeout_s", timeout_s, name)
        # Asked once, here, so a wrong name fails before training starts rather than at step 1.
        self.teacher_info = describe_teacher(self.client, teacher, self.signal, name)
        self._labels_noted = False
        if keep_texts:
            keep_raw_texts(model)

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None = None) -> Tensor:
        features, texts = split_texts(sentence_features, type(self).__name__)
        if len(texts) < self.min_columns:
            raise ValueError(f"{type(self).__name__} needs at least {self.min_columns} text columns "
                             f"({self.columns_hint}), got {len(texts)}")
        self._note_labels(labels)
        # The request goes out before the student's forward pass, so the two run at the same time.
        targets = self.request_teacher(texts)
        embeddings = embed_columns(self.model, features)
        return self.compute_loss_from_embeddings(embeddings, targets())

    @abstractmethod
    def request_teacher(self, texts: list[list[str]]) -> TeacherTargets:
        """Send the teacher request(s) for the batch's text columns; return what waits for the answer."""

    @abstractmethod
    def compute_loss_from_embeddings(self, embeddings: list[Tensor], teacher_targets: Any) -> Tensor:
        """The loss from the student's per-column embeddings and the teacher's targets."""

    def wait(self, future: ResultFuture) -> dict[str, Any]:
        return future.result(timeout=self.timeout_s)

    def request_group_scores(self, texts: list[list[str]]) -> TeacherTargets:
        """One ``pairs`` request for each query's own documents; waits to ``[B, 1 + k]`` scores,
        the positive (second column of the dataset) first, then the ``k`` negatives."""
        queries, documents = texts[0], texts[1:]
        future = self.client.submit_score(queries * len(documents), [t for column in documents for t in column], mode="pairs")

        def scores() -> Tensor:
            # The pairs go column by column (all positives, then all first negatives, ...).
            return as_tensor(self.wait(future)["scores"]).reshape(len(documents), len(queries)).T

        return scores

    def _note_labels(self, labels: Tensor | None) -> None:
        if labels is not None and not self._labels_noted:
            self._labels_noted = True
            log.warning("%s ignores the dataset's label column: teacher '%s' supplies the targets of every batch",
                        type(self).__name__, self.teacher)

    def get_config_dict(self) -> dict[str, Any]:
        return {"teacher": self.teacher, "teacher_kind": self.teacher_info["kind"]}


def student_group_scores(embeddings: list[Tensor], pairwise: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    """``[B, 1 + k]`` student scores of each query (column 0) with its own documents (columns 1..)."""
    query = embeddings[0]
    return torch.stack([pairwise(query, documents) for documents in embeddings[1:]], dim=1)


def teacher_tensor(values: Tensor, like: Tensor) -> Tensor:
    """Teacher targets on the student's device, float32 (the losses compute in float32)."""
    return values.to(device=like.device, dtype=torch.float32)
