"""How closely a student follows its teacher: agreement metrics beside nDCG/MRR.

Retrieval metrics say how good each system is; these say how alike they are, per query:

* ``overlap@k``: shared documents of the two top-k lists, ``|S_k ∩ T_k| / k``.
* ``RBO``: rank-biased overlap of the two rankings (Webber, Moffat, Zobel 2010), top-weighted.
* ``Kendall tau``: rank correlation of the two systems' scores over the union of their top-k lists
  (tau-b, ``scipy.stats.kendalltau``), so disagreement in order counts, not only in membership.
  A document in only one top-k list is one the other system scores lower, so lists that share
  little give a negative tau even when each list's own order is alike.
* ``in-batch KL``: ``KL(P_teacher || P_student)`` of the in-batch softmax distributions the
  training loss matches (TCT-ColBERT Eq. 5), on held-out queries laid out as a training batch.
* query-embedding cosines: ``cos(e_teacher(q), e_student(q))`` per query (EmbedDistill's
  embedding matching target), summarised by mean and quantiles.

Scores are inner products of the embeddings given (normalise first for cosine scorers), and
top-k lists come from exact FAISS search (:class:`common.retrieval.DenseIndex`).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.special import log_softmax
from scipy.stats import kendalltau

from common.retrieval import DenseIndex


def overlap_at_k(a: Sequence[Hashable], b: Sequence[Hashable], k: int) -> float:
    """``|a[:k] ∩ b[:k]| / k``: the fraction of the top ``k`` the two rankings share.

    Example:
        >>> overlap_at_k(["d1", "d2", "d3"], ["d3", "d4", "d1"], 3)
        0.6666666666666666
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return len(set(a[:k]) & set(b[:k])) / k


def rbo(a: Sequence[Hashable], b: Sequence[Hashable], p: float = 0.9) -> float:
    """Extrapolated rank-biased overlap of two rankings of distinct items (Webber et al. 2010, Eq. 32).

    With ``X_d = |a[:d] ∩ b[:d]|`` the overlap at depth ``d``, evaluated to depth ``k`` (the
    shorter list's length; the longer one is cut to it)::

        RBO_ext(a, b, p, k) = (X_k / k) * p^k + ((1 - p) / p) * sum_{d=1..k} (X_d / d) * p^d

    ``p`` in (0, 1) is the persistence: rank ``d`` weighs ``(1 - p) p^(d-1)``, so small ``p``
    looks only at the top (``p = 0.9``: 86% of the weight on the first 10 ranks). The result is
    in [0, 1]: 1 for identical lists, 0 for disjoint ones; the first term extrapolates the
    agreement seen at depth ``k`` to the unseen tail.

    Example:
        >>> rbo(["a", "b"], ["b", "a"], p=0.5)  # X_1 = 0, X_2 = 2: 0.25 + (0 + 0.25)
        0.5
    """
    if not 0 < p < 1:
        raise ValueError(f"RBO persistence p must be in (0, 1), got {p}")
    k = min(len(a), len(b))
    if k == 0:
        raise ValueError("rbo needs two non-empty rankings")
    seen_a: set[Hashable] = set()
    seen_b: set[Hashable] = set()
    overlap, total = 0, 0.0
    for d in range(1, k + 1):
        x, y = a[d - 1], b[d - 1]
        # X_d grows by one for each item that has now appeared in both prefixes.
        if x == y:
            overlap += 1
        else:
            overlap += (x in seen_b) + (y in seen_a)
        seen_a.add(x)
        seen_b.add(y)
        total += overlap / d * p**d
    return overlap / k * p**k + (1 - p) / p * total


def kendall_tau(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Kendall's tau-b between two score vectors over the same items (``scipy.stats.kendalltau``):
    ``(C - D) / sqrt((C + D + T_x)(C + D + T_y))`` with ``C``/``D`` the concordant/discordant pairs
    and ``T`` the ties in one vector only. NaN when either vector is constant."""
    if len(x) != len(y):
        raise ValueError(f"kendall_tau needs vectors of one length, got {len(x)} and {len(y)}")
    if len(x) < 2:
        return float("nan")
    return float(kendalltau(np.asarray(x), np.asarray(y)).statistic)


def distribution_kl(teacher_scores: np.ndarray, student_logits: np.ndarray, tau: float = 1.0) -> np.ndarray:
    """Per row ``KL(softmax(t / tau) || softmax(s))`` in nats, ``[B]`` (TCT-ColBERT Eq. 5-6: the
    teacher tempered by ``tau``, the student's logits as they are).

    Example:
        >>> float(distribution_kl(np.array([[0.0, 0.0]]), np.array([[0.0, 0.0]]))[0])
        0.0
    """
    t = np.asarray(teacher_scores, dtype=np.float64)
    s = np.asarray(student_logits, dtype=np.float64)
    if t.shape != s.shape or t.ndim != 2:
        raise ValueError(f"teacher {t.shape} and student {s.shape} scores must be 2-D of one shape")
    log_p = log_softmax(t / tau, axis=1)
    log_q = log_softmax(s, axis=1)
    return (np.exp(log_p) * (log_p - log_q)).sum(axis=1)


def query_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of two embedding matrices ``[n, d]`` -> ``[n]``."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"query embeddings differ in shape: {a.shape} and {b.shape}")
    a = a / np.linalg.norm(a, axis=1, keepdims=True).clip(1e-12)
    b = b / np.linalg.norm(b, axis=1, keepdims=True).clip(1e-12)
    return np.einsum("nd,nd->n", a, b)


@dataclass
class Agreement:
    """Agreement of a student with its teacher on a set of queries.

    ``aggregate``: ``overlap@k``, ``RBO@k``, ``kendall_tau@k`` (means over queries; tau ignores
    the rare queries where it is undefined), ``inbatch_kl`` (mean over queries),
    ``query_cosine_mean`` / ``_p10`` / ``_median`` / ``_p90``. ``per_query``: the same per query
    (lists in query order) and ``query_cosine``.
    """

    aggregate: dict[str, float]
    per_query: dict[str, list[float]] = field(default_factory=dict)


def _top_k(index: DenseIndex, queries: np.ndarray, k: int) -> list[list[int]]:
    _, ids = index.search(queries, k)
    return [[int(d) for d in row] for row in ids]


def _index(docs: np.ndarray) -> DenseIndex:
    return DenseIndex.from_embeddings([str(i) for i in range(len(docs))], docs, use_gpu=False)


def inbatch_kl(teacher_q: np.ndarray, teacher_docs: np.ndarray, student_q: np.ndarray, student_docs: np.ndarray,
               teacher_top: list[list[int]], group: int = 2, batch_size: int = 32, tau: float = 1.0,
               student_scale: float = 1.0, calibrate: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """Per-query in-batch KL on held-out queries laid out like a training batch.

    Queries are taken in batches of ``batch_size``; each query brings its teacher's top ``group``
    documents (a pseudo-positive and ``group - 1`` hard negatives), and every query of the batch
    is scored against all of the batch's documents by both systems. Returns
    ``KL(softmax(c(t) / tau) || softmax(student_scale * s))`` per query, with the teacher's
    scores ``t`` put through ``calibrate`` (``c``, default none) and the student's scaled, both as
    in training (``TeacherRef.calibration``, ``StudentConfig.score_scale``).
    """
    out = []
    for start in range(0, len(teacher_q), batch_size):
        rows = range(start, min(start + batch_size, len(teacher_q)))
        cols = [d for i in rows for d in teacher_top[i][:group]]
        t = teacher_q[start : rows.stop] @ teacher_docs[cols].T
        t = t if calibrate is None else calibrate(t)
        s = student_scale * (student_q[start : rows.stop] @ student_docs[cols].T)
        out.append(distribution_kl(t, s, tau))
    return np.concatenate(out) if out else np.empty(0)


def agreement_metrics(teacher_q: np.ndarray, teacher_docs: np.ndarray, student_q: np.ndarray,
                      student_docs: np.ndarray | None = None, k: int = 10, p: float = 0.9, kl_group: int = 2,
                      kl_batch_size: int = 32, kl_tau: float = 1.0, student_scale: float = 1.0,
                      kl_calibrate: Callable[[np.ndarray], np.ndarray] | None = None) -> Agreement:
    """Agreement of a student with its teacher over one document collection.

    Args:
        teacher_q: ``[n, d_t]`` teacher query embeddings.
        teacher_docs: ``[m, d_t]`` teacher document embeddings.
        student_q: ``[n, d_t]`` student query embeddings (projected into the teacher's space).
        student_docs: ``[m, d_t]`` the student's embeddings of the same documents, same row order;
            None for an asymmetric student, which searches the teacher's documents.
        k: depth of the compared top-k lists.
        p: RBO persistence.
        kl_group, kl_batch_size, kl_tau, student_scale, kl_calibrate: the held-out in-batch KL
            (:func:`inbatch_kl`).
    """
    teacher_q = np.asarray(teacher_q, dtype=np.float32)
    student_q = np.asarray(student_q, dtype=np.float32)
    teacher_docs = np.asarray(teacher_docs, dtype=np.float32)
    student_docs = teacher_docs if student_docs is None else np.asarray(student_docs, dtype=np.float32)
    if len(teacher_q) != len(student_q) or len(teacher_docs) != len(student_docs):
        raise ValueError(f"teacher and student must cover the same queries ({len(teacher_q)} vs {len(student_q)}) "
                         f"and documents ({len(teacher_docs)} vs {len(student_docs)})")
    k = min(k, len(teacher_docs))
    t_index = _index(teacher_docs)
    s_index = t_index if student_docs is teacher_docs else _index(student_docs)
    t_top = _top_k(t_index, teacher_q, max(k, kl_group))
    s_top = _top_k(s_index, student_q, k)
    overlaps, rbos, taus = [], [], []
    for i, (t, s) in enumerate(zip(t_top, s_top)):
        t = t[:k]
        overlaps.append(overlap_at_k(t, s, k))
        rbos.append(rbo(t, s, p))
        union = list(dict.fromkeys(t + s))
        taus.append(kendall_tau(teacher_docs[union] @ teacher_q[i], student_docs[union] @ student_q[i]))
    kl = inbatch_kl(teacher_q, teacher_docs, student_q, student_docs, t_top, kl_group, kl_batch_size, kl_tau,
                    student_scale, kl_calibrate)
    cos = query_cosines(teacher_q, student_q)
    aggregate = {
        f"overlap@{k}": float(np.mean(overlaps)),
        f"RBO@{k}": float(np.mean(rbos)),
        f"kendall_tau@{k}": float(np.nanmean(taus)) if not np.isnan(taus).all() else float("nan"),
        "inbatch_kl": float(np.mean(kl)),
        "query_cosine_mean": float(cos.mean()),
        "query_cosine_p10": float(np.quantile(cos, 0.1)),
        "query_cosine_median": float(np.median(cos)),
        "query_cosine_p90": float(np.quantile(cos, 0.9)),
    }
    per_query = {f"overlap@{k}": overlaps, f"RBO@{k}": rbos, f"kendall_tau@{k}": taus,
                 "inbatch_kl": kl.tolist(), "query_cosine": cos.tolist()}
    return Agreement(aggregate, per_query)


__all__ = ["Agreement", "agreement_metrics", "distribution_kl", "inbatch_kl", "kendall_tau", "overlap_at_k",
           "query_cosines", "rbo"]
