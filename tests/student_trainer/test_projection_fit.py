"""The least-squares start of a projection into a wider teacher's space (student_trainer/projection_fit.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from student_trainer.config import RunConfig
from student_trainer.export import ExportedStudent
from student_trainer.projection_fit import fit_linear_map, fit_projection, needs_fit
from student_trainer.run import connect_teacher, training_queries
from student_trainer.train_loop import build_student


def test_fit_linear_map_recovers_a_known_map():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 8)).astype(np.float32)
    w, b = rng.normal(size=(8, 5)), rng.normal(size=5)
    y = x @ w + b
    fw, fb = fit_linear_map(x, y, ridge=1e-9)
    assert np.allclose(fw, w, atol=1e-4) and np.allclose(fb, b, atol=1e-4)
    noisy = y + rng.normal(scale=0.1, size=y.shape)
    fw, fb = fit_linear_map(x, noisy)
    assert np.abs(fw - w).max() < 0.05 and np.abs(fb - b).max() < 0.05
    with pytest.raises(ValueError, match="matching rows"):
        fit_linear_map(x, y[:10])


def wide_teacher_run(tmp_path, tiny_bert_dir, mini_beir, init: str = "least_squares") -> RunConfig:
    """A 32-dim tiny student under the 384-dim all-MiniLM-L6-v2 teacher."""
    return RunConfig.model_validate({
        "name": "wide", "output_dir": str(tmp_path),
        "teacher": {"teacher": "minilm", "app_name": "tightdistill", "serve_config": None},
        "student": {"model": str(tiny_bert_dir), "num_layers": 1, "projection_init": init},
        "data": {"dataset": str(mini_beir), "num_negatives": 1},
        "train": {"batch_size": 8, "num_workers": 1, "cpus_per_worker": 0.5, "report_every": 1, "checkpoint_every": 1,
                  "epochs": 1, "max_steps": 1, "lr": 1e-9},
        "eval": {"evaluate_untrained": False},
    })


def test_only_a_map_between_different_widths_is_fitted(tiny_bert_dir, mini_beir, tmp_path):
    wide = wide_teacher_run(tmp_path, tiny_bert_dir, mini_beir)  # the tiny student is 32 wide
    assert needs_fit(wide, 384)
    assert not needs_fit(wide, 32)  # equal widths: the identity start
    assert not needs_fit(wide, None)  # a [CLS]-pooled cross-encoder: the student keeps its own width
    random = wide_teacher_run(tmp_path, tiny_bert_dir, mini_beir, init="random")
    assert not needs_fit(random, 384)


def test_a_run_under_a_wider_teacher_trains_from_the_fitted_projection(experiment_runs):
    """The driver fits the map against the served teacher; the Train worker starts from it (two steps
    at lr 1e-9 leave it as fitted, so the exported projection is the fit itself). The run is the
    "wide" row of the session's experiment (shared_runs.SHARED_ROWS), trained once."""
    run = experiment_runs["runs"]["wide"]
    assert run.teacher.teacher == "minilm" and run.student.projection_init == "least_squares" and run.train.lr == 1e-9
    metrics = json.loads((run.run_dir / "metrics.json").read_text())
    fit = metrics["projection_fit"]
    assert fit["texts"] == len(set(training_queries(run.run_dir / "data" / "train.parquet")))
    assert fit["cosine_after"] > fit["cosine_before"] + 0.2  # the random map points nowhere near the teacher

    client = connect_teacher(run.teacher)
    info = client.describe()
    # The run read queries as long as its data needed (metrics.json records the limit): fit the same way.
    limit = metrics["query_length"]["limit"]
    run = run.model_copy(update={"student": run.student.model_copy(update={"max_query_length": limit})})
    expected = fit_projection(run, build_student(run, info), client, training_queries(run.run_dir / "data" / "train.parquet"))
    exported = ExportedStudent(run.run_dir / "student").projection
    assert isinstance(exported, torch.nn.Linear) and tuple(exported.weight.shape) == (384, 32)
    assert np.allclose(exported.weight.detach().numpy(), expected["w"].T, atol=1e-4)
    assert np.allclose(exported.bias.detach().numpy(), expected["b"], atol=1e-4)
