"""Train runs that several tests share (one Ray Train start-up each, not one per test); the
session fixtures in ``conftest.py`` make them. A test that trains on from a shared run resumes
its own copy (:func:`resumable_copy`), so tests neither see nor change each other's checkpoints.

The experiment runner's two rows are the runs two other tests check (see :func:`shared_experiment`)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import yaml

from student_trainer.config import RunConfig


def ddp_run_config(out: Path, tiny_bert_dir: Path, mini_beir: Path, **train: Any) -> RunConfig:
    """A tiny student on two real DDP Train workers against the session's "tiny" teacher."""
    return RunConfig.model_validate({
        "name": "ddp", "output_dir": str(out),
        "teacher": {"teacher": "tiny", "app_name": "tightdistill", "serve_config": None},
        "student": {"model": str(tiny_bert_dir), "num_layers": 1},
        "data": {"dataset": str(mini_beir), "num_negatives": 1},
        "train": {"batch_size": 8, "num_workers": 2, "cpus_per_worker": 0.5, "report_every": 2, "checkpoint_every": 2,
                  "epochs": 100000, "warmup_ratio": 0.1, **train},
    })


def train_ddp(run: RunConfig) -> dict[str, Any]:
    """``run`` trained on Ray Train the way ``run_distillation`` prepares it: the inputs
    ``train_student`` took, its checkpoint and history, and the requests the "tiny" replica
    answered during training."""
    from ray import serve

    from common.datasets import load_beir
    from student_trainer.run import connect_teacher, prepare_examples, train_student
    from student_trainer.teacher_index import teacher_doc_embeddings

    client = connect_teacher(run.teacher)
    info = client.describe()
    dataset = load_beir(run.data.dataset)
    index = teacher_doc_embeddings(client, dataset, show_progress=False)
    examples, n = prepare_examples(run, dataset, client, index)
    stats = serve.get_deployment_handle("teacher-tiny", "tightdistill").stats.remote
    before = stats().result()["requests"]
    checkpoint, history = train_student(run, info, examples, n, index, [], False)
    return {"run": run, "info": info, "index": index, "examples": examples, "n": n, "checkpoint": checkpoint,
            "history": history, "requests": stats().result()["requests"] - before}


def resumable_copy(trained: dict[str, Any], dest: Path, **train: Any) -> RunConfig:
    """``trained``'s run folder (its Ray Train checkpoints included) copied under ``dest``, as a
    run config with ``train`` changed: a resume from the copy leaves the original as it was."""
    run: RunConfig = trained["run"]
    shutil.copytree(run.run_dir, dest / run.name)
    return run.model_copy(update={"output_dir": dest, "train": run.train.model_copy(update=train)})


def write_experiment_base(path: Path, tiny_bert_dir: Path, mini_beir: Path) -> Path:
    """The base run config of the tests' experiments: a tiny student, one Train worker, 2 steps."""
    path.write_text(yaml.safe_dump({
        "teacher": {"teacher": "tiny", "app_name": "tightdistill", "serve_config": None},
        "student": {"model": str(tiny_bert_dir), "num_layers": 1},
        "data": {"dataset": str(mini_beir), "num_negatives": 1},
        "train": {"batch_size": 8, "num_workers": 1, "cpus_per_worker": 0.5, "report_every": 2, "checkpoint_every": 2,
                  "epochs": 1, "max_steps": 2},
    }))
    return path


# The rows of the shared experiment, each the run of another test:
SHARED_ROWS = [
    # test_training.py::test_label_free_symmetric_run_on_a_bare_corpus: no training queries or
    # qrels, pseudo-queries from the corpus; a symmetric student, bf16 autocast.
    {"name": "sym", "description": "label-free, symmetric, bf16", "set": {
        "data.train_split": None, "data.pseudo_queries": 40, "student.asymmetric": False, "train.precision": "bf16",
        "train.losses": {"in_batch_kl": {}, "query_embedding": {}, "document_embedding": {"weight": 0.5}}}},
    # test_projection_fit.py::test_a_run_under_a_wider_teacher_trains_from_the_fitted_projection:
    # the 32-dim tiny student under the 384-dim all-MiniLM-L6-v2 teacher starts from the fitted
    # projection; at lr 1e-9 the exported projection is the fit itself. Margin-MSE is its loss.
    {"name": "wide", "description": "384-dim teacher, fitted projection, Margin-MSE", "set": {
        "teacher.teacher": "minilm", "student.projection_init": "least_squares", "train.lr": 1e-9,
        "train.losses": {"margin_mse": {"weight": 1.0}}}},
]


def shared_experiment(root: Path, tiny_bert_dir: Path, mini_beir: Path) -> dict[str, Any]:
    """The experiment runner's table of :data:`SHARED_ROWS` on the tiny BEIR folder, run once:
    the config, what ``run_experiment`` returned, and each row's run config (its folder holds
    ``metrics.json``, ``history.json``, the exported student...)."""
    from student_trainer.experiment import ExperimentConfig, run_experiment

    exp = ExperimentConfig.model_validate({
        "name": "tiny-ablation", "base": str(write_experiment_base(root / "base.yaml", tiny_bert_dir, mini_beir)),
        "output_dir": str(root / "runs"), "results_dir": str(root / "results"), "datasets": [str(mini_beir)],
        "rows": SHARED_ROWS,
    })
    out = run_experiment(exp, ["exp.yaml"])
    return {"exp": exp, "out": out, "root": root, "runs": {row.name: run for row, _, _, run in exp.runs()}}
