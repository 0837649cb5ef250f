"""Per-teacher score calibration and the weighted ensemble of calibrated teacher scores.

Teachers score on different scales: a normalised dual-encoder gives cosines in [-1, 1], a
ColBERT MaxSim sums one cosine per query token (tens), a cross-encoder gives unbounded logits.
Before their scores are mixed, or fed to a softmax with one temperature (in-batch KL) or compared
by margins (Margin-MSE), each teacher's row of scores for a query is put on a common scale.

All functions are pure numpy over score matrices ``[B, N]`` (one row per query, one column per
candidate document) and work row by row, so a query's calibration never depends on another
query's scores. Rows may also be single 1-D candidate lists ``[N]``.

Methods (``CALIBRATIONS``), for a row ``s = (s_1 .. s_N)``:

* ``none``:         ``c(s)_j = s_j``
* ``temperature``:  ``c(s)_j = s_j / T``  (``T > 0``; ``softmax(c(s))`` is the teacher's
  distribution at temperature ``T``, TCT-ColBERT Eq. 5)
* ``minmax``:       ``c(s)_j = (s_j - min(s)) / (max(s) - min(s))`` in [0, 1]; a constant row
  maps to zeros
* ``zscore``:       ``c(s)_j = (s_j - mean(s)) / std(s)`` (population std); a constant row maps
  to zeros

The ensemble target (``combine``) is the weighted mean of the calibrated rows,
``t = sum_i w_i c_i(s^(i)) / sum_i w_i``, the score-averaging teacher ensemble of Hofstätter et
al. (2020, arXiv:2010.02666 §4, "ensemble of teachers", which averages the teachers' scores).
A teacher with weight 0 is asked and logged but does not move the target.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

Calibration = Literal["none", "temperature", "minmax", "zscore"]
CALIBRATIONS: tuple[str, ...] = ("none", "temperature", "minmax", "zscore")

# Rows whose spread is below this are treated as constant (no ranking information to keep).
_EPS = 1e-12


def _rows(scores: np.ndarray) -> np.ndarray:
    arr = np.asarray(scores)
    if arr.ndim not in (1, 2) or not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"scores must be a float array [N] or [B, N], got {arr.dtype} of shape {arr.shape}")
    return arr.astype(np.float64, copy=False)


def temperature_scale(scores: np.ndarray, temperature: float) -> np.ndarray:
    """``s / T`` (``T > 0``): softmax of the result is the teacher's distribution at temperature ``T``.

    Example:
        >>> temperature_scale(np.array([[2.0, 1.0]]), 0.5).tolist()
        [[4.0, 2.0]]
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    return _rows(scores) / float(temperature)


def minmax_per_query(scores: np.ndarray) -> np.ndarray:
    """``(s_j - min_row) / (max_row - min_row)`` per row, in [0, 1]; constant rows become zeros.

    Example:
        >>> minmax_per_query(np.array([[1.0, 3.0, 2.0]])).tolist()
        [[0.0, 1.0, 0.5]]
    """
    s = _rows(scores)
    lo = s.min(axis=-1, keepdims=True)
    span = s.max(axis=-1, keepdims=True) - lo
    return np.where(span > _EPS, (s - lo) / np.where(span > _EPS, span, 1.0), 0.0)


def zscore_per_query(scores: np.ndarray) -> np.ndarray:
    """``(s_j - mean_row) / std_row`` per row (population std); constant rows become zeros.

    Example:
        >>> zscore_per_query(np.array([[1.0, 3.0]])).tolist()
        [[-1.0, 1.0]]
    """
    s = _rows(scores)
    mean = s.mean(axis=-1, keepdims=True)
    std = s.std(axis=-1, keepdims=True)
    return np.where(std > _EPS, (s - mean) / np.where(std > _EPS, std, 1.0), 0.0)


def calibrate(scores: np.ndarray, method: Calibration = "none", temperature: float = 1.0) -> np.ndarray:
    """One teacher's scores on the common scale: ``method`` in ``CALIBRATIONS`` (see the module
    docstring); ``temperature`` is used by ``"temperature"`` only. ``"none"`` returns the input
    array itself (same dtype), so a single uncalibrated teacher trains exactly as before."""
    if method == "none":
        return np.asarray(scores)
    if method == "temperature":
        return temperature_scale(scores, temperature)
    if method == "minmax":
        return minmax_per_query(scores)
    if method == "zscore":
        return zscore_per_query(scores)
    raise ValueError(f"unknown calibration {method!r}; choose from {list(CALIBRATIONS)}")


def combine(calibrated: Sequence[np.ndarray], weights: Sequence[float]) -> np.ndarray:
    """The ensemble target ``sum_i w_i c_i / sum_i w_i`` of calibrated score arrays of one shape.

    Weights are ``>= 0`` with a positive sum. Returned as float32 (the dtype teacher signals use).

    Example:
        >>> combine([np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]])], [3.0, 1.0]).tolist()
        [[0.75, 0.25]]
    """
    if len(calibrated) != len(weights) or not calibrated:
        raise ValueError(f"combine needs one weight per score array, got {len(calibrated)} arrays and {len(weights)} weights")
    w = np.asarray(weights, dtype=np.float64)
    if (w < 0).any() or not np.isfinite(w).all() or w.sum() <= 0:
        raise ValueError(f"ensemble weights must be finite, >= 0 and not all 0, got {list(weights)}")
    shapes = {np.shape(c) for c in calibrated}
    if len(shapes) != 1:
        raise ValueError(f"teachers' score arrays differ in shape: {sorted(shapes)}")
    total = sum(wi * np.asarray(c, dtype=np.float64) for wi, c in zip(w, calibrated) if wi > 0)
    return (total / w.sum()).astype(np.float32)


__all__ = ["CALIBRATIONS", "Calibration", "calibrate", "combine", "minmax_per_query", "temperature_scale",
           "zscore_per_query"]
