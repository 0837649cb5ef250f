"""Training data of a teacher: (query, positive, mined hard negatives) groups and a dev split.

The training queries of a split are divided (seeded) into train and dev queries. Every query is
ranked once by a miner, the packaged MiniLM dual-encoder over the corpus (its document
embeddings come from tightdistill's cache, shared with the distillation runs) or BM25; a train
query's hard negatives are drawn from its ranking's top ``mine_depth`` minus its relevant
documents, afresh every epoch, and a dev query's top ``dev_depth`` are the candidates the teacher
re-ranks for the dev nDCG@10.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from common.datasets import BeirDataset, DataError
from common.retrieval import Run
from teacher_trainer.config import TeacherDataConfig

Ranking = list[tuple[str, float]]  # (doc id, miner score), best first


@dataclass(frozen=True)
class TrainingGroup:
    """One query with its positive and hard negatives; the teacher should score the positive highest."""

    query: str
    positive: str
    negatives: list[str]

    @property
    def documents(self) -> list[str]:
        """Positive first, then the negatives (label 0 of the group's candidates)."""
        return [self.positive, *self.negatives]


@dataclass
class MinedPair:
    """A (training query, relevant document) pair and the pool its hard negatives are drawn from.

    ``relevant`` holds every document judged relevant to the query's text (under any query id):
    none of them may be drawn as a negative.
    """

    query_id: str
    positive_id: str
    pool: list[str]
    relevant: frozenset[str]


@dataclass
class TeacherData:
    """Mined training pairs, and the dev queries with their candidates and judgments."""

    dataset: BeirDataset
    pairs: list[MinedPair]
    dev_candidates: dict[str, list[str]]
    dev_qrels: dict[str, dict[str, int]]
    dev_miner_run: Run = field(default_factory=dict)  # the miner's own scores of the dev candidates

    def text(self, doc_id: str) -> str:
        return self.dataset.doc_texts[self.dataset.doc_index[doc_id]]

    def steps_per_epoch(self, batch_size: int) -> int:
        return -(-len(self.pairs) // batch_size)

    def batches(self, batch_size: int, negatives: int, steps: int, seed: int) -> Iterator[list[TrainingGroup]]:
        """``steps`` batches of ``batch_size`` groups; each epoch reshuffles the pairs and redraws the
        negatives (seeded); the last batch of an epoch may be smaller."""
        if not self.pairs:
            raise DataError(f"{self.dataset.path}: no training pairs to draw batches from")
        rng = np.random.default_rng(seed)
        done = 0
        while done < steps:
            order = rng.permutation(len(self.pairs))
            for start in range(0, len(order), batch_size):
                if done == steps:
                    return
                yield [self._group(self.pairs[i], negatives, rng) for i in order[start : start + batch_size]]
                done += 1

    def _group(self, pair: MinedPair, n: int, rng: np.random.Generator) -> TrainingGroup:
        pool = pair.pool
        if len(pool) >= n:
            chosen = [pool[i] for i in sorted(rng.choice(len(pool), size=n, replace=False))]
        else:  # a short pool (tiny corpus, or a ranking full of positives): top up at random
            chosen = list(pool)
            ids = self.dataset.doc_ids
            while len(chosen) < n:
                doc = ids[int(rng.integers(len(ids)))]
                if doc not in pair.relevant and doc not in chosen:
                    chosen.append(doc)
        return TrainingGroup(self.dataset.query_text[pair.query_id], self.text(pair.positive_id), [self.text(d) for d in chosen])


def split_dev(query_ids: list[str], dev_queries: int, seed: int, key: Callable[[str], str] = str) -> tuple[list[str], list[str]]:
    """(train ids, dev ids), both in input order: ``dev_queries`` distinct ``key`` values held out
    at random (seeded) with every id that shares them, so a query repeated under two ids (scifact
    has such claims) never sits on both sides."""
    keys = list(dict.fromkeys(key(q) for q in query_ids))
    if dev_queries >= len(keys):
        raise DataError(f"dev_queries={dev_queries} leaves no training queries (the split has {len(keys)} distinct queries)")
    held = {keys[i] for i in np.random.default_rng(seed).permutation(len(keys))[:dev_queries]}
    return [q for q in query_ids if key(q) not in held], [q for q in query_ids if key(q) in held]


def mine_rankings(dataset: BeirDataset, query_ids: list[str], config: TeacherDataConfig, depth: int,
                  show_progress: bool = True) -> dict[str, Ranking]:
    """Each query's top ``depth`` documents by the configured miner (dense MiniLM or BM25)."""
    texts = [dataset.query_text[q] for q in query_ids]
    if config.miner == "bm25":
        from common.hybrid_retrieval import BM25Index

        return dict(zip(query_ids, BM25Index.from_dataset(dataset).search(texts, depth)))

    from student_trainer.teacher_index import teacher_doc_embeddings
    from teacher_service.client import TeacherClient
    from teacher_service.kinds import build_teacher
    from teacher_service.spec import TeacherSpec

    miner = build_teacher(TeacherSpec(name="miner", kind="dual_encoder", checkpoint=config.miner_model,
                                      options={"similarity": "dot"}))
    index = teacher_doc_embeddings(TeacherClient.in_process(miner), dataset, show_progress=show_progress)
    scores, ids = index.index.search(miner.encode(texts, "query").pooled, depth)
    return {q: list(zip(docs, row.tolist())) for q, docs, row in zip(query_ids, ids, scores)}


def build_teacher_data(dataset: BeirDataset, config: TeacherDataConfig, seed: int, show_progress: bool = True) -> TeacherData:
    """Split, mine and pair up a dataset's training queries (see the module docstring)."""
    query_ids = dataset.split_query_ids(config.split)
    if not query_ids:
        raise DataError(f"{dataset.path}: split '{config.split}' has no query with a relevant document")
    train_ids, dev_ids = split_dev(query_ids, config.dev_queries, seed, key=dataset.query_text.__getitem__)
    rankings = mine_rankings(dataset, query_ids, config, max(config.mine_depth, config.dev_depth), show_progress)
    qrels = dataset.qrels(config.split)
    # A document relevant to a query text under any of its ids is never its negative.
    relevant_to_text: dict[str, set[str]] = defaultdict(set)
    for qid in query_ids:
        relevant_to_text[dataset.query_text[qid]].update(d for d, grade in qrels[qid].items() if grade > 0)
    pairs = []
    for qid in train_ids:
        relevant = frozenset(relevant_to_text[dataset.query_text[qid]])
        pool = [d for d, _ in rankings[qid][config.mine_skip_top : config.mine_depth] if d not in relevant]
        pairs += [MinedPair(qid, pos, pool, relevant) for pos in sorted(d for d, grade in qrels[qid].items() if grade > 0)]
    dev_rank = {q: rankings[q][: config.dev_depth] for q in dev_ids}
    return TeacherData(
        dataset=dataset, pairs=pairs,
        dev_candidates={q: [d for d, _ in hits] for q, hits in dev_rank.items()},
        dev_qrels={q: qrels[q] for q in dev_ids},
        dev_miner_run={q: dict(hits) for q, hits in dev_rank.items()},
    )
