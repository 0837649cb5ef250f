"""The student's query length, from the data (``student.max_query_length: null``, the default).

A fixed cut (64 tokens) silently drops most of an argument or a question paragraph of 150-300
words, while the teacher reads it whole. The run instead measures its queries with the student's
tokenizer and lets the student read the longest evaluation query and all but the longest 1% of
its training (or pseudo-) queries, never more than the teacher reads: a query under the limit is
seen whole by both, and a longer one is cut at the same token by both (the same text where, as for
a student cut from its teacher, they share a tokenizer). The percentile keeps a few long corpus
sentences among the pseudo-queries from padding every batch to the teacher's limit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from transformers import AutoTokenizer

from common.model_registry import resolve_model

# Never below this: a limit fitted to tiny queries would cut a slightly longer one at serving time.
MIN_QUERY_LENGTH = 32
TRAINING_PERCENTILE = 99


@dataclass
class QueryLength:
    """The resolved limit and what it means for the evaluation queries."""

    limit: int
    source: str  # "data" (measured) or "config" (set by the user)
    teacher_limit: int
    longest_training: int
    longest_eval: int
    eval_queries: int
    eval_truncated: int  # evaluation queries longer than the limit: both models see them cut

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def token_lengths(model: str, texts: Sequence[str]) -> list[int]:
    """Tokens per text (special tokens included) under ``model``'s tokenizer, uncut."""
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(model))
    return [len(ids) for ids in tokenizer(list(texts), add_special_tokens=True, verbose=False)["input_ids"]]


def resolve_query_length(model: str, configured: int | None, teacher_limit: int, training: Sequence[str],
                         evaluation: Sequence[str]) -> QueryLength:
    """The query limit for a student started from ``model``: ``configured`` when set, else the
    longest evaluation query or the 99th percentile of the training queries, whichever is longer
    (at least ``MIN_QUERY_LENGTH``), capped by ``teacher_limit``."""
    lengths = token_lengths(model, [*training, *evaluation])
    train_lengths, eval_lengths = lengths[: len(training)], lengths[len(training) :]
    longest_training, longest_eval = max(train_lengths, default=0), max(eval_lengths, default=0)
    if configured is not None:
        limit, source = configured, "config"
    else:
        typical = int(np.ceil(np.percentile(train_lengths, TRAINING_PERCENTILE))) if train_lengths else 0
        limit, source = min(teacher_limit, max(MIN_QUERY_LENGTH, typical, longest_eval)), "data"
    return QueryLength(limit, source, teacher_limit, longest_training, longest_eval, len(eval_lengths),
                       sum(n > limit for n in eval_lengths))
