"""The Serve deployment that hosts one frozen teacher, with dynamic batching across requests.

Each request's operation (encode / score / signals) runs in a worker thread against *batched
primitives*: every ``encode`` or ``forward_pairs`` it needs is queued on a ``@serve.batch``
method, which merges the texts of all concurrent requests (up to a token budget, Serve's
``batch_size_fn``) into one length-sorted pass over the model. The model itself runs on a single
compute thread: a second concurrent forward pass would only fight the first for the same cores.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from ray import serve

from teacher_service.errors import TeacherServiceError
from teacher_service.kinds import Encoded, PairOutput, Teacher, build_teacher
from teacher_service.kinds.base import EncodeCall
from teacher_service.schemas import REQUEST_TYPES, Role, ServiceLimits, check_limits, estimate_tokens, parse_request
from teacher_service.service_metrics import UNKNOWN, ReplicaMetrics
from teacher_service.signal_cache import CachedPrimitives, EncodingCache, teacher_fingerprint
from teacher_service.spec import TeacherSpec


@dataclass
class EncodeJob:
    texts: list[str]
    role: Role
    with_tokens: bool
    tokens: int = field(init=False)
    queued_at: float = field(init=False)  # perf_counter when handed to the batcher (queue-wait metric)

    def __post_init__(self) -> None:
        self.tokens = estimate_tokens(self.texts)
        self.queued_at = time.perf_counter()


@dataclass
class PairJob:
    queries: list[str]
    documents: list[str]
    with_embeddings: bool = False
    tokens: int = field(init=False)
    queued_at: float = field(init=False)

    def __post_init__(self) -> None:
        self.tokens = estimate_tokens(self.queries) + estimate_tokens(self.documents)
        self.queued_at = time.perf_counter()


def job_tokens(jobs: list[EncodeJob | PairJob]) -> int:
    """Serve ``batch_size_fn``: a batch's size is its estimated token count (the true count is only
    known after tokenisation, which happens in the batch itself)."""
    return sum(job.tokens for job in jobs)


def chunk_by_tokens(costs: list[int], budget: int) -> list[tuple[int, int]]:
    """Split items of estimated token ``costs`` into ``[start, stop)`` ranges costing at most
    ``budget`` each (an item over the budget on its own gets a range of its own).

    An oversized client request is served in budget-sized pieces rather than refused. The costs
    must be the ones the job's ``tokens`` sums, or a piece can exceed the batcher's budget.
    """
    ranges, start, used = [], 0, 0
    for i, cost in enumerate(costs):
        if i > start and used + cost > budget:
            ranges.append((start, i))
            start, used = i, 0
        used += cost
    ranges.append((start, len(costs)))
    return ranges


def text_costs(texts: list[str]) -> list[int]:
    """Each text's estimated tokens, as :class:`EncodeJob` counts them."""
    return [estimate_tokens([t]) for t in texts]


def pair_costs(queries: list[str], documents: list[str]) -> list[int]:
    """Each pair's estimated tokens, as :class:`PairJob` counts them: query and document each
    capped at a model's length on their own (not their concatenation, which would undercount)."""
    return [a + b for a, b in zip(text_costs(queries), text_costs(documents))]


def run_encode_jobs(teacher: Teacher, jobs: list[EncodeJob]) -> list[Encoded]:
    """Encode all jobs' texts with one call per (role, tokens) group, then split per job."""
    groups: dict[tuple[str, bool], list[int]] = defaultdict(list)
    for i, job in enumerate(jobs):
        groups[(job.role, job.with_tokens)].append(i)
    results: list[Encoded | None] = [None] * len(jobs)
    for (role, with_tokens), members in groups.items():
        texts = [t for i in members for t in jobs[i].texts]
        merged = teacher.encode(texts, role, with_tokens)  # type: ignore[arg-type]
        offset = 0
        for i in members:
            n = len(jobs[i].texts)
            results[i] = merged.take(offset, offset + n)
            offset += n
    return results  # type: ignore[return-value]


def run_pair_jobs(teacher: Teacher, jobs: list[PairJob]) -> list[PairOutput]:
    queries = [q for job in jobs for q in job.queries]
    documents = [d for job in jobs for d in job.documents]
    # One pass for the merged batch: embeddings are kept if any job asked (the others ignore them).
    merged = teacher.forward_pairs(queries, documents, with_embeddings=any(job.with_embeddings for job in jobs))
    out, offset = [], 0
    for job in jobs:
        n = len(job.queries)
        out.append(merged.rows(slice(offset, offset + n)))
        offset += n
    return out


class BatchedPrimitives:
    """Primitives whose calls (from an operation's worker thread) go through the replica's batchers."""

    def __init__(self, replica: TeacherReplica, loop: asyncio.AbstractEventLoop) -> None:
        self.replica = replica
        self.loop = loop

    def _submit(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def encode(self, texts: list[str], role: Role, with_tokens: bool = False) -> Encoded:
        return self.encode_many([(texts, role, with_tokens)])[0]

    def encode_many(self, calls: list[EncodeCall]) -> list[Encoded]:
        budget = self.replica.spec.batch_max_tokens
        # Queue every chunk of every call before waiting on any.
        futures = [[self._submit(self.replica.encode_batch(EncodeJob(texts[a:b], role, with_tokens)))
                    for a, b in chunk_by_tokens(text_costs(texts), budget)]
                   for texts, role, with_tokens in calls]
        return [Encoded.concat([f.result() for f in chunks]) for chunks in futures]

    def forward_pairs(self, queries: list[str], documents: list[str], with_embeddings: bool = False) -> PairOutput:
        budget = self.replica.spec.batch_max_tokens
        futures = [self._submit(self.replica.pairs_batch(PairJob(queries[a:b], documents[a:b], with_embeddings)))
                   for a, b in chunk_by_tokens(pair_costs(queries, documents), budget)]
        return PairOutput.concat([f.result() for f in futures])


@serve.deployment(logging_config={"enable_access_log": False})
class TeacherReplica:
    """One replica of one teacher. Addressed by clients through its handle or the HTTP ingress."""

    def __init__(self, spec: dict[str, Any], limits: dict[str, Any]) -> None:
        self.spec = TeacherSpec.model_validate(spec)
        self.limits = ServiceLimits.model_validate(limits)
        threads = self.spec.torch_threads or max(1, int(self.spec.ray_actor_options.get("num_cpus", 1) or 1))
        torch.set_num_threads(threads)
        self.teacher = build_teacher(self.spec)
        options = getattr(self.teacher, "options", None)
        if options is not None and getattr(options, "max_matrix_pairs", None) is not None:
            # The service-wide cap binds too: the tighter of the kind's option and the limit.
            options.max_matrix_pairs = min(options.max_matrix_pairs, self.limits.max_matrix_pairs)
        self.info = self.teacher.describe()
        self.cache = EncodingCache(self.spec.cache, teacher_fingerprint(self.info.model_dump(), self.spec.options))
        self._compute = ThreadPoolExecutor(max_workers=1, thread_name_prefix="teacher-forward")
        self._ops = ThreadPoolExecutor(max_workers=self.spec.max_ongoing_requests, thread_name_prefix="teacher-op")
        for batcher in (self.encode_batch, self.pairs_batch):
            batcher.set_max_batch_size(self.spec.batch_max_tokens)
            batcher.set_batch_wait_timeout_s(self.spec.batch_wait_timeout_s)
        self.counters = {"requests": 0, "batches": 0, "jobs": 0, "largest_batch_jobs": 0}
        self.metrics = ReplicaMetrics(self.spec.name)

    async def describe(self) -> dict[str, Any]:
        return self.info.model_dump()

    async def stats(self) -> dict[str, Any]:
        return {**self.counters, **self.cache.stats(), "pid": os.getpid()}

    def __del__(self) -> None:  # Serve's graceful shutdown: persist what the disk tier still buffers
        cache = getattr(self, "cache", None)
        if cache is not None:
            cache.flush()

    async def run(self, op: str, payload: Any) -> dict[str, np.ndarray]:
        """Answer one request: ``op`` in {'encode', 'score', 'signals'}; returns named float32 arrays."""
        started = time.perf_counter()
        try:
            request = parse_request(op, payload)
            check_limits(request, self.limits)
            loop = asyncio.get_running_loop()
            prims: Any = BatchedPrimitives(self, loop)
            if self.cache.enabled:
                prims = CachedPrimitives(prims, self.cache)
            result = await loop.run_in_executor(self._ops, self.teacher.run, request, prims)
        except Exception as exc:
            self._record_request(op, started, exc.code if isinstance(exc, TeacherServiceError) else "internal_error")
            raise
        self.counters["requests"] += 1
        self._record_request(op, started, None)
        return result

    def _record_request(self, op: str, started: float, code: str | None) -> None:
        self.metrics.request(op if op in REQUEST_TYPES else UNKNOWN, time.perf_counter() - started, code)
        if self.cache.enabled:
            self.metrics.cache(self.cache.stats())

    def _count_batch(self, batcher: str, jobs: list) -> float:
        """Count a batch as it starts (stats and metrics); returns its start time."""
        started = time.perf_counter()
        self.counters["batches"] += 1
        self.counters["jobs"] += len(jobs)
        self.counters["largest_batch_jobs"] = max(self.counters["largest_batch_jobs"], len(jobs))
        texts = sum(len(job.texts) if isinstance(job, EncodeJob) else len(job.queries) for job in jobs)
        self.metrics.batch(batcher, len(jobs), texts, job_tokens(jobs), [started - job.queued_at for job in jobs])
        return started

    @serve.batch(max_batch_size=32768, batch_wait_timeout_s=0.005, batch_size_fn=job_tokens)
    async def encode_batch(self, jobs: list[EncodeJob]) -> list[Encoded]:
        started = self._count_batch("encode", jobs)
        loop = asyncio.get_running_loop()
        out = await loop.run_in_executor(self._compute, run_encode_jobs, self.teacher, jobs)
        self.metrics.batch_done("encode", time.perf_counter() - started)
        return out

    @serve.batch(max_batch_size=32768, batch_wait_timeout_s=0.005, batch_size_fn=job_tokens)
    async def pairs_batch(self, jobs: list[PairJob]) -> list[PairOutput]:
        started = self._count_batch("pairs", jobs)
        loop = asyncio.get_running_loop()
        out = await loop.run_in_executor(self._compute, run_pair_jobs, self.teacher, jobs)
        self.metrics.batch_done("pairs", time.perf_counter() - started)
        return out
