"""Teacher training data: the dev split, mined hard negatives (never a relevant document), batches."""

from __future__ import annotations

import pytest

from common.datasets import DataError, load_beir
from teacher_trainer.config import TeacherDataConfig
from teacher_trainer.data import build_teacher_data, mine_rankings, split_dev


@pytest.fixture(scope="module")
def mined(mini_beir):
    dataset = load_beir(mini_beir)
    config = TeacherDataConfig(dataset=str(mini_beir), dev_queries=8, dev_depth=6, miner="bm25", mine_depth=10, mine_skip_top=1)
    return dataset, config, build_teacher_data(dataset, config, seed=3, show_progress=False)


def test_dev_split_is_held_out(mined):
    dataset, _, data = mined
    train_ids = {p.query_id for p in data.pairs}
    dev_texts = {dataset.query_text[q] for q in data.dev_candidates}
    assert len(dev_texts) == 8 and not train_ids & set(data.dev_candidates)
    assert not dev_texts & {dataset.query_text[q] for q in train_ids}
    assert train_ids | set(data.dev_candidates) == set(dataset.split_query_ids("train"))
    assert split_dev(["a", "b", "c", "d"], 2, seed=1) == split_dev(["a", "b", "c", "d"], 2, seed=1)  # seeded
    # Ids sharing a key (the query text) stay on one side.
    train, dev = split_dev(["a1", "a2", "b", "c"], 1, seed=0, key=lambda q: q[0])
    assert {"a1", "a2"} <= set(train) or {"a1", "a2"} <= set(dev)
    assert {q[0] for q in train}.isdisjoint({q[0] for q in dev})
    with pytest.raises(DataError, match="leaves no training queries"):
        split_dev(["a", "b"], 2, seed=0)


def test_negatives_come_from_the_miner_and_are_never_relevant(mined):
    dataset, config, data = mined
    qrels = dataset.qrels("train")
    pairs_per_query = {q: sum(1 for p in data.pairs if p.query_id == q) for q in {p.query_id for p in data.pairs}}
    assert all(pairs_per_query[q] == sum(g > 0 for g in qrels[q].values()) for q in pairs_per_query)
    rankings = mine_rankings(dataset, [p.query_id for p in data.pairs], config, config.mine_depth)
    for pair in data.pairs:
        window = [d for d, _ in rankings[pair.query_id][config.mine_skip_top : config.mine_depth]]
        assert pair.pool == [d for d in window if d not in pair.relevant]  # the top rank is skipped
    # Dev candidates are the miner's top dev_depth, scored by the miner.
    for qid, candidates in data.dev_candidates.items():
        assert len(candidates) <= 6 and list(data.dev_miner_run[qid]) == candidates


def test_batches_redraw_negatives_each_epoch(mined):
    dataset, _, data = mined
    per_epoch = data.steps_per_epoch(4)
    batches = list(data.batches(batch_size=4, negatives=3, steps=2 * per_epoch, seed=0))
    assert len(batches) == 2 * per_epoch
    first, second = batches[:per_epoch], batches[per_epoch:]
    assert sum(len(b) for b in first) == sum(len(b) for b in second) == len(data.pairs)
    texts = set(dataset.doc_texts)
    relevant_texts: dict[str, set[str]] = {}  # by query text (scifact repeats some claims under two ids)
    for p in data.pairs:
        relevant_texts.setdefault(dataset.query_text[p.query_id], set()).update(data.text(d) for d in p.relevant)
    for group in (g for b in batches for g in b):
        assert len(group.negatives) == 3 and set(group.documents) <= texts
        assert group.positive in relevant_texts[group.query]
        assert not set(group.negatives) & relevant_texts[group.query]
    draws = [sorted((g.query, g.positive, tuple(g.negatives)) for b in epoch for g in b) for epoch in (first, second)]
    assert draws[0] != draws[1]  # fresh negatives (and order) every epoch
