"""student_trainer/losses: each loss against a hand computation, ordering, limits, validation, gradients.

Expected values are computed independently with explicit Python loops over plain floats (math /
numpy), never by calling the function under test.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from student_trainer.losses import (
    LOSSES,
    CombinedLoss,
    DistillBatch,
    DocumentEmbeddingMatchingLoss,
    InBatchKLLoss,
    JointEmbeddingMatchingLoss,
    MarginMSELoss,
    OneHotCrossEntropyLoss,
    QueryEmbeddingMatchingLoss,
    ScoreBCELoss,
    ScoreMSELoss,
    build_loss,
    embedding_distance,
    in_batch_kl,
    margin_mse,
)

B, K, DIM = 3, 2, 5
N = B * (1 + K)
G = 1 + K


# ----------------------------------------------------------------------------- fixtures and helpers


def teacher_like_scores(seed: int, b: int = B, k: int = K) -> torch.Tensor:
    """Scores where each query's positive beats its own negatives, which beat other queries' documents."""
    gen = torch.Generator().manual_seed(seed)
    n = b * (1 + k)
    scores = -2.0 + 0.3 * torch.randn(b, n, generator=gen)
    for i in range(b):
        start = i * (1 + k)
        scores[i, start] = 4.0 + 0.3 * torch.randn((), generator=gen)
        scores[i, start + 1 : start + 1 + k] = 1.0 + 0.3 * torch.randn(k, generator=gen)
    return scores


def make_batch(seed: int = 0, b: int = B, k: int = K, bq: int | None = None, **overrides) -> DistillBatch:
    gen = torch.Generator().manual_seed(seed)
    n = b * (1 + k)
    bq = b if bq is None else bq
    fields = {
        "student_scores": torch.randn(b, n, generator=gen),
        "teacher_scores": teacher_like_scores(seed + 1, b, k),
        "student_query_emb": torch.randn(bq, DIM, generator=gen),
        "teacher_query_emb": torch.randn(bq, DIM, generator=gen),
        "student_doc_emb": torch.randn(n, DIM, generator=gen),
        "teacher_doc_emb": torch.randn(n, DIM, generator=gen),
        "student_joint_emb": torch.randn(b, DIM + 1, generator=gen),
        "teacher_joint_emb": torch.randn(b, DIM + 1, generator=gen),
        "candidate_doc_emb": torch.randn(b, 6, DIM, generator=gen),
        "labels": DistillBatch.layout_labels(b, k),
        "num_negatives": k,
    }
    fields.update(overrides)
    return DistillBatch(**fields)


def rows(t: torch.Tensor) -> list[list[float]]:
    return t.detach().double().tolist()


def ref_log_softmax(xs: list[float]) -> list[float]:
    m = max(xs)
    log_z = m + math.log(sum(math.exp(x - m) for x in xs))
    return [x - log_z for x in xs]


def own_columns(i: int, k: int = K) -> list[int]:
    return list(range(i * (1 + k), (i + 1) * (1 + k)))


def ref_onehot(s: list[list[float]], labels: list[int]) -> float:
    return sum(-ref_log_softmax(row)[label] for row, label in zip(s, labels)) / len(s)


def ref_in_batch_kl(s, t, labels, tau, gamma, scope="in_batch", k=K) -> float:
    total = 0.0
    for i, (s_row, t_row) in enumerate(zip(s, t)):
        label = labels[i]
        if scope == "triplet":
            cols = own_columns(i, k)
            s_row, t_row, label = [s_row[c] for c in cols], [t_row[c] for c in cols], 0
        log_p = ref_log_softmax(s_row)
        log_p_hat = ref_log_softmax([x / tau for x in t_row])
        kl = sum(math.exp(lq) * (lq - lp) for lq, lp in zip(log_p_hat, log_p))
        total += gamma * -log_p[label] + (1 - gamma) * kl
    return total / len(s)


def ref_margin_mse(s, t, k=K) -> float:
    errs = []
    for i in range(len(s)):
        pos, *negs = own_columns(i, k)
        for j in negs:
            errs.append(((s[i][pos] - s[i][j]) - (t[i][pos] - t[i][j])) ** 2)
    return sum(errs) / len(errs)


def pairs_in_scope(i: int, n: int, scope: str) -> list[int]:
    return own_columns(i) if scope == "triplet" else list(range(n))


def ref_score_mse(s, t, scope) -> float:
    errs = [(s[i][j] - t[i][j]) ** 2 for i in range(len(s)) for j in pairs_in_scope(i, len(s[0]), scope)]
    return sum(errs) / len(errs)


def ref_score_bce(s, t, tau, scope) -> float:
    def sigmoid(x: float) -> float:
        return 1.0 / (1.0 + math.exp(-x))

    terms = []
    for i in range(len(s)):
        for j in pairs_in_scope(i, len(s[0]), scope):
            p, q = sigmoid(t[i][j] / tau), sigmoid(s[i][j])
            terms.append(-(p * math.log(q) + (1 - p) * math.log(1 - q)))
    return sum(terms) / len(terms)


def ref_embedding(student, teacher, normalize) -> float:
    dists = []
    for s_row, t_row in zip(student, teacher):
        s_vec, t_vec = np.array(s_row), np.array(t_row)
        if normalize:
            s_vec, t_vec = s_vec / np.linalg.norm(s_vec), t_vec / np.linalg.norm(t_vec)
        dists.append(math.sqrt(sum((a - b) ** 2 for a, b in zip(t_vec, s_vec))))
    return sum(dists) / len(dists)


def close(value: torch.Tensor, expected: float) -> None:
    assert value.dim() == 0
    assert float(value) == pytest.approx(expected, rel=1e-5, abs=1e-6)


# ----------------------------------------------------------------------------- DistillBatch


def test_group_columns_follow_the_layout():
    batch = make_batch(b=3, k=2)
    assert batch.group_columns().tolist() == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert (batch.batch_size, batch.num_documents, batch.group_size) == (3, 9, 3)
    scores = torch.arange(27.0).reshape(3, 9)
    assert batch.group_scores(scores).tolist() == [[0, 1, 2], [12, 13, 14], [24, 25, 26]]
    assert DistillBatch.layout_labels(4, 0).tolist() == [0, 1, 2, 3]


# ----------------------------------------------------------------------------- each loss by hand


def test_onehot_matches_hand_computation():
    batch = make_batch(seed=3)
    expected = ref_onehot(rows(batch.student_scores), batch.labels.tolist())
    close(OneHotCrossEntropyLoss()(batch), expected)


def test_onehot_tiny_literal():
    # One query, two documents: -log(e^2 / (e^2 + e^0)) = log(1 + e^-2).
    batch = DistillBatch(student_scores=torch.tensor([[2.0, 0.0]]), labels=torch.tensor([0]))
    close(OneHotCrossEntropyLoss()(batch), math.log(1 + math.exp(-2)))


@pytest.mark.parametrize("scope", ["in_batch", "triplet"])
@pytest.mark.parametrize("tau,gamma", [(0.25, 0.1), (1.0, 0.5), (2.0, 0.0)])
def test_in_batch_kl_matches_hand_computation(scope, tau, gamma):
    batch = make_batch(seed=5)
    expected = ref_in_batch_kl(rows(batch.student_scores), rows(batch.teacher_scores), batch.labels.tolist(),
                               tau, gamma, scope)
    close(InBatchKLLoss(tau=tau, gamma=gamma, scope=scope)(batch), expected)


def test_margin_mse_matches_hand_computation():
    batch = make_batch(seed=7)
    close(MarginMSELoss()(batch), ref_margin_mse(rows(batch.student_scores), rows(batch.teacher_scores)))


def test_margin_mse_tiny_literal_and_offset_invariance():
    # Student margin 2 - 1 = 1, teacher margin 3 - 0 = 3: (1 - 3)^2 = 4.
    s, t = torch.tensor([[2.0, 1.0]]), torch.tensor([[3.0, 0.0]])
    close(margin_mse(s, t), 4.0)
    close(margin_mse(s + 10.0, t), 4.0)  # a per-query offset does not matter


@pytest.mark.parametrize("scope", ["in_batch", "triplet"])
def test_score_mse_matches_hand_computation(scope):
    batch = make_batch(seed=9)
    expected = ref_score_mse(rows(batch.student_scores), rows(batch.teacher_scores), scope)
    close(ScoreMSELoss(scope=scope)(batch), expected)


@pytest.mark.parametrize("scope", ["in_batch", "triplet"])
@pytest.mark.parametrize("tau", [1.0, 0.5])
def test_score_bce_matches_hand_computation(scope, tau):
    batch = make_batch(seed=11)
    expected = ref_score_bce(rows(batch.student_scores), rows(batch.teacher_scores), tau, scope)
    close(ScoreBCELoss(tau=tau, scope=scope)(batch), expected)


@pytest.mark.parametrize("normalize", [False, True])
def test_embedding_matching_matches_hand_computation(normalize):
    batch = make_batch(seed=13, bq=B + 2)  # extra queries count for query matching
    close(QueryEmbeddingMatchingLoss(normalize=normalize)(batch),
          ref_embedding(rows(batch.student_query_emb), rows(batch.teacher_query_emb), normalize))
    close(DocumentEmbeddingMatchingLoss(normalize=normalize)(batch),
          ref_embedding(rows(batch.student_doc_emb), rows(batch.teacher_doc_emb), normalize))
    close(JointEmbeddingMatchingLoss(normalize=normalize)(batch),
          ref_embedding(rows(batch.student_joint_emb), rows(batch.teacher_joint_emb), normalize))


def test_embedding_distance_is_not_squared():
    # Distances 5 (3-4-5 triangle) and 0: mean 2.5.
    student = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    teacher = torch.tensor([[3.0, 4.0], [1.0, 1.0]])
    close(embedding_distance(student, teacher), 2.5)
    close(embedding_distance(student[:1] + 1, 7 * (student[:1] + 1), normalize=True), 0.0)


def test_combined_is_the_weighted_sum_and_logs_terms():
    batch = make_batch(seed=15)
    loss = CombinedLoss([("kl", InBatchKLLoss(tau=0.5, gamma=0.2), 1.0),
                         ("q", QueryEmbeddingMatchingLoss(), 5.0),
                         ("margin", MarginMSELoss(), 0.0)])
    s, t = rows(batch.student_scores), rows(batch.teacher_scores)
    kl = ref_in_batch_kl(s, t, batch.labels.tolist(), 0.5, 0.2)
    q = ref_embedding(rows(batch.student_query_emb), rows(batch.teacher_query_emb), False)
    margin = ref_margin_mse(s, t)
    close(loss(batch), kl + 5.0 * q)
    assert loss.last_terms == pytest.approx({"kl": kl, "q": q, "margin": margin}, rel=1e-5)
    assert loss.last_total == pytest.approx(kl + 5.0 * q, rel=1e-5)


def test_build_loss_round_trips_its_config():
    config = {"in_batch_kl": {"weight": 1.0, "tau": 0.5, "gamma": 0.2, "scope": "triplet"},
              "query_embedding": {"weight": 5.0, "normalize": True},
              "score_bce": {"weight": 0.5, "tau": 2.0, "scope": "in_batch"},
              "onehot": {"weight": 0.1}}
    loss = build_loss(config)
    assert isinstance(loss.losses["in_batch_kl"], InBatchKLLoss)
    assert loss.get_config_dict() == config
    assert build_loss(loss.get_config_dict()).get_config_dict() == config
    assert build_loss({"margin_mse": {}}).weights == {"margin_mse": 1.0}  # weight defaults to 1


# ----------------------------------------------------------------------------- behaviour


def _aligned_and_shuffled() -> tuple[DistillBatch, DistillBatch]:
    """A batch whose student agrees with the teacher (and labels), and one where it does not."""
    base = make_batch(seed=21)
    teacher = base.teacher_scores
    common = {"teacher_query_emb": base.teacher_query_emb, "teacher_doc_emb": base.teacher_doc_emb,
              "teacher_joint_emb": base.teacher_joint_emb}
    good = make_batch(seed=21, student_scores=teacher.clone(), student_query_emb=base.teacher_query_emb.clone(),
                      student_doc_emb=base.teacher_doc_emb.clone(), student_joint_emb=base.teacher_joint_emb.clone(), **common)
    # Rolling moves every positive's score onto a negative, and every embedding onto another row.
    bad = make_batch(seed=21, student_scores=teacher.roll(1, dims=1),
                     student_query_emb=base.teacher_query_emb.roll(1, dims=0),
                     student_doc_emb=base.teacher_doc_emb.roll(1, dims=0),
                     student_joint_emb=base.teacher_joint_emb.roll(1, dims=0), **common)
    return good, bad


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_aligned_student_scores_lower_than_shuffled(name):
    loss = LOSSES[name]()
    good, bad = _aligned_and_shuffled()
    assert float(loss(good)) < float(loss(bad))


@pytest.mark.parametrize("scope", ["in_batch", "triplet"])
def test_gamma_one_is_pure_onehot_and_gamma_zero_pure_kl(scope):
    batch = make_batch(seed=23)
    if scope == "in_batch":
        close(InBatchKLLoss(gamma=1.0)(batch), float(OneHotCrossEntropyLoss()(batch)))
        expected_onehot = ref_onehot(rows(batch.student_scores), batch.labels.tolist())
    else:  # the one-hot term over each query's own documents only, positive first
        own = [[row[c] for c in own_columns(i)] for i, row in enumerate(rows(batch.student_scores))]
        expected_onehot = ref_onehot(own, [0] * B)
    close(InBatchKLLoss(gamma=1.0, tau=0.5, scope=scope)(batch), expected_onehot)
    # gamma = 0: KL(softmax(t / tau) || softmax(s)) alone, written out in numpy (not through the
    # loss's own helpers): P_hat = exp(t/tau) / Z_t, log P = s - log Z_s, KL = sum P_hat (log P_hat - log P).
    s, t = np.array(rows(batch.student_scores)), np.array(rows(batch.teacher_scores)) / 0.5
    if scope == "triplet":  # each query's own positive and negatives only
        cols = np.array([own_columns(i) for i in range(B)])
        s, t = np.take_along_axis(s, cols, 1), np.take_along_axis(t, cols, 1)
    p_hat = np.exp(t) / np.exp(t).sum(1, keepdims=True)
    log_p = s - np.log(np.exp(s).sum(1, keepdims=True))
    expected_kl = float((p_hat * (np.log(p_hat) - log_p)).sum(1).mean())
    close(InBatchKLLoss(gamma=0.0, tau=0.5, scope=scope)(batch), expected_kl)


def test_gamma_zero_closed_form():
    """One query, two documents: teacher scores (tau log 3, 0) give P_hat = (3/4, 1/4); equal
    student scores give P = (1/2, 1/2); KL = 3/4 log(3/2) + 1/4 log(1/2), whatever tau."""
    for tau in (0.25, 1.0):
        batch = DistillBatch(student_scores=torch.zeros(1, 2), teacher_scores=torch.tensor([[tau * math.log(3.0), 0.0]]),
                             labels=DistillBatch.layout_labels(1, 1), num_negatives=1)
        close(InBatchKLLoss(gamma=0.0, tau=tau)(batch), 0.75 * math.log(1.5) + 0.25 * math.log(0.5))


def test_tau_limits():
    batch = make_batch(seed=25)  # the teacher ranks each positive first
    s, labels = rows(batch.student_scores), batch.labels.tolist()
    # tau -> 0: the teacher's distribution becomes one-hot on its top document (the positive), so KL
    # becomes the one-hot cross-entropy and the mixture no longer depends on gamma.
    for gamma in (0.0, 0.1, 0.7):
        close(InBatchKLLoss(tau=1e-4, gamma=gamma)(batch), ref_onehot(s, labels))
    # tau -> inf: the teacher's distribution becomes uniform: KL(u || P) = -log N - mean_j log P_j.
    uniform = sum(-math.log(N) - sum(ref_log_softmax(row)) / N for row in s) / B
    close(InBatchKLLoss(tau=1e6, gamma=0.0)(batch), uniform)


def _perturb_other_queries_documents(batch: DistillBatch) -> DistillBatch:
    gen = torch.Generator().manual_seed(99)
    own = torch.zeros(B, N, dtype=torch.bool)
    own.scatter_(1, batch.group_columns(), True)
    noise = lambda: torch.where(own, 0.0, 10 * torch.randn(B, N, generator=gen))  # noqa: E731
    return make_batch(seed=0, student_scores=batch.student_scores + noise(),
                      teacher_scores=batch.teacher_scores + noise())


@pytest.mark.parametrize("loss", [InBatchKLLoss(scope="triplet"), ScoreMSELoss(scope="triplet"),
                                  ScoreBCELoss(scope="triplet"), MarginMSELoss()], ids=type)
def test_triplet_scope_ignores_other_queries_documents(loss):
    batch = make_batch(seed=0)
    close(loss(_perturb_other_queries_documents(batch)), float(loss(batch)))


@pytest.mark.parametrize("loss", [InBatchKLLoss(), ScoreMSELoss(), ScoreBCELoss(), OneHotCrossEntropyLoss()], ids=type)
def test_in_batch_scope_uses_other_queries_documents(loss):
    batch = make_batch(seed=0)
    assert float(loss(_perturb_other_queries_documents(batch))) != pytest.approx(float(loss(batch)), rel=1e-3)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_gradients_reach_student_tensors_only(name):
    batch = make_batch(seed=27)
    student_fields = ["student_scores", "student_query_emb", "student_doc_emb", "student_joint_emb"]
    teacher_fields = ["teacher_scores", "teacher_query_emb", "teacher_doc_emb", "teacher_joint_emb", "candidate_doc_emb"]
    for field in student_fields + teacher_fields:
        getattr(batch, field).requires_grad_(True)
    loss = LOSSES[name]()(batch)
    loss.backward()
    grads = {f: getattr(batch, f).grad for f in student_fields}
    used = [g for g in grads.values() if g is not None]
    assert len(used) == 1 and torch.isfinite(used[0]).all() and used[0].abs().sum() > 0
    assert all(getattr(batch, f).grad is None for f in teacher_fields)  # the teacher is frozen


def test_combined_gradients_and_zero_distance_gradient_is_finite():
    emb = torch.randn(B, DIM)
    student_emb = emb.clone().requires_grad_(True)
    scores = teacher_like_scores(1).requires_grad_(True)
    batch = make_batch(student_scores=scores, student_query_emb=student_emb, teacher_query_emb=emb)
    build_loss({"in_batch_kl": {"weight": 1.0}, "query_embedding": {"weight": 1.0}})(batch).backward()
    assert torch.isfinite(student_emb.grad).all() and torch.isfinite(scores.grad).all()
    assert scores.grad.abs().sum() > 0


def test_low_precision_scores_give_float32_loss():
    batch = make_batch(seed=29)
    half = make_batch(seed=29, student_scores=batch.student_scores.bfloat16(),
                      teacher_scores=batch.teacher_scores.bfloat16())
    value = InBatchKLLoss()(half)
    assert value.dtype == torch.float32
    assert float(value) == pytest.approx(float(InBatchKLLoss()(batch)), rel=0.05)


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize("make", [
    lambda: InBatchKLLoss(tau=0), lambda: InBatchKLLoss(tau=-1.0), lambda: InBatchKLLoss(tau=float("nan")),
    lambda: InBatchKLLoss(tau=float("inf")), lambda: InBatchKLLoss(tau="0.25"), lambda: ScoreBCELoss(tau=0.0),
])
def test_bad_tau_is_rejected(make):
    with pytest.raises(ValueError, match=r"tau must be a finite number > 0"):
        make()


@pytest.mark.parametrize("make,match", [
    (lambda: InBatchKLLoss(gamma=1.5), r"gamma must be a number in \[0, 1\]"),
    (lambda: InBatchKLLoss(scope="all"), r"scope must be one of \['in_batch', 'triplet'\]"),
    (lambda: ScoreMSELoss(scope="group"), r"scope must be one of"),
    (lambda: QueryEmbeddingMatchingLoss(normalize="yes"), r"normalize must be True or False"),
    (lambda: CombinedLoss([]), r"at least one"),
    (lambda: CombinedLoss([("a", OneHotCrossEntropyLoss(), -1.0)]), r"weight of term 'a' must be .* >= 0"),
    (lambda: CombinedLoss([("a", OneHotCrossEntropyLoss(), 1.0), ("a", MarginMSELoss(), 1.0)]), r"used twice"),
])
def test_bad_hyper_parameters_are_rejected(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_build_loss_names_what_is_allowed():
    with pytest.raises(ValueError, match=r"unknown loss 'kl'; choose from \['candidate_kl', 'document_embedding', .*'score_mse'\]"):
        build_loss({"kl": {"weight": 1.0}})
    with pytest.raises(ValueError, match=r"unknown setting\(s\) \['temperature'\]; allowed: \['weight', 'tau', "
                                         r"'gamma', 'scope'\]"):
        build_loss({"in_batch_kl": {"weight": 1.0, "temperature": 0.25}})
    with pytest.raises(ValueError, match=r"non-empty mapping"):
        build_loss({})
    with pytest.raises(ValueError, match=r"weight of term 'onehot'"):
        build_loss({"onehot": {"weight": "heavy"}})


@pytest.mark.parametrize("loss,field,hint", [
    (InBatchKLLoss(), "teacher_scores", "mode='matrix'"),
    (MarginMSELoss(), "teacher_scores", "mode='matrix'"),
    (ScoreMSELoss(), "teacher_scores", "mode='matrix'"),
    (ScoreBCELoss(), "teacher_scores", "mode='matrix'"),
    (QueryEmbeddingMatchingLoss(), "teacher_query_emb", "embeddings=True"),
    (QueryEmbeddingMatchingLoss(), "student_query_emb", "StudentOutput.query_embeddings"),
    (DocumentEmbeddingMatchingLoss(), "student_doc_emb", "asymmetric=False"),
    (DocumentEmbeddingMatchingLoss(), "teacher_doc_emb", "embeddings=True"),
    (JointEmbeddingMatchingLoss(), "teacher_joint_emb", "['joint_embeddings']"),
    (JointEmbeddingMatchingLoss(), "student_joint_emb", "joint head"),
], ids=lambda x: x if isinstance(x, str) else type(x).__name__)
def test_missing_field_names_the_field_and_its_source(loss, field, hint):
    batch = make_batch(**{field: None})
    with pytest.raises(ValueError, match=rf"{type(loss).__name__} needs DistillBatch\.{field}.*{re.escape(hint)}"):
        loss(batch)


@pytest.mark.parametrize("overrides,match", [
    ({"teacher_scores": torch.zeros(B, N + 1)}, r"teacher_scores \(3, 10\) must have the shape of student_scores"),
    ({"student_scores": torch.zeros(B, N + 1), "teacher_scores": None},
     r"has 10 columns but B=3 queries with num_negatives=2 need N = .* = 9"),
    ({"num_negatives": 1}, r"num_negatives=1 need N = B \* \(1 \+ num_negatives\) = 6"),
    ({"labels": torch.tensor([0, 3, 5])}, r"labels\[2\] is 5 .* column 2 \* \(1 \+ num_negatives\) = 6"),
    ({"labels": torch.tensor([0.0, 3.0, 6.0])}, r"labels must be a long tensor of shape \(3,\)"),
    ({"labels": torch.tensor([0, 3])}, r"labels must be a long tensor of shape \(3,\)"),
    ({"student_query_emb": torch.zeros(B, DIM + 1)}, r"must have the same shape; project the student embeddings"),
    ({"student_doc_emb": torch.zeros(N - 1, DIM)}, r"student_doc_emb has 8 rows, expected one per in-batch document"),
    ({"student_joint_emb": torch.zeros(B + 1, DIM + 1)}, r"student_joint_emb has 4 rows, expected one per scored query \(3\)"),
    ({"student_query_emb": torch.zeros(B - 1, DIM), "teacher_query_emb": None}, r"at least one per scored query"),
    ({"student_scores": torch.zeros(B, N, dtype=torch.long)}, r"must be a 2-D float tensor \[B, N\]"),
    ({"num_negatives": -1}, r"num_negatives must be an int >= 0"),
    ({"teacher_scores": [[0.0] * N] * B}, r"teacher_scores must be a torch.Tensor or None"),
])
def test_malformed_batches_are_rejected(overrides, match):
    with pytest.raises(ValueError, match=match):
        make_batch(**overrides)


def test_margin_mse_needs_negatives_and_functions_check_shapes():
    batch = make_batch(k=0)
    with pytest.raises(ValueError, match=r"MarginMSELoss needs at least one negative per query"):
        MarginMSELoss()(batch)
    with pytest.raises(ValueError, match=r"student_scores \(2, 3\) and teacher_scores \(2, 4\) must have the same"):
        in_batch_kl(torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"labels \(3,\) must have one entry per row"):
        in_batch_kl(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"student_emb must be 2-D"):
        embedding_distance(torch.zeros(3), torch.zeros(3))


def test_every_loss_reports_its_hyper_parameters():
    assert InBatchKLLoss().get_config_dict() == {"tau": 0.25, "gamma": 0.1, "scope": "in_batch"}
    assert ScoreBCELoss().get_config_dict() == {"tau": 1.0, "scope": "in_batch"}
    assert ScoreMSELoss(scope="triplet").get_config_dict() == {"scope": "triplet"}
    assert QueryEmbeddingMatchingLoss().get_config_dict() == {"normalize": False}
    assert OneHotCrossEntropyLoss().get_config_dict() == MarginMSELoss().get_config_dict() == {}
    for cls in LOSSES.values():
        assert cls.__doc__ and "Example" in cls.__doc__


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cpu_teacher_signals_meet_a_gpu_student():
    cpu = make_batch(seed=31)
    gpu = make_batch(seed=31, student_scores=cpu.student_scores.cuda(), student_query_emb=cpu.student_query_emb.cuda(),
                     student_doc_emb=cpu.student_doc_emb.cuda(), student_joint_emb=cpu.student_joint_emb.cuda())
    loss = build_loss({name: {} for name in LOSSES})
    close(loss(gpu).cpu(), float(loss(cpu)))
