"""The student's query length follows the data, capped by what the teacher reads."""

from __future__ import annotations

import pytest

from student_trainer.query_length import MIN_QUERY_LENGTH, resolve_query_length, token_lengths


def words(n: int) -> str:
    return " ".join(["retrieval"] * n)  # one word piece each in MiniLM's vocabulary


def test_token_lengths_count_special_tokens():
    assert token_lengths("minilm-l6", [words(10), ""]) == [12, 2]  # [CLS] ... [SEP]


def test_the_longest_evaluation_query_is_read_whole_up_to_the_teachers_limit():
    training = [words(5)] * 200 + [words(150)]  # one long outlier among short training queries
    got = resolve_query_length("minilm-l6", None, 256, training, [words(100), words(8)])
    assert (got.limit, got.source, got.eval_truncated) == (102, "data", 0)  # 100 words + [CLS] + [SEP]
    assert got.longest_training == 152 and got.longest_eval == 102
    capped = resolve_query_length("minilm-l6", None, 64, training, [words(100), words(8)])
    assert (capped.limit, capped.eval_truncated, capped.eval_queries) == (64, 1, 2)  # both cut at the teacher's 64


def test_short_data_gets_the_floor_and_a_configured_limit_wins():
    assert resolve_query_length("minilm-l6", None, 256, [words(3)] * 10, [words(4)]).limit == MIN_QUERY_LENGTH
    fixed = resolve_query_length("minilm-l6", 16, 256, [words(3)], [words(40)])
    assert (fixed.limit, fixed.source, fixed.eval_truncated) == (16, "config", 1)


def test_most_training_queries_set_the_limit_when_evaluation_queries_are_short():
    training = [words(n) for n in range(1, 101)] * 2  # 3..102 tokens, uniformly
    got = resolve_query_length("minilm-l6", None, 512, training, [words(3)])
    assert got.limit == pytest.approx(101, abs=1)  # the 99th percentile, not the longest (102)
