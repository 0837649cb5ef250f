"""The teacher service on a real Ray Serve app: handles, HTTP (JSON and Arrow), batching, errors, auth."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests

from teacher_service.arrow_io import ARROW_STREAM, ipc_to_arrays
from teacher_service.client import TeacherClient
from teacher_service.errors import InvalidRequest, RequestTooLarge, UnknownTeacher, UnsupportedSignal
from teacher_service.kinds import build_teacher
from teacher_service.schemas import parse_request

QUERIES = ["how are glacier caves formed?", "what do vaccines do", "who wrote hamlet"]
DOCS = [
    "A glacier cave is a cave formed within the ice of a glacier.",
    "Vaccines train the immune system to recognise a pathogen.",
    "Hamlet is a tragedy written by William Shakespeare.",
    "The stock market fell sharply on Monday.",
    "Penguins live in the southern hemisphere.",
    "Photosynthesis converts light into chemical energy.",
]


@pytest.fixture(scope="module")
def handle_client(teacher_app) -> TeacherClient:
    return TeacherClient.from_serve(teacher_app["app_name"])


@pytest.fixture(scope="module")
def http_client(teacher_app) -> TeacherClient:
    return TeacherClient.from_url(teacher_app["url"], retries=1)


@pytest.fixture(scope="module")
def local_teachers(teacher_app) -> dict:
    """The same teachers built in-process: the unbatched reference."""
    return {spec.name: build_teacher(spec) for spec in teacher_app["config"].teachers if spec.name.startswith("tiny")}


def local(local_teachers, name, op, **payload):
    return local_teachers[name].run(parse_request(op, {"teacher": name, **payload}))


def test_teachers_describe_themselves(handle_client, http_client):
    infos = {t["name"]: t for t in http_client.teachers()}
    assert set(infos) == {"tiny", "tiny-cls-cos", "minilm"}
    assert infos["minilm"]["dim"] == 384 and infos["tiny"]["dim"] == 32
    assert infos["tiny-cls-cos"]["similarity"] == "cosine"
    assert infos["tiny-cls-cos"]["max_query_length"] == 16
    assert infos["minilm"]["signals"] == ["scores", "pooled_embeddings"]
    assert handle_client.teachers() == http_client.teachers()


@pytest.mark.parametrize("name", ["tiny", "tiny-cls-cos"])
def test_signals_match_direct_computation(handle_client, local_teachers, name):
    got = handle_client.signals(QUERIES, DOCS, teacher=name)
    ref = local(local_teachers, name, "signals", queries=QUERIES, documents=DOCS)
    assert got["scores"].shape == (3, 6) and got["scores"].dtype == np.float32
    q, d = got["query_embeddings"], got["document_embeddings"]
    if name == "tiny-cls-cos":
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        d = d / np.linalg.norm(d, axis=1, keepdims=True)
    np.testing.assert_allclose(got["scores"], q @ d.T, rtol=1e-4, atol=1e-5)  # matrix = one product
    for key in ref:
        np.testing.assert_allclose(got[key], ref[key], rtol=1e-4, atol=1e-5)


def test_pairs_are_the_matrix_diagonal(handle_client):
    pairs = handle_client.score(QUERIES, DOCS[:3], mode="pairs", teacher="tiny")
    matrix = handle_client.score(QUERIES, DOCS[:3], mode="matrix", teacher="tiny")
    np.testing.assert_allclose(pairs, np.diag(matrix), rtol=1e-5, atol=1e-5)


def test_concurrent_requests_are_batched_and_equal_unbatched(handle_client, local_teachers, teacher_app):
    from ray import serve

    handle = serve.get_deployment_handle("teacher-tiny", teacher_app["app_name"])
    before = handle.stats.remote().result()
    rng = np.random.default_rng(0)
    requests_ = [[DOCS[i] for i in rng.integers(0, len(DOCS), size=rng.integers(1, 8))] for _ in range(24)]
    with ThreadPoolExecutor(12) as pool:
        got = list(pool.map(lambda texts: handle_client.encode(texts, role="document", teacher="tiny"), requests_))
    after = handle.stats.remote().result()
    for texts, emb in zip(requests_, got):
        ref = local(local_teachers, "tiny", "encode", texts=texts, role="document")["embeddings"]
        np.testing.assert_allclose(emb, ref, rtol=1e-4, atol=1e-5)
    assert after["requests"] - before["requests"] == 24
    assert after["largest_batch_jobs"] > 1, "concurrent requests were never merged into one batch"
    assert after["batches"] - before["batches"] < 24


def test_oversized_request_is_split_not_refused(teacher_app, local_teachers):
    from teacher_service.deployment import PairJob, chunk_by_tokens, pair_costs, text_costs

    texts = [DOCS[i % len(DOCS)] * 20 for i in range(40)]  # ~40 x 300 tokens, over a 1024-token batch budget
    assert len(chunk_by_tokens(text_costs(texts), 1024)) > 1
    # Cross-encoder pairs with long documents: every piece fits the batcher's budget as the job
    # counts it (scifact abstracts once overflowed it when pieces were cut on query + document).
    queries, documents = [QUERIES[0] * 3] * 64, [DOCS[0] * 200] * 64  # each document over a model's length
    pieces = chunk_by_tokens(pair_costs(queries, documents), 2048)
    assert len(pieces) > 1 and all(PairJob(queries[a:b], documents[a:b]).tokens <= 2048 for a, b in pieces)
    client = TeacherClient.from_serve(teacher_app["app_name"])
    emb = client.encode(texts, role="document", teacher="tiny")
    ref = local(local_teachers, "tiny", "encode", texts=texts, role="document")["embeddings"]
    np.testing.assert_allclose(emb, ref, rtol=1e-4, atol=1e-5)


def test_http_json_and_arrow_agree_with_handle(teacher_app, handle_client):
    body = {"teacher": "tiny", "queries": QUERIES, "documents": DOCS, "mode": "matrix"}
    js = requests.post(teacher_app["url"] + "/v1/signals", json=body, timeout=60)
    assert js.status_code == 200 and js.headers["content-type"].startswith("application/json")
    arrow = requests.post(teacher_app["url"] + "/v1/signals", json=body, headers={"Accept": ARROW_STREAM}, timeout=60)
    assert arrow.headers["content-type"].startswith(ARROW_STREAM)
    arrays = ipc_to_arrays(arrow.content)
    ref = handle_client.signals(QUERIES, DOCS, teacher="tiny")
    for key in ("scores", "query_embeddings", "document_embeddings"):
        np.testing.assert_allclose(np.asarray(js.json()[key], dtype=np.float32), ref[key], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(arrays[key], ref[key])
        assert arrays[key].dtype == np.float32


def test_openapi_schema_lists_routes(teacher_app):
    schema = requests.get(teacher_app["url"] + "/openapi.json", timeout=30).json()
    assert {"/healthz", "/v1/teachers", "/v1/encode", "/v1/score", "/v1/signals"} <= set(schema["paths"])


@pytest.mark.real_weights
def test_real_minilm_ranks_relevant_passage_first(http_client):
    scores = http_client.score(["how are glacier caves formed?"], [DOCS[0], DOCS[3]], mode="matrix", teacher="minilm")
    assert scores[0, 0] > scores[0, 1] + 0.3
    emb = http_client.encode(DOCS[:2], role="document", teacher="minilm")
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)  # the checkpoint's Normalize module


BAD_BODIES = {
    "unknown teacher": ({"teacher": "nope", "queries": ["a"], "documents": ["b"]}, 404, "unknown_teacher"),
    "empty list": ({"teacher": "tiny", "queries": [], "documents": ["b"]}, 422, "invalid_request"),
    "empty text": ({"teacher": "tiny", "queries": [""], "documents": ["b"]}, 422, "invalid_request"),
    "non-string text": ({"teacher": "tiny", "queries": [3], "documents": ["b"]}, 422, "invalid_request"),
    "null text": ({"teacher": "tiny", "queries": [None], "documents": ["b"]}, 422, "invalid_request"),
    "mismatched pairs": ({"teacher": "tiny", "queries": ["a", "b"], "documents": ["c"], "mode": "pairs"}, 422, "invalid_request"),
    "bad mode": ({"teacher": "tiny", "queries": ["a"], "documents": ["c"], "mode": "cube"}, 422, "invalid_request"),
    "unknown field": ({"teacher": "tiny", "queries": ["a"], "documents": ["c"], "temperature": 2}, 422, "invalid_request"),
    "too many texts": ({"teacher": "tiny", "queries": ["a"] * 65, "documents": ["c"] * 65}, 413, "request_too_large"),
    "too long text": ({"teacher": "tiny", "queries": ["a" * 5001], "documents": ["c"]}, 413, "request_too_large"),
    "not an object": (["a", "b"], 422, "invalid_request"),
}


@pytest.mark.parametrize("case", sorted(BAD_BODIES))
def test_bad_input_gets_4xx_json_and_service_keeps_serving(teacher_app, case):
    body, status, code = BAD_BODIES[case]
    resp = requests.post(teacher_app["url"] + "/v1/score", json=body, timeout=30)
    assert resp.status_code == status, resp.text
    assert resp.json()["error"]["code"] == code and resp.json()["error"]["message"]
    assert requests.get(teacher_app["url"] + "/healthz", timeout=30).status_code == 200
    ok = requests.post(teacher_app["url"] + "/v1/score", json={"teacher": "tiny", "queries": ["a"], "documents": ["b"]}, timeout=30)
    assert ok.status_code == 200


@pytest.mark.parametrize("raw, status, code", [
    (b"{not json", 400, "invalid_json"),
    (b"\xff\xfe\x00garbage", 400, "invalid_json"),
    (b"x" * 300_000, 413, "request_too_large"),
])
def test_malformed_and_oversized_bodies(teacher_app, raw, status, code):
    resp = requests.post(teacher_app["url"] + "/v1/encode", data=raw, headers={"Content-Type": "application/json"}, timeout=30)
    assert resp.status_code == status and resp.json()["error"]["code"] == code


def test_chunked_body_without_length_is_capped(teacher_app):
    def chunks():
        for _ in range(30):
            yield b" " * 10_000

    resp = requests.post(teacher_app["url"] + "/v1/encode", data=chunks(), headers={"Content-Type": "application/json"}, timeout=30)
    assert resp.status_code == 413


def test_typed_errors_through_both_clients(handle_client, http_client):
    for client in (handle_client, http_client):
        with pytest.raises(UnknownTeacher):
            client.score(["a"], ["b"], teacher="nope")
        with pytest.raises(InvalidRequest, match="as many queries as documents"):
            client.score(["a", "b"], ["c"], mode="pairs", teacher="tiny")
        with pytest.raises(UnsupportedSignal, match="pooled_embeddings"):
            client.submit_encode(["a"], tokens=True, teacher="tiny").result()
    with pytest.raises(RequestTooLarge):
        handle_client.encode(["a"] * 65, teacher="tiny")


def test_auth_required_except_healthz(secure_app):
    url, token = secure_app["url"], secure_app["token"]
    assert requests.get(url + "/healthz", timeout=30).status_code == 200
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": token}):
        resp = requests.get(url + "/v1/teachers", headers=headers, timeout=30)
        assert resp.status_code == 401 and resp.json()["error"]["code"] == "unauthorized"
    ok = requests.get(url + "/v1/teachers", headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert ok.status_code == 200 and ok.json()["teachers"][0]["name"] == "tiny-secure"
    client = TeacherClient.from_url(url, token=token)
    assert client.encode(["hello"]).shape == (1, 32)
