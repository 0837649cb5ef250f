"""Pooling of token hidden states into one vector per text."""

from __future__ import annotations

from typing import Callable, Literal

import torch

Pooling = Literal["cls", "mean"]


def cls_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The first ([CLS]) token's state: hidden ``[n, l, dim]`` -> ``[n, dim]``."""
    return hidden[:, 0]


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of the non-padding token states: hidden ``[n, l, dim]``, mask ``[n, l]`` -> ``[n, dim]``."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)


POOLERS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "cls": cls_pool,
    "mean": mean_pool,
}


def get_pooler(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    try:
        return POOLERS[name]
    except KeyError:
        raise ValueError(f"unknown pooling '{name}'; choose one of {sorted(POOLERS)}") from None
