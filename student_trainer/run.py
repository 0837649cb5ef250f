"""A distillation run, end to end: teacher service -> teacher index -> examples -> Ray Train ->
exported student -> evaluation of teacher and student.

Entry point for ``ray job submit``::

    ray job submit --working-dir . -- python -m student_trainer.run --config deploy/default.yaml

and the function behind ``tightdistill train``. The run finds the teacher app already deployed on
the cluster, or deploys it from ``teacher.serve_config``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import ray
import ray.train
from tqdm.auto import tqdm
from ray.train import CheckpointConfig, FailureConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from common.config import ConfigError
from common.datasets import BeirDataset, load_beir, write_parquet
from common.evaluation import evaluate_encoder
from common.metrics import MetricReport
from common.ray_runtime import init_ray
from student_trainer.config import RunConfig, TeacherRef, load_run_config
from student_trainer.examples import build_examples, label_free_examples, split_queries
from student_trainer.export import ExportedStudent, export_sentence_transformers
from student_trainer.extra_queries import corpus_pseudo_queries
from student_trainer.progress import ProgressBar
from student_trainer.report import write_report
from student_trainer.students import DualEncoderStudent
from student_trainer.teacher_index import DocEmbeddings, teacher_doc_embeddings
from student_trainer.train_loop import load_checkpoint, total_training_steps, train_loop_per_worker
from teacher_service.client import TeacherClient


@dataclass
class RunResult:
    run_dir: Path
    student_dir: Path
    metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)


def connect_teacher(ref: TeacherRef) -> TeacherClient:
    """A client for the configured teacher; deploys the teacher app if it is not running."""
    if ref.url:
        client = TeacherClient.from_url(ref.url, teacher=ref.teacher)
        client.describe()
        return client
    client = TeacherClient.from_serve(ref.app_name, teacher=ref.teacher)
    try:
        client.teachers()
    except Exception:  # noqa: BLE001 - Serve raises several types for "no such app"
        if ref.serve_config is None:
            raise ConfigError(f"no teacher app '{ref.app_name}' is running and teacher.serve_config is not set") from None
        from teacher_service.app import ServeFile, deploy

        serve_file = ServeFile(ref.serve_config)
        deploy(serve_file.config, ref.app_name, serve_file.route_prefix, serve_file.http_options)
    client.describe()  # fails clearly if the teacher name is not in the app
    return client


def prepare_examples(run: RunConfig, dataset: BeirDataset, client: TeacherClient, doc_index: DocEmbeddings) -> tuple[Path, int]:
    """Training examples as parquet: labelled queries with mined negatives, or, with no
    ``data.train_split``, pseudo-queries from the corpus labelled by the teacher's ranking."""
    split = split_queries(dataset, run.data, run.train.seed)
    if run.data.train_split is None:
        queries = corpus_pseudo_queries(dataset, run.data.pseudo_queries, run.train.seed)
        q_emb = client.encode_many(queries, role="query", progress="teacher: embedding pseudo-queries")
        table = label_free_examples(dataset, queries, run.data, doc_index, q_emb, run.train.seed)
    else:
        if not split.train:
            raise ConfigError(f"dataset {dataset.name}: no training queries in split '{run.data.train_split}'")
        q_emb = None
        if run.data.negatives == "mined" and run.data.num_negatives:
            q_emb = client.encode_many([dataset.query_text[q] for q in split.train], role="query")
        table = build_examples(dataset, split.train, run.data, doc_index, q_emb, run.train.seed)
    path = write_parquet(table, run.run_dir / "data" / "train.parquet")
    (run.run_dir / "data" / "dev_queries.json").write_text(json.dumps(split.dev))
    return path, table.num_rows


def train_student(run: RunConfig, info: dict[str, Any], examples: Path, num_examples: int, doc_index: DocEmbeddings,
                  extra_queries: list[str], show_progress: bool) -> tuple[Any, list[dict[str, Any]]]:
    total_steps = total_training_steps(run, num_examples)
    ray.data.DataContext.get_current().enable_progress_bars = False  # our own bar tracks training
    with ProgressBar(total_steps, desc="training student", enabled=show_progress) as bar:
        loop_config = {
            "run": run.model_dump(mode="json"),
            "teacher_info": info,
            "total_steps": total_steps,
            "doc_index_ref": ray.put((doc_index.ids, doc_index.emb)),
            "extra_queries_ref": ray.put(extra_queries) if extra_queries else None,
            "progress_board": bar.board,
        }
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config=loop_config,
            scaling_config=ScalingConfig(num_workers=run.train.num_workers, use_gpu=run.train.use_gpu,
                                         resources_per_worker={"CPU": run.train.cpus_per_worker}),
            run_config=ray.train.RunConfig(
                name="train", storage_path=str(run.run_dir / "ray"),
                checkpoint_config=CheckpointConfig(num_to_keep=run.train.keep_checkpoints),
                failure_config=FailureConfig(max_failures=run.train.max_failures),
            ),
            # Small read tasks: a whole CPU each would starve on a 2-core machine already running
            # a teacher replica and the workers, and Train would wait forever.
            datasets={"train": ray.data.read_parquet(str(examples), ray_remote_args={"num_cpus": 0.1})},
        )
        result = trainer.fit()
    if result.error:
        raise result.error
    history = (result.return_value or {}).get("history", []) if hasattr(result, "return_value") else []
    return result.checkpoint, history


def evaluate(run: RunConfig, dataset: BeirDataset, doc_index: DocEmbeddings,
             encoders: dict[str, Any]) -> tuple[dict[str, MetricReport], dict[str, np.ndarray]]:
    """Each encoder's metrics on the eval split, and the query embeddings it produced."""
    reports, embeddings = {}, {}
    for name, encode in tqdm(encoders.items(), desc="evaluating", unit="model", disable=len(encoders) < 2):
        def capture(texts: list[str], encode=encode, name=name) -> np.ndarray:
            embeddings[name] = np.asarray(encode(texts), dtype=np.float32)
            return embeddings[name]

        ev = evaluate_encoder(capture, doc_index.index, dataset, run.data.eval_split, run.eval.k_values, run.data.max_eval_queries)
        reports[name] = ev.report
    return reports, embeddings


def cosines(a: np.ndarray, b: np.ndarray) -> list[float]:
    a = a / np.linalg.norm(a, axis=1, keepdims=True).clip(1e-12)
    b = b / np.linalg.norm(b, axis=1, keepdims=True).clip(1e-12)
    return np.einsum("nd,nd->n", a, b).round(5).tolist()


def query_latencies(info: dict[str, Any], student: ExportedStudent, dataset: BeirDataset, run: RunConfig,
                    n: int = 30) -> dict[str, float]:
    """Median milliseconds to embed one query, in this process: the student, and a dual-encoder
    teacher loaded the same way (other teacher kinds have no single-text query encoder)."""
    queries = [dataset.query_text[q] for q in dataset.split_query_ids(run.data.eval_split)[:n]]

    def median_ms(fn) -> float:
        fn(queries[:1])  # warm-up
        times = []
        for q in queries:
            start = time.perf_counter()
            fn([q])
            times.append(time.perf_counter() - start)
        return 1000 * float(np.median(times))

    out = {"student": median_ms(student.encode_queries)}
    if info["kind"] == "dual_encoder":
        from common.text_encoder import TextEncoder

        teacher = TextEncoder.from_pretrained(info["checkpoint"], max_length=info["max_query_length"]).eval()
        out["teacher"] = median_ms(teacher.encode)
    return out


def run_distillation(run: RunConfig, address: str | None = None, show_progress: bool = True) -> RunResult:
    """Run ``run`` on the connected (or an embedded local) Ray cluster and write its folder."""
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    run.run_dir.mkdir(parents=True, exist_ok=True)
    (run.run_dir / "config.json").write_text(run.model_dump_json(indent=2))
    dataset = load_beir(run.data.dataset)  # data errors before Ray starts
    init_ray(address)
    client = connect_teacher(run.teacher)
    info = client.describe()
    timings["setup_s"] = time.perf_counter() - t0

    t = time.perf_counter()
    doc_index = teacher_doc_embeddings(client, dataset, show_progress=show_progress)
    timings["teacher_index_s"] = time.perf_counter() - t

    t = time.perf_counter()
    examples, num_examples = prepare_examples(run, dataset, client, doc_index)
    extra = (corpus_pseudo_queries(dataset, run.data.extra_query_pool, run.train.seed)
             if run.data.extra_queries == "corpus" and run.data.extra_query_ratio > 0 else [])
    timings["examples_s"] = time.perf_counter() - t

    t = time.perf_counter()
    checkpoint, history = train_student(run, info, examples, num_examples, doc_index, extra, show_progress)
    timings["train_s"] = time.perf_counter() - t

    student = DualEncoderStudent(run.student, teacher_dim=info["dim"])
    state = load_checkpoint(checkpoint, student)
    history = history or state.get("history", [])
    student_dir = export_sentence_transformers(student, run.run_dir / "student", {
        "teacher": {"name": info["name"], "kind": info["kind"], "checkpoint": info["checkpoint"]},
        "teacher_info": info, "doc_index": str(doc_index.path) if doc_index.path else None, "run": run.name,
    })

    t = time.perf_counter()
    exported = ExportedStudent(student_dir)
    encoders: dict[str, Any] = {}
    if run.eval.evaluate_teacher:
        encoders["teacher"] = lambda texts: client.encode_many(texts, role="query")
    if student.asymmetric:
        encoders["student"] = exported.encode_queries
    if run.eval.evaluate_untrained and student.asymmetric:
        untrained = DualEncoderStudent(run.student, teacher_dim=info["dim"])
        encoders["untrained student"] = lambda texts: untrained.encode_queries(texts).numpy()
    reports, query_emb = evaluate(run, dataset, doc_index, encoders)
    if not student.asymmetric:  # a symmetric student searches its own index of the corpus
        own = DocEmbeddings(list(dataset.doc_ids), exported.encode_documents(dataset.doc_texts, show_progress=show_progress))
        student_reports, student_emb = evaluate(run, dataset, own, {"student": exported.encode_queries})
        reports.update(student_reports)
        query_emb.update(student_emb)
    timings["eval_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t0

    metrics = build_metrics(run, info, reports, student, timings, state)
    metrics["query_latency_ms"] = query_latencies(info, exported, dataset, run)
    (run.run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (run.run_dir / "history.json").write_text(json.dumps(history, indent=2))
    if "teacher" in query_emb:
        (run.run_dir / "query_cosine.json").write_text(json.dumps(cosines(query_emb["teacher"], query_emb["student"])))
    write_report(run.run_dir)
    return RunResult(run.run_dir, student_dir, metrics, history)


def build_metrics(run: RunConfig, info: dict[str, Any], reports: dict[str, MetricReport], student: DualEncoderStudent,
                  timings: dict[str, float], state: dict[str, Any]) -> dict[str, Any]:
    counts = student.parameter_counts()
    out: dict[str, Any] = {
        "run": run.name, "dataset": run.data.dataset, "split": run.data.eval_split,
        "teacher": {"name": info["name"], "kind": info["kind"], "checkpoint": info["checkpoint"]},
        "metrics": {name: r.aggregate for name, r in reports.items()},
        "num_eval_queries": next(iter(reports.values())).num_queries if reports else 0,
        "parameters": {"teacher": info.get("parameters"), "student": counts["query_encoder"] + counts["projection"]},
        "student_parameters": counts,
        "steps": state.get("global_step"),
        "timings": timings,
    }
    if "teacher" in reports:
        teacher = reports["teacher"].aggregate
        out["retained"] = {m: (v / teacher[m] if teacher[m] else None) for m, v in reports["student"].aggregate.items()}
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m student_trainer.run --config FILE`` (the ``ray job submit`` entry point)."""
    ap = argparse.ArgumentParser(description="Run a tightdistill distillation job from a config file.")
    ap.add_argument("--config", type=Path, required=True)
    ap.add_argument("--address", default=None, help="Ray cluster address (default: the job's cluster, else a local Ray)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    run = load_run_config(args.config)
    result = run_distillation(run, address=args.address or _job_address(), show_progress=not args.no_progress)
    print(json.dumps(result.metrics, indent=2))
    return 0


def _job_address() -> str | None:
    import os

    # Inside `ray job submit`, RAY_ADDRESS points at the cluster the job belongs to.
    return os.environ.get("RAY_ADDRESS")


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["RunResult", "connect_teacher", "run_distillation"]
