"""The run report: ``report.md`` and PNG plots written from a run folder's JSON files.

Reads ``metrics.json`` (teacher and student metrics, teacher-student agreement, which teacher
produced which signal, parameters, latency, timings), ``history.json`` (losses every
``report_every`` steps; agreement on held-out queries, per-teacher KL of ensembles and negative
refreshes when those are on) and ``query_cosine.json`` (per eval query, the cosine between teacher
and student query embeddings). ``tightdistill report --run DIR`` rebuilds it at any time.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: runs happen on headless machines
import matplotlib.pyplot as plt  # noqa: E402

from common.evaluation import STUDENT_RETRIEVAL  # noqa: E402
from common.metrics import MetricReport, format_table  # noqa: E402

PLOT_METRICS = ("MRR@10", "nDCG@10", "R@20", "R@100")


def _load(run_dir: Path, name: str, default: Any) -> Any:
    path = run_dir / name
    return json.loads(path.read_text()) if path.is_file() else default


NOT_LOSSES = {"step", "epoch", "lr", "teacher_requests", "teacher_wait_s", "step_s"}


def _series(history: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of the history entries that have ``key`` (a None value is kept as a gap)."""
    rows = [h for h in history if key in h]
    return [h["step"] for h in rows], [float("nan") if h[key] is None else h[key] for h in rows]


def _keys(history: list[dict[str, Any]], prefix: str) -> list[str]:
    return list(dict.fromkeys(k for h in history for k in h if k.startswith(prefix)))


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _line_plot(history: list[dict[str, Any]], keys: list[str], path: Path, ylabel: str, title: str,
               prefix: str = "") -> Path | None:
    """One line per history key over the steps (``loss`` drawn thicker); None when there is no key."""
    if not keys:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for key in keys:
        ax.plot(*_series(history, key), label=key.removeprefix(prefix), lw=2 if key == "loss" else 1)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_losses(history: list[dict[str, Any]], path: Path) -> Path | None:
    # Hook metrics are named "<group>/<name>" (agreement/, refresh/, teacher_kl/, ...); the rest are losses.
    terms = [k for k in dict.fromkeys(k for h in history for k in h) if k not in NOT_LOSSES and "/" not in k]
    return _line_plot(history, terms, path, "loss", "training losses (mean over each report window)")


def plot_agreement(history: list[dict[str, Any]], path: Path) -> Path | None:
    """Agreement on held-out queries during training: rank agreement and cosine (left axis, 0-1),
    in-batch KL (right axis)."""
    keys = [k for k in _keys(history, "agreement/") if not k.startswith("agreement/query_cosine_p")]
    if not keys:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    kl_ax = ax.twinx()
    for key in keys:
        name = key.removeprefix("agreement/")
        target = kl_ax if name == "inbatch_kl" else ax
        target.plot(*_series(history, key), marker=".", label=name, color="black" if target is kl_ax else None,
                    ls="--" if target is kl_ax else "-")
    ax.set_xlabel("step")
    ax.set_ylabel("agreement (overlap, RBO, Kendall tau, cosine)")
    kl_ax.set_ylabel("in-batch KL(teacher || student)")
    ax.set_title("student follows teacher on held-out queries")
    ax.grid(alpha=0.3)
    lines = ax.get_legend_handles_labels()
    kl_lines = kl_ax.get_legend_handles_labels()
    ax.legend(lines[0] + kl_lines[0], lines[1] + kl_lines[1], fontsize=8, loc="center right")
    return _save(fig, path)


def plot_teacher_kls(history: list[dict[str, Any]], path: Path) -> Path | None:
    """Ensembles: each teacher's KL to the student's in-batch distribution, per report window."""
    return _line_plot(history, _keys(history, "teacher_kl/"), path, "KL(teacher || student), training batches",
                      "which teacher the student follows", prefix="teacher_kl/")


def _agreement_lines(metrics: dict[str, Any], history: list[dict[str, Any]]) -> list[str]:
    lines = []
    agreement = metrics.get("agreement")
    if agreement:
        fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731 - tau is undefined on constant scores
        lines += ["## Agreement with the teacher", "",
                  f"On the {metrics['num_eval_queries']} evaluation queries (top-k lists from full retrieval; "
                  "KL over in-batch layouts of held-out queries; cosines of query embeddings):", "",
                  "| " + " | ".join(agreement) + " |", "|" + " ---: |" * len(agreement),
                  "| " + " | ".join(fmt(v) for v in agreement.values()) + " |", ""]
    signals = metrics.get("signals")
    if signals:
        lines += ["## Teacher signals", "", "| teacher | kind | weight | calibration | scores from |",
                  "| --- | --- | ---: | --- | --- |"]
        for t in signals["teachers"]:
            lines.append(f"| {t['name']} | {t['kind']} | {t['weight']:g} | {t['calibration']} | {t['scores_from']} |")
        lines += ["", f"Score target: {signals['scores']}. Query embeddings: {signals['query_embeddings']}; document "
                  f"embeddings: {signals['document_embeddings']}. Negatives: {signals['negatives']}.", ""]
    refreshes = [h for h in history if "refresh/candidates" in h]
    if refreshes:
        dropped = sum(h.get("refresh/dropped_false_negatives", 0) for h in refreshes)
        candidates = sum(h["refresh/candidates"] for h in refreshes)
        lines += [f"Negative refreshes logged in {len(refreshes)} report windows: {candidates:.0f} student-mined "
                  f"candidates, {dropped:.0f} dropped as likely false negatives by the teacher.", ""]
    return lines


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


def _evaluated_how(metrics: dict[str, Any]) -> str:
    ev = metrics.get("eval", {"mode": "retrieval"})
    if ev["mode"] == "rerank":
        return (f"teacher and student re-rank the same candidates ({ev.get('candidates')}); "
                f"'{STUDENT_RETRIEVAL}' is the student's full retrieval over its own index of the corpus")
    return "full retrieval over the teacher's document index (a symmetric student searches its own)"


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
        "Teacher vs student": plot_metrics(metrics["metrics"], run_dir / "metrics.png") if metrics["metrics"] else None,
        "Query-embedding agreement": plot_cosines(cosines, run_dir / "query_cosine.png"),
        "Agreement during training": plot_agreement(history, run_dir / "agreement_curves.png"),
        "Per-teacher KL (ensemble)": plot_teacher_kls(history, run_dir / "teacher_kl.png"),
    }
    reports = {name: MetricReport(aggregate=agg, per_query={}) for name, agg in metrics["metrics"].items()}
    teacher = f"Teacher `{metrics['teacher']['name']}` ({metrics['teacher']['kind']}, {metrics['teacher']['checkpoint']}); "
    if reports:
        lines = [f"# Run `{metrics['run']}`", "",
                 teacher + f"{metrics['dataset']} {metrics['split']}, {metrics['num_eval_queries']} queries, {_evaluated_how(metrics)}.",
                 "", format_table(reports), ""]
    else:  # a run without an eval split (a corpus with no judged queries)
        lines = [f"# Run `{metrics['run']}`", "", teacher + f"{metrics['dataset']}: no evaluation split, no retrieval metrics.", ""]
    if "retained" in metrics:
        r = metrics["retained"]
        pct = lambda v: "n/a" if v is None else f"{v:.1%}"  # noqa: E731 - a teacher scoring 0 has no ratio
        lines += [f"The student keeps **{pct(r['nDCG@10'])}** of the teacher's nDCG@10 and {pct(r['MRR@10'])} of its MRR@10.", ""]
    lines += ["| | parameters | query latency (ms, batch 1, median) |", "| --- | ---: | ---: |"]
    for name in ("teacher", "student"):
        p = metrics.get("parameters", {}).get(name)
        lat = metrics.get("query_latency_ms", {}).get(name)
        lines.append(f"| {name} | {p:,} | {lat:.1f} |" if p is not None and lat is not None else f"| {name} | {p or '-'} | {lat or '-'} |")
    lines.append("")
    lines += _agreement_lines(metrics, history)
    t = metrics.get("timings", {})
    lines += ["", "Wall time: " + ", ".join(f"{k.removesuffix('_s')} {v:.0f} s" for k, v in t.items()), ""]
    for title, path in plots.items():
        if path is not None:
            lines += [f"## {title}", "", f"![{title}]({path.name})", ""]
    out = run_dir / "report.md"
    out.write_text("\n".join(lines))
    return out
