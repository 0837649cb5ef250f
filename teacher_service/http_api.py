"""The HTTP API: a FastAPI ingress in front of the teacher deployments.

Routes (JSON, OpenAPI at ``/openapi.json``):

* ``GET /healthz`` - liveness, never needs auth;
* ``GET /v1/teachers`` - each teacher's kind, dims, similarity, signals and limits;
* ``POST /v1/encode`` ``{teacher, texts, role}`` -> ``{embeddings}``;
* ``POST /v1/score`` ``{teacher, queries, documents, mode}`` -> ``{scores}``;
* ``POST /v1/signals`` -> scores and embeddings for a training batch in one round trip;

and, from :mod:`teacher_service.standard_routes`, OpenAI's ``POST /v1/embeddings`` /
``GET /v1/models`` and TEI's ``POST /embed`` / ``POST /rerank``, under the same auth and limits.

Send ``Accept: application/vnd.apache.arrow.stream`` to get arrays as an Arrow IPC stream
instead of JSON lists. Every error is ``{"error": {"code", "message"}}`` with a 4xx status
(5xx only for real faults), and the service keeps serving. Every response is counted and timed
per route and teacher in Prometheus metrics (:mod:`teacher_service.service_metrics`).
"""


import hmac
import json
import os
import time
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from ray import serve
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from teacher_service.arrow_io import ARROW_STREAM, arrays_to_ipc
from teacher_service.errors import (
    InvalidRequest,
    Overloaded,
    RequestTooLarge,
    TeacherServiceError,
    Unauthorized,
    UnknownTeacher,
)
from teacher_service.schemas import EncodeRequest, ScoreRequest, ServiceLimits, SignalsRequest, describe_validation_error
from teacher_service.service_metrics import ERROR_KEY, NO_TEACHER, TEACHER_KEY, UNKNOWN, IngressMetrics
from teacher_service.standard_routes import OPENAI_PATHS, openai_error_body
from teacher_service.standard_routes import router as standard_router

api = FastAPI(
    title="tightdistill teacher service",
    description="Frozen IR teachers (dual-encoders, ColBERT, cross-encoders) serving scores and embeddings.",
    version="0.1.0",
)

OPEN_PATHS = {"/healthz"}
RETRY_AFTER_S = "1"


def route_path(scope: dict) -> str:
    """The request path below the app's route prefix (apps deployed under a prefix see it in the path)."""
    path, root = scope["path"], scope.get("root_path", "")
    return (path[len(root):] or "/") if root and path.startswith(root) else path


def error_response(err: TeacherServiceError, scope: dict) -> JSONResponse:
    """The JSON error response (OpenAI's error fields added on its routes); notes the code for the metrics."""
    scope[ERROR_KEY] = err.code
    headers = {"Retry-After": RETRY_AFTER_S} if err.status == 429 else None
    body = openai_error_body(err) if route_path(scope) in OPENAI_PATHS else err.to_body()
    return JSONResponse(body, status_code=err.status, headers=headers)


@api.exception_handler(TeacherServiceError)
async def _service_error(request: Request, exc: TeacherServiceError) -> JSONResponse:
    return error_response(exc, request.scope)


@api.exception_handler(HTTPException)
async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    """No such route (404) or method (405): the same error body as every other error."""
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, f"http_{exc.status_code}")
    message = f"{request.method} {route_path(request.scope)}: {exc.detail}"
    return error_response(TeacherServiceError(message, code=code, status=exc.status_code), request.scope)


@api.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return error_response(TeacherServiceError("request body is not valid JSON", code="invalid_json", status=400), request.scope)
    return error_response(InvalidRequest(describe_validation_error(exc)), request.scope)


class GuardMiddleware:
    """Pure ASGI middleware: bearer-token auth and a request body cap, before any parsing.

    The body is buffered up to the cap (so a chunked upload without Content-Length is capped too)
    and replayed to the app.
    """

    # Set by the ingress replica at start-up (one process per replica, so module state is per replica).
    token: str = ""
    max_body_bytes: int = ServiceLimits().max_body_bytes

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        token = GuardMiddleware.token
        if token and route_path(scope) not in OPEN_PATHS:
            given = headers.get("authorization", "")
            # Constant-time comparison: the time taken says nothing about how much of the token matched.
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                await _send(send, error_response(Unauthorized("missing or wrong bearer token (Authorization: Bearer <token>)"), scope))
                return
        limit = GuardMiddleware.max_body_bytes
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _send(send, error_response(RequestTooLarge(f"request body of {declared} bytes exceeds the limit of {limit}"), scope))
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > limit:
                await _send(send, error_response(RequestTooLarge(f"request body exceeds the limit of {limit} bytes"), scope))
                return
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class MetricsMiddleware:
    """Pure ASGI middleware, outermost: counts and times every response by route, teacher and status.

    It sees what the guard refuses too. The route is the matched route's template (``unmatched``
    otherwise); the teacher and the error code are what the handlers left in the scope.
    """

    # Set by the ingress replica at start-up, like the guard's token.
    metrics: IngressMetrics | None = None

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        metrics = MetricsMiddleware.metrics
        if scope["type"] != "http" or metrics is None:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # an exception that escapes the app becomes a 500 further out

        async def send_and_note(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            code = scope.get(ERROR_KEY) or ("internal_error" if status >= 500 else None)
            metrics.record(route, scope.get(TEACHER_KEY, NO_TEACHER), status, code, time.perf_counter() - started)


api.add_middleware(GuardMiddleware)
api.add_middleware(MetricsMiddleware)  # added last = outermost
api.include_router(standard_router)


async def _send(send: Any, response: Response) -> None:
    await send({"type": "http.response.start", "status": response.status_code, "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body})


def encode_arrays(arrays: dict[str, np.ndarray], request: Request) -> Response:
    """Arrays as Arrow IPC when the client accepts it, else as JSON lists."""
    if ARROW_STREAM in request.headers.get("accept", ""):
        return Response(arrays_to_ipc(arrays), media_type=ARROW_STREAM)
    body = json.dumps({k: v.tolist() for k, v in arrays.items()}, allow_nan=False)
    return Response(body, media_type="application/json")


@serve.deployment(logging_config={"enable_access_log": False}, max_ongoing_requests=256)
@serve.ingress(api)
class TeacherAPI:
    """Ingress replica: validates, authenticates and routes requests to teacher deployments."""

    def __init__(self, teachers: dict[str, DeploymentHandle], limits: dict[str, Any], token_env: str,  # noqa: D107
                 default_teacher: str | None = None) -> None:
        self.teachers = teachers
        self.limits = ServiceLimits.model_validate(limits)
        # TEI-style routes address one model: this teacher unless the request names another.
        self.default_teacher = default_teacher or next(iter(teachers))
        GuardMiddleware.token = os.environ.get(token_env, "")
        GuardMiddleware.max_body_bytes = self.limits.max_body_bytes
        MetricsMiddleware.metrics = IngressMetrics()
        api.state.teacher_backend = self  # how the standard routes (plain functions) reach the teachers

    def _handle(self, name: str) -> DeploymentHandle:
        if name not in self.teachers:
            raise UnknownTeacher(f"unknown teacher '{name}'; available: {', '.join(sorted(self.teachers))}")
        return self.teachers[name]

    def teacher_names(self) -> list[str]:
        return list(self.teachers)

    async def run(self, op: str, req: Any, request: Request) -> dict[str, np.ndarray]:
        """Send a validated request to its teacher; labels the response's metrics with the teacher."""
        # Only configured names become label values: a client cannot grow the metrics' label set.
        request.scope[TEACHER_KEY] = req.teacher if req.teacher in self.teachers else UNKNOWN
        try:
            return await self._handle(req.teacher).run.remote(op, req)
        except BackPressureError:
            raise Overloaded(f"teacher '{req.teacher}' is at its queue limit; retry after {RETRY_AFTER_S}s") from None

    async def list_teachers(self) -> list[dict[str, Any]]:
        return [await handle.describe.remote() for handle in self.teachers.values()]

    @api.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/v1/teachers")
    async def teachers_route(self) -> dict[str, Any]:
        return {"teachers": await self.list_teachers()}

    @api.post("/v1/encode")
    async def encode(self, req: EncodeRequest, request: Request) -> Response:
        return encode_arrays(await self.run("encode", req, request), request)

    @api.post("/v1/score")
    async def score(self, req: ScoreRequest, request: Request) -> Response:
        return encode_arrays(await self.run("score", req, request), request)

    @api.post("/v1/signals")
    async def signals(self, req: SignalsRequest, request: Request) -> Response:
        return encode_arrays(await self.run("signals", req, request), request)
