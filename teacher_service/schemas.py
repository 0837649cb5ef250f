"""Request models shared by the HTTP API, Ray handles and the client, and the limits they obey.

The same models validate a request whether it arrives as JSON over HTTP or as a Python object
through a ``DeploymentHandle``, so both paths refuse the same bad input with the same error.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError

from teacher_service.errors import InvalidRequest, RequestTooLarge

Role = Literal["query", "document"]
ScoreMode = Literal["pairs", "matrix"]
Text = Annotated[StrictStr, Field(min_length=1)]

# How the service measures work before tokenising: ~4 characters per token for English
# BPE/WordPiece, at most a model's usual 512-token window. The batcher's token budget, its metrics
# and the usage the OpenAI-style route reports all use this one estimate.
CHARS_PER_TOKEN = 4
MAX_TOKENS_PER_TEXT = 512


def estimate_tokens(texts: list[str]) -> int:
    return sum(min(len(t) // CHARS_PER_TOKEN + 2, MAX_TOKENS_PER_TEXT) for t in texts)


class ServiceLimits(BaseModel):
    """Caps that keep one request from starving the others; over a cap is a 413, not a hang."""

    model_config = ConfigDict(extra="forbid")

    max_texts: int = Field(2048, ge=1, description="Most texts (or queries, or documents) in one request.")
    max_text_chars: int = Field(20_000, ge=1, description="Longest accepted text, in characters (models truncate to their token limit anyway).")
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024, description="Largest HTTP request body.")
    max_matrix_pairs: int = Field(4096, ge=1, description="Most query x document pairs in one matrix request to a kind whose matrix costs one forward pass per pair (cross-encoders).")


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")
    teacher: StrictStr = Field(description="Name of the teacher, as listed by GET /v1/teachers.")


class EncodeRequest(_Request):
    texts: list[Text] = Field(min_length=1, description="Texts to embed.")
    role: Role = Field("query", description="Encode as queries or as documents (teachers may treat them differently).")
    tokens: bool = Field(False, description="Also return token embeddings (ColBERT teachers).")


class ScoreRequest(_Request):
    queries: list[Text] = Field(min_length=1)
    documents: list[Text] = Field(min_length=1)
    mode: ScoreMode = Field("pairs", description="'pairs': score queries[i] with documents[i]; 'matrix': every query with every document.")


class SignalsRequest(_Request):
    queries: list[Text] = Field(min_length=1)
    documents: list[Text] = Field(min_length=1, description="In-batch documents, e.g. each query's positive then its negatives.")
    mode: ScoreMode = Field("matrix")
    embeddings: bool = Field(True, description=(
        "Return the teacher's embeddings beside the scores: query and document embeddings (dual-encoders, ColBERT, "
        "a dual-pooled cross-encoder's proxies), or a [CLS]-pooled cross-encoder's joint [CLS] embeddings "
        "('joint_embeddings': of each pair in mode 'pairs', of each query with its positive in mode 'matrix')."))
    tokens: bool = Field(False, description="Also return token embeddings (ColBERT teachers).")


REQUEST_TYPES: dict[str, type[_Request]] = {"encode": EncodeRequest, "score": ScoreRequest, "signals": SignalsRequest}
AnyRequest = EncodeRequest | ScoreRequest | SignalsRequest


def parse_request(op: str, payload: dict | _Request) -> AnyRequest:
    """Validate a request for ``op`` ('encode', 'score', 'signals') into its model."""
    if op not in REQUEST_TYPES:
        raise InvalidRequest(f"unknown operation '{op}'; expected one of {sorted(REQUEST_TYPES)}")
    model = REQUEST_TYPES[op]
    if isinstance(payload, model):
        return payload
    if isinstance(payload, BaseModel):
        payload = payload.model_dump()
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise InvalidRequest(describe_validation_error(exc)) from None


def describe_validation_error(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "body"
        parts.append(f"{where}: {err['msg']}")
    more = len(exc.errors()) - 5
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def check_limits(req: AnyRequest, limits: ServiceLimits) -> None:
    """Refuse requests over the configured caps, and pair requests of unequal lengths."""
    lists = {"texts": getattr(req, "texts", None), "queries": getattr(req, "queries", None), "documents": getattr(req, "documents", None)}
    for name, texts in lists.items():
        if texts is None:
            continue
        if len(texts) > limits.max_texts:
            raise RequestTooLarge(f"{name}: {len(texts)} texts, more than the limit of {limits.max_texts}; split the request")
        longest = max(len(t) for t in texts)
        if longest > limits.max_text_chars:
            raise RequestTooLarge(f"{name}: a text of {longest} characters, more than the limit of {limits.max_text_chars}")
    if isinstance(req, (ScoreRequest, SignalsRequest)) and req.mode == "pairs" and len(req.queries) != len(req.documents):
        raise InvalidRequest(
            f"mode 'pairs' needs as many queries as documents, got {len(req.queries)} and {len(req.documents)}; "
            "use mode 'matrix' to score every query with every document"
        )
