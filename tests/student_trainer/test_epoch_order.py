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
