"""A warm start for the projection into a teacher space of another width.

EmbedDistill (Eq. 7-8) maps student embeddings into the teacher's space with a learned linear
``proj``. When the widths match it starts as the identity (a student cut from the teacher's own
encoder already lives in its space); when they differ (a 384-dim MiniLM student under the 768-dim
all-mpnet-base-v2) a random map leaves the student's first queries pointing nowhere in the teacher's
document index, and an asymmetric student, which never encodes a document, must find that space
through in-batch scores alone. Measured on wikiqa: 0.162 nDCG@10 after 512 steps of in-batch KL
from a random map, against the teacher's 0.786.

So the map is fitted before training, in closed form: ridge regression of the teacher's query
embeddings on the student's (unprojected) ones over the run's training and extra queries,

    W, b = argmin ||X W + 1 b^T - Y||^2 + lambda ||W||^2,   lambda = ridge * trace(Xc^T Xc) / d,

with ``Xc`` the centred student embeddings and ``d`` the student's width. It costs one teacher
encoding of those queries (short texts) and one pass of the student; training then starts from
the best linear reading of the student in the teacher's space and refines both.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from transformers import AutoConfig

from common.agreement import query_cosines
from common.model_registry import resolve_model
from student_trainer.config import RunConfig
from student_trainer.students import DualEncoderStudent


def fit_linear_map(x: np.ndarray, y: np.ndarray, ridge: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """Least squares ``y ~ x @ w + b`` with a ridge of ``ridge`` times the mean eigenvalue of the
    centred ``x``'s Gram matrix (scale-free). Returns ``w [dx, dy]`` and ``b [dy]`` as float32."""
    if len(x) != len(y) or len(x) < 2:
        raise ValueError(f"fit_linear_map needs matching rows (at least 2), got {len(x)} and {len(y)}")
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    x_mean, y_mean = x64.mean(0), y64.mean(0)
    xc = x64 - x_mean
    gram = xc.T @ xc
    lam = ridge * np.trace(gram) / gram.shape[0]
    w = np.linalg.solve(gram + lam * np.eye(gram.shape[0]), xc.T @ (y64 - y_mean))
    return w.astype(np.float32), (y_mean - x_mean @ w).astype(np.float32)


def needs_fit(run: RunConfig, teacher_dim: int | None) -> bool:
    """A fitted start is asked for and the student's width differs from the teacher's (equal
    widths start from the identity). Reads the width from the checkpoint's config, so a run that
    needs no fit loads no extra model."""
    if run.student.projection_init != "least_squares" or run.student.projection == "none" or not teacher_dim:
        return False
    return AutoConfig.from_pretrained(resolve_model(run.student.model)).hidden_size != teacher_dim


def fit_projection(run: RunConfig, student: DualEncoderStudent, client: Any, texts: list[str]) -> dict[str, Any]:
    """Fit ``student``'s projection on up to ``run.student.projection_fit_queries`` of ``texts``
    (a seeded sample) against the teacher's query embeddings. Returns ``{"w", "b"}`` for
    :func:`apply_projection` and a summary: texts used, and the mean cosine between the projected
    student and the teacher on them before and after the fit."""
    texts = list(dict.fromkeys(texts))
    if len(texts) > run.student.projection_fit_queries:
        keep = np.random.default_rng(run.train.seed).choice(len(texts), run.student.projection_fit_queries, replace=False)
        texts = [texts[i] for i in sorted(keep)]
    teacher = client.encode_many(texts, role="query", teacher=run.teacher.teacher)
    own = student.query_encoder.encode(texts, max_length=student.query_length)
    w, b = fit_linear_map(own, teacher)
    with torch.inference_mode():
        before = student.projection(torch.from_numpy(own)).numpy()
    return {"w": w, "b": b, "texts": len(texts), "cosine_before": float(query_cosines(before, teacher).mean()),
            "cosine_after": float(query_cosines(own @ w + b, teacher).mean())}


def apply_projection(student: DualEncoderStudent, fitted: dict[str, Any]) -> None:
    """Copy a fitted map into the student's projection (``nn.Linear`` stores ``w`` transposed)."""
    with torch.no_grad():
        student.projection.weight.copy_(torch.from_numpy(fitted["w"]).T)
        student.projection.bias.copy_(torch.from_numpy(fitted["b"]))

