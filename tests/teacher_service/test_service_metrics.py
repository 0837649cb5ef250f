"""Prometheus metrics of the live service, scraped from the Ray node's metrics endpoint.

Counters are cumulative over the test session, so the test reads them before and after its own
requests (unique texts, so it knows what the cache must see) and waits for the difference: Ray
exports metrics every few seconds.
"""

from __future__ import annotations

import time
import uuid

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from ray import serve

from teacher_service.client import TeacherClient
from teacher_service.service_metrics import metrics_urls

TEACHER = "tiny-cls-cos"  # cache on, batch_wait_timeout_s 0.05 (tests/conftest.py)
EXPORT_WAIT_S = 45


def scrape() -> list[tuple[str, dict[str, str], float]]:
    samples = []
    for url in metrics_urls():
        text = requests.get(url, timeout=10).text
        for family in text_string_to_metric_families(text):
            samples += [(s.name, s.labels, s.value) for s in family.samples if s.name.startswith("ray_tightdistill_")]
    return samples


def total(samples, name: str, **labels: str) -> float:
    return sum(v for n, lab, v in samples if n == f"ray_tightdistill_{name}" and all(lab.get(k) == x for k, x in labels.items()))


def test_service_metrics_are_exported(teacher_app):
    url = teacher_app["url"]
    assert metrics_urls(), "no node reports a metrics export port"
    before = scrape()
    texts = [f"metrics probe {uuid.uuid4()} {i}" for i in range(3)]
    for _ in range(2):  # 3 misses, then 3 hits
        assert requests.post(url + "/v1/encode", json={"teacher": TEACHER, "texts": texts}, timeout=60).status_code == 200
    assert requests.post(url + "/embed", json={"inputs": texts}, headers={"X-Teacher": TEACHER}, timeout=60).status_code == 200
    assert requests.post(url + "/v1/encode", json={"teacher": "nope", "texts": ["a"]}, timeout=60).status_code == 404
    missing_route = requests.get(url + "/no/such/route", timeout=60)
    assert missing_route.status_code == 404 and missing_route.json()["error"]["code"] == "not_found"
    TeacherClient.from_serve(teacher_app["app_name"]).encode(texts, teacher=TEACHER)  # handles count in the replica too

    http, rep = {"route": "/v1/encode", "teacher": TEACHER}, {"teacher": TEACHER}
    expected = {  # (metric, labels): least growth
        ("http_requests_total", (("status", "200"), *http.items())): 2,
        ("http_requests_total", (("route", "/embed"), ("teacher", TEACHER), ("status", "200"))): 1,
        ("http_errors_total", (("route", "/v1/encode"), ("teacher", "unknown"), ("code", "unknown_teacher"))): 1,
        ("http_errors_total", (("route", "unmatched"), ("teacher", "none"), ("code", "not_found"))): 1,
        ("http_requests_total", (("route", "unmatched"), ("teacher", "none"), ("status", "404"))): 1,
        ("http_latency_seconds_count", tuple(http.items())): 2,
        ("teacher_requests_total", (("op", "encode"), *rep.items())): 4,
        ("teacher_latency_seconds_count", (("op", "encode"), *rep.items())): 4,
        ("cache_misses_total", tuple(rep.items())): 3,
        ("cache_hits_total", tuple(rep.items())): 9,
        ("texts_encoded_total", (("batcher", "encode"), *rep.items())): 3,
        ("batch_texts_count", (("batcher", "encode"), *rep.items())): 1,
        ("batch_tokens_count", (("batcher", "encode"), *rep.items())): 1,
        ("batch_requests_count", (("batcher", "encode"), *rep.items())): 1,
        ("batch_seconds_count", (("batcher", "encode"), *rep.items())): 1,
        ("queue_wait_seconds_count", (("batcher", "encode"), *rep.items())): 1,
    }
    # The replica's own cache counters (an actor call, not a request: it moves no metric): the
    # hit-rate gauge must come to hits / lookups since the replica started.
    stats = serve.get_deployment_handle(f"teacher-{TEACHER}", teacher_app["app_name"]).stats.remote().result()
    expected_rate = stats["cache_hits"] / (stats["cache_hits"] + stats["cache_misses"])
    assert 0 < expected_rate < 1, stats  # this test's own 3 misses and 9 hits at least

    def hit_rates(samples) -> list[float]:
        return [v for n, lab, v in samples if n == "ray_tightdistill_cache_hit_rate" and lab.get("teacher") == TEACHER]

    # Ray stops exporting a gauge some 20 s after its last update: wait for a scrape with the
    # counters grown and the gauges there; keep the last rate seen for the failure message.
    deadline, seen = time.monotonic() + EXPORT_WAIT_S, []
    while True:
        after = scrape()
        missing = {name: need for (name, labels), need in expected.items()
                   if total(after, name, **dict(labels)) - total(before, name, **dict(labels)) < need}
        rates = hit_rates(after)
        seen = rates or seen
        if (not missing and rates == pytest.approx([expected_rate])) or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert not missing, f"metrics did not grow as expected within {EXPORT_WAIT_S}s: {missing}"

    # The batcher holds a lone request for its batch_wait_timeout_s (0.05 s): queue wait measures that.
    waits = {k: total(after, f"queue_wait_seconds_{k}", batcher="encode", **rep) - total(before, f"queue_wait_seconds_{k}", batcher="encode", **rep)
             for k in ("sum", "count")}
    assert waits["sum"] / waits["count"] >= 0.04
    assert rates == pytest.approx([expected_rate]), (seen, stats)
    # and the exported cache counters (since the replica started, like the gauge) hold the same hits and misses
    hits, misses = total(after, "cache_hits_total", **rep), total(after, "cache_misses_total", **rep)
    assert (hits, misses) == (stats["cache_hits"], stats["cache_misses"])
    assert total(after, "cache_bytes", **rep) == stats["cache_bytes"] > 0  # the cache holds this test's entries at least
    assert total(after, "cache_entries", **rep) == stats["cache_entries"] > 0
    assert all(lab.get("application") == teacher_app["app_name"] for n, lab, _ in after if lab.get("teacher") == TEACHER)

