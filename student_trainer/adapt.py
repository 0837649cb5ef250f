"""``tightdistill adapt PATH``: a fast query encoder for your own documents, in one command.

The user has documents and no labels. This reads them (:mod:`common.corpus_formats`), writes them
as a BEIR folder in the output directory, encodes them once with the served teacher (chunked and
resumable, cached), trains the label-free default recipe (``deploy/label-free.yaml``, loaded, with
only the dataset, the student's depth, the time budget, the output folder and the evaluation split
set here) on pseudo-queries, exports the student (sentence-transformers directory and ONNX) and
writes a report that says, first, in plain words, what the user got.

Quality without queries: pseudo-queries held out from training (:mod:`student_trainer.held_out`)
measure how closely the student follows the teacher (overlap@10, nDCG@10 with the teacher's top 10
as relevant); a corpus that comes with queries and test qrels is also scored on them.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.config import ConfigError
from common.corpus_formats import OnBadInput, read_documents, write_beir
from common.datasets import BeirDataset, load_beir

REPO_ROOT = Path(__file__).resolve().parents[1]
RECIPE = REPO_ROOT / "deploy" / "label-free.yaml"
HELD_OUT_QUERIES = 200
LATENCY_QUERIES = 200  # batch-1 timings per model; the report gives their median


@dataclass
class AdaptResult:
    out_dir: Path
    student_dir: Path
    report: dict[str, Any]
    markdown: str


def recipe_run(dataset_dir: Path, out_dir: Path, teacher: str | None, layers: int, minutes: float | None,
               eval_split: str | None, address_serve_config: Path | None = None) -> Any:
    """The label-free default recipe as loaded from ``deploy/label-free.yaml``, with this command's settings."""
    from student_trainer.config import load_run_config

    overrides: dict[str, Any] = {
        "name": out_dir.name, "output_dir": str(out_dir.parent),
        "data.dataset": str(dataset_dir), "data.eval_split": eval_split,
        "student.num_layers": layers, "train.max_minutes": minutes,
    }
    if teacher is not None:
        overrides["teacher.teacher"] = teacher
    run = load_run_config(RECIPE, overrides)
    serve_config = address_serve_config or run.teacher.serve_config
    if serve_config is not None and not serve_config.is_absolute():
        # The recipe names its serve config relative to the repository; adapt runs from anywhere.
        serve_config = REPO_ROOT / serve_config
    return run.model_copy(update={"teacher": run.teacher.model_copy(update={"serve_config": serve_config})})


def latency_texts(dataset: BeirDataset, seed: int) -> list[str]:
    """Query-like texts to time models on: the corpus's queries, topped up with pseudo-queries to
    :data:`LATENCY_QUERIES` (cycled when the corpus is too small for that many)."""
    from student_trainer.held_out import held_out_pseudo_queries

    texts = list(dataset.query_text.values())[:LATENCY_QUERIES]
    texts += held_out_pseudo_queries(dataset, LATENCY_QUERIES - len(texts), seed + 1) if len(texts) < LATENCY_QUERIES else []
    return (texts * (LATENCY_QUERIES // max(1, len(texts)) + 1))[:LATENCY_QUERIES]


def latencies(info: dict[str, Any], student_dir: Path, onnx_ok: bool, texts: list[str]) -> dict[str, float]:
    """Batch-1 query latency (median ms, in this process) of the teacher's query encoder, the
    student in torch and, where it was exported, the student in ONNX Runtime (fp32, and int8 where
    ``model_int8.onnx`` exists), timed in turns on one thread (:func:`student_trainer.run.median_latencies_ms`)."""
    from common.text_encoder import TextEncoder
    from student_trainer.export import ONNX_INT8_FILE, ExportedStudent, OnnxStudent
    from student_trainer.run import median_latencies_ms

    encoders = {"student": ExportedStudent(student_dir).encode_queries}
    if info["kind"] == "dual_encoder":
        encoders["teacher"] = TextEncoder.from_pretrained(info["checkpoint"], max_length=info["max_query_length"]).eval().encode
    if onnx_ok:
        encoders["student_onnx"] = OnnxStudent(student_dir, threads=1).encode_queries
        if (student_dir / ONNX_INT8_FILE).is_file():  # written by `tightdistill export --quantize int8`
            encoders["student_onnx_int8"] = OnnxStudent(student_dir, student_dir / ONNX_INT8_FILE, threads=1).encode_queries
    return median_latencies_ms(encoders, texts)


def headline(report: dict[str, Any]) -> list[str]:
    """The report's first lines, in plain words."""
    held = report["held_out"]
    lat = report["latency_ms"]
    lines = [f"kept {held['nDCG@10_teacher_top10']:.1%} of the teacher's ranking on {held['queries']} held-out "
             f"pseudo-queries (nDCG@10 taking the teacher's top 10 as relevant; overlap@10 with the teacher "
             f"{held['overlap@10']:.1%})."]
    real = report.get("test")
    if real and real.get("retained_nDCG@10") is not None:
        lines.append(f"kept {real['retained_nDCG@10']:.1%} of the teacher's nDCG@10 on the corpus's {real['queries']} "
                     f"test queries (student {real['student']['nDCG@10']:.3f}, teacher {real['teacher']['nDCG@10']:.3f}).")
    if "teacher" in lat:
        onnx = f"; {lat['teacher'] / lat['student_onnx']:.1f} times with ONNX Runtime ({lat['student_onnx']:.1f} ms)" \
            if "student_onnx" in lat else ""
        lines.append(f"queries {lat['teacher'] / lat['student']:.1f} times faster: {lat['student']:.1f} ms against the "
                     f"teacher's {lat['teacher']:.1f} ms (batch-1 latency, median of {report['latency_queries']} queries, "
                     f"student vs teacher, both in torch, one thread, on this machine){onnx}.")
    lines.append(f"the model is at {report['model_dir']} (sentence-transformers directory"
                 + (", ONNX query encoder model.onnx" if report["onnx"].get("exported") else "") + ").")
    return lines


def render(report: dict[str, Any]) -> str:
    """The report as Markdown: the plain-words headline, then the figures."""
    lines = ["# tightdistill adapt", "", *[f"* {line}" for line in headline(report)], ""]
    c = report["corpus"]
    skipped = ", ".join(f"{n} ({why})" for why, n in c["skipped"].items()) or "none"
    lines += [f"Corpus `{c['path']}`: {c['documents']:,} documents ({c['format']}), skipped: {skipped}. "
              f"Teacher `{report['teacher']['name']}` ({report['teacher']['checkpoint']}); student "
              f"{report['student']['layers']} layer{'s' * (report['student']['layers'] != 1)}, {report['student']['parameters']:,} parameters "
              f"(teacher {report['teacher']['parameters'] or 0:,}).", ""]
    t = report["training"]
    budget = f"{t['max_minutes']:g} min budget" if t["max_minutes"] else "no time budget"
    lines += [f"Training: the label-free recipe `{report['recipe']}`, {t['steps']} steps in {t['train_elapsed_s']:.0f} s "
              f"({budget}, step cap {t['max_steps']}), {t['pseudo_queries']:,} pseudo-queries.", ""]
    held = report["held_out"]
    lines += ["| held-out pseudo-queries | value |", "| --- | ---: |",
              *[f"| {k} | {v:.3f} |" for k, v in held.items() if k != "queries"], ""]
    if report.get("test"):
        real = report["test"]
        lines += [f"| test queries ({real['queries']}) | nDCG@10 | MRR@10 | R@100 |", "| --- | ---: | ---: | ---: |"]
        lines += [f"| {name} | {m['nDCG@10']:.3f} | {m['MRR@10']:.3f} | {m.get('R@100', float('nan')):.3f} |"
                  for name, m in ((n, real[n]) for n in ("teacher", "student"))]
        lines.append("")
    onnx = report["onnx"]
    lines += [f"ONNX: exported to `{onnx['path']}`, min cosine to torch {onnx['min_cosine']:.6f} on {onnx['texts']} texts."
              if onnx.get("exported") else f"ONNX: not exported ({onnx.get('reason')}).", ""]
    lines += ["Latency (ms, batch 1, median): " + ", ".join(f"{k} {v:.2f}" for k, v in report["latency_ms"].items()) + ".",
              "", "Wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in report["timings"].items()) + ".", ""]
    return "\n".join(lines)


def adapt(path: str | Path, teacher: str | None = None, layers: int = 2, minutes: float | None = None,
          out: str | Path | None = None, on_bad_input: OnBadInput = "error", address: str | None = None,
          show_progress: bool = True, max_steps: int | None = None) -> AdaptResult:
    """Run the whole command; returns where everything is and the report (also written to
    ``<out>/report.md`` and ``report.json``; the training run's own report is ``run_report.md``)."""
    from common.ray_runtime import init_ray
    from student_trainer.export import OnnxUnavailable, export_onnx, ExportedStudent
    from student_trainer.held_out import held_out_pseudo_queries, teacher_agreement
    from student_trainer.run import connect_teacher, run_distillation
    from student_trainer.teacher_index import teacher_doc_embeddings
    from teacher_service.client import TeacherClient
    from teacher_service.errors import UnknownTeacher

    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    docs = read_documents(path, on_bad_input)  # data errors before anything starts
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", docs.name).strip("-.") or "corpus"
    out_dir = Path(out or Path("runs") / f"adapt-{name}").expanduser().resolve()
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", out_dir.name):
        raise ConfigError(f"--out {out_dir}: the folder's name may hold only letters, digits, '_', '.' and '-'")
    dataset_dir = write_beir(docs, out_dir / "data" / name)
    dataset = load_beir(dataset_dir)
    eval_split = "test" if "test" in dataset.splits() and dataset.split_query_ids("test") else None
    run = recipe_run(dataset_dir, out_dir, teacher, layers, minutes, eval_split)
    if max_steps is not None:  # quick runs and tests: fewer steps than the recipe's
        run = run.model_copy(update={"train": run.train.model_copy(update={"max_steps": max_steps})})
    timings["read_s"] = time.perf_counter() - t0

    init_ray(address)
    try:
        client = connect_teacher(run.teacher)
    except UnknownTeacher:
        served = ", ".join(t["name"] for t in TeacherClient.from_serve(run.teacher.app_name).teachers())
        raise ConfigError(f"teacher '{run.teacher.teacher}' is not served by app '{run.teacher.app_name}' "
                          f"(it serves: {served}); pick one with --teacher") from None
    info = client.describe()
    if info["kind"] != "dual_encoder":
        raise ConfigError(f"teacher '{info['name']}' is a {info['kind']}: adapt needs a dual-encoder teacher, whose "
                          "document index the student inherits and whose ranking labels the pseudo-queries")
    t = time.perf_counter()
    index = teacher_doc_embeddings(client, dataset, show_progress=show_progress)
    timings["teacher_index_s"] = time.perf_counter() - t

    held_out = held_out_pseudo_queries(dataset, min(HELD_OUT_QUERIES, max(10, len(dataset.doc_ids) // 5)), run.train.seed)
    if not held_out:
        raise ConfigError(f"{path}: the documents are too short to draw pseudo-queries from (sentences of 4+ words)")
    t = time.perf_counter()
    result = run_distillation(run, address=address, show_progress=show_progress, held_out=held_out)
    timings["distillation_s"] = time.perf_counter() - t
    (out_dir / "report.md").replace(out_dir / "run_report.md")

    t = time.perf_counter()
    onnx: dict[str, Any]
    try:
        onnx = {"exported": True, **export_onnx(result.student_dir, held_out[:32])}
    except OnnxUnavailable as exc:
        onnx = {"exported": False, "reason": str(exc)}
    timings["onnx_export_s"] = time.perf_counter() - t

    t = time.perf_counter()
    student = ExportedStudent(result.student_dir)
    teacher_q = client.encode_many(held_out, role="query")
    agreement = teacher_agreement(teacher_q, student.encode_queries(held_out), index.emb, index.ids)
    texts = latency_texts(dataset, run.train.seed)
    lat = latencies(info, result.student_dir, onnx["exported"], texts)
    timings["measure_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t0

    m = result.metrics
    history = result.history
    report: dict[str, Any] = {
        "model_dir": str(result.student_dir), "out_dir": str(out_dir), "recipe": str(RECIPE.relative_to(REPO_ROOT)),
        "corpus": {"path": str(path), "format": "BEIR folder" if docs.beir_dir else Path(path).suffix.lstrip(".") or "text folder",
                   "documents": len(docs.ids), "skipped": dict(docs.skipped), "dataset_dir": str(dataset_dir)},
        "teacher": {"name": info["name"], "checkpoint": info["checkpoint"], "parameters": info.get("parameters")},
        "student": {"layers": layers, "parameters": m["parameters"]["student"]},
        "training": {"steps": m["steps"], "max_steps": run.train.max_steps, "max_minutes": minutes,
                     "train_elapsed_s": float(next((h["train_elapsed_s"] for h in reversed(history) if "train_elapsed_s" in h), 0.0)),
                     "pseudo_queries": _rows(out_dir)},
        "held_out": agreement,
        "latency_ms": lat, "latency_queries": len(texts),
        "onnx": onnx,
        "timings": timings,
    }
    if eval_split is not None and m.get("metrics"):
        report["test"] = {"queries": m["num_eval_queries"], "teacher": m["metrics"]["teacher"], "student": m["metrics"]["student"],
                          "retained_nDCG@10": (m.get("retained") or {}).get("nDCG@10")}
    markdown = render(report)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2))
    (out_dir / "report.md").write_text(markdown)
    return AdaptResult(out_dir, result.student_dir, report, markdown)


def _rows(run_dir: Path) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(run_dir / "data" / "train.parquet").metadata.num_rows


__all__ = ["AdaptResult", "adapt", "recipe_run"]
