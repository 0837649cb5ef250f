"""The run report: ``report.md`` and PNG plots written from a run folder's JSON files.

Reads ``metrics.json`` (teacher and student metrics, parameters, latency, timings),
``history.json`` (losses every ``report_every`` steps) and ``query_cosine.json`` (per eval query,
the cosine between teacher and student query embeddings). ``tightdistill report --run DIR``
rebuilds it at any time.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: runs happen on headless machines
import matplotlib.pyplot as plt  # noqa: E402

from common.metrics import MetricReport, format_table  # noqa: E402

PLOT_METRICS = ("MRR@10", "nDCG@10", "R@20", "R@100")


def _load(run_dir: Path, name: str, default: Any) -> Any:
    path = run_dir / name
    return json.loads(path.read_text()) if path.is_file() else default


def plot_losses(history: list[dict[str, Any]], path: Path) -> Path | None:
    if not history:
        return None
    steps = [h["step"] for h in history]
    terms = [k for k in history[0] if k not in {"step", "epoch", "lr", "teacher_requests", "teacher_wait_s", "step_s"}]
    fig, ax = plt.subplots(figsize=(7, 4))
    for term in terms:
        ax.plot(steps, [h.get(term) for h in history], label=term, lw=2 if term == "loss" else 1)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title("training losses (mean over each report window)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_metrics(metrics: dict[str, dict[str, float]], path: Path) -> Path:
    systems = list(metrics)
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(systems)
    for i, system in enumerate(systems):
        xs = [j + i * width for j in range(len(PLOT_METRICS))]
        bars = ax.bar(xs, [metrics[system].get(m, 0.0) for m in PLOT_METRICS], width, label=system)
        ax.bar_label(bars, fmt="%.3f", fontsize=7)
    ax.set_xticks([j + width * (len(systems) - 1) / 2 for j in range(len(PLOT_METRICS))], PLOT_METRICS)
    ax.set_ylim(0, 1.05)
    ax.set_title("teacher vs student")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_cosines(cosines: list[float], path: Path) -> Path | None:
    if not cosines:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(cosines, bins=30, color="tab:green")
    ax.set_xlabel("cosine(teacher query embedding, student query embedding)")
    ax.set_ylabel("eval queries")
    ax.set_title(f"student follows teacher: median cosine {sorted(cosines)[len(cosines) // 2]:.3f}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(run_dir: str | Path) -> Path:
    """(Re)write ``report.md`` and the plots of a finished run; returns the report's path."""
    run_dir = Path(run_dir)
    metrics = _load(run_dir, "metrics.json", None)
    if metrics is None:
        raise FileNotFoundError(f"{run_dir}: no metrics.json (not a finished run folder)")
    history = _load(run_dir, "history.json", [])
    cosines = _load(run_dir, "query_cosine.json", [])
    plots = {
        "Training losses": plot_losses(history, run_dir / "loss_curves.png"),
        "Teacher vs student": plot_metrics(metrics["metrics"], run_dir / "metrics.png"),
        "Query-embedding agreement": plot_cosines(cosines, run_dir / "query_cosine.png"),
    }
    reports = {name: MetricReport(aggregate=agg, per_query={}) for name, agg in metrics["metrics"].items()}
    lines = [f"# Run `{metrics['run']}`", "",
             f"Teacher `{metrics['teacher']['name']}` ({metrics['teacher']['kind']}, {metrics['teacher']['checkpoint']}); "
             f"{metrics['dataset']} {metrics['split']}, {metrics['num_eval_queries']} queries, full retrieval over the "
             "teacher's document index.", "", format_table(reports), ""]
    if "retained" in metrics:
        r = metrics["retained"]
        pct = lambda v: "n/a" if v is None else f"{v:.1%}"  # noqa: E731 - a teacher scoring 0 has no ratio
        lines += [f"The student keeps **{pct(r['nDCG@10'])}** of the teacher's nDCG@10 and {pct(r['MRR@10'])} of its MRR@10.", ""]
    lines += ["| | parameters | query latency (ms, batch 1, median) |", "| --- | ---: | ---: |"]
    for name in ("teacher", "student"):
        p = metrics.get("parameters", {}).get(name)
        lat = metrics.get("query_latency_ms", {}).get(name)
        lines.append(f"| {name} | {p:,} | {lat:.1f} |" if p is not None and lat is not None else f"| {name} | {p or '-'} | {lat or '-'} |")
    t = metrics.get("timings", {})
    lines += ["", "Wall time: " + ", ".join(f"{k.removesuffix('_s')} {v:.0f} s" for k, v in t.items()), ""]
    for title, path in plots.items():
        if path is not None:
            lines += [f"## {title}", "", f"![{title}]({path.name})", ""]
    out = run_dir / "report.md"
    out.write_text("\n".join(lines))
    return out
