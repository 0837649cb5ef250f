"""Similarity functions shared by teachers, students, losses and evaluation.

Pure tensor functions with documented shapes, passed around by name (``SIMILARITIES``) rather than
hard-coded, so a teacher, a loss and an index all score the same way.
"""

from __future__ import annotations

from typing import Callable, Literal

import torch
import torch.nn.functional as F

Similarity = Literal["dot", "cosine"]


def dot_matrix(q: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """All-pairs inner products: q ``[nq, dim]``, d ``[nd, dim]`` -> ``[nq, nd]``."""
    return q @ d.T


def cosine_matrix(q: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """All-pairs cosine similarity: q ``[nq, dim]``, d ``[nd, dim]`` -> ``[nq, nd]``."""
    return F.normalize(q, dim=-1) @ F.normalize(d, dim=-1).T


def dot_pairs(q: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Row-wise inner products: q ``[n, dim]``, d ``[n, dim]`` -> ``[n]``."""
    return (q * d).sum(-1)


def cosine_pairs(q: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine similarity: q ``[n, dim]``, d ``[n, dim]`` -> ``[n]``."""
    return F.cosine_similarity(q, d, dim=-1)


def maxsim_matrix(
    q_tokens: torch.Tensor, q_mask: torch.Tensor, d_tokens: torch.Tensor, d_mask: torch.Tensor
) -> torch.Tensor:
    """ColBERT late interaction for all query/document pairs.

    ``MaxSim(q, d) = sum_i max_j <q_i, d_j>`` over the query's kept tokens ``i`` and the document's
    kept tokens ``j``.

    Args:
        q_tokens: ``[nq, lq, dim]`` query token embeddings.
        q_mask: ``[nq, lq]`` 1 for tokens that count, 0 for padding.
        d_tokens: ``[nd, ld, dim]`` document token embeddings.
        d_mask: ``[nd, ld]`` 1 for kept document tokens (punctuation and padding are 0).

    Returns:
        ``[nq, nd]`` scores.
    """
    sim = torch.einsum("qid,pjd->qpij", q_tokens, d_tokens)  # [nq, nd, lq, ld]
    sim = sim.masked_fill(~d_mask.bool()[None, :, None, :], float("-inf"))
    best = sim.max(dim=-1).values  # [nq, nd, lq]
    best = torch.where(torch.isfinite(best), best, torch.zeros_like(best))
    return (best * q_mask[:, None, :].to(best.dtype)).sum(-1)


def maxsim_pairs(
    q_tokens: torch.Tensor, q_mask: torch.Tensor, d_tokens: torch.Tensor, d_mask: torch.Tensor
) -> torch.Tensor:
    """MaxSim for aligned pairs: row ``k`` of the queries against row ``k`` of the documents -> ``[n]``."""
    sim = torch.einsum("nid,njd->nij", q_tokens, d_tokens)  # [n, lq, ld]
    sim = sim.masked_fill(~d_mask.bool()[:, None, :], float("-inf"))
    best = sim.max(dim=-1).values
    best = torch.where(torch.isfinite(best), best, torch.zeros_like(best))
    return (best * q_mask.to(best.dtype)).sum(-1)


MatrixFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

SIMILARITIES: dict[str, tuple[MatrixFn, MatrixFn]] = {
    "dot": (dot_matrix, dot_pairs),
    "cosine": (cosine_matrix, cosine_pairs),
}


def similarity_fns(name: str) -> tuple[MatrixFn, MatrixFn]:
    """``(matrix_fn, pairs_fn)`` for a pooled-embedding similarity name."""
    try:
        return SIMILARITIES[name]
    except KeyError:
        raise ValueError(f"unknown similarity '{name}'; choose one of {sorted(SIMILARITIES)}") from None
