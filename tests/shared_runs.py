"""Train runs that several tests share (one Ray Train start-up each, not one per test); the
session fixtures in ``conftest.py`` make them. A test that trains on from a shared run resumes
its own copy (:func:`resumable_copy`), so tests neither see nor change each other's checkpoints."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

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
