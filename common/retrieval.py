"""Exact inner-product search (FAISS ``IndexFlatIP``), candidate re-ranking, and embedding parquet files.

Embeddings are float32 matrices ``[n, dim]`` with one string id per row. On disk they are parquet
files with two columns, ``id`` (string) and ``embedding`` (``fixed_size_list<float32>[dim]``),
written atomically; the same format caches teacher document embeddings and stores a
:class:`DenseIndex` (a flat index *is* its vectors, so nothing else needs saving).

Scores everywhere are plain inner products, as in the papers' evaluation (normalise embeddings
first for cosine similarity). Runs use the :data:`common.metrics.Run` layout
``{query_id: {doc_id: score}}``.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

if TYPE_CHECKING:
    import faiss

Run = dict[str, dict[str, float]]  # same as common.metrics.Run (not imported: no pytrec_eval needed here)
DocLookup = Callable[[list[str]], Any] | tuple[Sequence[str], Any]
"""Either ``fn(doc_ids) -> [len(doc_ids), dim]`` embeddings, or ``(doc_ids, doc_emb [n, dim])``."""

log = logging.getLogger(__name__)

# faiss GPU k-selection limit for flat indexes; larger k falls back to a CPU copy.
GPU_MAX_K = 2048


# --------------------------------------------------------------------------- validation helpers


def _as_matrix(x: Any, name: str, dim: int | None = None) -> np.ndarray:
    """A C-contiguous float32 ``[n, dim]`` view/copy of ``x`` (numpy array or torch tensor)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor, without importing torch
        x = x.detach().cpu()
        if str(x.dtype) == "torch.bfloat16":  # numpy has no bfloat16
            x = x.float()
        x = x.numpy()
    arr = np.asarray(x)
    if arr.dtype == object or not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"{name} must be a floating-point array, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D [n, dim], got shape {tuple(arr.shape)}")
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(f"{name} has dim {arr.shape[1]}, expected {dim} (shape {tuple(arr.shape)})")
    if arr.shape[1] < 1:
        raise ValueError(f"{name} must have dim >= 1, got shape {tuple(arr.shape)}")
    return np.ascontiguousarray(arr, dtype=np.float32)


def _as_ids(ids: Sequence[str], name: str, n: int) -> list[str]:
    ids = list(ids)
    if len(ids) != n:
        raise ValueError(f"{name}: got {len(ids)} ids for {n} embedding rows")
    bad = next((i for i in ids if not isinstance(i, str)), None)
    if bad is not None:
        raise ValueError(f"{name} must be strings, got {type(bad).__name__} {bad!r}")
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        dup = next(i for i in ids if i in seen or seen.add(i))
        raise ValueError(f"{name} has duplicate id '{dup}'")
    return ids


def _check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return int(k)


# --------------------------------------------------------------------------- parquet embeddings


def save_embeddings(path: str | Path, ids: Sequence[str], emb: Any) -> Path:
    """Write ``ids`` and ``emb [n, dim]`` to a parquet file, atomically (temp file + ``os.replace``).

    Columns: ``id`` (string), ``embedding`` (``fixed_size_list<float32>[dim]``).
    """
    matrix = _as_matrix(emb, "embeddings")
    n, dim = matrix.shape
    id_list = _as_ids(ids, "ids", n)
    values = pa.array(matrix.reshape(-1), type=pa.float32())
    table = pa.table({
        "id": pa.array(id_list, type=pa.string()),
        "embedding": pa.FixedSizeListArray.from_arrays(values, dim),
    })
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_embeddings(path: str | Path) -> tuple[list[str], np.ndarray]:
    """Read a file written by :func:`save_embeddings` -> ``(ids, emb float32 [n, dim])``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"embeddings file not found: {path}")
    table = pq.read_table(path)
    missing = {"id", "embedding"} - set(table.column_names)
    if missing:
        raise ValueError(f"{path}: not an embeddings file (missing column(s) {sorted(missing)})")
    col_type = table.schema.field("embedding").type
    if not pa.types.is_fixed_size_list(col_type) or not pa.types.is_float32(col_type.value_type):
        raise ValueError(f"{path}: column 'embedding' must be fixed_size_list<float32>, got {col_type}")
    dim = col_type.list_size
    ids = table.column("id").to_pylist()
    emb_col = table.column("embedding")
    if emb_col.null_count or table.column("id").null_count:
        raise ValueError(f"{path}: null ids or embeddings")
    arrays = emb_col.chunks
    flat = (np.concatenate([c.flatten().to_numpy(zero_copy_only=False) for c in arrays])
            if arrays else np.empty(0, dtype=np.float32))
    emb = np.ascontiguousarray(flat.reshape(len(ids), dim), dtype=np.float32)
    return ids, emb


# --------------------------------------------------------------------------- dense index


def _faiss() -> Any:
    """The faiss module, imported where an index is built: the Run type, embedding files and
    re-ranking need no faiss, so code that only uses those runs where faiss is not installed."""
    import faiss

    return faiss


def gpu_available() -> bool:
    """True when this faiss build has GPU support and sees at least one GPU."""
    faiss = _faiss()
    return (hasattr(faiss, "StandardGpuResources") and hasattr(faiss, "index_cpu_to_gpu")
            and hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0)


class DenseIndex:
    """Exact inner-product search over string-id'd vectors (``faiss.IndexFlatIP``).

    Uses a GPU flat index when faiss has GPU support and a GPU is visible (``use_gpu=None``),
    else the CPU index. ``use_gpu=True`` requires a GPU; ``False`` forces the CPU.
    """

    def __init__(self, dim: int, use_gpu: bool | None = None) -> None:
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        self.dim = int(dim)
        has_gpu = gpu_available()
        if use_gpu and not has_gpu:
            raise ValueError("use_gpu=True but faiss has no GPU support or sees no GPU")
        self.on_gpu = has_gpu if use_gpu is None else bool(use_gpu)
        self._ids: list[str] = []
        self._id_set: set[str] = set()
        self._cpu_copy: faiss.Index | None = None  # GPU only: lazily made for k > GPU_MAX_K
        faiss = _faiss()
        cpu = faiss.IndexFlatIP(self.dim)
        if self.on_gpu:
            self._res = faiss.StandardGpuResources()
            self._index = faiss.index_cpu_to_gpu(self._res, 0, cpu)
        else:
            self._index = cpu

    def __len__(self) -> int:
        return self._index.ntotal

    @property
    def ids(self) -> list[str]:
        """Document ids, row order (a copy)."""
        return list(self._ids)

    def add(self, embeddings: Any, ids: Sequence[str]) -> None:
        """Append ``embeddings [n, dim]`` (float, converted to float32) with their unique string ``ids``."""
        matrix = _as_matrix(embeddings, "embeddings", self.dim)
        new_ids = _as_ids(ids, "ids", matrix.shape[0])
        clash = next((i for i in new_ids if i in self._id_set), None)
        if clash is not None:
            raise ValueError(f"id '{clash}' is already in the index")
        if matrix.shape[0] == 0:
            return
        self._index.add(matrix)
        self._ids.extend(new_ids)
        self._id_set.update(new_ids)
        self._cpu_copy = None

    def search(self, query_emb: Any, k: int) -> tuple[np.ndarray, list[list[str]]]:
        """Top-``k`` documents by inner product for each query.

        Args:
            query_emb: ``[nq, dim]`` float queries.
            k: results per query; capped at ``len(self)``.

        Returns:
            ``scores`` float32 ``[nq, min(k, len(self))]`` (descending per row) and ``ids``, ``nq``
            lists of document ids in the same order.
        """
        queries = _as_matrix(query_emb, "query_emb", self.dim)
        k = min(_check_k(k), len(self))
        nq = queries.shape[0]
        if k == 0 or nq == 0:
            return np.zeros((nq, k), dtype=np.float32), [[] for _ in range(nq)]
        index = self._index
        if self.on_gpu and k > GPU_MAX_K:
            if self._cpu_copy is None:
                log.warning("k=%d exceeds the faiss GPU limit (%d): searching a CPU copy", k, GPU_MAX_K)
                self._cpu_copy = _faiss().index_gpu_to_cpu(self._index)
            index = self._cpu_copy
        scores, rows = index.search(queries, k)
        ids = [[self._ids[r] for r in row if r >= 0] for row in rows]
        return scores, ids

    def embeddings(self) -> np.ndarray:
        """All stored vectors, float32 ``[len(self), dim]``."""
        if len(self) == 0:
            return np.empty((0, self.dim), dtype=np.float32)
        return np.ascontiguousarray(self._index.reconstruct_n(0, len(self)), dtype=np.float32)

    def save(self, path: str | Path) -> Path:
        """Write the vectors and ids as an embeddings parquet file (see :func:`save_embeddings`)."""
        return save_embeddings(path, self._ids, self.embeddings())

    @classmethod
    def load(cls, path: str | Path, use_gpu: bool | None = None) -> DenseIndex:
        """Build an index from an embeddings parquet file (see :func:`load_embeddings`)."""
        ids, emb = load_embeddings(path)
        return cls.from_embeddings(ids, emb, use_gpu=use_gpu)

    @classmethod
    def from_embeddings(cls, ids: Sequence[str], emb: Any, use_gpu: bool | None = None) -> DenseIndex:
        matrix = _as_matrix(emb, "embeddings")
        index = cls(matrix.shape[1], use_gpu=use_gpu)
        index.add(matrix, ids)
        return index


# --------------------------------------------------------------------------- runs


def _query_inputs(query_ids: Sequence[str], query_emb: Any, dim: int | None) -> tuple[list[str], np.ndarray]:
    queries = _as_matrix(query_emb, "query_emb", dim)
    return _as_ids(query_ids, "query_ids", queries.shape[0]), queries


def retrieve(index: DenseIndex, query_ids: Sequence[str], query_emb: Any, k: int) -> Run:
    """Full retrieval: each query's top ``k`` documents of ``index``.

    Args:
        query_ids: ``nq`` unique query ids, row order of ``query_emb``.
        query_emb: ``[nq, dim]`` float queries.

    Returns:
        ``{query_id: {doc_id: score}}`` with ``min(k, len(index))`` documents per query.
    """
    qids, queries = _query_inputs(query_ids, query_emb, index.dim)
    scores, ids = index.search(queries, k)
    return {q: dict(zip(doc_ids, row[: len(doc_ids)].tolist())) for q, doc_ids, row in zip(qids, ids, scores)}


def rerank(candidates: Mapping[str, Sequence[str]], query_ids: Sequence[str], query_emb: Any,
           doc_lookup: DocLookup) -> Run:
    """Score each query against its own candidate list only, by inner product.

    Args:
        candidates: ``{query_id: [doc_id, ...]}``; entries for queries not in ``query_ids`` are ignored.
        query_ids: ``nq`` unique query ids, row order of ``query_emb``.
        query_emb: ``[nq, dim]`` float queries.
        doc_lookup: ``(doc_ids, doc_emb [n, dim])`` or a callable ``fn(list_of_doc_ids) ->
            [len, dim]`` embeddings (called once per query with that query's candidates).

    Returns:
        ``{query_id: {doc_id: score}}`` for every query id; a query without candidates maps to ``{}``.

    Raises:
        ValueError: mismatched dims/lengths, non-float embeddings, or a candidate id the lookup lacks.
    """
    if callable(doc_lookup):
        qids, queries = _query_inputs(query_ids, query_emb, None)
        dim = queries.shape[1]

        def lookup(qid: str, docs: list[str]) -> np.ndarray:
            emb = _as_matrix(doc_lookup(docs), f"doc_lookup result for query '{qid}'", dim)
            if emb.shape[0] != len(docs):
                raise ValueError(f"doc_lookup returned {emb.shape[0]} rows for {len(docs)} candidates of query '{qid}'")
            return emb
    else:
        try:
            doc_ids, doc_emb = doc_lookup
        except (TypeError, ValueError):
            raise ValueError("doc_lookup must be a callable or a (doc_ids, doc_emb) pair") from None
        matrix = _as_matrix(doc_emb, "doc_emb")
        dim = matrix.shape[1]
        row_of = {d: i for i, d in enumerate(_as_ids(doc_ids, "doc_ids", matrix.shape[0]))}
        qids, queries = _query_inputs(query_ids, query_emb, dim)

        def lookup(qid: str, docs: list[str]) -> np.ndarray:
            try:
                rows = np.fromiter((row_of[d] for d in docs), dtype=np.int64, count=len(docs))
            except KeyError as exc:
                raise ValueError(f"candidate document '{exc.args[0]}' of query '{qid}' has no embedding") from None
            return matrix[rows]

    run: Run = {}
    for qid, q in zip(qids, queries):
        docs = list(dict.fromkeys(candidates.get(qid, ())))  # unique, order kept
        if not docs:
            run[qid] = {}
            continue
        scores = lookup(qid, docs) @ q  # [n_cand, dim] @ [dim] -> [n_cand]
        run[qid] = dict(zip(docs, scores.tolist()))
    return run


__all__ = [
    "GPU_MAX_K",
    "DenseIndex",
    "DocLookup",
    "Run",
    "gpu_available",
    "load_embeddings",
    "rerank",
    "retrieve",
    "save_embeddings",
]
