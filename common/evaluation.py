"""Retrieval evaluation as the papers do it: full retrieval over a FAISS index, or re-ranking of
given candidate lists, scored with MRR@10, nDCG@10 and Recall@k (pytrec_eval)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from common.datasets import BeirDataset
from common.metrics import MetricReport, Run, evaluate_run
from common.retrieval import DenseIndex, rerank, retrieve

QueryEncoder = Callable[[list[str]], np.ndarray]


@dataclass
class Evaluation:
    report: MetricReport
    run: Run
    mode: str  # "retrieval" or "rerank"


def eval_query_ids(dataset: BeirDataset, split: str, max_queries: int | None = None) -> list[str]:
    ids = dataset.split_query_ids(split)
    return ids[:max_queries] if max_queries else ids


def drop_identical_ids(run: Run, depth: int | None = None) -> Run:
    """``run`` without the documents whose id is their query's id, cut to ``depth`` per query.

    BEIR's ``ignore_identical_ids``: in collections where every query is also a document (ArguAna,
    Quora), a query retrieves itself first, which says nothing about retrieval quality."""
    out: Run = {}
    for q, docs in run.items():
        kept = sorted(((d, s) for d, s in docs.items() if d != q), key=lambda x: -x[1])
        out[q] = dict(kept[:depth] if depth is not None else kept)
    return out


def evaluate_encoder(encode_queries: QueryEncoder, index: DenseIndex, dataset: BeirDataset, split: str,
                     k_values: Sequence[int] = (5, 20, 100, 1000), max_queries: int | None = None,
                     candidates: dict[str, list[str]] | None = None, query_ids: Sequence[str] | None = None,
                     ignore_identical_ids: bool = False) -> Evaluation:
    """Encode the split's queries (or ``query_ids``, judged by the split's qrels), retrieve from
    ``index`` (or re-rank ``candidates``), score; with ``ignore_identical_ids`` a document whose
    id is the query's never counts (see :func:`drop_identical_ids`)."""
    qids = list(query_ids) if query_ids is not None else eval_query_ids(dataset, split, max_queries)
    q_emb = encode_queries([dataset.query_text[q] for q in qids])
    depth = max(k_values)
    if candidates is None:
        # One deeper, so that dropping the query itself still leaves `depth` documents.
        run = retrieve(index, qids, q_emb, k=depth + int(ignore_identical_ids))
        mode = "retrieval"
    else:
        run = rerank(candidates, qids, q_emb, (index.ids, index.embeddings()))
        mode = "rerank"
    return _scored(dataset, split, qids, drop_identical_ids(run, depth) if ignore_identical_ids else run, k_values, mode)


def _scored(dataset: BeirDataset, split: str, qids: list[str], run: Run, k_values: Sequence[int], mode: str) -> Evaluation:
    qrels = dataset.qrels(split)
    return Evaluation(evaluate_run({q: qrels[q] for q in qids}, run, k_values), run, mode)


PairScorer = Callable[[list[str], list[str]], np.ndarray]

# A run evaluated by re-ranking also scores a symmetric student by full retrieval, under this name.
STUDENT_RETRIEVAL = "student (retrieval)"


def rerank_candidates(dataset: BeirDataset, split: str, query_ids: Sequence[str], depth: int = 100) -> tuple[dict[str, list[str]], str]:
    """Candidate lists to re-rank for ``query_ids`` and where they came from: the dataset's own
    ``candidates.<split>.tsv`` when it ships one (wikiqa), else BM25's top ``depth``."""
    if (dataset.path / f"candidates.{split}.tsv").is_file():
        given = dataset.candidates(split)
        return {q: given.get(q, []) for q in query_ids}, f"candidates.{split}.tsv"
    from common.hybrid_retrieval import BM25Index  # bm25s is imported only when needed

    hits = BM25Index.from_dataset(dataset).search([dataset.query_text[q] for q in query_ids], depth)
    return {q: [d for d, _ in h] for q, h in zip(query_ids, hits)}, f"BM25 top {depth}"


def evaluate_pair_scorer(score_pairs: PairScorer, dataset: BeirDataset, split: str, candidates: dict[str, list[str]],
                         k_values: Sequence[int] = (5, 20, 100, 1000), query_ids: Sequence[str] | None = None,
                         ignore_identical_ids: bool = False) -> Evaluation:
    """Re-rank each query's candidates with a model that scores (query, document) pairs (a
    cross-encoder, ColBERT's MaxSim) and score the ranking; ``score_pairs`` gets every pair at once.
    ``ignore_identical_ids`` as in :func:`evaluate_encoder`."""
    qids = list(query_ids) if query_ids is not None else list(candidates)
    pairs = [(q, d) for q in qids for d in candidates.get(q, [])]
    texts = dataset.doc_texts
    scores = score_pairs([dataset.query_text[q] for q, _ in pairs], [texts[dataset.doc_index[d]] for _, d in pairs])
    if len(scores) != len(pairs):
        raise ValueError(f"the scorer returned {len(scores)} scores for {len(pairs)} pairs")
    run: Run = {q: {} for q in qids}
    for (q, d), s in zip(pairs, np.asarray(scores, dtype=np.float64)):
        run[q][d] = float(s)
    return _scored(dataset, split, qids, drop_identical_ids(run) if ignore_identical_ids else run, k_values, "rerank")
