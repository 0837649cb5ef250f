"""``TeacherClient``: one Python interface to the teacher service, over a Ray handle or HTTP.

Inside Ray (a Train worker, a Serve replica, a driver connected to the cluster) use
``TeacherClient.from_serve()``: calls go straight to the teacher deployment through its
``DeploymentHandle``, arrays travel as numpy through Ray's object store. Anywhere else use
``TeacherClient.from_url("http://127.0.0.1:8000")``: JSON or Arrow over HTTP, with retries and
backoff. Both return float32 numpy arrays and raise the same typed errors
(:mod:`teacher_service.errors`).

``submit_*`` methods return a future so a trainer can ask for the next batch's signals before it
computes the current one.

The HTTP path needs only requests, numpy, pyarrow and pydantic: this module and what it imports
(schemas, errors, arrow_io, spec, common.config) never import torch, Ray, transformers or FastAPI;
Ray is imported inside :class:`HandleTransport` alone.
"""

from __future__ import annotations

import random
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

import numpy as np

from teacher_service.arrow_io import ARROW_STREAM, ipc_to_arrays
from teacher_service.errors import InvalidRequest, TeacherServiceError, Unavailable, UnknownTeacher, error_from_body
from teacher_service.schemas import EncodeRequest, Role, ScoreMode, ScoreRequest, SignalsRequest, parse_request
from teacher_service.spec import APP_NAME, deployment_name

Arrays = dict[str, np.ndarray]


class ResultFuture(Protocol):
    def result(self, timeout: float | None = None) -> Arrays: ...


class Transport(Protocol):
    def teachers(self) -> list[dict[str, Any]]: ...

    def submit(self, op: str, request: Any) -> ResultFuture: ...


class HandleTransport:
    """Calls the teacher deployments through Ray Serve handles (no HTTP, no JSON)."""

    def __init__(self, app_name: str = APP_NAME) -> None:
        from ray import serve  # imported here so the HTTP client needs no Ray

        self._serve = serve
        self.app_name = app_name
        self._handles: dict[str, Any] = {}

    def teachers(self, timeout_s: float = 60.0) -> list[dict[str, Any]]:
        # Bounded: a frozen (not dead) app must fail the caller's retry loop, not hang it.
        return self._serve.get_app_handle(self.app_name).list_teachers.remote().result(timeout_s=timeout_s)

    def _handle(self, teacher: str) -> Any:
        if teacher not in self._handles:
            try:
                self._handles[teacher] = self._serve.get_deployment_handle(deployment_name(teacher), self.app_name)
            except Exception:
                names = [t["name"] for t in self.teachers()]
                raise UnknownTeacher(f"unknown teacher '{teacher}'; available: {', '.join(names)}") from None
        return self._handles[teacher]

    def submit(self, op: str, request: Any) -> ResultFuture:
        return _HandleFuture(self._handle(request.teacher).run.remote(op, request))


def _text_list(field: str, texts: Any) -> list[Any]:
    """``texts`` as a list; a lone string (which ``list()`` would split into characters) or a
    non-iterable is refused like the service refuses it."""
    if isinstance(texts, (str, bytes)) or not hasattr(texts, "__iter__"):
        raise InvalidRequest(f"{field} must be a list of strings, got {type(texts).__name__}")
    return list(texts)


class _HandleFuture:
    """A ``DeploymentResponse`` whose errors come out as the service's own typed errors."""

    def __init__(self, response: Any) -> None:
        self.response = response

    def result(self, timeout: float | None = None) -> Arrays:
        try:
            return self.response.result(timeout_s=timeout)
        except TeacherServiceError as exc:
            # Ray re-raises a replica's exception as a subclass that also carries the remote
            # traceback in its message; hand the caller the original error.
            raise getattr(exc, "cause", exc) from None


class HttpTransport:
    """JSON requests, Arrow IPC responses, retries with exponential backoff on overload and faults.

    Retried: connection errors and timeouts, 429 (waiting at least its ``Retry-After``), 502, 503
    and 504; every operation is a pure function of its request, so a retry is safe. ``timeout_s``
    bounds each attempt. When the retries run out the last error is raised as its typed error
    (:class:`~teacher_service.errors.Overloaded`, :class:`~teacher_service.errors.Unavailable`...).
    """

    RETRY_STATUS = {429, 502, 503, 504}

    def __init__(self, url: str, token: str | None = None, timeout_s: float = 120.0, retries: int = 6,
                 backoff_s: float = 0.5, max_backoff_s: float = 30.0, arrow: bool = True, workers: int = 4) -> None:
        import requests  # light dependency, imported lazily like Ray above

        self._requests = requests
        self.url = url.rstrip("/")
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.arrow = arrow
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="teacher-http")

    def _request(self, method: str, path: str, json_body: Any = None) -> Any:
        headers = {"Accept": ARROW_STREAM} if self.arrow and method == "POST" else {}
        for attempt in range(self.retries + 1):
            try:
                resp = self.session.request(method, self.url + path, json=json_body, headers=headers, timeout=self.timeout_s)
            except (self._requests.ConnectionError, self._requests.Timeout, self._requests.exceptions.ChunkedEncodingError) as exc:
                if attempt == self.retries:
                    raise Unavailable(f"teacher service at {self.url} unreachable after {attempt + 1} tries: {exc}") from None
                self._sleep(attempt, None)
                continue
            if resp.status_code in self.RETRY_STATUS and attempt < self.retries:
                self._sleep(attempt, resp.headers.get("Retry-After"))
                continue
            if resp.status_code >= 400:
                try:
                    body = resp.json()
                except ValueError:
                    body = resp.text
                raise error_from_body(body, resp.status_code)
            if resp.headers.get("content-type", "").startswith(ARROW_STREAM):
                return ipc_to_arrays(resp.content)
            return resp.json()
        raise AssertionError("unreachable")

    def _sleep(self, attempt: int, retry_after: str | None) -> None:
        # Jitter: retrying clients do not stampede together. The server's Retry-After is a floor.
        delay = min(self.max_backoff_s, self.backoff_s * 2**attempt) * (0.5 + random.random())
        if retry_after and retry_after.replace(".", "", 1).isdigit():
            delay = max(delay, min(float(retry_after), self.max_backoff_s))
        time.sleep(delay)

    def teachers(self) -> list[dict[str, Any]]:
        return self._request("GET", "/v1/teachers")["teachers"]

    def health(self) -> dict[str, Any]:
        return self._request("GET", "/healthz")

    def call(self, op: str, request: Any) -> Arrays:
        out = self._request("POST", f"/v1/{op}", request.model_dump())
        return {k: np.asarray(v, dtype=np.float32) if isinstance(v, list) else v for k, v in out.items()}

    def submit(self, op: str, request: Any) -> Future:
        return self._pool.submit(self.call, op, request)


class LocalTransport:
    """Teachers in this process, no Ray and no HTTP: offline evaluation and the in-process baseline
    the benchmarks compare the service against. Requests run one at a time on one thread, as a
    training loop that calls its teacher inline would."""

    def __init__(self, teachers: list[Any], limits: Any = None) -> None:
        from teacher_service.schemas import ServiceLimits, check_limits

        self._teachers = {t.name: t for t in teachers}
        self._limits = limits or ServiceLimits()
        self._check = check_limits
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="teacher-local")

    def teachers(self) -> list[dict[str, Any]]:
        return [t.describe().model_dump() for t in self._teachers.values()]

    def submit(self, op: str, request: Any) -> Future:
        if request.teacher not in self._teachers:
            raise UnknownTeacher(f"unknown teacher '{request.teacher}'; available: {', '.join(self._teachers)}")
        self._check(request, self._limits)
        return self._pool.submit(self._teachers[request.teacher].run, request)


class TeacherClient:
    """Ask a teacher for embeddings, scores, or all the signals of a training batch."""

    def __init__(self, transport: Transport, teacher: str | None = None) -> None:
        self.transport = transport
        self._teacher = teacher

    @classmethod
    def from_serve(cls, app_name: str = APP_NAME, teacher: str | None = None) -> TeacherClient:
        return cls(HandleTransport(app_name), teacher)

    @classmethod
    def in_process(cls, *teachers: Any) -> TeacherClient:
        """A client over teachers built in this process (``teacher_service.kinds.build_teacher``)."""
        return cls(LocalTransport(list(teachers)), teachers[0].name if len(teachers) == 1 else None)

    @classmethod
    def from_url(cls, url: str = "http://127.0.0.1:8000", teacher: str | None = None, **kwargs: Any) -> TeacherClient:
        return cls(HttpTransport(url, **kwargs), teacher)

    @property
    def teacher(self) -> str:
        """The default teacher: the one named at construction, else the service's only teacher."""
        if self._teacher is None:
            names = [t["name"] for t in self.teachers()]
            if len(names) != 1:
                raise UnknownTeacher(f"the service has {len(names)} teachers ({', '.join(names)}); name one")
            self._teacher = names[0]
        return self._teacher

    def with_teacher(self, teacher: str) -> TeacherClient:
        return TeacherClient(self.transport, teacher)

    def teachers(self) -> list[dict[str, Any]]:
        return self.transport.teachers()

    def describe(self, teacher: str | None = None) -> dict[str, Any]:
        name = teacher or self.teacher
        for info in self.teachers():
            if info["name"] == name:
                return info
        raise UnknownTeacher(f"unknown teacher '{name}'")

    def _submit(self, op: str, payload: dict[str, Any]) -> ResultFuture:
        payload["teacher"] = payload.get("teacher") or self.teacher
        return self.transport.submit(op, parse_request(op, payload))

    def submit_encode(self, texts: list[str], role: Role = "query", tokens: bool = False, teacher: str | None = None) -> ResultFuture:
        return self._submit("encode", {"texts": _text_list("texts", texts), "role": role, "tokens": tokens, "teacher": teacher})

    def submit_score(self, queries: list[str], documents: list[str], mode: ScoreMode = "pairs", teacher: str | None = None) -> ResultFuture:
        return self._submit("score", {"queries": _text_list("queries", queries), "documents": _text_list("documents", documents),
                                      "mode": mode, "teacher": teacher})

    def submit_signals(self, queries: list[str], documents: list[str], mode: ScoreMode = "matrix", embeddings: bool = True,
                       tokens: bool = False, teacher: str | None = None) -> ResultFuture:
        return self._submit("signals", {"queries": _text_list("queries", queries), "documents": _text_list("documents", documents), "mode": mode,
                                        "embeddings": embeddings, "tokens": tokens, "teacher": teacher})

    def encode(self, texts: list[str], role: Role = "query", teacher: str | None = None) -> np.ndarray:
        """Pooled embeddings ``[n, dim]`` (use :meth:`submit_encode` with ``tokens=True`` for token embeddings)."""
        return self.submit_encode(texts, role, teacher=teacher).result()["embeddings"]

    def encode_many(self, texts: list[str], role: Role = "query", teacher: str | None = None, chunk_size: int = 64,
                    in_flight: int = 4, progress: str | None = None) -> np.ndarray:
        """Embeddings of any number of texts: sent in chunks, a few in flight so the service's
        batcher always has work queued; ``progress`` names a tqdm bar (None: no bar)."""
        starts = range(0, len(texts), chunk_size)
        parts = self._pipelined([lambda i=i: self.submit_encode(texts[i : i + chunk_size], role, teacher=teacher) for i in starts],
                                "embeddings", len(texts), in_flight, progress, "text")
        return np.concatenate(parts) if parts else np.empty((0, 0), dtype=np.float32)

    def score_many(self, queries: list[str], documents: list[str], teacher: str | None = None, chunk_size: int = 64,
                   in_flight: int = 4, progress: str | None = None) -> np.ndarray:
        """Scores ``[n]`` of any number of aligned (query, document) pairs, chunked like
        :meth:`encode_many` (a cross-encoder re-ranking a candidate list, for instance)."""
        if len(queries) != len(documents):
            raise ValueError(f"{len(queries)} queries for {len(documents)} documents: pairs must align")
        starts = range(0, len(queries), chunk_size)
        parts = self._pipelined([lambda i=i: self.submit_score(queries[i : i + chunk_size], documents[i : i + chunk_size],
                                                               "pairs", teacher) for i in starts],
                                "scores", len(queries), in_flight, progress, "pair")
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.float32)

    @staticmethod
    def _pipelined(submits: list[Any], key: str, total: int, in_flight: int, progress: str | None,
                   unit: str) -> list[np.ndarray]:
        """Run ``submits`` (each sends one request) with at most ``in_flight`` unanswered, and
        return each answer's ``key`` array in order."""
        from tqdm.auto import tqdm

        parts: list[np.ndarray] = []
        pending: list[ResultFuture] = []
        with tqdm(total=total, desc=progress, unit=unit, disable=progress is None) as bar:
            for submit in submits:
                pending.append(submit())
                if len(pending) >= in_flight:
                    parts.append(pending.pop(0).result()[key])
                    bar.update(len(parts[-1]))
            for future in pending:
                parts.append(future.result()[key])
                bar.update(len(parts[-1]))
        return parts

    def score(self, queries: list[str], documents: list[str], mode: ScoreMode = "pairs", teacher: str | None = None) -> np.ndarray:
        """``[n]`` scores of aligned pairs, or the ``[nq, nd]`` matrix with ``mode="matrix"``."""
        return self.submit_score(queries, documents, mode, teacher).result()["scores"]

    def signals(self, queries: list[str], documents: list[str], mode: ScoreMode = "matrix", embeddings: bool = True,
                tokens: bool = False, teacher: str | None = None) -> Arrays:
        """Everything a training step needs in one round trip: ``scores`` and, if asked,
        ``query_embeddings`` / ``document_embeddings`` (and token embeddings), or a [CLS]-pooled
        cross-encoder's ``joint_embeddings``."""
        return self.submit_signals(queries, documents, mode, embeddings, tokens, teacher).result()


__all__ = ["EncodeRequest", "HandleTransport", "HttpTransport", "LocalTransport", "ScoreRequest", "SignalsRequest", "TeacherClient"]
