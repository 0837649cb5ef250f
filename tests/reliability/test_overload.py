"""Past its queue limit the service answers 429 with Retry-After at once (no hang, no 5xx), and
``TeacherClient`` over HTTP backs off and retries, so overload slows callers but fails none."""

from __future__ import annotations

import time

import numpy as np
import pytest
import requests

from teacher_service.client import TeacherClient
from reliability_helpers import burst, tiny_spec

# Every request waits this long in the replica's batcher (its token budget is never reached), so
# a request holds the replica's single slot for a known time without burning CPU.
HOLD_S = 1.0
TEXTS = ["how are glacier caves formed?"]


@pytest.fixture(scope="module")
def overload_app(own_app, tiny_bert_dir):
    return own_app("rel-overload", [tiny_spec(tiny_bert_dir, max_ongoing_requests=1, max_queued_requests=1,
                                              batch_wait_timeout_s=HOLD_S)])


def test_queue_limit_answers_429_fast_and_the_client_retries_through_it(overload_app):
    url = overload_app["url"]

    def raw():
        start = time.perf_counter()
        resp = requests.post(url + "/v1/encode", json={"teacher": "tiny", "texts": TEXTS}, timeout=60)
        return resp, time.perf_counter() - start

    # One running + one queued fit; the other four are over the limit.
    results = burst(6, raw)
    statuses = sorted(r.status_code for r, _ in results)
    assert set(statuses) <= {200, 429}, statuses
    rejected = [(r, t) for r, t in results if r.status_code == 429]
    assert rejected and len(rejected) < 6, statuses
    # Refused at once: quicker than the fastest accepted request, which held the slot HOLD_S
    # (a rejection that had waited for a free slot would take at least that long).
    fastest_accepted = min(t for r, t in results if r.status_code == 200)
    assert fastest_accepted >= HOLD_S
    for resp, elapsed in rejected:
        assert float(resp.headers["Retry-After"]) > 0
        assert resp.json()["error"]["code"] == "overloaded" and "queue limit" in resp.json()["error"]["message"]
        assert elapsed < fastest_accepted, f"a rejected request took {elapsed:.2f}s: it waited instead of being refused"

    # The same burst through TeacherClient: every call succeeds, some only after 429s.
    seen: list[int] = []

    def client_call():
        client = TeacherClient.from_url(url, teacher="tiny", retries=8, backoff_s=0.2)
        client.transport.session.hooks["response"].append(lambda resp, *args, **kwargs: seen.append(resp.status_code))
        return client.encode(TEXTS)

    embeddings = burst(5, client_call)
    assert all(e.shape == (1, 32) for e in embeddings)
    np.testing.assert_allclose(np.stack(embeddings), np.stack([embeddings[0]] * 5), rtol=1e-5, atol=1e-6)
    assert seen.count(200) == 5 and 429 in seen, seen
    assert requests.get(url + "/healthz", timeout=30).status_code == 200


def test_handle_callers_queue_and_http_trainers_wait_out_429s(overload_app):
    """Over a Ray handle, Serve 2.60 holds calls past the limit at the caller instead of refusing
    them: all succeed. Over HTTP, a trainer whose client gives up on 429 at once (retries=0) still
    gets its signals: the signal source waits ``Overloaded`` out like a 5xx."""
    from student_trainer.teacher_signals import TeacherSignalSource, TrainBatch

    handle_client = TeacherClient.from_serve("rel-overload", teacher="tiny")
    assert burst(6, lambda: handle_client.encode(TEXTS).shape) == [(1, 32)] * 6

    info = handle_client.describe("tiny")
    batch = TrainBatch(["q one"], [], ["d1", "d2"], ["doc a", "doc b"], 1)
    seen: list[int] = []

    def trainer_step():
        client = TeacherClient.from_url(overload_app["url"], teacher="tiny", retries=0)
        client.transport.session.hooks["response"].append(lambda resp, *args, **kwargs: seen.append(resp.status_code))
        source = TeacherSignalSource(client, "tiny", info, None, want_query_embeddings=True, timeout_s=120)
        return source.collect(source.submit(batch)).scores.shape

    assert burst(4, trainer_step) == [(1, 2)] * 4  # four trainers over a limit of two: none fails
    assert 429 in seen, seen  # ... though some were refused on the way
