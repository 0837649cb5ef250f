"""common.metrics: pytrec_eval-backed MRR@10 / nDCG@10 / R@k against values worked out by hand."""

from __future__ import annotations

import json
import math

import pytest

from common.metrics import MetricReport, compare_per_query, cut_run, evaluate_run, format_table


def _dcg(gains: list[float]) -> float:
    """DCG with the log2 discount: sum_i gain_i / log2(i + 1), ranks i from 1."""
    return sum(g / math.log2(i + 1) for i, g in enumerate(gains, start=1))


QRELS = {
    "q1": {"a": 2, "b": 1, "c": 0, "e": 1},  # 3 relevant (a, b, e), c judged non-relevant
    "q2": {"f": 1},                           # relevant, but the run has no ranking for q2
    "q3": {"g": 0},                           # nothing relevant: not evaluated
}
RUN = {
    "q1": {"x": 0.9, "a": 0.8, "c": 0.7, "b": 0.6, "y": 0.5},  # ranks: x a c b y (e not retrieved)
    "q4": {"a": 1.0},                                           # not in qrels: ignored
}


def test_metrics_match_hand_computed_values():
    report = evaluate_run(QRELS, RUN, k_values=(1, 3, 5))
    assert list(report.aggregate) == ["MRR@10", "nDCG@10", "R@1", "R@3", "R@5"]
    assert set(report.per_query) == {"q1", "q2"}

    q1 = report.per_query["q1"]
    assert q1["MRR@10"] == pytest.approx(1 / 2)  # first relevant (a) at rank 2
    # gains in rank order: x=0, a=2, c=0, b=1, y=0; ideal order: 2, 1, 1
    expected_ndcg = (2 / math.log2(3) + 1 / math.log2(5)) / (2 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(4))
    assert expected_ndcg == pytest.approx(_dcg([0, 2, 0, 1, 0]) / _dcg([2, 1, 1]))
    assert q1["nDCG@10"] == pytest.approx(expected_ndcg)
    assert q1["R@1"] == 0.0
    assert q1["R@3"] == pytest.approx(1 / 3)
    assert q1["R@5"] == pytest.approx(2 / 3)

    # q2 is missing from the run: zero on everything, and it still counts in the mean
    assert report.per_query["q2"] == {k: 0.0 for k in report.aggregate}
    for name, value in report.aggregate.items():
        assert value == pytest.approx(q1[name] / 2)


def test_default_keys_and_empty_query_ranking():
    report = evaluate_run({"q": {"d": 1}}, {"q": {}})
    assert list(report.aggregate) == ["MRR@10", "nDCG@10", "R@5", "R@20", "R@100", "R@1000"]
    assert all(v == 0.0 for v in report.aggregate.values())
    assert evaluate_run({"q": {"d": 1}}, {}).aggregate == report.aggregate


def test_mrr_is_cut_at_10():
    docs = [f"n{i:02d}" for i in range(1, 21)]
    for rank, expected in [(1, 1.0), (10, 0.1), (11, 0.0)]:
        ranking = docs[: rank - 1] + ["rel"] + docs[rank - 1:]
        run = {"q": {d: float(100 - i) for i, d in enumerate(ranking)}}
        report = evaluate_run({"q": {"rel": 1}}, run, k_values=(20,))
        assert report.aggregate["MRR@10"] == pytest.approx(expected), rank
        assert report.aggregate["R@20"] == 1.0
        assert (report.aggregate["nDCG@10"] > 0) == (rank <= 10)


def test_top10_cut_breaks_ties_like_trec_eval():
    # 12 tied documents: trec_eval orders ties by doc id descending, so "a" (smallest id) is rank 12.
    run = {"q": {d: 1.0 for d in ["a"] + [f"z{i:02d}" for i in range(11)]}}
    report = evaluate_run({"q": {"a": 1}}, run, k_values=(11, 12))
    assert report.aggregate["MRR@10"] == 0.0
    assert report.aggregate["R@11"] == 0.0 and report.aggregate["R@12"] == 1.0
    assert "a" not in cut_run(run, 10)["q"]


def test_report_serialisation_and_table():
    report = evaluate_run(QRELS, RUN, k_values=(5,))
    data = json.loads(report.to_json())
    assert data["num_queries"] == 2
    assert data["aggregate"] == pytest.approx(report.aggregate)
    assert MetricReport.from_dict(data) == report  # JSON round-trips floats exactly

    perfect = evaluate_run(QRELS, {"q1": {"a": 3.0, "b": 2.0, "e": 1.0}, "q2": {"f": 1.0}}, k_values=(5,))
    table = format_table({"bm25": report, "teacher": perfect})
    lines = table.splitlines()
    assert lines[0] == "| system | MRR@10 | nDCG@10 | R@5 |"
    assert lines[1].startswith("|---|")
    assert lines[2] == f"| bm25 | 0.250 | {report.aggregate['nDCG@10']:.3f} | 0.333 |"
    assert lines[3] == "| teacher | 1.000 | 1.000 | 1.000 |"

    diff = compare_per_query(report, perfect, "MRR@10")
    assert diff == pytest.approx({"q1": 0.5, "q2": 1.0})


def test_bad_inputs():
    with pytest.raises(ValueError, match="no query with a relevant"):
        evaluate_run({"q": {"d": 0}}, {"q": {"d": 1.0}})
    with pytest.raises(ValueError, match="positive integers"):
        evaluate_run(QRELS, RUN, k_values=(0,))
    with pytest.raises(ValueError, match="NaN"):
        evaluate_run(QRELS, {"q1": {"a": float("nan")}})
