"""Every epoch sees the examples in a new seeded order: in-batch negatives change, and no row is
left out for good by the dropped partial batch."""

from __future__ import annotations

import numpy as np

from student_trainer.examples import epoch_batches


def rows(n: int) -> dict[str, np.ndarray]:
    ids = np.array([f"q{i}" for i in range(n)], dtype=object)
    negatives = np.empty(n, dtype=object)
    negatives[:] = [np.array([f"d{i}-neg"], dtype=object) for i in range(n)]
    return {"query_id": ids, "negative_ids": negatives}


def compositions(n: int, batch_size: int, epoch: int, seed: int = 13) -> list[frozenset[str]]:
    return [frozenset(b["query_id"]) for b in epoch_batches(rows(n), batch_size, seed, epoch)]


def test_batches_change_between_epochs():
    first, second = compositions(100, 8, epoch=0), compositions(100, 8, epoch=1)
    assert len(first) == len(second) == 100 // 8  # full batches only: the layout needs batch_size queries
    assert set(first).isdisjoint(second), "an epoch repeated a batch of the one before"


def test_every_example_is_trained_on_across_epochs():
    seen = {q for epoch in range(4) for batch in compositions(100, 8, epoch) for q in batch}
    assert seen == {f"q{i}" for i in range(100)}  # 4 rows of each epoch are dropped, not the same 4


def test_the_order_is_reproducible_for_a_resumed_run():
    assert compositions(100, 8, epoch=3) == compositions(100, 8, epoch=3)
    assert compositions(100, 8, epoch=3, seed=14) != compositions(100, 8, epoch=3)


def test_columns_stay_aligned():
    for batch in epoch_batches(rows(20), 4, seed=0, epoch=2):
        assert [n[0] for n in batch["negative_ids"]] == [f"d{q[1:]}-neg" for q in batch["query_id"]]


def test_worker_shards_are_equal_disjoint_and_the_same_after_a_restart():
    """Each Train worker's rows (train_loop.shard_rows) from the examples table as run.py writes
    it, list columns included: a restarted worker must get the same shard back to skip exactly
    the batches it trained on."""
    import pyarrow as pa

    from student_trainer.train_loop import shard_rows, to_train_batch

    table = pa.table({"query": [f"q{i}" for i in range(11)], "positive_id": [f"p{i}" for i in range(11)],
                      "positive": [f"pos {i}" for i in range(11)],
                      "negative_ids": [[f"n{i}a", f"n{i}b"] for i in range(11)],
                      "negatives": [[f"neg {i}a", f"neg {i}b"] for i in range(11)]})
    shards = [shard_rows(table, rank, 3) for rank in range(3)]
    queries = [list(s["query"]) for s in shards]
    assert [len(q) for q in queries] == [3, 3, 3]  # 11 // 3 each; the last 2 rows would unbalance the steps
    assert len(set().union(*queries)) == 9 and set().union(*queries) <= {f"q{i}" for i in range(9)}
    assert [list(s["query"]) for s in (shard_rows(table, rank, 3) for rank in range(3))] == queries
    assert list(shard_rows(table, 0, 1)["query"]) == [f"q{i}" for i in range(11)]  # one worker: the file's order
    batch = to_train_batch(next(epoch_batches(shards[1], 2, seed=0, epoch=0)), 1, [])
    i = int(batch.queries[0][1:])
    assert batch.doc_ids[:2] == [f"p{i}", f"n{i}a"] and batch.documents[:2] == [f"pos {i}", f"neg {i}a"]
