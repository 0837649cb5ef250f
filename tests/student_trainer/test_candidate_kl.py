"""CandidateKLLoss: listwise KL over the teacher's top-K documents from its own index."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from student_trainer.losses import CandidateKLLoss, DistillBatch, build_loss, candidate_kl
from student_trainer.teacher_index import DocEmbeddings


def _batch(student_q: torch.Tensor, teacher_q: torch.Tensor, candidates: torch.Tensor | None) -> DistillBatch:
    B = teacher_q.shape[0]
    return DistillBatch(student_scores=torch.zeros(B, B), labels=DistillBatch.layout_labels(B, 0), num_negatives=0,
                        student_query_emb=student_q, teacher_query_emb=teacher_q, candidate_doc_emb=candidates)


def test_candidate_kl_matches_hand_computation_and_is_zero_at_the_teacher():
    g = torch.Generator().manual_seed(0)
    s, t, docs = torch.randn(3, 8, generator=g), torch.randn(3, 8, generator=g), torch.randn(3, 5, 8, generator=g)
    tau = 0.1
    sn, tn = F.normalize(s, dim=-1), F.normalize(t, dim=-1)
    expected = 0.0
    for i in range(3):
        p_t = torch.softmax(docs[i] @ tn[i] / tau, 0)
        p_s = torch.softmax(docs[i] @ sn[i] / tau, 0)
        expected += float((p_t * (p_t.log() - p_s.log())).sum()) / 3
    assert float(candidate_kl(s, t, docs, tau)) == pytest.approx(expected, rel=1e-5)
    # Only directions count with normalize: a rescaled copy of the teacher has zero loss.
    assert float(candidate_kl(2.5 * t, t, docs, tau)) == pytest.approx(0.0, abs=1e-6)
    # Without it the query's norm is a temperature (at tau 10, where the teacher's distribution is not one-hot).
    assert float(candidate_kl(2.5 * t, t, docs, 10.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(candidate_kl(2.5 * t, t, docs, 10.0, normalize=False)) > 1e-3


def test_candidate_kl_trains_a_query_towards_the_teachers_order():
    g = torch.Generator().manual_seed(1)
    t, docs = torch.randn(4, 16, generator=g), torch.randn(4, 32, 16, generator=g)
    s = torch.randn(4, 16, generator=g, requires_grad=True)
    loss_fn = CandidateKLLoss(tau=0.1)
    opt = torch.optim.Adam([s], lr=0.05)
    start = float(loss_fn(_batch(s.detach(), t, docs)))
    for _ in range(200):
        opt.zero_grad()
        loss_fn(_batch(s, t, docs)).backward()
        opt.step()
    assert float(loss_fn(_batch(s.detach(), t, docs))) < 0.05 * start


def test_candidate_kl_names_what_is_missing_and_checks_shapes():
    t = torch.randn(2, 4)
    with pytest.raises(ValueError, match="candidate_doc_emb.*top-K"):
        CandidateKLLoss()(_batch(t, t, None))
    with pytest.raises(ValueError, match=r"candidate_doc_emb must be a float tensor \[B=2, K, d\]"):
        _batch(t, t, torch.randn(3, 5, 4))
    with pytest.raises(ValueError, match="top_k must be an int >= 2"):
        build_loss({"candidate_kl": {"top_k": 1}})
    assert build_loss({"candidate_kl": {"tau": 0.05, "top_k": 8}}).get_config_dict() == {
        "candidate_kl": {"weight": 1.0, "tau": 0.05, "normalize": True, "top_k": 8, "target_tau": 0.5,
                         "student_candidates": 0}}


def test_top_k_embeddings_are_each_querys_best_documents():
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((50, 8)).astype(np.float32)
    index = DocEmbeddings([f"d{i}" for i in range(50)], emb)
    queries = rng.standard_normal((3, 8)).astype(np.float32)
    got = index.top_k_embeddings(queries, 4)
    assert got.shape == (3, 4, 8)
    for q, rows in zip(queries, got):
        best = np.argsort(-(emb @ q))[:4]
        np.testing.assert_array_equal(rows, emb[best])
