"""Agreement metrics (common/agreement.py) on tiny examples with answers worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from common.agreement import agreement_metrics, distribution_kl, inbatch_kl, kendall_tau, overlap_at_k, query_cosines, rbo


def test_overlap_at_k():
    assert overlap_at_k(["a", "b", "c"], ["c", "d", "a"], 3) == pytest.approx(2 / 3)
    assert overlap_at_k(["a", "b", "c"], ["c", "d", "a"], 1) == 0.0
    with pytest.raises(ValueError, match="k must be"):
        overlap_at_k(["a"], ["a"], 0)


def test_rbo_known_values():
    assert rbo(list("abcdef"), list("abcdef"), p=0.9) == pytest.approx(1.0)
    assert rbo(list("abc"), list("xyz"), p=0.9) == 0.0
    # X_1 = 1, X_2 = 1, X_3 = 3 at p = 0.5:
    # (3/3) 0.5^3 + (0.5/0.5) (1 * 0.5 + 1/2 * 0.25 + 3/3 * 0.125) = 0.125 + 0.75
    assert rbo(["a", "b", "c"], ["a", "c", "b"], p=0.5) == pytest.approx(0.875)
    # A swap at the top costs more than the same swap further down (top-weighted).
    assert rbo(list("bacd"), list("abcd")) < rbo(list("abdc"), list("abcd"))
    # Lists of different length are compared to the shorter one's depth.
    assert rbo(["a", "b", "c"], ["a", "c"], p=0.5) == pytest.approx(rbo(["a", "b"], ["a", "c"], p=0.5))
    with pytest.raises(ValueError, match="persistence"):
        rbo(["a"], ["a"], p=1.0)


def test_kendall_tau_and_kl_known_values():
    # pairs (1,2) and (1,3) concordant, (2,3) discordant: (2 - 1) / 3
    assert kendall_tau([1.0, 2.0, 3.0], [1.0, 3.0, 2.0]) == pytest.approx(1 / 3)
    assert kendall_tau([1.0, 2.0, 3.0], [3.0, 2.0, 1.0]) == pytest.approx(-1.0)
    assert math.isnan(kendall_tau([1.0, 1.0], [1.0, 2.0]))
    # P = (1/2, 1/2), Q = (1/4, 3/4): KL = 1/2 ln 2 + 1/2 ln(2/3) = 1/2 ln(4/3)
    kl = distribution_kl(np.array([[0.0, 0.0]]), np.array([[0.0, math.log(3.0)]]))
    assert kl[0] == pytest.approx(0.5 * math.log(4 / 3))
    # the teacher's temperature: t / tau with tau = 0.5 doubles the teacher's logits
    assert distribution_kl(np.array([[1.0, 0.0]]), np.array([[2.0, 0.0]]), tau=0.5)[0] == pytest.approx(0.0, abs=1e-12)


DOCS = np.array([[1.0, 0.0], [0.8, 0.2], [0.0, 1.0], [0.5, 0.5]], dtype=np.float32)


def test_agreement_of_a_perfect_and_of_an_opposite_student():
    teacher_q = np.array([[1.0, 0.0]], dtype=np.float32)  # ranks d0 (1.0), d1 (0.8), d3 (0.5), d2 (0.0)
    same = agreement_metrics(teacher_q, DOCS, teacher_q.copy(), k=2, kl_group=2)
    assert same.aggregate["overlap@2"] == 1.0 and same.aggregate["RBO@2"] == pytest.approx(1.0)
    assert same.aggregate["kendall_tau@2"] == pytest.approx(1.0)
    assert same.aggregate["inbatch_kl"] == pytest.approx(0.0, abs=1e-9)
    assert same.aggregate["query_cosine_mean"] == pytest.approx(1.0)

    # The student ranks d2 (1.0), d3 (0.5), d1 (0.2), d0 (0.0): the exact reverse of the teacher.
    opposite = agreement_metrics(teacher_q, DOCS, np.array([[0.0, 1.0]], dtype=np.float32), k=2, kl_group=2)
    assert opposite.aggregate["overlap@2"] == 0.0 and opposite.aggregate["RBO@2"] == 0.0
    # over the union {d0, d1, d2, d3}: teacher (1, .8, 0, .5), student (0, .2, 1, .5)
    assert opposite.aggregate["kendall_tau@2"] == pytest.approx(-1.0)
    assert opposite.aggregate["query_cosine_mean"] == pytest.approx(0.0, abs=1e-7)
    # batch = the teacher's top 2 (d0, d1): P = softmax(1, .8), Q = softmax(0, .2)
    p = np.exp([1.0, 0.8]) / np.exp([1.0, 0.8]).sum()
    q = np.exp([0.0, 0.2]) / np.exp([0.0, 0.2]).sum()
    assert opposite.aggregate["inbatch_kl"] == pytest.approx(float((p * np.log(p / q)).sum()))
    assert opposite.per_query["overlap@2"] == [0.0]


def test_symmetric_student_uses_its_own_documents():
    teacher_q = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    # the student's document space is the teacher's mirrored, and so are its queries: same rankings
    mirrored = DOCS[:, ::-1].copy()
    result = agreement_metrics(teacher_q, DOCS, teacher_q[:, ::-1].copy(), mirrored, k=3)
    assert result.aggregate["overlap@3"] == 1.0 and result.aggregate["RBO@3"] == pytest.approx(1.0)
    assert result.aggregate["query_cosine_mean"] == pytest.approx(0.0, abs=1e-7)  # yet the query vectors differ
    with pytest.raises(ValueError, match="same queries"):
        agreement_metrics(teacher_q, DOCS, teacher_q[:1], k=2)


def test_inbatch_kl_batches_like_training():
    rng = np.random.default_rng(0)
    tq, sq, docs = rng.normal(size=(6, 4)), rng.normal(size=(6, 4)), rng.normal(size=(10, 4))
    top = [list(np.argsort(-(docs @ q))) for q in tq]
    per_query = inbatch_kl(tq, docs, sq, docs, top, group=2, batch_size=3, tau=0.5, student_scale=2.0)
    # the second batch alone: queries 3-5 against their own top-2 documents
    cols = [d for i in range(3, 6) for d in top[i][:2]]
    expected = distribution_kl(tq[3:] @ docs[cols].T, 2.0 * (sq[3:] @ docs[cols].T), tau=0.5)
    np.testing.assert_allclose(per_query[3:], expected)
    np.testing.assert_allclose(query_cosines(tq, tq), np.ones(6))


def test_inbatch_kl_calibrates_the_teacher_as_training_does():
    rng = np.random.default_rng(1)
    tq, docs = rng.normal(size=(4, 3)), rng.normal(size=(8, 3))
    top = [list(np.argsort(-(docs @ q))) for q in tq]
    doubled = inbatch_kl(tq, docs, tq, docs, top, group=2, tau=1.0, student_scale=2.0, calibrate=lambda t: 2 * t)
    np.testing.assert_allclose(doubled, 0.0, atol=1e-12)  # the student's 2 s matches the calibrated 2 t exactly
    assert (inbatch_kl(tq, docs, tq, docs, top, group=2, tau=1.0, student_scale=2.0) > 1e-6).all()
