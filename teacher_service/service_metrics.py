"""Prometheus metrics of the teacher service, through Ray Serve's metrics API.

Ray exports every metric below on each node's metrics endpoint
(``http://<node>:<MetricsExportPort>/metrics``, see :func:`metrics_urls`), prefixed ``ray_``;
counters get a ``_total`` suffix. Serve adds ``application``, ``deployment`` and ``replica``
labels to each. Names and labels:

Ingress (:class:`IngressMetrics`, recorded per HTTP route by ``http_api``):

* ``tightdistill_http_requests{route, teacher, status}`` - counter of responses;
* ``tightdistill_http_errors{route, teacher, code}`` - counter of 4xx/5xx responses by error code;
* ``tightdistill_http_latency_seconds{route, teacher}`` - histogram, request in to response out.

Teacher replicas (:class:`ReplicaMetrics`, recorded by ``deployment``; HTTP and handle clients alike):

* ``tightdistill_teacher_requests{teacher, op}``, ``tightdistill_teacher_errors{teacher, op, code}``,
  ``tightdistill_teacher_latency_seconds{teacher, op}`` - per operation (encode / score / signals);
* ``tightdistill_batch_texts{teacher, batcher}`` - histogram of texts (``encode``) or pairs
  (``pairs``) per dynamic batch; ``tightdistill_batch_tokens`` - estimated tokens per batch (the
  batcher's own measure, characters / 4 per text); ``tightdistill_batch_requests`` - requests
  merged into one batch;
* ``tightdistill_queue_wait_seconds{teacher, batcher}`` - how long a request's job waited in the
  batcher before its batch started; ``tightdistill_batch_seconds`` - batch start to result;
* ``tightdistill_texts_encoded{teacher, batcher}`` - counter of texts (pairs) through the model;
  ``rate()`` of it is the replica's texts/s;
* ``tightdistill_cache_hits`` / ``_misses`` / ``_evictions{teacher}`` - counters of the signal
  cache; ``tightdistill_cache_hit_rate`` (since the replica started), ``_bytes``, ``_entries`` - gauges.
"""

from __future__ import annotations

from typing import Any

from ray.serve import metrics

PREFIX = "tightdistill_"
# Keys the ingress leaves in the ASGI scope so the metrics middleware can label a response.
TEACHER_KEY = "tightdistill.teacher"
ERROR_KEY = "tightdistill.error"
NO_TEACHER = "none"
UNKNOWN = "unknown"  # a teacher or operation name the service does not know: not a label of its own

LATENCY_BUCKETS_S = [0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0]
WAIT_BUCKETS_S = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]
COUNT_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096]
TOKEN_BUCKETS = [64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536]


class IngressMetrics:
    """Request counters and latency of the HTTP ingress, labelled by route and teacher."""

    def __init__(self) -> None:
        self.requests = metrics.Counter(PREFIX + "http_requests", "HTTP responses by route, teacher and status.",
                                        tag_keys=("route", "teacher", "status"))
        self.errors = metrics.Counter(PREFIX + "http_errors", "HTTP error responses by route, teacher and error code.",
                                      tag_keys=("route", "teacher", "code"))
        self.latency = metrics.Histogram(PREFIX + "http_latency_seconds", "Request received to response sent, seconds.",
                                         boundaries=LATENCY_BUCKETS_S, tag_keys=("route", "teacher"))

    def record(self, route: str, teacher: str, status: int, code: str | None, seconds: float) -> None:
        tags = {"route": route, "teacher": teacher}
        self.requests.inc(1, {**tags, "status": str(status)})
        if status >= 400:
            self.errors.inc(1, {**tags, "code": code or f"http_{status}"})
        self.latency.observe(seconds, tags)


class ReplicaMetrics:
    """What one teacher replica does: operations, dynamic batches, queue wait, texts, its cache."""

    def __init__(self, teacher: str) -> None:
        def counter(name: str, doc: str, *keys: str) -> metrics.Counter:
            metric = metrics.Counter(PREFIX + name, doc, tag_keys=("teacher", *keys))
            metric.set_default_tags({"teacher": teacher})
            return metric

        def histogram(name: str, doc: str, buckets: list[float], *keys: str) -> metrics.Histogram:
            metric = metrics.Histogram(PREFIX + name, doc, boundaries=buckets, tag_keys=("teacher", *keys))
            metric.set_default_tags({"teacher": teacher})
            return metric

        def gauge(name: str, doc: str) -> metrics.Gauge:
            metric = metrics.Gauge(PREFIX + name, doc, tag_keys=("teacher",))
            metric.set_default_tags({"teacher": teacher})
            return metric

        self.requests = counter("teacher_requests", "Requests a teacher replica answered, by operation.", "op")
        self.errors = counter("teacher_errors", "Requests a teacher replica refused or failed, by operation and code.", "op", "code")
        self.latency = histogram("teacher_latency_seconds", "Replica time per request, seconds.", LATENCY_BUCKETS_S, "op")
        self.batch_texts = histogram("batch_texts", "Texts (encode) or pairs (pairs) per dynamic batch.", COUNT_BUCKETS, "batcher")
        self.batch_tokens = histogram("batch_tokens", "Estimated tokens per dynamic batch.", TOKEN_BUCKETS, "batcher")
        self.batch_requests = histogram("batch_requests", "Request jobs merged into one dynamic batch.", COUNT_BUCKETS, "batcher")
        self.queue_wait = histogram("queue_wait_seconds", "Time a job waited in the batcher before its batch started.",
                                    WAIT_BUCKETS_S, "batcher")
        self.batch_seconds = histogram("batch_seconds", "Batch start to result, seconds.", LATENCY_BUCKETS_S, "batcher")
        self.texts = counter("texts_encoded", "Texts (encode) or pairs (pairs) that went through the model.", "batcher")
        self.cache_hits = counter("cache_hits", "Signal-cache lookups answered from the cache.")
        self.cache_misses = counter("cache_misses", "Signal-cache lookups the model had to answer.")
        self.cache_evictions = counter("cache_evictions", "Entries evicted to keep the cache under its byte budget.")
        self.cache_hit_rate = gauge("cache_hit_rate", "Signal-cache hits / lookups since the replica started.")
        self.cache_bytes = gauge("cache_bytes", "Bytes held by the signal cache.")
        self.cache_entries = gauge("cache_entries", "Entries held by the signal cache.")
        self._cache_seen = {"cache_hits": 0, "cache_misses": 0, "cache_evictions": 0}

    def request(self, op: str, seconds: float, code: str | None = None) -> None:
        """One answered (``code`` None) or refused request."""
        tags = {"op": op}
        self.requests.inc(1, tags)
        if code is not None:
            self.errors.inc(1, {**tags, "code": code})
        self.latency.observe(seconds, tags)

    def batch(self, batcher: str, requests: int, texts: int, tokens: int, waits: list[float]) -> None:
        """A dynamic batch as it starts: its size and how long each of its jobs waited."""
        tags = {"batcher": batcher}
        self.batch_requests.observe(requests, tags)
        self.batch_texts.observe(texts, tags)
        self.batch_tokens.observe(tokens, tags)
        for wait in waits:
            self.queue_wait.observe(wait, tags)
        if texts > 0:  # Ray counters refuse a zero increment
            self.texts.inc(texts, tags)

    def batch_done(self, batcher: str, seconds: float) -> None:
        self.batch_seconds.observe(seconds, {"batcher": batcher})

    def cache(self, stats: dict[str, Any]) -> None:
        """Export the cache's cumulative ``stats()``: counters grow by what changed since the last call."""
        counters = {"cache_hits": self.cache_hits, "cache_misses": self.cache_misses, "cache_evictions": self.cache_evictions}
        for key, metric in counters.items():
            delta = stats[key] - self._cache_seen[key]
            if delta > 0:
                metric.inc(delta)
                self._cache_seen[key] = stats[key]
        self.cache_hit_rate.set(stats["cache_hit_rate"])
        self.cache_bytes.set(stats["cache_bytes"])
        self.cache_entries.set(stats["cache_entries"])


def metrics_urls() -> list[str]:
    """Prometheus scrape URLs of the connected Ray cluster's alive nodes (call after ``ray.init``)."""
    import ray

    return [f"http://{n['NodeManagerAddress']}:{n['MetricsExportPort']}/metrics"
            for n in ray.nodes() if n.get("Alive") and n.get("MetricsExportPort")]
