"""Argument checks shared by the loss modules: one-line errors that say how to fix the value."""

from __future__ import annotations

import math
from collections.abc import Collection

import torch


def check_positive(name: str, value: float, owner: str) -> float:
    """``value`` as a float, or ValueError unless it is a finite number > 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{owner}: {name} must be a finite number > 0, got {value!r}")
    return float(value)


def check_unit_interval(name: str, value: float, owner: str) -> float:
    """``value`` as a float, or ValueError unless it lies in [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{owner}: {name} must be a number in [0, 1], got {value!r}")
    return float(value)


def check_choice(name: str, value: str, choices: Collection[str], owner: str) -> str:
    if value not in choices:
        raise ValueError(f"{owner}: {name} must be one of {sorted(choices)}, got {value!r}")
    return value


def check_bool(name: str, value: bool, owner: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{owner}: {name} must be True or False, got {value!r}")
    return value


def check_same_shape(a_name: str, a: torch.Tensor, b_name: str, b: torch.Tensor, ndim: int) -> None:
    """ValueError unless ``a`` and ``b`` are ``ndim``-D tensors of one shape."""
    if a.dim() != ndim:
        raise ValueError(f"{a_name} must be {ndim}-D, got shape {tuple(a.shape)}")
    if a.shape != b.shape:
        raise ValueError(f"{a_name} {tuple(a.shape)} and {b_name} {tuple(b.shape)} must have the same shape")
