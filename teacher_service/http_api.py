"""The HTTP API: a FastAPI ingress in front of the teacher deployments.

Routes (JSON, OpenAPI at ``/openapi.json``):

* ``GET /healthz`` - liveness, never needs auth;
* ``GET /v1/teachers`` - each teacher's kind, dims, similarity, signals and limits;
* ``POST /v1/encode`` ``{teacher, texts, role}`` -> ``{embeddings}``;
* ``POST /v1/score`` ``{teacher, queries, documents, mode}`` -> ``{scores}``;
* ``POST /v1/signals`` -> scores and embeddings for a training batch in one round trip.

Send ``Accept: application/vnd.apache.arrow.stream`` to get arrays as an Arrow IPC stream
instead of JSON lists. Every error is ``{"error": {"code", "message"}}`` with a 4xx status
(5xx only for real faults), and the service keeps serving.
"""


import hmac
import json
import os
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle

from teacher_service.arrow_io import ARROW_STREAM, arrays_to_ipc
from teacher_service.errors import (
    Overloaded,
    RequestTooLarge,
    TeacherServiceError,
    Unauthorized,
    UnknownTeacher,
)
from teacher_service.schemas import EncodeRequest, ScoreRequest, ServiceLimits, SignalsRequest, describe_validation_error

api = FastAPI(
    title="tightdistill teacher service",
    description="Frozen IR teachers (dual-encoders, ColBERT, cross-encoders) serving scores and embeddings.",
    version="0.1.0",
)

OPEN_PATHS = {"/healthz"}
RETRY_AFTER_S = "1"


def error_response(err: TeacherServiceError) -> JSONResponse:
    headers = {"Retry-After": RETRY_AFTER_S} if err.status == 429 else None
    return JSONResponse(err.to_body(), status_code=err.status, headers=headers)


@api.exception_handler(TeacherServiceError)
async def _service_error(_: Request, exc: TeacherServiceError) -> JSONResponse:
    return error_response(exc)


@api.exception_handler(RequestValidationError)
async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return JSONResponse({"error": {"code": "invalid_json", "message": "request body is not valid JSON"}}, status_code=400)
    return JSONResponse({"error": {"code": "invalid_request", "message": describe_validation_error(exc)}}, status_code=422)


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
        path = scope["path"]
        root = scope.get("root_path", "")
        if root and path.startswith(root):  # apps deployed under a route prefix see it in the path
            path = path[len(root):] or "/"
        if token and path not in OPEN_PATHS:
            given = headers.get("authorization", "")
            # Constant-time comparison: the time taken says nothing about how much of the token matched.
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                await _send(send, error_response(Unauthorized("missing or wrong bearer token (Authorization: Bearer <token>)")))
                return
        limit = GuardMiddleware.max_body_bytes
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _send(send, error_response(RequestTooLarge(f"request body of {declared} bytes exceeds the limit of {limit}")))
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > limit:
                await _send(send, error_response(RequestTooLarge(f"request body exceeds the limit of {limit} bytes")))
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


api.add_middleware(GuardMiddleware)


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

    def __init__(self, teachers: dict[str, DeploymentHandle], limits: dict[str, Any], token_env: str) -> None:  # noqa: D107
        self.teachers = teachers
        self.limits = ServiceLimits.model_validate(limits)
        GuardMiddleware.token = os.environ.get(token_env, "")
        GuardMiddleware.max_body_bytes = self.limits.max_body_bytes

    def _handle(self, name: str) -> DeploymentHandle:
        if name not in self.teachers:
            raise UnknownTeacher(f"unknown teacher '{name}'; available: {', '.join(sorted(self.teachers))}")
        return self.teachers[name]

    async def _run(self, op: str, req: Any) -> dict[str, np.ndarray]:
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
        return encode_arrays(await self._run("encode", req), request)

    @api.post("/v1/score")
    async def score(self, req: ScoreRequest, request: Request) -> Response:
        return encode_arrays(await self._run("score", req), request)

    @api.post("/v1/signals")
    async def signals(self, req: SignalsRequest, request: Request) -> Response:
        return encode_arrays(await self._run("signals", req), request)
