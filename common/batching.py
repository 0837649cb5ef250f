"""Length-sorted, token-budget batch planning.

Padding a batch to its longest text wastes compute on short texts. Sorting by length and capping
each batch by *padded tokens* (batch size x longest length) rather than by count keeps every
forward pass close to the same cost, which is what the fastest embedding servers do.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Padded tokens per forward pass when the caller sets none, by device type. On a CPU the fastest
# passes are small ones whose activations stay in cache: all-MiniLM-L6-v2 at 256 tokens on this
# project's 2-core machine encodes 31-33 documents/s with 1,024-2,048-token passes against 25-27
# with 16,384 (float32; 81-86 against 67-69 in bfloat16). A GPU needs large passes to fill its
# cores: on an H100 in bfloat16, 65,536-token passes encode scifact at 28,410 documents/s, 16,384
# at 13,386 and 2,048 at 2,497 (bench/encoding_efficiency.py, --device cuda for the GPU).
DEFAULT_TOKEN_BUDGET = {"cpu": 2048, "cuda": 65536}


# Padded tokens per pass of a *training* step (forward and backward), by device type. A batch of
# queries and pseudo-queries padded to its longest text is mostly padding (scifact, default run:
# 1,448 real tokens in 3,328 padded), and the backward pass pays for it twice. Length-sorted passes
# of 1,024 tokens made a 2-layer student's fp32 step 1.35x faster than one pass (bench/training_step.py,
# the default run's kind of batches, this project's 2-core AMD EPYC) and about 1.1x faster than
# 2,048-token passes; a GPU keeps one pass per step.
TRAINING_TOKEN_BUDGET = {"cpu": 1024, "cuda": 65536}


def _by_device(table: dict[str, int], device: str) -> int:
    return table.get(device.split(":")[0], table["cpu"])


def default_token_budget(device: str) -> int:
    """The padded-token budget of one forward pass on ``device`` ('cpu', 'cuda', 'cuda:1', ...)."""
    return _by_device(DEFAULT_TOKEN_BUDGET, device)


def training_token_budget(device: str) -> int:
    """The padded-token budget of one differentiable pass of a training step on ``device``."""
    return _by_device(TRAINING_TOKEN_BUDGET, device)


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
