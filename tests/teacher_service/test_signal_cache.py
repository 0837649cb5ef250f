"""The signal cache: repeated texts are never re-encoded, answers equal fresh ones, the budget holds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from teacher_service.client import TeacherClient
from teacher_service.kinds import Encoded, build_teacher
from teacher_service.signal_cache import ENTRY_OVERHEAD_BYTES, CachedPrimitives, CacheEntry, EncodingCache, teacher_fingerprint, text_key
from teacher_service.spec import CacheConfig, TeacherSpec

TEXTS = ["glacier caves form inside ice", "vaccines train the immune system", "hamlet is a tragedy",
         "penguins live in the south", "light becomes chemical energy"]


class CountingPrimitives:
    """The teacher's own primitives, recording which texts actually reached the model."""

    def __init__(self, teacher) -> None:
        self.teacher = teacher
        self.encoded: list[str] = []

    def encode(self, texts, role, with_tokens=False) -> Encoded:
        self.encoded += texts
        return self.teacher.encode(texts, role, with_tokens)

    def encode_many(self, calls) -> list[Encoded]:
        return [self.encode(*call) for call in calls]

    def forward_pairs(self, queries, documents, with_embeddings=False):
        return self.teacher.forward_pairs(queries, documents, with_embeddings)


@pytest.fixture(scope="module")
def tiny_teacher(tiny_bert_dir: Path):
    return build_teacher(TeacherSpec(name="t", kind="dual_encoder", checkpoint=str(tiny_bert_dir)))


def test_only_misses_reach_the_model_and_cached_equals_fresh(tiny_teacher):
    inner = CountingPrimitives(tiny_teacher)
    prims = CachedPrimitives(inner, EncodingCache(CacheConfig(), "fp"))
    first = prims.encode(TEXTS[:3], "document")
    assert inner.encoded == TEXTS[:3]
    # Repeats within one request are encoded once; known texts not at all.
    second = prims.encode([TEXTS[2], TEXTS[3], TEXTS[3], TEXTS[0]], "document")
    assert inner.encoded == TEXTS[:4]
    np.testing.assert_array_equal(second.pooled[0], first.pooled[2])  # bit for bit
    np.testing.assert_array_equal(second.pooled[3], first.pooled[0])
    np.testing.assert_array_equal(second.pooled[1], second.pooled[2])
    fresh = tiny_teacher.encode([TEXTS[2], TEXTS[3], TEXTS[3], TEXTS[0]], "document")
    np.testing.assert_allclose(second.pooled, fresh.pooled, rtol=1e-5, atol=1e-6)
    # The role is part of the key: the same text as a query is a different encoding request.
    prims.encode([TEXTS[0]], "query")
    assert inner.encoded[-1] == TEXTS[0] and len(inner.encoded) == 5
    assert prims.cache.stats()["cache_hits"] == 2  # the in-request repeat never reached the lookup


def test_encode_many_sends_all_misses_in_one_call_and_equals_separate_encodes(tiny_teacher):
    calls: list[list] = []

    class Recording(CountingPrimitives):
        def encode_many(self, many):
            calls.append([list(texts) for texts, _, _ in many])
            return super().encode_many(many)

    prims = CachedPrimitives(Recording(tiny_teacher), EncodingCache(CacheConfig(), "fp"))
    prims.encode([TEXTS[0]], "query")
    queries, docs = prims.encode_many([([TEXTS[0], TEXTS[1]], "query", False), (TEXTS[:3], "document", False)])
    assert calls[-1] == [[TEXTS[1]], TEXTS[:3]]  # the cached query stays out; both roles in one call
    np.testing.assert_array_equal(queries.pooled, prims.encode([TEXTS[0], TEXTS[1]], "query").pooled)
    np.testing.assert_allclose(docs.pooled, tiny_teacher.encode(TEXTS[:3], "document").pooled, rtol=1e-5, atol=1e-6)
    assert len(calls) == 2  # the last encode was all hits: nothing reached the model


def test_token_embeddings_are_cached_and_serve_pooled_requests(tiny_bert_dir):
    colbert = build_teacher(TeacherSpec(name="c", kind="colbert", checkpoint=str(tiny_bert_dir),
                                        options={"zero_shot": True, "doc_maxlen": 32}))
    inner = CountingPrimitives(colbert)
    prims = CachedPrimitives(inner, EncodingCache(CacheConfig(), "fp"))
    pooled_only = prims.encode(TEXTS[:2], "document")
    with_tokens = prims.encode(TEXTS[:2], "document", with_tokens=True)  # pooled-only entries cannot serve this
    assert inner.encoded == TEXTS[:2] * 2
    again = prims.encode(TEXTS[1::-1], "document", with_tokens=True)
    pooled_again = prims.encode(TEXTS[:2], "document")
    assert len(inner.encoded) == 4
    fresh = colbert.encode(TEXTS[1::-1], "document", with_tokens=True)
    np.testing.assert_array_equal(again.lengths, fresh.lengths)
    np.testing.assert_allclose(again.tokens, fresh.tokens, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(again.take(1, 2).tokens, with_tokens.take(0, 1).tokens)
    np.testing.assert_array_equal(pooled_again.pooled, with_tokens.pooled)
    np.testing.assert_allclose(pooled_only.pooled, with_tokens.pooled, rtol=1e-5, atol=1e-6)


def test_cache_never_grows_past_its_budget():
    entry_bytes = 64 * 4 + ENTRY_OVERHEAD_BYTES
    cache = EncodingCache(CacheConfig(max_bytes=10 * entry_bytes), "fp")
    keys = [text_key("document", f"text {i}") for i in range(50)]
    for i, key in enumerate(keys):
        cache.put(key, CacheEntry(np.full(64, i, dtype=np.float32), None))
        assert cache.bytes <= cache.config.max_bytes
        if i == 20:
            assert cache.get(keys[12], False) is not None  # touched: now the most recently used
    stats = cache.stats()
    assert stats["cache_entries"] == 10 and stats["cache_evictions"] == 40
    assert cache.get(keys[-1], False).pooled[0] == 49  # newest kept
    assert cache.get(keys[0], False) is None  # oldest evicted
    # An entry larger than the whole budget is served but never kept.
    cache.put(text_key("document", "huge"), CacheEntry(np.zeros(10_000, dtype=np.float32), None))
    assert cache.bytes <= cache.config.max_bytes and cache.get(text_key("document", "huge"), False) is None


def test_disk_tier_survives_a_restart(tmp_path, tiny_teacher):
    config = CacheConfig(disk_dir=str(tmp_path))
    first = CachedPrimitives(CountingPrimitives(tiny_teacher), EncodingCache(config, "fp"))
    before = first.encode(TEXTS, "document")
    first.cache.flush()
    assert list((tmp_path / "fp").glob("part-*.parquet"))
    inner = CountingPrimitives(tiny_teacher)
    restarted = CachedPrimitives(inner, EncodingCache(config, "fp"))
    after = restarted.encode(TEXTS[::-1], "document")
    assert inner.encoded == []
    np.testing.assert_array_equal(after.pooled, before.pooled[::-1])


def test_service_answers_repeats_from_its_cache(teacher_app):
    from ray import serve

    client = TeacherClient.from_serve(teacher_app["app_name"], teacher="tiny-cls-cos")
    stats = serve.get_deployment_handle("teacher-tiny-cls-cos", teacher_app["app_name"]).stats.remote
    texts = [f"{t} (cache test)" for t in TEXTS]
    before = stats().result()
    first = client.encode(texts, role="document")
    mid = stats().result()
    second = client.encode(texts[::-1], role="document")
    after = stats().result()
    np.testing.assert_array_equal(second, first[::-1])
    assert mid["cache_misses"] - before["cache_misses"] == len(texts)
    assert after["cache_hits"] - mid["cache_hits"] == len(texts)
    assert after["batches"] == mid["batches"], "a fully cached request still reached the model"


def test_a_field_added_to_teacher_info_keeps_old_cache_keys_while_unset(mini_beir):
    """Encodings cached (disk tier, document index) before ``joint_dim`` existed stay valid for
    teachers that leave it unset; a teacher that sets it gets its own key."""
    from common.datasets import load_beir
    from student_trainer.teacher_index import cache_key

    info = {"name": "t", "kind": "dual_encoder", "checkpoint": "c", "dim": 8, "token_dim": None, "similarity": "dot"}
    dataset = load_beir(mini_beir)
    assert teacher_fingerprint({**info, "joint_dim": None}, {}) == teacher_fingerprint(info, {})
    assert cache_key({**info, "joint_dim": None}, dataset) == cache_key(info, dataset)
    assert teacher_fingerprint({**info, "joint_dim": 8}, {}) != teacher_fingerprint(info, {})
    assert cache_key({**info, "token_dim": 4}, dataset) != cache_key(info, dataset)  # other fields still count
