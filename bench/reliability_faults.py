"""Faults during short real training runs, with nothing lost: measured, bounded, self-stopping.

Teacher all-MiniLM-L6-v2 served on Ray Serve (its batcher holds each batch ``--hold`` seconds,
which paces the run and lets the kill land at an exact count), a 1-layer MiniLM student on one
Ray Train worker, a small cut of scifact. Scenarios, each on its own run folder:

1. ``teacher_kill``: SIGKILL the teacher replica mid-run. Serve restarts it; the trainer's
   requests the kill cut off are sent again. Checks: requests answered by the old replica before
   the kill + by the new one after = training steps (none skipped, none duplicated), the run
   finishes with its step count. Measures the restart time.
2. ``teacher_down``: the replica killed with its model folder gone, so no restart can succeed,
   with ``teacher.timeout_s`` set low: the run should fail with TeacherUnavailable soon after
   ``timeout_s`` and leave its last checkpoint intact. Records what happens within a bound, then
   gives the model back and waits for the run to end.
3. ``worker_kill``: SIGKILL the Train worker after its first committed checkpoint: the run
   resumes from that checkpoint (FailureConfig max_failures) and finishes. Measures recovery.
4. ``corrupt_checkpoint`` / ``missing_checkpoint``: resuming that run with its latest checkpoint
   damaged or deleted fails with a clear error, and writes no checkpoint.

Writes bench/results/reliability_faults.json.

    python bench/reliability_faults.py [--steps 24] [--hold 0.8] [--down-timeout 20]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from benchlib import write_result
from reliability_lib import (
    checkpoint_step,
    checkpoint_steps,
    committed_checkpoint,
    kill_replica_between_batches,
    our_processes,
    prepare_training,
    replica_stats,
    start_local_serve,
    start_training,
    wait_for_new_replica,
    wait_until,
)

TEACHER = "minilm"


def mini_scifact(out: Path, train: int, test: int, others: int, chars: int) -> Path:
    """A BEIR folder: the first ``train``/``test`` scifact queries, their relevant documents and
    ``others`` more, texts cut to ``chars`` characters (a run over it takes seconds per step)."""
    from common.datasets import load_beir

    ds = load_beir("scifact")
    splits = {"train": ds.split_query_ids("train")[:train], "test": ds.split_query_ids("test")[:test]}
    qrels = {split: ds.qrels(split) for split in splits}
    keep = {d for split, qids in splits.items() for q in qids for d in qrels[split][q]}
    keep |= set([d for d in ds.doc_ids if d not in keep][:others])
    (out / "qrels").mkdir(parents=True, exist_ok=True)
    rows = [r for r in ds.corpus.to_pylist() if r["id"] in keep]
    (out / "corpus.jsonl").write_text("".join(json.dumps({"_id": r["id"], "title": r["title"], "text": r["text"][:chars]}) + "\n" for r in rows))
    (out / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": ds.query_text[q]}) + "\n"
                                               for qids in splits.values() for q in qids))
    for split, qids in splits.items():
        lines = "".join(f"{q}\t{d}\t{g}\n" for q in qids for d, g in qrels[split][q].items())
        (out / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + lines)
    return out


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path, port: int) -> None:
        self.args, self.work, self.port = args, work, port
        self.dataset = mini_scifact(work / "data", args.train_queries, 8, args.extra_docs, 300)

    def deploy(self, app: str, checkpoint: str, hold: float | None = None) -> None:
        from teacher_service.app import deploy
        from teacher_service.spec import ServiceConfig

        spec = {"name": TEACHER, "kind": "dual_encoder", "checkpoint": checkpoint, "cache": {"max_bytes": 0},
                "batch_wait_timeout_s": hold or self.args.hold, "ray_actor_options": {"num_cpus": 1}, "torch_threads": 1}
        deploy(ServiceConfig.model_validate({"teachers": [spec]}), app_name=app, route_prefix=f"/{app}",
               http_options={"host": "127.0.0.1", "port": self.port})

    def run_config(self, name: str, app: str, **overrides: Any):
        from student_trainer.config import RunConfig

        teacher = {"teacher": TEACHER, "app_name": app, "serve_config": None, **overrides.pop("teacher", {})}
        return RunConfig.model_validate({
            "name": name, "output_dir": str(self.work / "runs"), "teacher": teacher,
            "student": {"model": "minilm-l6", "num_layers": 1},
            "data": {"dataset": str(self.dataset), "num_negatives": 1},
            "train": {"batch_size": 4, "num_workers": 1, "cpus_per_worker": 0.5, "epochs": 1, "max_steps": self.args.steps,
                      "report_every": 2, "checkpoint_every": self.args.checkpoint_every, **overrides},
        })

    def teacher_kill(self) -> dict[str, Any]:
        app = "rel-f-kill"
        self.deploy(app, "minilm-l6")
        run = self.run_config("teacher-kill", app)
        prepared = prepare_training(run)
        start = replica_stats(app, TEACHER)["requests"]
        t0 = time.monotonic()
        job = start_training(run, prepared)
        wait_until(lambda: replica_stats(app, TEACHER)["requests"] >= start + self.args.steps // 4, 600, 0.1, "a quarter of the steps")
        kill = kill_replica_between_batches(app, TEACHER, self.args.hold)
        new = wait_for_new_replica(app, TEACHER, kill["pid"], kill["killed_at"])
        checkpoint, history = job.result(timeout=900)
        after = replica_stats(app, TEACHER)["requests"]
        out = {
            "steps": self.args.steps, "answered_before_kill": kill["answered_before"] - start, "answered_after_restart": after,
            "answered_total": kill["answered_before"] - start + after, "trainer_requests_sent": history[-1]["teacher_requests"],
            "kill_after_answer_s": kill["kill_after_answer_s"], "restart_s": new["restart_s"],
            "final_step": checkpoint_step(checkpoint, run, prepared["info"]), "history_steps": [h["step"] for h in history],
            "run_s": time.monotonic() - t0,
        }
        out["nothing_lost"] = out["answered_total"] == out["steps"] == out["final_step"]
        self.delete(app)
        return out

    def teacher_down(self) -> dict[str, Any]:
        from common.model_registry import resolve_model

        app = "rel-f-down"
        model = self.work / "teacher-model"
        shutil.copytree(resolve_model("minilm-l6"), model)
        self.deploy(app, str(model))
        limit = self.args.down_timeout
        run = self.run_config("teacher-down", app, teacher={"timeout_s": limit}, max_failures=0)
        prepared = prepare_training(run)
        job = start_training(run, prepared)
        committed = wait_until(lambda: committed_checkpoint(run.run_dir), 600, 0.1, "a committed checkpoint")
        shutil.move(model, self.work / "teacher-model-gone")
        pid = replica_stats(app, TEACHER)["pid"]
        killed_at = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        bound = limit + self.args.down_grace
        out: dict[str, Any] = {"timeout_s": limit, "waited_up_to_s": bound, "committed_step_at_kill": committed["step"]}
        try:
            job.result(timeout=bound)
            out["outcome"] = "finished (teacher came back?)"
        except TimeoutError:
            out["outcome"] = f"no error within {bound:.0f}s of the kill: the run waited on the dead teacher past timeout_s"
        except Exception as exc:  # noqa: BLE001 - the failure is the result
            out["outcome"] = f"failed after {time.monotonic() - killed_at:.1f}s"
            out["error"] = _first_line(exc)
            out["error_names_teacher_unavailable"] = "TeacherUnavailable" in f"{type(exc).__name__} {exc}"
        latest = committed_checkpoint(run.run_dir)
        try:
            out["last_checkpoint_step"] = _load_step(latest["path"], run, prepared)
            out["last_checkpoint_intact"] = True
        except Exception as exc:  # noqa: BLE001
            out["last_checkpoint_intact"], out["last_checkpoint_error"] = False, _first_line(exc)
        if not job.done():  # give the teacher back so the blocked run can end
            shutil.move(self.work / "teacher-model-gone", model)
            self.deploy(app, str(model), hold=self.args.hold + 1e-3)  # a new version: Serve starts fresh replicas
            try:
                job.result(timeout=600)
                out["after_teacher_restored"] = "the blocked run resumed and finished"
            except Exception as exc:  # noqa: BLE001
                out["after_teacher_restored"] = f"the run failed: {_first_line(exc)}"
        self.delete(app)
        return out

    def worker_kill(self) -> tuple[dict[str, Any], Any, dict[str, Any]]:
        app = "rel-f-worker"
        self.deploy(app, "minilm-l6")
        run = self.run_config("worker-kill", app)
        prepared = prepare_training(run)
        t0 = time.monotonic()
        job = start_training(run, prepared)
        committed = wait_until(lambda: committed_checkpoint(run.run_dir), 600, 0.05, "a committed checkpoint")
        workers = our_processes("RayTrainWorker")
        answered_at_kill = replica_stats(app, TEACHER)["requests"]
        killed_at = time.monotonic()
        for worker in workers:
            worker.kill()
        killed = {w.pid for w in workers}
        wait_until(lambda: {p.pid for p in our_processes("RayTrainWorker")} - killed, 600, 0.1, "a new Train worker")
        new_worker_s = time.monotonic() - killed_at
        wait_until(lambda: (committed_checkpoint(run.run_dir) or {"step": 0})["step"] > committed["step"], 900, 0.1, "a checkpoint after the restart")
        next_checkpoint_s = time.monotonic() - killed_at
        checkpoint, history = job.result(timeout=900)
        out = {
            "steps": self.args.steps, "workers_killed": len(workers), "committed_step_at_kill": committed["step"],
            "resumed_from_step": self.args.steps - history[-1]["teacher_requests"],
            "answered_after_kill": replica_stats(app, TEACHER)["requests"] - answered_at_kill,
            "new_worker_s": new_worker_s, "next_checkpoint_after_kill_s": next_checkpoint_s,
            "final_step": checkpoint_step(checkpoint, run, prepared["info"]), "history_steps": [h["step"] for h in history],
            "run_s": time.monotonic() - t0,
        }
        out["resumed_from_checkpoint"] = out["resumed_from_step"] >= committed["step"] > 0
        return out, run, {**prepared, "app": app}

    def damaged_checkpoints(self, run: Any, prepared: dict[str, Any]) -> dict[str, Any]:
        from student_trainer.run import train_student

        more = run.model_copy(update={"train": run.train.model_copy(update={"max_steps": run.train.max_steps + 4})})
        latest = committed_checkpoint(run.run_dir)
        out = {}
        for case in ("corrupt_checkpoint", "missing_checkpoint"):
            if case == "corrupt_checkpoint":
                (latest["path"] / "student.pt").write_bytes(b"not a torch file")
            else:
                shutil.rmtree(latest["path"])
            before = checkpoint_steps(run.run_dir)
            t0 = time.monotonic()
            try:
                train_student(more, prepared["info"], prepared["examples"], prepared["n"], prepared["index"], [], False)
                out[case] = {"outcome": "trained on (no error)"}
            except Exception as exc:  # noqa: BLE001 - the error is the result
                out[case] = {"outcome": "failed", "error": _first_line(exc), "error_type": type(exc).__name__}
            out[case].update(seconds=time.monotonic() - t0, checkpoints_written=len(set(checkpoint_steps(run.run_dir)) - set(before)),
                             max_failures=more.train.max_failures)
        self.delete(prepared["app"])
        return out

    @staticmethod
    def delete(app: str) -> None:
        from ray import serve

        serve.delete(app)


def _first_line(exc: BaseException) -> str:
    """The line of an error a user reads first: the innermost cause's message where Ray wraps it."""
    text = str(exc)
    for marker in ("CheckpointError:", "TeacherUnavailable:", "CheckpointManagerInitializationError:"):
        if marker in text:
            return marker + text.split(marker, 1)[1].strip().splitlines()[0][:300]
    return f"{type(exc).__name__}: {text.strip().splitlines()[0][:300] if text.strip() else ''}"


def _load_step(path: Path, run: Any, prepared: dict[str, Any]) -> int:
    from ray.train import Checkpoint

    return checkpoint_step(Checkpoint.from_directory(str(path)), run, prepared["info"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=24, help="training steps per run")
    ap.add_argument("--checkpoint-every", type=int, default=4)
    ap.add_argument("--train-queries", type=int, default=120)
    ap.add_argument("--extra-docs", type=int, default=200)
    ap.add_argument("--hold", type=float, default=0.8, help="the teacher batcher's wait (batch_wait_timeout_s)")
    ap.add_argument("--down-timeout", type=float, default=20, help="teacher.timeout_s of the teacher_down run")
    ap.add_argument("--down-grace", type=float, default=60, help="how long past timeout_s teacher_down waits for the failure")
    ap.add_argument("--scenarios", nargs="+", default=["teacher_kill", "teacher_down", "worker_kill"])
    args = ap.parse_args()

    import ray
    from ray import serve

    port = start_local_serve()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="reliability-faults-") as tmp:
        bench = Bench(args, Path(tmp), port)
        for scenario in tqdm(args.scenarios, desc="fault scenarios", unit="scenario"):
            t0 = time.monotonic()
            if scenario == "worker_kill":
                results["worker_kill"], run, prepared = bench.worker_kill()
                results.update(bench.damaged_checkpoints(run, prepared))
            else:
                results[scenario] = getattr(bench, scenario)()
            print(scenario, json.dumps(results.get(scenario), default=str)[:600], f"({time.monotonic() - t0:.0f}s)", flush=True)
    print(f"wrote {write_result('reliability_faults', {'args': vars(args), 'scenarios': results})}")
    serve.shutdown()
    ray.shutdown()  # ends a run still blocked on a teacher, so the script always stops


if __name__ == "__main__":
    main()
