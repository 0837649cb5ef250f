"""Faults during real training (Ray Train worker, Serve teacher, tiny models):

* a frozen teacher: the trainer's wait is bounded by ``teacher.timeout_s``;
* the Train worker killed mid-run: the run resumes from its last checkpoint, not from step 0;
* a corrupt or missing checkpoint: a clear error, never a silent restart from step 0.

The teacher replica killed mid-run is ``bench/reliability_faults.py``: Serve needs tens of
seconds to notice and replace it on this machine, too long for the suite.
"""

from __future__ import annotations

import os
import shutil
import signal
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any

import pytest

from net import delete_app
from reliability_helpers import (
    checkpoint_step,
    checkpoint_steps,
    committed_checkpoint,
    deploy_own_app,
    our_processes,
    prepare_training,
    replica_stats,
    start_training,
    tiny_spec,
    wait_until,
)
from student_trainer.config import RunConfig
from student_trainer.run import train_student
from student_trainer.teacher_signals import TeacherSignalSource, TeacherUnavailable, TrainBatch
from student_trainer.train_loop import CheckpointError
from teacher_service.client import TeacherClient

APP = "rel-faults"
STEPS = 16


@pytest.fixture(scope="module")
def faults_app(http_port, tiny_bert_dir):
    yield deploy_own_app(APP, [tiny_spec(tiny_bert_dir)], http_port)
    delete_app(APP)


def test_frozen_teacher_ends_the_wait_after_timeout_s(faults_app):
    client = TeacherClient.from_serve(APP)
    source = TeacherSignalSource(client, "tiny", client.describe("tiny"), None, want_query_embeddings=True, timeout_s=2.0)
    batch = TrainBatch(["q one", "q two"], [], ["d1", "d2", "d3", "d4"], ["doc a", "doc b", "doc c", "doc d"], 1)
    assert source.collect(source.submit(batch)).scores.shape == (2, 4)  # while the teacher is up
    pid = replica_stats(APP, "tiny")["pid"]
    pool = ThreadPoolExecutor(1)
    os.kill(pid, signal.SIGSTOP)  # a hung teacher: alive, answering nothing
    try:
        waiting = pool.submit(source.collect, source.submit(batch))
        with pytest.raises(TeacherUnavailable):
            try:
                waiting.result(timeout=10)  # timeout_s plus one backoff is long over by then
            except FutureTimeout:
                pytest.fail("collect() still waiting 10 s into a 2 s teacher.timeout_s")
    finally:
        os.kill(pid, signal.SIGCONT)
        pool.shutdown(wait=True)


def run_config(out: Path, tiny_bert_dir: Path, mini_beir: Path, **train: Any) -> RunConfig:
    return RunConfig.model_validate({
        "name": "faults", "output_dir": str(out),
        "teacher": {"teacher": "tiny", "app_name": APP, "serve_config": None},
        "student": {"model": str(tiny_bert_dir), "num_layers": 1},
        "data": {"dataset": str(mini_beir), "num_negatives": 1},
        "train": {"batch_size": 4, "num_workers": 1, "cpus_per_worker": 0.5, "epochs": 1, "max_steps": STEPS,
                  "report_every": 2, "checkpoint_every": 4, **train},
    })


@pytest.fixture(scope="module")
def worker_killed_run(faults_app, tiny_bert_dir, mini_beir, tmp_path_factory) -> dict[str, Any]:
    """A run whose Train worker is SIGKILLed once Ray Train has committed its first checkpoint."""
    run = run_config(tmp_path_factory.mktemp("worker-kill"), tiny_bert_dir, mini_beir)
    prepared = prepare_training(run)
    job = start_training(run, prepared)
    committed = wait_until(lambda: committed_checkpoint(run.run_dir), 300, 0.05, "a committed checkpoint")
    workers = our_processes("RayTrainWorker")
    answered_at_kill = replica_stats(APP, "tiny")["requests"]
    for worker in workers:
        worker.kill()
    checkpoint, history = job.result(timeout=600)
    return {"run": run, "prepared": prepared, "checkpoint": checkpoint, "history": history, "committed": committed["step"],
            "workers": len(workers), "answered_after_kill": replica_stats(APP, "tiny")["requests"] - answered_at_kill}


def test_train_worker_killed_mid_run_resumes_from_its_last_checkpoint(worker_killed_run):
    out = worker_killed_run
    assert out["workers"] == 1
    assert checkpoint_step(out["checkpoint"], out["run"], out["prepared"]["info"]) == STEPS
    assert [h["step"] for h in out["history"]] == list(range(2, STEPS + 1, 2))  # the restored history, continued
    # The restarted worker asked the teacher once per step it trained: the steps after the
    # checkpoint it resumed from (a restart from 0 would have asked for all of them).
    resumed_from = STEPS - out["history"][-1]["teacher_requests"]
    assert resumed_from >= out["committed"] > 0 and resumed_from % 4 == 0
    assert out["answered_after_kill"] <= STEPS - resumed_from + 2  # + what the dead worker had in flight


def test_corrupt_or_missing_checkpoint_fails_the_resume_clearly(worker_killed_run):
    run, prepared = worker_killed_run["run"], worker_killed_run["prepared"]
    more = run.model_copy(update={"train": run.train.model_copy(update={"max_steps": STEPS + 4, "max_failures": 0})})
    before = checkpoint_steps(run.run_dir)
    latest = committed_checkpoint(run.run_dir)
    assert latest["step"] == STEPS

    (latest["path"] / "student.pt").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match=r"(?s)checkpoint .* is corrupt"):
        train_student(more, prepared["info"], prepared["examples"], prepared["n"], prepared["index"], [], False)
    assert checkpoint_steps(run.run_dir) == before, "a checkpoint was written: training went on without the checkpoint"

    shutil.rmtree(latest["path"])
    with pytest.raises(CheckpointError, match=r"(?s)checkpoint.*(does not exist|not found|missing)"):
        train_student(more, prepared["info"], prepared["examples"], prepared["n"], prepared["index"], [], False)
    assert checkpoint_steps(run.run_dir) == [s for s in before if s != STEPS]
