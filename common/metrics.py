"""Ranking metrics (MRR@10, nDCG@10, Recall@k) computed by ``pytrec_eval`` (trec_eval's C code).

Nothing is computed by hand here: this module only shapes the input for ``pytrec_eval`` and names,
fills and averages its per-query output.

Conventions (the BEIR / MS MARCO ones):

* **Evaluated queries** are the queries of ``qrels`` with at least one document of grade > 0.
  Queries of the run that are not evaluated are ignored; a query whose judgments are all <= 0 is
  dropped (its grade-0 judgments are passed to pytrec_eval unchanged for the other queries).
* **Missing queries score 0.** An evaluated query that is absent from the run (or has an empty
  ranking) gets 0 for every metric and still counts in the average, so a system cannot gain by
  skipping hard queries.
* **Ordering** is trec_eval's: score descending, ties broken by document id descending
  (lexicographic). The top-10 cut used for MRR@10 follows the same order.
* ``MRR@10``: reciprocal rank of the first relevant document within the top 10, else 0
  (``recip_rank`` on the run cut to its top 10 per query; plain ``recip_rank`` has no cutoff).
* ``nDCG@10``: trec_eval ``ndcg_cut.10`` (gain = grade, discount ``log2(rank + 1)``).
* ``R@k``: trec_eval ``recall.k`` = relevant documents in the top k / all relevant documents
  (relevant = grade >= 1).
* ``aggregate`` is the unweighted mean over evaluated queries.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import pytrec_eval

from common.datasets import Qrels

Run = dict[str, dict[str, float]]
"""Query id -> document id -> score (higher is better)."""

DEFAULT_K_VALUES: tuple[int, ...] = (5, 20, 100, 1000)
MRR_CUTOFF = 10
NDCG_CUTOFF = 10


def metric_names(k_values: Iterable[int] = DEFAULT_K_VALUES) -> list[str]:
    """The report's metric keys, in column order: ``MRR@10``, ``nDCG@10``, ``R@k``..."""
    return ["MRR@10", "nDCG@10", *(f"R@{k}" for k in k_values)]


@dataclass
class MetricReport:
    """Metrics of one system on one query set.

    ``aggregate``: metric name -> mean over evaluated queries.
    ``per_query``: query id -> metric name -> value (every evaluated query, zeros for missing ones).
    """

    aggregate: dict[str, float]
    per_query: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def num_queries(self) -> int:
        return len(self.per_query)

    def to_dict(self) -> dict:
        return {"aggregate": dict(self.aggregate), "num_queries": self.num_queries,
                "per_query": {q: dict(m) for q, m in self.per_query.items()}}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=False)

    @classmethod
    def from_dict(cls, data: Mapping) -> MetricReport:
        return cls(aggregate=dict(data["aggregate"]), per_query={q: dict(m) for q, m in data.get("per_query", {}).items()})


def _validate_k_values(k_values: Iterable[int]) -> tuple[int, ...]:
    ks = tuple(k_values)
    if not ks:
        raise ValueError("k_values must not be empty")
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k_values must be positive integers, got {k!r}")
    if len(set(ks)) != len(ks):
        raise ValueError(f"k_values has duplicates: {ks}")
    return ks


def _ranked(docs: Mapping[str, float]) -> list[tuple[str, float]]:
    """Documents in trec_eval order: score descending, then document id descending."""
    return sorted(docs.items(), key=lambda item: (item[1], item[0]), reverse=True)


def cut_run(run: Run, k: int) -> Run:
    """Keep each query's top ``k`` documents, in trec_eval's order (so ties cut the same way)."""
    return {q: dict(_ranked(docs)[:k]) for q, docs in run.items()}


def _clean_run(run: Mapping[str, Mapping[str, float]], keep: set[str]) -> Run:
    out: Run = {}
    for qid, docs in run.items():
        if qid not in keep or not docs:
            continue
        clean: dict[str, float] = {}
        for did, score in docs.items():
            value = float(score)
            if math.isnan(value):
                raise ValueError(f"run score for query '{qid}', document '{did}' is NaN")
            clean[str(did)] = value
        out[str(qid)] = clean
    return out


def evaluate_run(qrels: Qrels, run: Run, k_values: Iterable[int] = DEFAULT_K_VALUES) -> MetricReport:
    """Score ``run`` against ``qrels`` with pytrec_eval.

    Args:
        qrels: ``{query_id: {doc_id: grade}}``; only queries with a grade > 0 are evaluated.
        run: ``{query_id: {doc_id: score}}``; any number of documents per query (R@k looks at the
            top k of what is there).
        k_values: cutoffs for ``R@k``.

    Returns:
        A :class:`MetricReport` with keys ``MRR@10``, ``nDCG@10`` and ``R@k`` for each ``k``.

    Raises:
        ValueError: on bad ``k_values``, NaN scores, or when no query of ``qrels`` has a relevant
            document (nothing to average).
    """
    ks = _validate_k_values(k_values)
    names = metric_names(ks)
    judged: Qrels = {
        str(q): {str(d): int(g) for d, g in docs.items()}
        for q, docs in qrels.items()
        if any(int(g) > 0 for g in docs.values())
    }
    if not judged:
        raise ValueError("qrels has no query with a relevant document (grade > 0): nothing to evaluate")

    full = _clean_run(run, set(judged))
    top10 = cut_run(full, MRR_CUTOFF)

    recall_measure = "recall." + ",".join(str(k) for k in ks)
    main = pytrec_eval.RelevanceEvaluator(judged, {f"ndcg_cut.{NDCG_CUTOFF}", recall_measure})
    mrr = pytrec_eval.RelevanceEvaluator(judged, {"recip_rank"})
    main_scores = main.evaluate(full) if full else {}
    mrr_scores = mrr.evaluate(top10) if top10 else {}

    per_query: dict[str, dict[str, float]] = {}
    for qid in judged:
        m = main_scores.get(qid)
        r = mrr_scores.get(qid)
        values = {name: 0.0 for name in names}
        if r is not None:
            values["MRR@10"] = float(r["recip_rank"])
        if m is not None:
            values["nDCG@10"] = float(m[f"ndcg_cut_{NDCG_CUTOFF}"])
            for k in ks:
                values[f"R@{k}"] = float(m[f"recall_{k}"])
        per_query[qid] = values

    n = len(per_query)
    aggregate = {name: sum(v[name] for v in per_query.values()) / n for name in names}
    return MetricReport(aggregate=aggregate, per_query=per_query)


def format_table(reports: Mapping[str, MetricReport], metrics: Iterable[str] | None = None) -> str:
    """A Markdown table: one row per system, one column per metric, 3 decimals.

    Columns default to the first report's metrics in order (``MRR@10``, ``nDCG@10``, ``R@k``...);
    a metric a system lacks is shown as ``-``.
    """
    if not reports:
        raise ValueError("format_table needs at least one report")
    if metrics is None:
        metrics = list(next(iter(reports.values())).aggregate)
    cols = list(metrics)
    lines = [
        "| system | " + " | ".join(cols) + " |",
        "|---|" + "|".join("---:" for _ in cols) + "|",
    ]
    for name, report in reports.items():
        cells = [f"{report.aggregate[c]:.3f}" if c in report.aggregate else "-" for c in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def compare_per_query(a: MetricReport, b: MetricReport, metric: str) -> dict[str, float]:
    """Per-query difference ``b - a`` on ``metric`` over the queries both reports evaluated."""
    if metric not in a.aggregate or metric not in b.aggregate:
        raise ValueError(f"metric '{metric}' not in both reports (have {sorted(a.aggregate)})")
    common = [q for q in a.per_query if q in b.per_query]
    return {q: b.per_query[q][metric] - a.per_query[q][metric] for q in common}


__all__ = [
    "DEFAULT_K_VALUES",
    "MetricReport",
    "Run",
    "compare_per_query",
    "cut_run",
    "evaluate_run",
    "format_table",
    "metric_names",
]
