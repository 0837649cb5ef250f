"""Online teacher signals for a training batch: requested while the previous step computes.

For each batch the trainer needs the teacher's in-batch score matrix and, for embedding matching,
its query (and document) embeddings. They always come from the live service, never a score file:

* a dual-encoder teacher whose document embeddings the run already holds (the inherited index)
  is asked only for the batch's **query embeddings**; the matrix is then ``sim(q_t, d_t)`` over the
  teacher's own document embeddings, the same numbers its ``signals`` route would compute, without
  re-encoding documents it has already encoded;
* any other teacher (ColBERT, cross-encoder, or a DE without an index) is asked for ``signals``:
  the full matrix and the embeddings it has, in one round trip.

With a teacher **ensemble** (``teacher.teachers``) every member is asked for the batch at once:
the primary (first) member as above, and each other member for its score matrix only (from its
own inherited index when it is a dual-encoder the run holds one for, else the service's
``score`` route). Each member's matrix is calibrated per query and the weighted mean is the score
target (``student_trainer.score_calibration``); embeddings always come from the primary member.
``TeacherSignals.per_teacher`` keeps each member's calibrated matrix, so the run can record which
teacher said what.

Fresh candidates (student-mined negatives) are scored on demand with :meth:`TeacherSignalSource.score_candidates`.

A request that fails because the teacher is restarting or overloaded is re-sent with backoff
until ``timeout_s``; then the run fails with a clear :class:`TeacherUnavailable`. Only such
faults are retried (:func:`is_transient`): any other error, and anything that goes wrong while
the signals are built from the answers (the held index's lookup, the score matrix), fails the
step at once with its own exception.
"""

from __future__ import annotations

import functools
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from common.scoring import similarity_fns
from student_trainer.errors import TeacherUnavailable
from student_trainer.score_calibration import calibrate, combine
from student_trainer.teacher_index import DocEmbeddings
from teacher_service.client import Arrays, ResultFuture, TeacherClient
from teacher_service.errors import Overloaded, TeacherServiceError, Unavailable

log = logging.getLogger(__name__)


def as_tensor(x: np.ndarray) -> torch.Tensor:
    """A tensor over ``x``; arrays straight from Ray's object store are read-only, and torch
    needs a writable buffer, so those (only those) are copied."""
    return torch.from_numpy(np.require(x, requirements="W"))


@functools.cache
def transient_errors() -> tuple[type[BaseException], ...]:
    """The error types of a teacher that is down, restarting or overloaded, not of a bad request.

    Waiting and re-sending can cure these, so they are retried until ``timeout_s``; a bug (a
    KeyError, a shape error, a replica's own exception, which Ray re-raises as a ``RayTaskError``)
    fails the same way on every try, and retrying it would only hide it for ``timeout_s`` behind
    a misleading :class:`TeacherUnavailable`. A function, not a constant, so that importing this
    module does not import Ray and Serve (the HTTP client needs neither).
    """
    from ray.exceptions import NodeDiedError, ObjectLostError, RayActorError, WorkerCrashedError
    from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError

    return (
        TimeoutError,  # a hung replica: DeploymentResponse.result and Future.result (GetTimeoutError too)
        ConnectionError,
        Overloaded, Unavailable,  # the service's own 429 and 503 (HTTP, or raised inside a replica)
        RayActorError,  # a replica that died or is unreachable (ActorDiedError, ActorUnavailableError)
        WorkerCrashedError, NodeDiedError, ObjectLostError,  # its process or node went away, answer included
        BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError,  # Serve's own overload/outage
    )


def is_transient(exc: BaseException) -> bool:
    """Whether a failed wait for the teacher's answer is worth re-sending (see :func:`transient_errors`)."""
    if isinstance(exc, transient_errors()):
        return True
    # A bare 500 is retried too: over HTTP, Serve's proxy answers a replica that died mid-request
    # with a plain 500, the same as a crash in the app, and the client cannot tell them apart. A
    # crash costs ``timeout_s`` of retries (each logged); taking an outage for a bug would fail a
    # run that waiting would have saved. Other typed errors (4xx) say the request itself is wrong.
    return isinstance(exc, TeacherServiceError) and exc.status == 500


@dataclass
class TrainBatch:
    """One batch in the documented layout: query ``i``'s positive then its negatives, per query."""

    queries: list[str]  # B scored queries
    extra_queries: list[str]  # unlabelled queries, embedding matching only
    doc_ids: list[str]  # N = B * (1 + num_negatives)
    documents: list[str]
    num_negatives: int

    @property
    def all_queries(self) -> list[str]:
        return self.queries + self.extra_queries


@dataclass
class TeacherSignals:
    scores: np.ndarray  # [B, N], the (ensemble's calibrated) score target
    query_embeddings: np.ndarray | None  # [B + extra, d], primary teacher
    document_embeddings: np.ndarray | None  # [N, d], primary teacher
    per_teacher: dict[str, np.ndarray] | None = None  # ensembles: each member's calibrated [B, N]
    joint_embeddings: np.ndarray | None = None  # [B, d_j]: a [CLS]-pooled CE's (query, positive) [CLS] states


@dataclass
class Pending:
    batch: TrainBatch
    futures: dict[str, Any]
    sent_at: float


@dataclass
class TeacherMember:
    """One teacher of the (possibly one-member) ensemble, with what it needs to give scores."""

    name: str
    info: dict[str, Any]
    weight: float = 1.0
    calibration: str = "none"
    temperature: float = 1.0
    doc_index: DocEmbeddings | None = None  # a dual-encoder's own document embeddings, if the run holds them

    @property
    def local_matrix(self) -> bool:
        """Scores from the service's query embeddings and the held document embeddings."""
        return self.info["kind"] == "dual_encoder" and self.doc_index is not None

    def calibrated(self, scores: np.ndarray) -> np.ndarray:
        return calibrate(scores, self.calibration, self.temperature)  # type: ignore[arg-type]


class TeacherSignalSource:
    """Submits and collects a batch's teacher signals (with retries), for one training worker.

    ``teacher``/``info``/``doc_index`` describe the primary teacher; ``ensemble`` (optional) lists
    every member, primary first, with its weight and calibration. Without it the source is the
    single uncalibrated teacher it always was.
    """

    def __init__(self, client: TeacherClient, teacher: str, info: dict[str, Any], doc_index: DocEmbeddings | None,
                 want_query_embeddings: bool, timeout_s: float = 300.0,
                 ensemble: list[TeacherMember] | None = None, want_joint_embeddings: bool = False,
                 want_document_embeddings: bool = False) -> None:
        self.client = client.with_teacher(teacher)
        self.info = info
        self.doc_index = doc_index
        self.want_query_embeddings = want_query_embeddings
        self.want_joint_embeddings = want_joint_embeddings
        self.want_document_embeddings = want_document_embeddings
        self.timeout_s = timeout_s
        self.members = ensemble or [TeacherMember(teacher, info, doc_index=doc_index)]
        if self.members[0].name != teacher:
            raise ValueError(f"the ensemble's first member must be the primary teacher '{teacher}', "
                             f"got '{self.members[0].name}'")
        self.members[0].doc_index = doc_index
        self._clients = {m.name: client.with_teacher(m.name) for m in self.members}
        self.local_matrix = self.members[0].local_matrix
        self._matrix_fns = {m.name: similarity_fns(m.info["similarity"])[0] for m in self.members if m.local_matrix}
        self.requests_sent = 0
        self.requests_by_teacher = {m.name: 0 for m in self.members}

    @property
    def is_ensemble(self) -> bool:
        return len(self.members) > 1

    def _count(self, name: str, n: int = 1) -> None:
        self.requests_sent += n
        self.requests_by_teacher[name] += n

    def submit(self, batch: TrainBatch) -> Pending:
        return Pending(batch, self._send(batch), time.monotonic())

    def _send(self, batch: TrainBatch) -> dict[str, Any]:
        futures = self._send_primary(batch)
        for m in self.members[1:]:
            client = self._clients[m.name]
            if m.local_matrix:
                futures[f"member:{m.name}"] = client.submit_encode(batch.queries, role="query")
            else:
                futures[f"member:{m.name}"] = client.submit_score(batch.queries, batch.documents, mode="matrix")
            self._count(m.name)
        return futures

    def _send_primary(self, batch: TrainBatch) -> dict[str, Any]:
        primary = self.members[0].name
        if self.local_matrix:
            self._count(primary)
            return {"query": self.client.submit_encode(batch.all_queries, role="query")}
        futures = {"signals": self.client.submit_signals(batch.queries, batch.documents, mode="matrix",
                                                          embeddings=self._wants_embeddings())}
        self._count(primary)
        if batch.extra_queries and self.want_query_embeddings:
            futures["extra"] = self.client.submit_encode(batch.extra_queries, role="query")
            self._count(primary)
        return futures

    def _wants_embeddings(self) -> bool:
        """Whether to ask ``signals`` for embeddings. A representation teacher's come with its
        scoring pass (and may stand in for documents); a cross-encoder's proxies and joint states
        are copied out of every one of its B x N passes, so only when a loss uses them."""
        offered = set(self.info["signals"])
        return ("pooled_embeddings" in offered
                or ("proxy_embeddings" in offered and (self.want_query_embeddings or self.want_document_embeddings))
                or ("joint_embeddings" in offered and self.want_joint_embeddings))

    def collect(self, pending: Pending) -> TeacherSignals:
        """Wait for a batch's signals, re-sending the request while the teacher is down.

        Only the wait is retried: building the signals from the answers is local and
        deterministic, so an error there is a bug that must fail the step at once."""
        results = self._with_retries(pending.futures, pending.sent_at, lambda: self._send(pending.batch))
        return self._assemble(pending.batch, results)

    def _with_retries(self, futures: dict[Any, ResultFuture] | None, sent_at: float,
                      resend: Callable[[], dict[Any, ResultFuture]]) -> dict[Any, Arrays]:
        """The answers of ``futures`` (sent at ``sent_at``; None: not sent yet), re-sent with
        ``resend`` after a transient error (:func:`is_transient`) until ``timeout_s`` has passed
        since ``sent_at``. Any other error is raised as it is."""
        deadline = sent_at + self.timeout_s
        attempt = 0
        while True:
            try:
                if futures is None:  # re-sending can meet the outage too (a handle refreshing its replicas)
                    futures = resend()
                # Bounded wait: a hung (not dead) teacher must not hold the run past the deadline.
                return {k: f.result(timeout=max(0.0, deadline - time.monotonic())) for k, f in futures.items()}
            except Exception as exc:
                if not is_transient(exc):
                    raise
                error: Exception = exc
            attempt += 1
            if time.monotonic() >= deadline:
                raise TeacherUnavailable(
                    f"teacher '{self.info['name']}' gave no signals for {self.timeout_s:.0f}s "
                    f"({attempt} tries; last error: {type(error).__name__}: {str(error).splitlines()[0][:200]})"
                ) from None
            delay = min(10.0, 0.5 * 2 ** min(attempt, 5)) * (0.5 + random.random())
            log.warning("teacher request failed (%s); retrying in %.1fs", type(error).__name__, delay)
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            futures = None

    def _local_scores(self, member: TeacherMember, q: np.ndarray, doc_ids: list[str]) -> np.ndarray:
        d = member.doc_index.lookup(doc_ids)
        return self._matrix_fns[member.name](as_tensor(q), as_tensor(d)).numpy()

    def _assemble(self, batch: TrainBatch, results: dict[str, dict[str, np.ndarray]]) -> TeacherSignals:
        b = len(batch.queries)
        primary = self.members[0]
        joint = None
        if self.local_matrix:
            q = results["query"]["embeddings"]
            d = self.doc_index.lookup(batch.doc_ids)
            scores = self._matrix_fns[primary.name](as_tensor(q[:b]), as_tensor(d)).numpy()
        else:
            sig = results["signals"]
            q = sig.get("query_embeddings")
            if q is not None and "extra" in results:
                q = np.concatenate([q, results["extra"]["embeddings"]])
            d = sig.get("document_embeddings")
            if d is None and self.doc_index is not None:
                d = self.doc_index.lookup(batch.doc_ids)
            scores = sig["scores"]
            joint = sig.get("joint_embeddings")
        if not self.is_ensemble:
            return TeacherSignals(primary.calibrated(scores), q, d, joint_embeddings=joint)
        raw = {primary.name: scores}
        for m in self.members[1:]:
            out = results[f"member:{m.name}"]
            raw[m.name] = (self._local_scores(m, out["embeddings"], batch.doc_ids) if m.local_matrix
                           else out["scores"])
        per_teacher = {m.name: m.calibrated(raw[m.name]) for m in self.members}
        target = combine([per_teacher[m.name] for m in self.members], [m.weight for m in self.members])
        return TeacherSignals(target, q, d, per_teacher, joint)

    def score_candidates(self, queries: list[str], doc_ids: list[list[str]], documents: list[list[str]],
                         chunk: int = 64) -> list[np.ndarray]:
        """The (ensemble) teacher's scores of each query's own candidate list, on demand.

        ``doc_ids[i]`` / ``documents[i]`` are query ``i``'s candidates; returns one ``[len]``
        array per query, calibrated per query over its list and combined like the batch target.
        Dual-encoders with a held index are asked for the query embeddings only; other teachers
        score the (query, candidate) pairs. Requests are chunked (``chunk`` texts) to stay within
        the service's per-request limits.
        """
        flat_q = [q for q, ids in zip(queries, doc_ids) for _ in ids]
        flat_ids = [d for ids in doc_ids for d in ids]
        flat_docs = [t for texts in documents for t in texts]
        bounds = np.cumsum([0, *map(len, doc_ids)])

        def send() -> dict[Any, ResultFuture]:
            futures: dict[Any, ResultFuture] = {}
            for m in self.members:
                client = self._clients[m.name]
                if m.local_matrix:
                    parts = [client.submit_encode(queries[i : i + chunk], role="query") for i in range(0, len(queries), chunk)]
                else:
                    parts = [client.submit_score(flat_q[i : i + chunk], flat_docs[i : i + chunk], mode="pairs")
                             for i in range(0, len(flat_q), chunk)]
                self._count(m.name, len(parts))
                futures.update({(m.name, j): f for j, f in enumerate(parts)})
            return futures

        # Retried like a batch's signals; the scores are computed from the answers outside the
        # retries, so a bug there (an id missing from the held index) is not taken for an outage.
        results = self._with_retries(None, time.monotonic(), send)
        per_member: dict[str, list[np.ndarray]] = {}
        for m in self.members:
            arrays = [a for (name, _), a in results.items() if name == m.name]  # in chunk order
            if m.local_matrix:
                q = np.concatenate([a["embeddings"] for a in arrays])
                d = m.doc_index.lookup(flat_ids)
                _, pairs_fn = similarity_fns(m.info["similarity"])
                flat = pairs_fn(as_tensor(np.repeat(q, np.diff(bounds), axis=0)), as_tensor(d)).numpy()
            else:
                flat = np.concatenate([a["scores"] for a in arrays])
            per_member[m.name] = [m.calibrated(flat[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
        return [combine([per_member[m.name][i] for m in self.members], [m.weight for m in self.members])
                for i in range(len(queries))]
