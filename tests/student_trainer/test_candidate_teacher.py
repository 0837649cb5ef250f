"""Candidate lists ranked by a teacher ensemble through the live service, with the student's own
current top documents mixed in (issue #21). Real Serve teachers ("tiny", "tiny-cls-cos" of the
``teacher_app`` fixture), real FAISS, a real Ray Train run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.datasets import load_beir
from student_trainer.candidates import CandidateBuilder, merge_candidates
from student_trainer.config import RunConfig
from student_trainer.losses import CandidateKLLoss, build_loss, candidate_kl
from student_trainer.run import connect_teacher, run_distillation
from student_trainer.score_calibration import combine, zscore_per_query
from student_trainer.teacher_index import teacher_doc_embeddings
from student_trainer.teacher_signals import TeacherMember, TeacherSignalSource

# The second member is the real all-MiniLM-L6-v2: the random tiny [CLS]-pooled teacher's cosines of
# one query's candidates differ by ~1e-6, below float noise, so z-scores of them could not be checked.
ENSEMBLE = {"teacher": None, "teachers": ["tiny", {"name": "minilm", "weight": 0.5}], "calibration": "zscore"}


def candidate_run(tmp_path, tiny_bert_dir, mini_beir, **train) -> RunConfig:
    return RunConfig.model_validate({
        "name": "candidates", "output_dir": str(tmp_path),
        "teacher": {"app_name": "tightdistill", "serve_config": None, **ENSEMBLE},
        "student": {"model": str(tiny_bert_dir), "num_layers": 1, "asymmetric": True},
        "data": {"dataset": str(mini_beir), "train_split": None, "pseudo_queries": 64, "num_negatives": 1},
        "train": {"batch_size": 8, "num_workers": 1, "cpus_per_worker": 0.5, "report_every": 2, "checkpoint_every": 2,
                  "max_steps": 2, "epochs": 1, **train},
        "eval": {"evaluate_untrained": False},
    })


def test_merge_keeps_the_teachers_best_and_adds_the_students_new_picks():
    assert merge_candidates(["a", "b", "c", "d"], ["c", "x", "y", "z"], 4, 2) == ["a", "b", "x", "y"]
    assert merge_candidates(["a", "b", "c", "d"], ["d", "a", "c"], 4, 2) == ["a", "b", "c", "d"]  # nothing new
    assert merge_candidates(["a", "b", "c", "d"], ["x"], 4, 3) == ["a", "b", "c", "x"]  # only one new


def test_given_scores_are_the_target_and_the_embedding_path_is_unchanged():
    g = torch.Generator().manual_seed(2)
    s, t, docs = torch.randn(3, 8, generator=g), torch.randn(3, 8, generator=g), torch.randn(3, 5, 8, generator=g)
    scores = torch.randn(3, 5, generator=g)
    sn = torch.nn.functional.normalize(s, dim=-1)
    expected = 0.0
    for i in range(3):
        p_t = torch.softmax(scores[i] / 0.7, 0)
        p_s = torch.softmax(docs[i] @ sn[i] / 0.1, 0)
        expected += float((p_t * (p_t.log() - p_s.log())).sum()) / 3
    assert float(candidate_kl(s, None, docs, 0.1, teacher_scores=scores, target_tau=0.7)) == pytest.approx(expected, rel=1e-5)
    # the scores replace the teacher's embedding: any teacher_query_emb gives the same loss
    assert float(candidate_kl(s, t, docs, 0.1, teacher_scores=scores, target_tau=0.7)) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match=r"teacher_scores must be \[3, 5\]"):
        candidate_kl(s, None, docs, 0.1, teacher_scores=torch.randn(3, 4))
    with pytest.raises(ValueError, match="student_candidates must be an int in"):
        build_loss({"candidate_kl": {"top_k": 8, "student_candidates": 8}})
    assert CandidateKLLoss(top_k=8, student_candidates=2, target_tau=0.3).get_config_dict() == {
        "tau": 0.05, "normalize": True, "top_k": 8, "target_tau": 0.3, "student_candidates": 2}


def test_the_ensemble_scores_the_teachers_and_the_students_candidates(teacher_app, tiny_bert_dir, mini_beir, tmp_path):
    run = candidate_run(tmp_path, tiny_bert_dir, mini_beir)
    client = connect_teacher(run.teacher)
    dataset = load_beir(run.data.dataset)
    index = teacher_doc_embeddings(client, dataset, show_progress=False)
    other = teacher_doc_embeddings(client, dataset, teacher="minilm", show_progress=False)
    info = {name: client.describe(name) for name in ("tiny", "minilm")}
    assert info["minilm"]["similarity"] == "dot"  # the checkpoint normalises: dot products below
    members = [TeacherMember("tiny", info["tiny"], 1.0, "zscore", 1.0, index),
               TeacherMember("minilm", info["minilm"], 0.5, "zscore", 1.0, other)]
    source = TeacherSignalSource(client, "tiny", info["tiny"], index, want_query_embeddings=True, ensemble=members)
    builder = CandidateBuilder(index, source, top_k=8, student_candidates=3, corpus=dict(zip(dataset.doc_ids, dataset.doc_texts)))

    queries = [dataset.query_text[q] for q in dataset.split_query_ids("test")[:4]]
    teacher_q = client.encode_many(queries, role="query")
    rng = np.random.default_rng(0)
    student_q = torch.from_numpy(rng.standard_normal(teacher_q.shape).astype(np.float32))  # a random student disagrees
    lists = builder.build(queries, teacher_q, student_q)

    teacher_top = index.top_k_ids(teacher_q, 8)
    student_top = index.top_k_ids(student_q.numpy(), 8 + 3)
    assert lists.ids == [merge_candidates(t, s, 8, 3) for t, s in zip(teacher_top, student_top)]
    assert 0 < lists.student_share <= 3 / 8
    np.testing.assert_array_equal(lists.doc_emb.numpy(), index.lookup([d for row in lists.ids for d in row]).reshape(4, 8, -1))
    # The target: each member's scores of the list, z-scored per query over it, weighted 1 : 0.5.
    other_q = client.with_teacher("minilm").encode_many(queries, role="query")
    for i, row in enumerate(lists.ids):
        z = [zscore_per_query((index.lookup(row) @ teacher_q[i])[None])[0], zscore_per_query((other.lookup(row) @ other_q[i])[None])[0]]
        np.testing.assert_allclose(lists.teacher_scores[i].numpy(), combine(z, [1.0, 0.5]), atol=2e-3)


def test_a_run_learns_from_the_ensembles_ranking_of_the_candidates(teacher_app, tiny_bert_dir, mini_beir, tmp_path):
    run = candidate_run(tmp_path, tiny_bert_dir, mini_beir,
                        losses={"query_embedding": {}, "candidate_kl": {"top_k": 8, "student_candidates": 3, "target_tau": 0.5}})
    result = run_distillation(run, show_progress=False)
    last = result.history[-1]
    assert last["step"] == 2
    assert last["candidate_kl"] > 0 and last["candidates/wait_s"] > 0
    assert 0 < last["candidates/student_share"] <= 3 / 8  # the untrained student picks documents the teacher did not


def test_a_corpus_smaller_than_top_k_gives_all_of_it_as_candidates():
    """adapt's small corpora: 5 documents, top_k 8; a single DE ranks them itself (no service call)."""
    from types import SimpleNamespace

    from student_trainer.teacher_index import DocEmbeddings

    rng = np.random.default_rng(1)
    index = DocEmbeddings([f"d{i}" for i in range(5)], rng.standard_normal((5, 4)).astype(np.float32))
    builder = CandidateBuilder(index, SimpleNamespace(is_ensemble=False), top_k=8, student_candidates=2)
    q = rng.standard_normal((3, 4)).astype(np.float32)
    lists = builder.build(["a", "b", "c"], q, torch.from_numpy(q))
    assert lists.doc_emb.shape == (3, 5, 4) and lists.teacher_scores is None
    assert all(sorted(row) == sorted(index.ids) for row in lists.ids)
    assert float(CandidateKLLoss(top_k=8)(_batch_for(lists, q))) == pytest.approx(0.0, abs=1e-6)  # the student is the teacher


def _batch_for(lists, q: np.ndarray):
    from student_trainer.losses import DistillBatch

    t = torch.from_numpy(q)
    return DistillBatch(student_scores=torch.zeros(3, 3), labels=DistillBatch.layout_labels(3, 0), num_negatives=0,
                        student_query_emb=t, teacher_query_emb=t, candidate_doc_emb=lists.doc_emb)
