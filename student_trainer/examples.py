"""Training examples: (query, positive, hard negatives) rows, written as parquet (each Train
worker takes its shard of the table).

Negatives are mined once from a first-stage ranking (the teacher's own, from its document index
and its query embeddings fetched through the service, or BM25's for teachers without one) or
drawn at random; training then asks the teacher online for the scores of every in-batch pair.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from common.datasets import BeirDataset
from student_trainer.config import DataConfig
from student_trainer.teacher_index import DocEmbeddings

EXAMPLES_SCHEMA = pa.schema([
    ("query_id", pa.string()),
    ("query", pa.string()),
    ("positive_id", pa.string()),
    ("positive", pa.string()),
    ("negative_ids", pa.list_(pa.string())),
    ("negatives", pa.list_(pa.string())),
])


@dataclass
class QuerySplit:
    """Training query ids, and the dev ids held out from them for model selection."""

    train: list[str]
    dev: list[str]


def split_queries(dataset: BeirDataset, config: DataConfig, seed: int) -> QuerySplit:
    if config.train_split is None:
        return QuerySplit([], [])
    ids = dataset.split_query_ids(config.train_split)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(ids))
    dev = sorted(ids[i] for i in order[: config.dev_queries])
    dev_set = set(dev)
    train = [q for q in ids if q not in dev_set]
    if config.max_train_queries:
        train = train[: config.max_train_queries]
    return QuerySplit(train, dev)


def build_examples(dataset: BeirDataset, query_ids: list[str], config: DataConfig, ranked: list[list[str]] | None,
                   seed: int) -> pa.Table:
    """One row per (query, relevant document). ``ranked[i]`` is query ``query_ids[i]``'s first-stage
    ranking (the teacher's own or BM25's) that hard negatives are drawn from, below its top
    ``mine_skip_top``; without it (random negatives) they are drawn from the whole corpus."""
    if config.train_split is None:
        raise ValueError("build_examples needs labelled queries (data.train_split)")
    if ranked is not None and len(ranked) != len(query_ids):
        raise ValueError(f"{len(ranked)} rankings for {len(query_ids)} queries")
    qrels = dataset.qrels(config.train_split)
    rng = np.random.default_rng(seed)
    texts = dataset.doc_texts
    rows: dict[str, list] = {name: [] for name in EXAMPLES_SCHEMA.names}
    for qi, qid in enumerate(query_ids):
        relevant = {d for d, grade in qrels.get(qid, {}).items() if grade > 0}
        if ranked is not None:
            pool = [d for d in ranked[qi][config.mine_skip_top :] if d not in relevant]
        else:
            pool = []
        for pos in sorted(relevant):
            negs = _choose_negatives(pool, relevant, dataset, config.num_negatives, rng)
            rows["query_id"].append(qid)
            rows["query"].append(dataset.query_text[qid])
            rows["positive_id"].append(pos)
            rows["positive"].append(texts[dataset.doc_index[pos]])
            rows["negative_ids"].append(negs)
            rows["negatives"].append([texts[dataset.doc_index[d]] for d in negs])
    # In query order: the training loop draws a fresh seeded order every epoch (epoch_batches).
    return pa.Table.from_pydict(rows, schema=EXAMPLES_SCHEMA)


def label_free_examples(dataset: BeirDataset, queries: list[str], config: DataConfig, doc_index: DocEmbeddings,
                        teacher_query_emb: np.ndarray, seed: int) -> pa.Table:
    """Examples for a corpus without training queries or qrels: pseudo-queries drawn from the
    corpus, each with the teacher's top-1 document as its positive and documents from deeper in
    the teacher's ranking as negatives. Every label comes from the teacher."""
    rng = np.random.default_rng(seed)
    _, ranked = doc_index.index.search(teacher_query_emb, max(config.mine_top_k, 2 + config.num_negatives))
    texts = dataset.doc_texts
    rows: dict[str, list] = {name: [] for name in EXAMPLES_SCHEMA.names}
    for i, (query, ranking) in enumerate(zip(queries, ranked)):
        positive = ranking[0]
        pool = ranking[1 + config.mine_skip_top :]
        negs = _choose_negatives(pool, {positive}, dataset, config.num_negatives, rng)
        rows["query_id"].append(f"pseudo-{i}")
        rows["query"].append(query)
        rows["positive_id"].append(positive)
        rows["positive"].append(texts[dataset.doc_index[positive]])
        rows["negative_ids"].append(negs)
        rows["negatives"].append([texts[dataset.doc_index[d]] for d in negs])
    return pa.Table.from_pydict(rows, schema=EXAMPLES_SCHEMA)


def _choose_negatives(pool: list[str], relevant: set[str], dataset: BeirDataset, n: int,
                      rng: np.random.Generator) -> list[str]:
    if n == 0:
        return []
    if len(pool) >= n:
        return [pool[i] for i in sorted(rng.choice(len(pool), size=n, replace=False))]
    chosen = list(pool)
    while len(chosen) < n:  # top up at random (mining disabled, or a ranking full of positives)
        d = dataset.doc_ids[int(rng.integers(len(dataset.doc_ids)))]
        if d not in relevant and d not in chosen:
            chosen.append(d)
    return chosen


def epoch_batches(rows: dict[str, np.ndarray], batch_size: int, seed: int, epoch: int,
                  rank: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """One epoch of a worker's examples in full batches, in an order drawn afresh for each epoch.

    Each epoch permutes all rows with a generator seeded by ``(seed, rank, epoch)``: in-batch
    negatives (the other queries' documents) change from epoch to epoch, and the rows the last,
    partial batch would hold (dropped: the layout needs ``batch_size`` queries) differ too, so
    every example is trained on. The same seed, rank and epoch give the same order, so a resumed
    run skips exactly the batches it has already trained on.
    """
    n = len(next(iter(rows.values()))) if rows else 0
    order = np.random.default_rng([seed, rank, epoch]).permutation(n)
    for start in range(0, n - batch_size + 1, batch_size):
        take = order[start : start + batch_size]
        yield {name: column[take] for name, column in rows.items()}
