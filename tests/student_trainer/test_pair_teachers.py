"""Students distilled from teachers that score pairs: cross-encoders ([CLS]- and dual-pooled) and
ColBERT (EmbedDistill Table 5, TCT-ColBERT). Such a teacher has no single-vector document index, so
the run mines negatives with BM25, trains a symmetric student on the teacher's in-batch matrices
(plus, [CLS]-pooled, naive joint matching on its [CLS] states, or, dual-pooled, query embedding
matching on its query proxies), and evaluates teacher and student on the same candidate lists. Real Serve app with tiny checkpoints in their on-disk layouts, real Ray Train, real FAISS."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from common.config import ConfigError
from common.datasets import load_beir
from common.evaluation import evaluate_pair_scorer, rerank_candidates
from common.hybrid_retrieval import BM25Index
from student_trainer.config import RunConfig
from student_trainer.run import eval_queries, run_distillation
from student_trainer.teacher_signals import TeacherSignalSource, TrainBatch
from teacher_service.client import TeacherClient

APP = "pair-teachers"  # conftest.py's pair_app: ce-cls, ce-dual and colbert among its teachers


def pair_run(tmp_path: Path, tiny_bert_dir: Path, dataset: Path, teacher: str, **sections) -> RunConfig:
    config = {
        "name": teacher, "output_dir": str(tmp_path),
        "teacher": {"teacher": teacher, "app_name": APP, "serve_config": None},
        "student": {"model": str(tiny_bert_dir), "num_layers": 1, "asymmetric": False},
        "data": {"dataset": str(dataset), "num_negatives": 1, "negatives": "bm25", "mine_top_k": 10, "mine_skip_top": 0},
        "train": {"batch_size": 4, "num_workers": 1, "cpus_per_worker": 0.5, "report_every": 2, "checkpoint_every": 2,
                  "max_steps": 2, "losses": {"in_batch_kl": {}}},
        "eval": {"rerank_depth": 8},
    }
    for name, values in sections.items():
        config[name] = {**config.get(name, {}), **values}
    return RunConfig.model_validate(config)


def replica_requests(teacher: str) -> int:
    from ray import serve

    return serve.get_deployment_handle(f"teacher-{teacher}", APP).stats.remote().result()["requests"]


@pytest.mark.parametrize("teacher,losses", [
    ("ce-cls", {"in_batch_kl": {}, "joint_embedding": {}}),  # + naive joint matching on its [CLS] states
    ("ce-dual", {"in_batch_kl": {}, "query_embedding": {}}),  # the dual-pooled CE's query proxies
    ("colbert", {"in_batch_kl": {}}),
])
def test_student_distilled_from_a_pair_scoring_teacher(pair_app, tiny_bert_dir, mini_beir, tmp_path, teacher, losses):
    run = pair_run(tmp_path, tiny_bert_dir, mini_beir, teacher, train={"losses": losses})
    before = replica_requests(teacher)
    result = run_distillation(run, show_progress=False)
    served = replica_requests(teacher) - before
    # Training's own requests, as the worker counted them: 2 steps x 1 worker x one `signals`
    # request per batch (matrix and the embeddings a loss needs; no extra queries, no ensemble).
    assert result.history[-1]["step"] == 2 and result.history[-1]["teacher_requests"] == 2, result.history

    # hard negatives come from BM25's top 10 of each query (no teacher index exists to mine from)
    dataset = load_beir(mini_beir)
    table = pq.read_table(result.run_dir / "data" / "train.parquet").to_pylist()
    bm25 = BM25Index.from_dataset(dataset)
    for row in table[:10]:
        top = [d for d, _ in bm25.search([row["query"]], 10)[0]]
        assert set(row["negative_ids"]) <= set(top), row["query_id"]

    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert metrics["eval"] == {"mode": "rerank", "split": "test", "queries": 24, "candidates": "BM25 top 8"}
    split, qids = eval_queries(run, dataset)
    hits = bm25.search([dataset.query_text[q] for q in qids], 8)
    candidates = {q: [d for d, _ in h] for q, h in zip(qids, hits)}
    # The replica answered exactly: training's 2, the teacher's re-ranking of every (query,
    # candidate) pair (score_many sends chunks of 64 pairs) and, where the teacher's width differs
    # from the student's (ColBERT's 16 vs 32), the projection fit's query embeddings (chunks of 64).
    pairs = sum(map(len, candidates.values()))
    fit_texts = metrics.get("projection_fit", {}).get("texts", 0)
    assert served == 2 + math.ceil(pairs / 64) + math.ceil(fit_texts / 64), (served, pairs, fit_texts)
    assert len(metrics["commit"]) >= 7  # the code that trained it (this checkout's HEAD)
    reports = metrics["metrics"]
    assert set(reports) == {"teacher", "student", "student (retrieval)"}
    # Teacher and student re-ranked BM25's top 8 of each query: at a depth beyond the lists, each
    # one's recall is the lists' own, computed here from the lists and the qrels (relevant: grade >= 1).
    qrels = dataset.qrels(split)
    relevant = {q: {d for d, g in qrels[q].items() if g >= 1} for q in qids}
    list_recall = float(np.mean([len(set(candidates[q]) & relevant[q]) / len(relevant[q]) for q in qids]))
    assert 0 < list_recall < 1  # the lists miss some relevant documents: a recall other lists would not match
    assert reports["teacher"]["R@100"] == pytest.approx(list_recall), "the teacher did not re-rank BM25's top 8"
    assert reports["student"]["R@100"] == pytest.approx(list_recall), "the student did not re-rank BM25's top 8"
    assert metrics["retained"]["nDCG@10"] == pytest.approx(reports["student"]["nDCG@10"] / reports["teacher"]["nDCG@10"])
    assert metrics["signals"]["teachers"][0]["scores_from"] == "service (score matrix)"
    if teacher == "ce-cls":  # no query/document embeddings: the student keeps its own size, no projection
        assert metrics["student_parameters"]["projection"] == 0
    # The embedding-matching term was fed, logged and optimized: a finite, non-zero distance (a
    # random student does not match the teacher), and the logged loss is the weighted sum (all
    # weights 1) of the logged terms, so the term is part of what training minimised.
    last = result.history[-1]
    for term in set(losses) - {"in_batch_kl"}:
        assert np.isfinite(last[term]) and last[term] > 0, (term, last)
    assert last["loss"] == pytest.approx(sum(last[term] for term in losses), rel=1e-5), last
    assert "re-rank the same candidates (BM25 top 8)" in (result.run_dir / "report.md").read_text()


def test_cross_encoder_embeddings_are_asked_for_only_when_a_loss_uses_them(pair_app):
    """A dual-pooled CE's proxies are copied out of all B x N passes: a run without embedding
    matching gets the same scores without them."""
    client = TeacherClient.from_serve(APP)
    info = client.describe("ce-dual")
    batch = TrainBatch(queries=["glacier caves", "vaccines"], extra_queries=[], doc_ids=["a", "b", "c", "d"],
                       documents=["caves form in ice", "markets fell", "vaccines train immunity", "penguins swim"],
                       num_negatives=1)
    plain = TeacherSignalSource(client, "ce-dual", info, None, want_query_embeddings=False)
    matching = TeacherSignalSource(client, "ce-dual", info, None, want_query_embeddings=True)
    without, with_proxies = plain.collect(plain.submit(batch)), matching.collect(matching.submit(batch))
    assert without.query_embeddings is None and without.document_embeddings is None
    assert with_proxies.query_embeddings.shape == (2, 32) and with_proxies.document_embeddings.shape == (4, 32)
    np.testing.assert_allclose(without.scores, with_proxies.scores, rtol=1e-5, atol=1e-6)


def test_pair_teacher_refuses_what_needs_a_document_index(pair_app, tiny_bert_dir, mini_beir, tmp_path):
    run = pair_run(tmp_path, tiny_bert_dir, mini_beir, "ce-dual", student={"asymmetric": True},
                   data={"negatives": "mined"}, eval={"mode": "retrieval"})
    with pytest.raises(ConfigError) as err:
        run_distillation(run, show_progress=False)
    message = str(err.value)
    for part in ("teacher 'ce-dual' is a cross_encoder", "set student.asymmetric: false", "use 'bm25' or 'random'",
                 "eval.mode 'retrieval'"):
        assert part in message
    assert not (tmp_path / "ce-dual" / "data").exists()  # refused before any work

    joint = pair_run(tmp_path, tiny_bert_dir, mini_beir, "ce-dual", train={"losses": {"joint_embedding": {}}})
    with pytest.raises(ConfigError, match="joint_embedding matches a \\[CLS\\]-pooled cross-encoder's joint embeddings"):
        run_distillation(joint, show_progress=False)


def test_rerank_candidates_from_the_dataset_file_else_bm25(mini_beir, tmp_path):
    folder = Path(shutil.copytree(mini_beir, tmp_path / "with-candidates"))
    dataset = load_beir(mini_beir)
    qids = dataset.split_query_ids("test")[:3]
    relevant = {q: sorted(dataset.qrels("test")[q]) for q in qids}
    others = [d for d in dataset.doc_ids if all(d not in r for r in relevant.values())][:4]
    lines = [f"{q}\t{d}" for q in qids for d in [*others[:2], relevant[q][0], *others[2:]]]
    (folder / "candidates.test.tsv").write_text("query-id\tcorpus-id\n" + "\n".join(lines) + "\n")
    given = load_beir(folder)

    candidates, source = rerank_candidates(given, "test", qids)
    assert source == "candidates.test.tsv" and candidates[qids[0]] == [*others[:2], relevant[qids[0]][0], *others[2:]]
    bm25_lists, source = rerank_candidates(dataset, "test", qids, depth=5)
    hits = BM25Index.from_dataset(dataset).search([dataset.query_text[q] for q in qids], 5)
    assert source == "BM25 top 5" and bm25_lists == {q: [d for d, _ in h] for q, h in zip(qids, hits)}
    assert [len(c) for c in bm25_lists.values()] == [5, 5, 5]  # the corpus has far more than 5 documents

    # a scorer that ranks each query's relevant document first, then one that ranks it second of five
    text_of = {given.doc_texts[given.doc_index[d]]: d for d in given.doc_ids}
    first = evaluate_pair_scorer(lambda qs, ds: np.array([float(text_of[d] in sum(relevant.values(), [])) for d in ds]),
                                 given, "test", candidates, query_ids=qids)
    assert first.mode == "rerank" and first.report.aggregate["MRR@10"] == pytest.approx(1.0)
    order = {d: -i for i, d in enumerate([others[0], relevant[qids[0]][0]])}  # others[0] first, then the relevant one
    second = evaluate_pair_scorer(lambda qs, ds: np.array([order.get(text_of[d], -10.0) for d in ds]),
                                  given, "test", {qids[0]: candidates[qids[0]]}, query_ids=[qids[0]])
    assert second.report.aggregate["MRR@10"] == pytest.approx(0.5)
