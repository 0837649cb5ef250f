"""OpenAI- and TEI-compatible routes on the real service: the real ``openai`` client, plain HTTP for TEI.

Every vector is checked against the native ``/v1/encode`` (and every score against ``/v1/score``)
of the same teacher, so the standard routes are views of the same computation.
"""

from __future__ import annotations

import numpy as np
import openai
import pytest
import requests
from pydantic import ValidationError

from teacher_service.spec import ServiceConfig

TEXTS = ["how are glacier caves formed?", "A glacier cave is a cave formed within the ice of a glacier.",
         "The stock market fell sharply on Monday."]


def native(url: str, teacher: str, texts: list[str], role: str = "query") -> np.ndarray:
    resp = requests.post(url + "/v1/encode", json={"teacher": teacher, "texts": texts, "role": role}, timeout=60)
    assert resp.status_code == 200, resp.text
    return np.asarray(resp.json()["embeddings"], dtype=np.float32)


def native_scores(url: str, teacher: str, query: str, documents: list[str]) -> np.ndarray:
    body = {"teacher": teacher, "queries": [query], "documents": documents, "mode": "matrix"}
    resp = requests.post(url + "/v1/score", json=body, timeout=60)
    assert resp.status_code == 200, resp.text
    return np.asarray(resp.json()["scores"], dtype=np.float64)[0]


@pytest.fixture(scope="module")
def oai(teacher_app) -> openai.OpenAI:
    return openai.OpenAI(base_url=teacher_app["url"] + "/v1", api_key="not-checked", max_retries=0, timeout=60)


@pytest.mark.parametrize("teacher", ["minilm", "tiny"])
def test_openai_client_embeddings_equal_native(teacher_app, oai, teacher):
    ref = native(teacher_app["url"], teacher, TEXTS)
    # The client's default asks for base64 and decodes it; float is the explicit alternative.
    for kwargs in ({}, {"encoding_format": "float"}):
        resp = oai.embeddings.create(model=teacher, input=TEXTS, **kwargs)
        assert resp.object == "list" and resp.model == teacher
        assert [d.index for d in resp.data] == [0, 1, 2] and all(d.object == "embedding" for d in resp.data)
        got = np.asarray([d.embedding for d in resp.data], dtype=np.float32)
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
        assert resp.usage.prompt_tokens == resp.usage.total_tokens >= len(TEXTS)
    single = oai.embeddings.create(model=teacher, input=TEXTS[1], dimensions=ref.shape[1], extra_body={"role": "document"})
    np.testing.assert_allclose(single.data[0].embedding, native(teacher_app["url"], teacher, TEXTS[1:2], "document")[0],
                               rtol=1e-5, atol=1e-6)


def test_openai_models_lists_the_teachers(oai):
    assert {m.id for m in oai.models.list()} == {"tiny", "tiny-cls-cos", "minilm"}


@pytest.mark.parametrize("kwargs, error, code, message", [
    ({"model": "nope", "input": "a"}, openai.NotFoundError, "unknown_teacher", "unknown teacher 'nope'"),
    ({"model": "minilm", "input": "a", "dimensions": 128}, openai.UnprocessableEntityError, "invalid_request", "cannot shorten"),
    ({"model": "minilm", "input": ""}, openai.UnprocessableEntityError, "invalid_request", "input"),
    ({"model": "minilm", "input": [[101, 2023]]}, openai.UnprocessableEntityError, "invalid_request", "token-id input"),
    ({"model": "minilm", "input": ["a"] * 65}, openai.APIStatusError, "request_too_large", "limit of 64"),
])
def test_openai_client_errors_carry_code_and_message(oai, kwargs, error, code, message):
    with pytest.raises(error) as info:
        oai.embeddings.create(**kwargs)
    assert info.value.code == code and message in str(info.value)
    assert info.value.type in {"invalid_request_error", "rate_limit_error", "authentication_error"}


def test_openai_client_uses_the_bearer_token(secure_app):
    base = secure_app["url"] + "/v1"
    with pytest.raises(openai.AuthenticationError, match="bearer token"):
        openai.OpenAI(base_url=base, api_key="wrong", max_retries=0).embeddings.create(model="tiny-secure", input="a")
    resp = openai.OpenAI(base_url=base, api_key=secure_app["token"], max_retries=0).embeddings.create(model="tiny-secure", input="a")
    assert len(resp.data[0].embedding) == 32


def test_tei_embed_normalises_and_picks_the_teacher(teacher_app):
    url = teacher_app["url"]
    raw = native(url, "minilm", TEXTS)
    got = requests.post(url + "/embed", json={"inputs": TEXTS}, headers={"X-Teacher": "minilm"}, timeout=60)
    assert got.status_code == 200, got.text
    np.testing.assert_allclose(np.asarray(got.json()), raw / np.linalg.norm(raw, axis=1, keepdims=True), rtol=1e-5, atol=1e-6)
    tiny = native(url, "tiny", TEXTS[:1], "document")
    # No header, no model: the default teacher (the first configured, 'tiny'); a bare string is one input.
    plain = requests.post(url + "/embed", json={"inputs": TEXTS[0], "normalize": False, "prompt_name": "passage",
                                                "truncate": True}, timeout=60).json()
    np.testing.assert_allclose(np.asarray(plain), tiny, rtol=1e-5, atol=1e-6)
    by_field = requests.post(url + "/embed", json={"inputs": TEXTS, "model": "minilm", "normalize": False}, timeout=60).json()
    np.testing.assert_allclose(np.asarray(by_field), raw, rtol=1e-5, atol=1e-6)


@pytest.mark.real_weights
def test_tei_rerank_sorts_by_teacher_score(teacher_app):
    url, query, docs = teacher_app["url"], TEXTS[0], TEXTS[2:] + TEXTS[1:2]  # the relevant passage last
    ref = native_scores(url, "minilm", query, docs)
    body = {"query": query, "texts": docs, "return_text": True, "model": "minilm"}
    ranks = requests.post(url + "/rerank", json=body, timeout=60).json()
    assert [r["index"] for r in ranks] == list(np.argsort(-ref)) and ranks[0]["index"] == 1
    assert [r["text"] for r in ranks] == [docs[r["index"]] for r in ranks]
    np.testing.assert_allclose([r["score"] for r in ranks], 1 / (1 + np.exp(-np.sort(ref)[::-1])), rtol=1e-5)
    raw = requests.post(url + "/rerank", json={**body, "raw_scores": True, "return_text": False}, timeout=60).json()
    np.testing.assert_allclose([r["score"] for r in raw], np.sort(ref)[::-1], rtol=1e-5, atol=1e-6)
    assert all("text" not in r for r in raw)


@pytest.mark.parametrize("path, body, headers, status, code", [
    ("/embed", {"inputs": ["a"], "truncation_direction": "left"}, {}, 422, "invalid_request"),
    ("/embed", {"inputs": []}, {}, 422, "invalid_request"),
    ("/embed", {"inputs": ["a"], "prompt_name": "summary"}, {}, 422, "invalid_request"),
    ("/embed", {"inputs": ["a"] * 65}, {}, 413, "request_too_large"),
    ("/embed", {"inputs": ["a"]}, {"X-Teacher": "nope"}, 404, "unknown_teacher"),
    ("/rerank", {"query": "q", "texts": ["d"] * 65}, {}, 413, "request_too_large"),
    ("/rerank", {"query": "q", "texts": ["d"], "top_n": 3}, {}, 422, "invalid_request"),
])
def test_tei_errors_are_typed_json(teacher_app, path, body, headers, status, code):
    resp = requests.post(teacher_app["url"] + path, json=body, headers=headers, timeout=60)
    assert resp.status_code == status, resp.text
    assert resp.json()["error"]["code"] == code and resp.json()["error"]["message"]


def test_standard_routes_share_the_body_cap_and_openapi(teacher_app):
    resp = requests.post(teacher_app["url"] + "/embed", data=b"x" * 300_000, headers={"Content-Type": "application/json"}, timeout=60)
    assert resp.status_code == 413 and resp.json()["error"]["code"] == "request_too_large"
    paths = set(requests.get(teacher_app["url"] + "/openapi.json", timeout=30).json()["paths"])
    assert {"/v1/embeddings", "/v1/models", "/embed", "/rerank", "/v1/encode"} <= paths


def test_default_teacher_must_be_a_teacher(tiny_bert_dir):
    teachers = [{"name": "a", "kind": "dual_encoder", "checkpoint": str(tiny_bert_dir)}]
    assert ServiceConfig.model_validate({"teachers": teachers, "default_teacher": "a"}).default_teacher == "a"
    with pytest.raises(ValidationError, match="default_teacher 'b' is not one of the teachers"):
        ServiceConfig.model_validate({"teachers": teachers, "default_teacher": "b"})
