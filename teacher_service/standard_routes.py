"""Standard embedding APIs beside the native ones, so existing clients work unchanged.

* ``POST /v1/embeddings`` and ``GET /v1/models`` - OpenAI's embeddings API (the ``openai`` client
  with ``base_url=<service>/v1``). ``model`` names a teacher; ``input`` is a string or a list of
  strings; ``encoding_format`` ``float`` or ``base64`` (little-endian float32, what the client
  asks for by default); ``dimensions`` must equal the teacher's (teachers are not Matryoshka-
  trained, so the service refuses to shorten them). ``usage`` counts tokens by the service's
  estimate (characters / 4 per text, as the batcher does); nothing is billed. Extension: ``role``
  ``query`` (default, as ``/v1/encode``) or ``document``.
* ``POST /embed`` and ``POST /rerank`` - Hugging Face Text Embeddings Inference (TEI).
  ``/embed`` returns one vector per input (L2-normalised unless ``normalize: false``);
  ``prompt_name`` ``query`` / ``document`` / ``passage`` picks the role. ``/rerank`` scores
  ``query`` against every text and returns ``[{index, score(, text)}]`` by score, highest first;
  scores go through a sigmoid unless ``raw_scores: true`` (TEI's rule; the order is the same).
  TEI serves one model, so these routes use the service's default teacher (``default_teacher``
  in the service config, else the first teacher), or the teacher named by an ``X-Teacher``
  header or a ``model`` field (extensions). Teachers always truncate inputs to their maximum
  length at the end (TEI's ``auto_truncate``): ``truncate`` is accepted either way,
  ``truncation_direction: left`` is refused.

Auth, body caps and limits (``max_texts``, ``max_text_chars``, ...) are the native routes' own;
errors are ``{"error": {"code", "message"}}`` (on ``/v1/embeddings`` with OpenAI's ``type`` and
``param`` too), which the ``openai`` client turns into exceptions carrying the message and code.
"""

# No ``from __future__ import annotations``: FastAPI reads these handlers' annotations at import.

import base64
from typing import Annotated, Any, Literal, Protocol

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictStr, field_validator

from teacher_service.errors import InvalidRequest, TeacherServiceError
from teacher_service.schemas import EncodeRequest, Role, ScoreRequest, Text, estimate_tokens

OPENAI_PATHS = {"/v1/embeddings", "/v1/models"}
TEACHER_HEADER = "x-teacher"
PROMPT_ROLES: dict[str, Role] = {"query": "query", "document": "document", "passage": "document"}

router = APIRouter()


class Backend(Protocol):
    """What the routes need from the ingress (``http_api.TeacherAPI``)."""

    default_teacher: str

    def teacher_names(self) -> list[str]: ...

    async def run(self, op: str, req: Any, request: Request) -> dict[str, np.ndarray]: ...


def backend(request: Request) -> Backend:
    return request.app.state.teacher_backend


def openai_error_body(err: TeacherServiceError) -> dict[str, Any]:
    """Our error body plus the ``type`` and ``param`` fields of OpenAI's error object."""
    body = err.to_body()
    kind = {401: "authentication_error", 429: "rate_limit_error"}.get(err.status, "invalid_request_error")
    body["error"].update(type=kind if err.status < 500 else "server_error", param=None)
    return body


def _no_token_ids(value: Any) -> Any:
    """Both APIs also take token ids; the teachers tokenise themselves, so only text is accepted."""
    items = value if isinstance(value, list) else [value]
    if any(isinstance(v, (int, list)) and not isinstance(v, bool) for v in items):
        raise ValueError("token-id input is not supported; send text (a string or a list of strings)")
    return value


def _non_empty(value: str | list[str]) -> str | list[str]:
    if isinstance(value, list) and not value:
        raise ValueError("an empty list; send at least one text")
    return value


# A string or a non-empty list of non-empty strings, as both APIs take their input.
TextInput = Annotated[Text | list[Text], BeforeValidator(_no_token_ids), AfterValidator(_non_empty)]


def _as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else value


# --- OpenAI ------------------------------------------------------------------------------------
class EmbeddingsRequest(BaseModel):
    """OpenAI ``POST /v1/embeddings``."""

    model_config = ConfigDict(extra="forbid")

    model: StrictStr = Field(description="Teacher name, as listed by GET /v1/models.")
    input: TextInput = Field(description="A string or a list of strings.")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1, description="Must equal the teacher's dimension.")
    user: str | None = Field(None, description="Accepted and ignored.")
    role: Role = Field("query", description="Extension: encode as queries or as documents.")


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    names = backend(request).teacher_names()
    return {"object": "list", "data": [{"id": n, "object": "model", "created": 0, "owned_by": "tightdistill"} for n in names]}


@router.post("/v1/embeddings")
async def embeddings(req: EmbeddingsRequest, request: Request) -> JSONResponse:
    service = backend(request)
    texts = _as_list(req.input)
    out = await service.run("encode", EncodeRequest(teacher=req.model, texts=texts, role=req.role), request)
    emb = out["embeddings"]
    if req.dimensions is not None and req.dimensions != emb.shape[1]:
        raise InvalidRequest(f"teacher '{req.model}' gives {emb.shape[1]}-dimensional embeddings and cannot shorten them "
                             f"to dimensions={req.dimensions}; leave dimensions out")
    if req.encoding_format == "base64":
        vectors: list[Any] = [base64.b64encode(row.astype("<f4").tobytes()).decode("ascii") for row in emb]
    else:
        vectors = emb.tolist()
    tokens = estimate_tokens(texts)
    return JSONResponse({
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
        "model": req.model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    })


# --- Text Embeddings Inference -----------------------------------------------------------------
class _TEIRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    truncate: StrictBool | None = Field(False, description="Accepted; teachers always truncate to their maximum length.")
    truncation_direction: Literal["right", "Right", "left", "Left"] = "right"
    model: StrictStr | None = Field(None, description="Extension: the teacher to use (default: the service's default teacher).")

    @field_validator("truncation_direction")
    @classmethod
    def _right_only(cls, value: str) -> str:
        if value.lower() != "right":
            raise ValueError("truncation_direction 'left' is not supported; teachers truncate at the end")
        return value


class EmbedRequest(_TEIRequest):
    """TEI ``POST /embed``."""

    inputs: TextInput
    normalize: StrictBool = True
    prompt_name: StrictStr | None = Field(None, description="'query' (default), 'document' or 'passage': the role to encode as.")

    @field_validator("prompt_name")
    @classmethod
    def _known_prompt(cls, value: str | None) -> str | None:
        if value is not None and value not in PROMPT_ROLES:
            raise ValueError(f"prompt_name '{value}' is not known; use one of {', '.join(PROMPT_ROLES)}")
        return value


class RerankRequest(_TEIRequest):
    """TEI ``POST /rerank``."""

    query: Text
    texts: list[Text] = Field(min_length=1)
    raw_scores: StrictBool = False
    return_text: StrictBool = False


def tei_teacher(service: Backend, request: Request, named: str | None) -> str:
    return named or request.headers.get(TEACHER_HEADER) or service.default_teacher


@router.post("/embed")
async def embed(req: EmbedRequest, request: Request) -> JSONResponse:
    service = backend(request)
    role = PROMPT_ROLES[req.prompt_name or "query"]
    encode = EncodeRequest(teacher=tei_teacher(service, request, req.model), texts=_as_list(req.inputs), role=role)
    emb = (await service.run("encode", encode, request))["embeddings"]
    if req.normalize:
        emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    return JSONResponse(emb.tolist())


@router.post("/rerank")
async def rerank(req: RerankRequest, request: Request) -> JSONResponse:
    service = backend(request)
    score = ScoreRequest(teacher=tei_teacher(service, request, req.model), queries=[req.query], documents=req.texts,
                         mode="matrix")
    scores = (await service.run("score", score, request))["scores"].reshape(-1).astype(np.float64)
    if not req.raw_scores:
        scores = 1.0 / (1.0 + np.exp(-scores))
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    ranks = [{"index": i, "score": float(scores[i]), **({"text": req.texts[i]} if req.return_text else {})} for i in order]
    return JSONResponse(ranks)
