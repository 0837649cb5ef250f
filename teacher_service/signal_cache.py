"""The teacher's signal cache: a text that was encoded once is never encoded again.

Documents repeat across epochs and across trainers (and so do training queries): a frozen
teacher gives the same embedding every time, so each replica keeps the encodings it computed,
keyed by the teacher's fingerprint, the role (query / document encodings differ for ColBERT's
[Q]/[D] markers) and a hash of the text. Pooled embeddings and, when asked for, ColBERT token
embeddings are cached; a tokens-bearing entry also serves pooled-only requests.

Two tiers:

* **memory** - an LRU with a byte budget (``max_bytes``); it never holds more than that;
* **disk** (optional, ``disk_dir``) - parquet parts, one folder per teacher fingerprint, so a
  restarted replica or another replica of the same teacher on the same node starts warm.

Cached results are the very arrays computed the first time, so a cached answer equals the fresh
one bit for bit; it can differ from a re-computation only by float noise from batch composition.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from teacher_service.kinds.base import EncodeCall, Encoded, PairOutput, Primitives
from teacher_service.schemas import Role
from teacher_service.spec import CacheConfig, teacher_identity

# Python-side bookkeeping per entry (key bytes, tuple, OrderedDict node), counted against the budget
# so a cache of many tiny entries cannot overshoot it.
ENTRY_OVERHEAD_BYTES = 160
DISK_PART_ROWS = 4096


@dataclass
class CacheEntry:
    pooled: np.ndarray  # [dim]
    tokens: np.ndarray | None  # [length, token_dim]

    @property
    def nbytes(self) -> int:
        return self.pooled.nbytes + (0 if self.tokens is None else self.tokens.nbytes) + ENTRY_OVERHEAD_BYTES


def teacher_fingerprint(info: dict[str, Any], options: dict[str, Any]) -> str:
    """What fixes a teacher's encodings: its self-description (dtype included; not its service
    name, so the same model served under two names shares a disk tier) and its kind options."""
    payload = json.dumps({"teacher": teacher_identity(info), "options": options}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def text_key(role: Role, text: str) -> bytes:
    return hashlib.blake2b(f"{role}\x00{text}".encode("utf-8", "surrogatepass"), digest_size=16).digest()


class EncodingCache:
    """Thread-safe LRU of :class:`CacheEntry` under a byte budget, with an optional parquet tier."""

    def __init__(self, config: CacheConfig, fingerprint: str) -> None:
        self.config = config
        self.fingerprint = fingerprint
        self._entries: OrderedDict[bytes, CacheEntry] = OrderedDict()
        self._lock = threading.Lock()
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self._disk = DiskTier(Path(config.disk_dir) / fingerprint) if config.disk_dir else None
        if self._disk is not None:
            for key, entry in self._disk.load():
                self._put(key, entry)

    @property
    def enabled(self) -> bool:
        return self.config.max_bytes > 0

    def get(self, key: bytes, with_tokens: bool) -> CacheEntry | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or (with_tokens and entry.tokens is None):
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry

    def put(self, key: bytes, entry: CacheEntry) -> None:
        with self._lock:
            stored = self._put(key, entry)
        if stored and self._disk is not None:
            self._disk.append(key, entry)

    def _put(self, key: bytes, entry: CacheEntry) -> bool:
        if entry.nbytes > self.config.max_bytes:
            return False  # larger than the whole budget: serve it, never keep it
        old = self._entries.pop(key, None)
        if old is not None:
            self.bytes -= old.nbytes
        self._entries[key] = entry
        self.bytes += entry.nbytes
        while self.bytes > self.config.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self.bytes -= evicted.nbytes
            self.evictions += 1
        return True

    def flush(self) -> None:
        if self._disk is not None:
            self._disk.flush()

    def stats(self) -> dict[str, float]:
        with self._lock:
            looked_up = self.hits + self.misses
            return {"cache_entries": len(self._entries), "cache_bytes": self.bytes, "cache_max_bytes": self.config.max_bytes,
                    "cache_hits": self.hits, "cache_misses": self.misses, "cache_evictions": self.evictions,
                    "cache_hit_rate": self.hits / looked_up if looked_up else 0.0}


class DiskTier:
    """Append-only parquet parts of cache entries for one teacher fingerprint."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._buffer: list[tuple[bytes, CacheEntry]] = []
        self._lock = threading.Lock()

    def load(self) -> list[tuple[bytes, CacheEntry]]:
        out: list[tuple[bytes, CacheEntry]] = []
        for part in sorted(self.folder.glob("part-*.parquet")):
            table = pq.read_table(part)
            keys = table.column("key").to_pylist()
            pooled = table.column("pooled").to_pylist()
            tokens = table.column("tokens").to_pylist() if "tokens" in table.column_names else [None] * len(keys)
            dims = table.column("token_dim").to_pylist() if "token_dim" in table.column_names else [0] * len(keys)
            for key, p, t, dim in zip(keys, pooled, tokens, dims):
                tok = None if t is None else np.asarray(t, dtype=np.float32).reshape(-1, dim)
                out.append((key, CacheEntry(np.asarray(p, dtype=np.float32), tok)))
        return out

    def append(self, key: bytes, entry: CacheEntry) -> None:
        with self._lock:
            self._buffer.append((key, entry))
            if len(self._buffer) >= DISK_PART_ROWS:
                self._write_locked()

    def flush(self) -> None:
        with self._lock:
            if self._buffer:
                self._write_locked()

    def _write_locked(self) -> None:
        rows, self._buffer = self._buffer, []
        self.folder.mkdir(parents=True, exist_ok=True)
        table = pa.table({
            "key": pa.array([k for k, _ in rows], pa.binary(16)),
            "pooled": pa.array([e.pooled for _, e in rows], pa.list_(pa.float32())),
            "tokens": pa.array([None if e.tokens is None else e.tokens.ravel() for _, e in rows], pa.list_(pa.float32())),
            "token_dim": pa.array([0 if e.tokens is None else e.tokens.shape[1] for _, e in rows], pa.int32()),
        })
        # Write then rename: a crash mid-write leaves no half part that a restart would read.
        index = len(list(self.folder.glob("part-*.parquet")))
        tmp = self.folder / f".part-{index:06d}.tmp"
        pq.write_table(table, tmp)
        tmp.rename(self.folder / f"part-{index:06d}.parquet")


class CachedPrimitives:
    """Primitives that answer ``encode`` from the cache and send only the misses to ``inner``.

    Repeated texts inside one request are encoded once, too. Pair forward passes (cross-encoders)
    depend on both texts and pass straight through.
    """

    def __init__(self, inner: Primitives, cache: EncodingCache) -> None:
        self.inner = inner
        self.cache = cache

    def encode(self, texts: list[str], role: Role, with_tokens: bool = False) -> Encoded:
        return self.encode_many([(texts, role, with_tokens)])[0]

    def encode_many(self, calls: list[EncodeCall]) -> list[Encoded]:
        # Look every call up first, so all misses go to ``inner`` together (one batching window).
        lookups = [self._lookup(texts, role, with_tokens) for texts, role, with_tokens in calls]
        misses = [(list(missing.values()), role, with_tokens)
                  for (_, _, missing), (_, role, with_tokens) in zip(lookups, calls) if missing]
        fresh = iter(self.inner.encode_many(misses) if misses else [])
        out = []
        for (keys, found, missing), (_, _, with_tokens) in zip(lookups, calls):
            if missing:
                self._store(found, missing, next(fresh))
            out.append(self._assemble([found[k] for k in keys], with_tokens))
        return out

    def _lookup(self, texts: list[str], role: Role,
                with_tokens: bool) -> tuple[list[bytes], dict[bytes, CacheEntry], dict[bytes, str]]:
        """``(keys, found, missing)``: each text's key, the cached entries by key, and the distinct
        texts still to encode."""
        keys = [text_key(role, t) for t in texts]
        found: dict[bytes, CacheEntry] = {}
        missing: dict[bytes, str] = {}
        for key, text in zip(keys, texts):
            if key in found or key in missing:
                continue
            entry = self.cache.get(key, with_tokens)
            if entry is None:
                missing[key] = text
            else:
                found[key] = entry
        return keys, found, missing

    def _store(self, found: dict[bytes, CacheEntry], missing: dict[bytes, str], fresh: Encoded) -> None:
        for i, key in enumerate(missing):
            # Copies, not views: a view would pin the whole batch array and the budget would lie.
            tokens = None if fresh.tokens is None else fresh.take(i, i + 1).tokens.copy()
            entry = CacheEntry(fresh.pooled[i].copy(), tokens)
            found[key] = entry
            self.cache.put(key, entry)

    @staticmethod
    def _assemble(rows: list[CacheEntry], with_tokens: bool) -> Encoded:
        pooled = np.stack([e.pooled for e in rows]) if rows else np.empty((0, 0), dtype=np.float32)
        if not with_tokens:
            return Encoded(pooled)
        tokens = [e.tokens for e in rows]
        return Encoded(pooled, np.concatenate(tokens) if tokens else np.empty((0, 0), dtype=np.float32),
                       np.array([len(t) for t in tokens], dtype=np.int64))

    def forward_pairs(self, queries: list[str], documents: list[str], with_embeddings: bool = False) -> PairOutput:
        return self.inner.forward_pairs(queries, documents, with_embeddings)
