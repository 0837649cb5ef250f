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


def evaluate_encoder(encode_queries: QueryEncoder, index: DenseIndex, dataset: BeirDataset, split: str,
                     k_values: Sequence[int] = (5, 20, 100, 1000), max_queries: int | None = None,
                     candidates: dict[str, list[str]] | None = None, query_ids: Sequence[str] | None = None) -> Evaluation:
    """Encode the split's queries (or ``query_ids``, judged by the split's qrels), retrieve from
    ``index`` (or re-rank ``candidates``), score."""
    qids = list(query_ids) if query_ids is not None else eval_query_ids(dataset, split, max_queries)
    q_emb = encode_queries([dataset.query_text[q] for q in qids])
    if candidates is None:
        run = retrieve(index, qids, q_emb, k=max(k_values))
        mode = "retrieval"
    else:
        run = rerank(candidates, qids, q_emb, (index.ids, index.embeddings()))
        mode = "rerank"
    qrels = dataset.qrels(split)
    return Evaluation(evaluate_run({q: qrels[q] for q in qids}, run, k_values), run, mode)
