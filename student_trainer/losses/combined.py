"""A weighted sum of named losses, and ``build_loss`` to make one from a config mapping."""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from student_trainer.losses.batch import DistillBatch
from student_trainer.losses.candidate_kl import CandidateKLLoss
from student_trainer.losses.embedding_matching import (
    DocumentEmbeddingMatchingLoss,
    JointEmbeddingMatchingLoss,
    QueryEmbeddingMatchingLoss,
)
from student_trainer.losses.in_batch_kl import InBatchKLLoss
from student_trainer.losses.margin_mse import MarginMSELoss
from student_trainer.losses.onehot_ce import OneHotCrossEntropyLoss
from student_trainer.losses.score_regression import ScoreBCELoss, ScoreMSELoss

# Config names; also the term names ``build_loss`` gives, so logs and configs use the same words.
LOSSES: dict[str, type[nn.Module]] = {
    "onehot": OneHotCrossEntropyLoss,
    "in_batch_kl": InBatchKLLoss,
    "margin_mse": MarginMSELoss,
    "score_mse": ScoreMSELoss,
    "score_bce": ScoreBCELoss,
    "query_embedding": QueryEmbeddingMatchingLoss,
    "document_embedding": DocumentEmbeddingMatchingLoss,
    "joint_embedding": JointEmbeddingMatchingLoss,
    "candidate_kl": CandidateKLLoss,
}
# The terms that learn from the teacher's scores; the embedding-matching ones learn from its
# embeddings and one-hot from the labels alone.
TEACHER_SCORE_LOSSES = frozenset({"in_batch_kl", "margin_mse", "score_mse", "score_bce", "candidate_kl"})


class CombinedLoss(nn.Module):
    """``total = sum_k weight_k * loss_k(batch)`` over named terms.

    How EmbedDistill (§4.1) and TCT-ColBERT train: a score-distillation loss plus embedding
    matching (weight 1.0, or 5.0 for the smallest students), or one-hot plus KL. After each
    ``forward``, ``last_terms`` maps every term name to its *unweighted* value (floats, for
    logging) and ``last_total`` holds the weighted total.

    Args:
        terms: ``(name, loss_module, weight)`` triples; names unique and non-empty, each module a
            loss taking a ``DistillBatch``, weights finite and ``>= 0`` (0 keeps a term for logging
            only). At least one term.

    Related: ``build_loss`` builds one from a config mapping; ``get_config_dict`` returns that mapping.

    Example:
        >>> loss_fn = CombinedLoss([("in_batch_kl", InBatchKLLoss(), 1.0),
        ...                         ("query_embedding", QueryEmbeddingMatchingLoss(), 1.0)])
        >>> emb = torch.randn(2, 8)
        >>> batch = DistillBatch(student_scores=torch.randn(2, 4), teacher_scores=torch.randn(2, 4),
        ...                      labels=DistillBatch.layout_labels(2, 1),
        ...                      student_query_emb=emb, teacher_query_emb=emb)
        >>> total = loss_fn(batch)
        >>> sorted(loss_fn.last_terms)
        ['in_batch_kl', 'query_embedding']
    """

    def __init__(self, terms: Sequence[tuple[str, nn.Module, float]]) -> None:
        super().__init__()
        if not terms:
            raise ValueError("CombinedLoss needs at least one (name, loss, weight) term; known losses: "
                             f"{sorted(LOSSES)}")
        self.losses = nn.ModuleDict()
        self.weights: dict[str, float] = {}
        for term in terms:
            if not isinstance(term, (tuple, list)) or len(term) != 3:
                raise ValueError(f"CombinedLoss terms must be (name, loss_module, weight) triples, got {term!r}")
            name, module, weight = term
            if not isinstance(name, str) or not name or "." in name:
                raise ValueError(f"CombinedLoss: term name must be a non-empty string without '.', got {name!r}")
            if name in self.losses:
                raise ValueError(f"CombinedLoss: term name {name!r} is used twice; give each term its own name")
            if not isinstance(module, nn.Module):
                raise ValueError(f"CombinedLoss: term {name!r} must be an nn.Module loss, got {type(module).__name__}")
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) \
                    or weight < 0:
                raise ValueError(f"CombinedLoss: weight of term {name!r} must be a finite number >= 0, got {weight!r}")
            self.losses[name] = module
            self.weights[name] = float(weight)
        self.last_terms: dict[str, float] = {}
        self.last_total: float | None = None

    def forward(self, batch: DistillBatch) -> Tensor:
        values = {name: loss(batch) for name, loss in self.losses.items()}
        total = sum(self.weights[name] * value for name, value in values.items())
        assert isinstance(total, Tensor)
        # One device sync per term per step; cheap next to the teacher round trip and what logging needs.
        self.last_terms = {name: float(value.detach()) for name, value in values.items()}
        self.last_total = float(total.detach())
        return total

    def get_config_dict(self) -> dict[str, dict[str, Any]]:
        """``{name: {"weight": w, **hyper_parameters}}``; for terms named after ``LOSSES`` keys,
        ``build_loss`` of this mapping rebuilds an equal loss."""
        return {name: {"weight": self.weights[name], **loss.get_config_dict()} for name, loss in self.losses.items()}

    def extra_repr(self) -> str:
        return "weights=" + ", ".join(f"{n}={w}" for n, w in self.weights.items())


def _init_kwargs(cls: type[nn.Module]) -> list[str]:
    params = inspect.signature(cls.__init__).parameters
    return [p for p in params if p != "self" and params[p].kind not in (inspect.Parameter.VAR_POSITIONAL,
                                                                          inspect.Parameter.VAR_KEYWORD)]


def build_loss(config: Mapping[str, Mapping[str, Any]]) -> CombinedLoss:
    """A ``CombinedLoss`` from ``{loss_name: {"weight": float, **kwargs}}``.

    Names are the keys of ``LOSSES`` ("onehot", "in_batch_kl", "margin_mse", "score_mse",
    "score_bce", "query_embedding", "document_embedding", "joint_embedding", "candidate_kl"); ``weight`` defaults to 1.0; the other
    keys go to the loss's constructor. Unknown names or keyword arguments raise ValueError listing
    the allowed ones.

    Example:
        >>> build_loss({"in_batch_kl": {"weight": 1.0, "tau": 0.25, "gamma": 0.1},
        ...             "query_embedding": {"weight": 5.0}}).weights
        {'in_batch_kl': 1.0, 'query_embedding': 5.0}
    """
    if not isinstance(config, Mapping) or not config:
        raise ValueError(f"loss config must be a non-empty mapping of loss name to settings; known losses: "
                         f"{sorted(LOSSES)}")
    terms: list[tuple[str, nn.Module, float]] = []
    for name, entry in config.items():
        if name not in LOSSES:
            raise ValueError(f"unknown loss {name!r}; choose from {sorted(LOSSES)}")
        if entry is None:
            entry = {}
        if not isinstance(entry, Mapping):
            raise ValueError(f"loss {name!r}: settings must be a mapping like {{'weight': 1.0}}, got {entry!r}")
        kwargs = dict(entry)
        weight = kwargs.pop("weight", 1.0)
        cls = LOSSES[name]
        allowed = _init_kwargs(cls)
        unknown = sorted(set(kwargs) - set(allowed))
        if unknown:
            raise ValueError(f"loss {name!r} ({cls.__name__}): unknown setting(s) {unknown}; allowed: "
                             f"{['weight', *allowed]}")
        terms.append((name, cls(**kwargs), weight))
    return CombinedLoss(terms)
