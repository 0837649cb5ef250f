"""How much better a stronger teacher ranks than the dual-encoder it should improve on.

A pair-scoring teacher (ColBERT's MaxSim, a cross-encoder) cannot search a corpus: what it knows
shows in how it re-orders a first stage. This module measures exactly that, on one dataset's
evaluation queries: the dual-encoder teacher retrieves its top ``depth`` documents from its cached
document index, the pair scorer re-ranks them through the service, and the ranking is scored
with the split's qrels. An experiment table prints the figure beside the DE's own full retrieval
(``teacher_evaluations`` in the experiment file), so a reader sees what the students could gain
before reading what they did gain.

The figures are computed once per (dataset, split, teachers, depth) and kept in a JSON file beside
the experiment's runs: run folders are reused the same way. The file is keyed on teacher names, not
their checkpoints (reading a fingerprint would start Ray for every table): delete it after pointing
a teacher name at another checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field

from common.config import StrictModel
from student_trainer.config import RunConfig

if TYPE_CHECKING:
    from common.datasets import BeirDataset
    from common.evaluation import Evaluation
    from teacher_service.client import TeacherClient


class TeacherEvaluation(StrictModel):
    """One stronger teacher to measure on every dataset of an experiment."""

    teacher: str = Field(description="A pair-scoring teacher served by the experiment's teacher app (ColBERT, cross-encoder).")
    first_stage: str | None = Field(None, description="The dual-encoder teacher whose index gives the candidates (default: the runs' primary teacher).")
    depth: int = Field(100, ge=1, description="Candidates re-ranked per query.")

    def label(self, first_stage: str) -> str:
        return f"{self.teacher} re-ranking {first_stage}'s top {self.depth}"


def measure_reranking(client: TeacherClient, dataset: BeirDataset, split: str, query_ids: list[str],
                      evaluation: TeacherEvaluation, first_stage: str, k_values: list[int],
                      ignore_identical_ids: bool = False, show_progress: bool = True) -> Evaluation:
    """``evaluation.teacher`` re-ranking ``first_stage``'s top ``depth`` documents (full retrieval from
    its cached index) for ``query_ids``, scored with ``split``'s qrels."""
    from common.evaluation import evaluate_encoder, evaluate_pair_scorer
    from student_trainer.teacher_index import teacher_doc_embeddings

    index = teacher_doc_embeddings(client, dataset, teacher=first_stage, show_progress=show_progress)

    def encode(texts: list[str]) -> Any:
        return client.encode_many(texts, role="query", teacher=first_stage)

    first = evaluate_encoder(encode, index.index, dataset, split, k_values, query_ids=query_ids,
                             ignore_identical_ids=ignore_identical_ids)
    candidates = {q: sorted(hits, key=hits.__getitem__, reverse=True)[: evaluation.depth] for q, hits in first.run.items()}

    def score_pairs(queries: list[str], documents: list[str]) -> Any:
        return client.score_many(queries, documents, teacher=evaluation.teacher,
                                 progress=f"{evaluation.teacher}: re-ranking" if show_progress else None)

    return evaluate_pair_scorer(score_pairs, dataset, split, candidates, k_values, query_ids,
                                ignore_identical_ids=ignore_identical_ids)


def rerank_figures(run: RunConfig, evaluations: list[TeacherEvaluation], store: Path, address: str | None = None,
                   show_progress: bool = True) -> dict[str, dict[str, float]]:
    """For ``run``'s dataset and evaluation split, each evaluation's metrics (nDCG@10, MRR@10,
    R@k, ...) under its label, from ``store`` where it holds them for the same settings; the
    others are measured through ``run``'s teacher app and added to ``store``."""
    # Ray and the run driver only when something is measured (experiment configs import this module).
    from common.datasets import load_beir
    from common.ray_runtime import init_ray
    from student_trainer.run import connect_teacher, eval_queries

    cached = json.loads(store.read_text()) if store.is_file() else {}
    dataset = load_beir(run.data.dataset)
    split, query_ids = eval_queries(run, dataset)
    out: dict[str, dict[str, float]] = {}
    client = None
    for ev in evaluations:
        first = ev.first_stage or run.teacher.teacher
        label = ev.label(first)
        key = json.dumps({"split": split, "queries": len(query_ids), "teacher": ev.teacher, "first_stage": first,
                          "depth": ev.depth, "app": run.teacher.app_name, "ignore_identical_ids": run.eval.ignore_identical_ids})
        if cached.get(label, {}).get("key") != key:
            if client is None:
                init_ray(address)
                client = connect_teacher(run.teacher)
            reranked = measure_reranking(client, dataset, split, query_ids, ev, first, run.eval.k_values,
                                         run.eval.ignore_identical_ids, show_progress)
            cached[label] = {"key": key, "metrics": {**reranked.report.aggregate, "first_stage": first}}
            store.parent.mkdir(parents=True, exist_ok=True)
            store.write_text(json.dumps(cached, indent=2))
        out[label] = cached[label]["metrics"]
    return out
