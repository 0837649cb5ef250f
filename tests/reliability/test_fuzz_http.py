"""Property-based fuzzing of every HTTP route and of ``TeacherClient`` (Hypothesis, bounded).

The oracle is the service's own contract: a body the request models and limits accept gets a
200 with arrays of the right shapes; anything else gets the 4xx status and error code the same
models and limits give in-process (``parse_request``, ``check_limits``), with the JSON body
``{"error": {"code", "message"}}``; never a 5xx, and the service answers afterwards.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import requests
from hypothesis import given
from hypothesis import strategies as st

from reliability_helpers import FUZZ
from teacher_service.arrow_io import ARROW_STREAM, ipc_to_arrays
from teacher_service.client import TeacherClient
from teacher_service.errors import TeacherServiceError, UnknownTeacher
from teacher_service.schemas import ServiceLimits, check_limits, parse_request

DIM = 32  # the tiny teachers' embedding size
SERVED = {"tiny", "tiny-cls-cos", "minilm"}
OPS = ("encode", "score", "signals")

# --- strategies ------------------------------------------------------------------------------
junk = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)
text = st.one_of(
    st.text(min_size=1, max_size=40), st.just(""), st.just(" \t\n"), st.just("lone \ud800 surrogate"),
    st.integers(4990, 5010).map(lambda n: "é" * n),  # around the 5000-character limit
    junk,
)
texts = st.one_of(
    st.lists(text, min_size=0, max_size=4),
    st.lists(st.sampled_from(["a", "doc"]), min_size=60, max_size=70),  # around the 64-text limit
    st.text(max_size=5), junk,
)
# tiny teachers only for valid names: the real MiniLM would make each accepted example slow
teacher = st.one_of(st.sampled_from(["tiny", "tiny-cls-cos", "nope", "../tiny", "/tmp/model", "TINY", ""]), junk)
flag = st.one_of(st.booleans(), junk, st.sampled_from(["yes", "0"]))
FIELDS = {
    "encode": {"texts": texts, "role": st.one_of(st.sampled_from(["query", "document", "passage"]), junk), "tokens": flag},
    "score": {"queries": texts, "documents": texts, "mode": st.one_of(st.sampled_from(["pairs", "matrix", "cube"]), junk)},
    "signals": {"queries": texts, "documents": texts, "mode": st.one_of(st.sampled_from(["pairs", "matrix"]), junk),
                "embeddings": flag, "tokens": flag},
}
REQUIRED = {"encode": ("texts",), "score": ("queries", "documents"), "signals": ("queries", "documents")}


@st.composite
def body(draw: st.DrawFn, op: str) -> Any:
    """A request body for ``op``: mostly well-formed objects with fuzzed fields, sometimes a
    missing or unknown field, sometimes any JSON value at all."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.recursive(junk | st.text(max_size=10), lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3), max_leaves=8))
    out = {"teacher": draw(teacher)}
    for name, strategy in FIELDS[op].items():
        if name in REQUIRED[op] or draw(st.booleans()):
            out[name] = draw(strategy)
    if draw(st.integers(0, 7)) == 0:
        out.pop(draw(st.sampled_from(sorted(out))))
    if draw(st.integers(0, 7)) == 0:
        out[draw(st.sampled_from(["checkpoint", "path", "temperature", "__class__"]))] = draw(st.text(max_size=10))
    return out


# --- the oracle ------------------------------------------------------------------------------
def expected(op: str, payload: Any, limits: ServiceLimits, raw_size: int) -> tuple[int, str | None]:
    """(status, error code) the contract promises for ``payload`` sent to ``/v1/<op>``."""
    if raw_size > limits.max_body_bytes:
        return 413, "request_too_large"
    try:
        req = parse_request(op, payload)
    except TeacherServiceError as exc:
        return exc.status, exc.code
    if req.teacher not in SERVED:
        return 404, "unknown_teacher"
    try:
        check_limits(req, limits)
    except TeacherServiceError as exc:
        return exc.status, exc.code
    if getattr(req, "tokens", False):  # dual-encoders have no token embeddings
        return 422, "unsupported_signal"
    return 200, None


def shapes(op: str, req: Any) -> dict[str, tuple[int, ...]]:
    if op == "encode":
        return {"embeddings": (len(req.texts), DIM)}
    nq, nd = len(req.queries), len(req.documents)
    out = {"scores": (nq,) if req.mode == "pairs" else (nq, nd)}
    if op == "signals" and req.embeddings:
        out.update(query_embeddings=(nq, DIM), document_embeddings=(nd, DIM))
    return out


def assert_error_body(resp: requests.Response, status: int, code: str | None = None) -> None:
    assert resp.status_code == status, (resp.status_code, resp.text[:300])
    err = resp.json()["error"]
    assert isinstance(err["message"], str) and err["message"]
    assert err["code"] == code if code else isinstance(err["code"], str)


def assert_still_serving(url: str) -> None:
    assert requests.get(url + "/healthz", timeout=30).json() == {"status": "ok"}
    ok = requests.post(url + "/v1/score", json={"teacher": "tiny", "queries": ["q"], "documents": ["d"]}, timeout=30)
    assert ok.status_code == 200 and len(ok.json()["scores"]) == 1


@pytest.fixture(scope="module")
def limits(teacher_app) -> ServiceLimits:
    return teacher_app["config"].limits


# --- HTTP routes -----------------------------------------------------------------------------
@pytest.mark.parametrize("op", OPS)
def test_post_routes_answer_every_body_by_the_contract(teacher_app, limits, op):
    url = teacher_app["url"]

    @FUZZ
    @given(payload=body(op), accept=st.sampled_from([None, "application/json", ARROW_STREAM]))
    def check(payload: Any, accept: str | None) -> None:
        raw = json.dumps(payload, allow_nan=True).encode()  # NaN / Infinity tokens included
        headers = {"Content-Type": "application/json", **({"Accept": accept} if accept else {})}
        resp = requests.post(f"{url}/v1/{op}", data=raw, headers=headers, timeout=60)
        status, code = expected(op, payload, limits, len(raw))
        if status != 200:
            assert_error_body(resp, status, code)  # errors are JSON whatever the Accept header
            return
        assert resp.status_code == 200, resp.text[:300]
        arrays = ipc_to_arrays(resp.content) if accept == ARROW_STREAM else {k: np.asarray(v) for k, v in resp.json().items()}
        want = shapes(op, parse_request(op, payload))
        assert {k: v.shape for k, v in arrays.items()} == want
        assert all(np.isfinite(v).all() for v in arrays.values())

    check()
    assert_still_serving(url)


@FUZZ
@given(raw=st.one_of(st.binary(max_size=200), st.text(max_size=60).map(lambda s: s.encode("utf-16")),
                     st.binary(min_size=1, max_size=40).map(lambda b: b'{"teacher": "tiny", "texts": ["' + b + b'"]}')),
       op=st.sampled_from(OPS), content_type=st.sampled_from(["application/json", "application/octet-stream", None]))
def test_raw_bytes_never_get_a_5xx(teacher_app, raw: bytes, op: str, content_type: str | None):
    """Arbitrary and non-UTF-8 bytes, with and without a JSON content type: a 4xx with the JSON
    error body, never a 5xx."""
    resp = requests.post(f"{teacher_app['url']}/v1/{op}", data=raw,
                         headers={"Content-Type": content_type} if content_type else {}, timeout=60)
    if resp.status_code == 200:  # bytes that happen to be a valid request
        json.loads(raw)
        return
    assert_error_body(resp, resp.status_code)
    assert 400 <= resp.status_code < 500


def test_raw_bytes_leave_the_service_up(teacher_app):
    assert_still_serving(teacher_app["url"])


@FUZZ
@given(params=st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3),
       accept=st.sampled_from([None, "application/json", ARROW_STREAM, "*/*", "text/html"]))
def test_teachers_route_ignores_what_it_does_not_use(teacher_app, params: dict, accept: str | None):
    resp = requests.get(teacher_app["url"] + "/v1/teachers", params=params,
                        headers={"Accept": accept} if accept else {}, timeout=30)
    assert resp.status_code == 200
    assert {t["name"] for t in resp.json()["teachers"]} == SERVED


MALFORMED = {
    "non-UTF-8 byte in a JSON string": ("POST", "/v1/encode", b'{"teacher": "tiny", "texts": ["caf\xe9"]}'),
    "JSON nested 50,000 deep": ("POST", "/v1/score", b"[" * 50_000 + b"]" * 50_000),
    "an integer of 5,000 digits": ("POST", "/v1/signals", b'{"teacher": "tiny", "queries": ["a"], "documents": ["b"], "tokens": ' + b"9" * 5000 + b"}"),
    "GET on a POST route": ("GET", "/v1/encode", b""),
    "unknown route": ("POST", "/v1/rerank", b"{}"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_every_error_has_the_json_error_body(teacher_app, case):
    """FastAPI's own answers (a body it cannot decode, no such route or method) keep the service's
    error body too, not FastAPI's ``{"detail": ...}``."""
    method, path, raw = MALFORMED[case]
    resp = requests.request(method, teacher_app["url"] + path, data=raw, headers={"Content-Type": "application/json"}, timeout=30)
    assert 400 <= resp.status_code < 500
    assert_error_body(resp, resp.status_code)


# --- the Python client -----------------------------------------------------------------------
@pytest.fixture(scope="module", params=["http", "handle"])
def client(request, teacher_app) -> TeacherClient:
    if request.param == "http":
        return TeacherClient.from_url(teacher_app["url"], retries=0)
    return TeacherClient.from_serve(teacher_app["app_name"])


def call_client(client: TeacherClient, op: str, payload: dict[str, Any]) -> dict[str, np.ndarray]:
    teacher = payload.get("teacher")
    if op == "encode":
        return client.submit_encode(payload["texts"], payload.get("role", "query"), payload.get("tokens", False), teacher=teacher).result()
    if op == "score":
        return client.submit_score(payload["queries"], payload["documents"], payload.get("mode", "pairs"), teacher=teacher).result()
    return client.submit_signals(payload["queries"], payload["documents"], payload.get("mode", "matrix"),
                                 payload.get("embeddings", True), payload.get("tokens", False), teacher=teacher).result()


@st.composite
def client_call(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """Client arguments: list-valued texts (the signature's type) holding anything, and any
    teacher, mode, role or flag."""
    op = draw(st.sampled_from(OPS))
    list_texts = st.one_of(st.lists(text, max_size=4), st.lists(st.just("doc"), min_size=60, max_size=70))
    payload: dict[str, Any] = {"teacher": draw(st.one_of(st.sampled_from(["tiny", "nope", "../tiny"]), st.integers()))}
    for name, strategy in FIELDS[op].items():
        payload[name] = draw(list_texts if name in REQUIRED[op] else strategy)
    return op, payload


@FUZZ
@given(call=client_call())
def test_client_raises_typed_errors_or_returns_arrays(client, limits, call):
    op, payload = call
    # a falsy name means "the client's default teacher", and this service has three: no default
    status, code = expected(op, payload, limits, 0) if payload["teacher"] else (404, "unknown_teacher")
    if status == 200:
        arrays = call_client(client, op, payload)
        assert {k: v.shape for k, v in arrays.items()} == shapes(op, parse_request(op, payload))
        return
    with pytest.raises(TeacherServiceError) as info:
        call_client(client, op, payload)
    assert (info.value.code, info.value.status) == (code, status)
    assert info.value.message


def test_client_refuses_a_path_as_teacher_name(client):
    with pytest.raises(UnknownTeacher):
        client.encode(["a"], teacher="/tmp/some/model/dir")


@pytest.mark.parametrize("texts", ["how are glacier caves formed?", 7])
def test_client_refuses_texts_that_are_not_a_list(client, texts):
    with pytest.raises(TeacherServiceError) as info:
        client.encode(texts, teacher="tiny")
    assert info.value.code == "invalid_request"


def test_lone_surrogates_are_refused_over_http(teacher_app):
    resp = requests.post(teacher_app["url"] + "/v1/encode", data=b'{"teacher": "tiny", "texts": ["\\ud800"]}',
                         headers={"Content-Type": "application/json"}, timeout=30)
    assert_error_body(resp, 422, "invalid_request")
