"""Length-sorted, token-budget batch planning.

Padding a batch to its longest text wastes compute on short texts. Sorting by length and capping
each batch by *padded tokens* (batch size x longest length) rather than by count keeps every
forward pass close to the same cost, which is what the fastest embedding servers do.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def plan_batches(
    lengths: Sequence[int], token_budget: int, max_batch_size: int, sort: bool = True
) -> list[np.ndarray]:
    """Group item indices into batches of at most ``token_budget`` padded tokens.

    Args:
        lengths: token count of each item (after truncation).
        token_budget: cap on ``len(batch) * max(lengths in batch)``; an item longer than the
            budget still gets a batch of its own.
        max_batch_size: cap on items per batch.
        sort: sort by length (longest first) before grouping; ``False`` keeps input order
            (the naive baseline the benchmarks compare against).

    Returns:
        A list of index arrays that together cover ``range(len(lengths))`` exactly once.
    """
    if token_budget < 1 or max_batch_size < 1:
        raise ValueError("token_budget and max_batch_size must be >= 1")
    lengths_arr = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(-lengths_arr, kind="stable") if sort else np.arange(len(lengths_arr))
    batches: list[np.ndarray] = []
    start = 0
    while start < len(order):
        longest = int(lengths_arr[order[start]])
        end = start + 1
        while end < len(order) and end - start < max_batch_size:
            longest_if_added = max(longest, int(lengths_arr[order[end]]))
            if (end - start + 1) * longest_if_added > token_budget:
                break
            longest = longest_if_added
            end += 1
        batches.append(order[start:end])
        start = end
    return batches
