"""Hybrid dense + sparse retrieval: BM25 (``bm25s``) fused with a dense run, TCT-ColBERT §3.2 Eq. 7.

Three parts, each usable alone:

* :class:`BM25Index`: Okapi BM25 over a corpus with the ``bm25s`` library (Lucene's BM25
  variant, English stop words, Snowball stemming, Anserini's ``k1=0.9, b=0.4`` defaults, which
  BEIR's and the paper's BM25 baselines use). Only documents sharing a term with the query are
  retrieved, as with Lucene.
* :func:`fuse_runs`: ``s(q, d) = alpha * s_sparse(q, d) + s_dense(q, d)`` over the union of both
  top-k lists, a document missing from one list taking that list's minimum score for the query.
* :func:`tune_alpha`: pick ``alpha`` from a grid on training queries (the paper tunes it on
  training queries; 0.10 for BM25 there, where dense scores are unnormalised inner products).

:func:`evaluate_hybrid` runs the whole recipe for ``tightdistill eval --hybrid``. Runs use the
``{query_id: {doc_id: score}}`` layout of :mod:`common.retrieval`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from common.datasets import BeirDataset, DataError
from common.evaluation import QueryEncoder, eval_query_ids
from common.metrics import MetricReport, evaluate_run
from common.retrieval import DenseIndex, Run, retrieve

# Anserini's BM25 defaults (BEIR's BM25 baseline, Pyserini's prebuilt indexes).
BM25_K1 = 0.9
BM25_B = 0.4
DEFAULT_DEPTH = 1000  # both lists are top-1000, as in the paper
# Dense scores here are cosines/inner products of order 1 and BM25 scores of order 10, so useful
# alphas are small; the grid spans 0 (dense only) to well past the point where BM25 dominates.
DEFAULT_ALPHA_GRID: tuple[float, ...] = (0.0, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0)


class BM25Index:
    """BM25 over string-id'd documents (``bm25s``, Lucene scoring, stop words, Snowball stemming)."""

    def __init__(self, doc_ids: Sequence[str], texts: Sequence[str], k1: float = BM25_K1, b: float = BM25_B,
                 language: str = "english") -> None:
        import bm25s
        import Stemmer

        if len(doc_ids) != len(texts):
            raise ValueError(f"BM25Index: {len(doc_ids)} ids for {len(texts)} texts")
        if not len(doc_ids):
            raise ValueError("BM25Index: the corpus is empty")
        self.doc_ids = list(doc_ids)
        self.language = language
        self._stemmer = Stemmer.Stemmer(language)
        self._bm25s = bm25s
        self._retriever = bm25s.BM25(k1=k1, b=b, method="lucene")
        self._retriever.index(self._tokenize(texts), show_progress=False)

    @classmethod
    def from_dataset(cls, dataset: BeirDataset, **kwargs) -> BM25Index:
        """Index a BEIR corpus as its dense encoders see it (``title + " " + text``)."""
        return cls(dataset.doc_ids, dataset.doc_texts, **kwargs)

    def __len__(self) -> int:
        return len(self.doc_ids)

    def _tokenize(self, texts: Sequence[str]) -> list[list[str]]:
        return self._bm25s.tokenize(list(texts), stopwords=self.language, stemmer=self._stemmer,
                                    return_ids=False, show_progress=False)

    def search(self, queries: Sequence[str], k: int) -> list[list[tuple[str, float]]]:
        """Each query's top ``k`` documents as ``(doc_id, score)``, best first; documents without a
        query term (score 0) are not retrieved, so a list may be shorter than ``k`` or empty."""
        if k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        if not len(queries):
            return []
        k = min(k, len(self.doc_ids))
        rows, scores = self._retriever.retrieve(self._tokenize(queries), k=k, show_progress=False, n_threads=1)
        return [[(self.doc_ids[r], float(s)) for r, s in zip(row, score) if s > 0] for row, score in zip(rows, scores)]

    def retrieve(self, query_ids: Sequence[str], queries: Sequence[str], k: int = DEFAULT_DEPTH) -> Run:
        """``{query_id: {doc_id: bm25 score}}`` with each query's top ``k`` matching documents."""
        if len(query_ids) != len(queries):
            raise ValueError(f"{len(query_ids)} query ids for {len(queries)} queries")
        return {q: dict(hits) for q, hits in zip(query_ids, self.search(queries, k))}


def fuse_runs(dense: Run, sparse: Run, alpha: float, k: int | None = None) -> Run:
    """Hybrid scores of TCT-ColBERT (Lin et al., 2021) §3.2 Eq. 7.

    For each query, over the union of the documents of its dense and sparse lists::

        s(q, d) = alpha * s_sparse(q, d) + s_dense(q, d)

    where a document missing from one list takes **that list's minimum score** for the query
    (the paper's rule: it ranked below everything the list kept). A query whose list in one run is
    empty or absent gets 0 for that run's term on every document (a constant, so the other run's
    order stands).

    Args:
        dense: ``{query_id: {doc_id: score}}`` from dense retrieval (e.g. top-1000).
        sparse: the same from BM25.
        alpha: weight of the sparse score (>= 0).
        k: keep each query's top ``k`` fused documents (default: all of the union).

    Returns:
        The fused run over every query of either run.
    """
    if not alpha >= 0:
        raise ValueError(f"alpha must be >= 0, got {alpha!r}")
    fused: Run = {}
    for qid in dict.fromkeys([*dense, *sparse]):
        d_list, s_list = dense.get(qid) or {}, sparse.get(qid) or {}
        d_floor = min(d_list.values()) if d_list else 0.0
        s_floor = min(s_list.values()) if s_list else 0.0
        scores = {doc: alpha * s_list.get(doc, s_floor) + d_list.get(doc, d_floor) for doc in dict.fromkeys([*d_list, *s_list])}
        if k is not None and len(scores) > k:
            scores = dict(sorted(scores.items(), key=lambda item: item[1], reverse=True)[:k])
        fused[qid] = scores
    return fused


@dataclass
class AlphaSearch:
    """The grid search of :func:`tune_alpha`: the chosen ``alpha`` and the metric at every grid point."""

    alpha: float
    metric: str
    scores: dict[float, float] = field(default_factory=dict)


def tune_alpha(dense: Run, sparse: Run, qrels: dict[str, dict[str, int]], grid: Sequence[float] = DEFAULT_ALPHA_GRID,
               metric: str = "nDCG@10") -> AlphaSearch:
    """The ``alpha`` of :func:`fuse_runs` that maximises ``metric`` over ``qrels``' queries (ties: the
    smallest alpha). The paper tunes alpha on training queries, never on the evaluated ones."""
    if not grid:
        raise ValueError("the alpha grid is empty")
    scores = {float(a): evaluate_run(qrels, fuse_runs(dense, sparse, float(a)), k_values=(10,)).aggregate[metric]
              for a in sorted(set(grid))}
    best = max(scores, key=lambda a: (scores[a], -a))
    return AlphaSearch(best, metric, scores)


@dataclass
class HybridEvaluation:
    """Dense, BM25 and fused runs of one split, their metrics, and how alpha was set."""

    alpha: float
    reports: dict[str, MetricReport]
    runs: dict[str, Run]
    search: AlphaSearch | None = None  # None when alpha was given


def _dense_and_sparse(encode_queries: QueryEncoder, index: DenseIndex, bm25: BM25Index, dataset: BeirDataset,
                      query_ids: list[str], depth: int) -> tuple[Run, Run]:
    texts = [dataset.query_text[q] for q in query_ids]
    return retrieve(index, query_ids, encode_queries(texts), k=depth), bm25.retrieve(query_ids, texts, k=depth)


def evaluate_hybrid(encode_queries: QueryEncoder, index: DenseIndex, dataset: BeirDataset, split: str,
                    alpha: float | None = None, tune_split: str = "train", depth: int = DEFAULT_DEPTH,
                    k_values: Sequence[int] = (5, 20, 100, 1000), max_queries: int | None = None,
                    dense_run: Run | None = None, grid: Sequence[float] = DEFAULT_ALPHA_GRID,
                    log: Callable[[str], None] = lambda _msg: None) -> HybridEvaluation:
    """TCT-ColBERT's hybrid recipe on one split: dense top-``depth`` + BM25 top-``depth``, fused.

    With ``alpha=None`` it is tuned by :func:`tune_alpha` on the ``tune_split`` queries (which must
    differ from ``split``). ``dense_run`` reuses an existing dense run of the split's queries.
    """
    if alpha is None and tune_split == split:
        raise DataError(f"alpha would be tuned on split '{split}', the split being evaluated; pass an alpha")
    bm25 = BM25Index.from_dataset(dataset)
    qids = eval_query_ids(dataset, split, max_queries)
    search = None
    if alpha is None:
        if tune_split not in dataset.splits():
            raise DataError(f"{dataset.path}: no '{tune_split}' qrels to tune alpha on (have: {', '.join(dataset.splits())}); pass an alpha")
        tune_ids = eval_query_ids(dataset, tune_split)
        log(f"tuning alpha on {len(tune_ids)} '{tune_split}' queries")
        tune_dense, tune_sparse = _dense_and_sparse(encode_queries, index, bm25, dataset, tune_ids, depth)
        qrels = dataset.qrels(tune_split)
        search = tune_alpha(tune_dense, tune_sparse, {q: qrels[q] for q in tune_ids}, grid)
        alpha = search.alpha
    texts = [dataset.query_text[q] for q in qids]
    dense = dense_run if dense_run is not None else retrieve(index, qids, encode_queries(texts), k=depth)
    sparse = bm25.retrieve(qids, texts, k=depth)
    runs = {"dense": dense, "bm25": sparse, "hybrid": fuse_runs(dense, sparse, alpha, k=depth)}
    qrels = dataset.qrels(split)
    judged = {q: qrels[q] for q in qids}
    reports = {name: evaluate_run(judged, run, k_values) for name, run in runs.items()}
    return HybridEvaluation(alpha, reports, runs, search)


__all__ = [
    "BM25_B",
    "BM25_K1",
    "DEFAULT_ALPHA_GRID",
    "AlphaSearch",
    "BM25Index",
    "HybridEvaluation",
    "evaluate_hybrid",
    "fuse_runs",
    "tune_alpha",
]

