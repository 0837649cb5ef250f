"""Experiments: a table of distillation runs (rows x datasets x seeds) from one YAML file.

An experiment file names a base run config, the overrides every run shares, and one entry per
row with that row's overrides (the same dotted keys as ``tightdistill train --set``)::

    name: ablation
    base: deploy/default.yaml
    datasets: [scifact, wikiqa]
    seeds: [13]
    set: {train.max_steps: 120}
    rows:
      - {name: one-hot, description: "student trained on the labels", set: {train.losses: {onehot_ce: {}}}}

``tightdistill experiment FILE`` runs every (dataset, row, seed) in turn on one Ray instance and
one teacher app, then writes ``<results_dir>/<name>.md`` and ``.json`` with each row's test
nDCG@10, MRR@10, R@100, the fraction of the teacher retained and the training wall time (mean and
spread over seeds), plus the exact command and commit. A run whose folder already holds the
metrics of the same config is reused, so an interrupted experiment loses no finished row.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from common.config import ConfigError, StrictModel, load_config
from common.evaluation import STUDENT_RETRIEVAL
from common.provenance import code_commit
from student_trainer.config import RunConfig, load_run_config
from student_trainer.teacher_reranking import TeacherEvaluation

TABLE_METRICS = ("nDCG@10", "MRR@10", "R@100")
# How closely the student follows its teacher on the test queries (common.agreement), where the
# runs measured it: metrics.json key -> column.
AGREEMENT_COLUMNS = {"overlap@10": "overlap@10", "RBO@10": "RBO@10", "kendall_tau@10": "Kendall tau@10",
                     "inbatch_kl": "in-batch KL", "query_cosine_mean": "query cosine (mean)"}


class ExperimentRow(StrictModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="Row name (also part of each run's folder name).")
    description: str = Field("", description="What the row adds, as printed in the table.")
    set: dict[str, Any] = Field(default_factory=dict, description="Dotted run-config overrides for this row.")
    seeds: list[int] | dict[str, list[int]] | None = Field(
        None, min_length=1,
        description="Seeds for this row (default: the experiment's); a mapping gives them per dataset "
                    "(e.g. {wikiqa: [13, 14, 15]}), the experiment's seeds for the datasets it leaves out.")
    datasets: list[str] | None = Field(None, min_length=1, description="Datasets for this row (default: the experiment's).")

    def seeds_for(self, dataset: str, default: list[int]) -> list[int]:
        """This row's seeds on ``dataset``: seeds are chosen per dataset where the rows' differences
        are small on one dataset and large on another (three seeds cost three trainings)."""
        if isinstance(self.seeds, dict):
            return self.seeds.get(dataset, default)
        return self.seeds or default


class ExperimentConfig(StrictModel):
    """A table of runs: every row on every dataset, once per seed."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    base: Path = Field(description="Run config every row starts from.")
    output_dir: Path = Field(Path("runs/experiments"), description="Where the runs' folders go.")
    results_dir: Path = Field(Path("docs/results"), description="Where the Markdown and JSON tables go.")
    datasets: list[str] = Field(default_factory=lambda: ["scifact"], min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [13], min_length=1)
    set: dict[str, Any] = Field(default_factory=dict, description="Dotted overrides shared by every run.")
    rows: list[ExperimentRow] = Field(min_length=1)
    compares_budgets: bool = Field(False, description=(
        "Rows train for different step budgets on purpose (choosing how many epochs a recipe needs); otherwise every "
        "row of a dataset must train for the same budget, so that the table compares recipes, not budgets."))
    teacher_evaluations: list[TeacherEvaluation] = Field(
        default_factory=list,
        description="Stronger (pair-scoring) teachers whose re-ranking of the DE's top documents each dataset's table shows "
                    "beside the DE: what the students could gain (student_trainer/teacher_reranking.py).")

    peer_baselines: list[Path] = Field(
        default_factory=list,
        description="Result files (JSON) of bench/label_free_peer.py: each dataset's table shows their peer figure (the plain "
                    "sentence-transformers MSELoss recipe on the same texts, initialisation and wall time as a tightdistill run "
                    "made in the same invocation) beside the rows, with that run's figure and the ratio.")

    @model_validator(mode="after")
    def _unique_rows(self) -> ExperimentConfig:
        names = [r.name for r in self.rows]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate row names: {', '.join(dupes)}")
        for row in self.rows:
            unknown = sorted(set(row.seeds) - set(row.datasets or self.datasets)) if isinstance(row.seeds, dict) else []
            if unknown:
                raise ValueError(f"row {row.name}: seeds given for {', '.join(unknown)}, which the row does not run on")
        return self

    def runs(self) -> list[tuple[ExperimentRow, str, int, RunConfig]]:
        """Every (row, dataset, seed) with its validated run config, in table order."""
        out = []
        for row in self.rows:
            for dataset in row.datasets or self.datasets:
                for seed in row.seeds_for(dataset, self.seeds):
                    overrides = {**self.set, **row.set, "data.dataset": dataset, "train.seed": seed,
                                 "name": f"{self.name}-{Path(dataset).name}-{row.name}-s{seed}", "output_dir": str(self.output_dir)}
                    out.append((row, dataset, seed, load_run_config(self.base, overrides)))
        return out


def holds_other_config(run: RunConfig) -> bool:
    """True when ``run``'s folder holds a run of another config (same row name, edited row or base).

    The recorded config is read through today's ``RunConfig``, so an option added since (with its
    default) does not turn every finished run into "another config"; one that no longer validates is."""
    config = run.run_dir / "config.json"
    if not config.is_file():
        return False
    try:
        recorded = RunConfig.model_validate_json(config.read_text())
    except ValueError:
        return True
    return json.loads(recorded.model_dump_json()) != json.loads(run.model_dump_json())


def finished_metrics(run: RunConfig) -> dict[str, Any] | None:
    """The metrics of an earlier run of exactly this config, if its folder has them."""
    metrics = run.run_dir / "metrics.json"
    if not (metrics.is_file() and (run.run_dir / "config.json").is_file()) or holds_other_config(run):
        return None
    return json.loads(metrics.read_text())


def set_aside_stale(run: RunConfig) -> Path | None:
    """Move a run folder that holds another config's run out of the way, so the new config starts
    from step 0 instead of resuming the other one's checkpoints (same row name, edited row or
    base). An interrupted run of this very config stays, and resumes. Returns the new place."""
    if not holds_other_config(run):
        return None
    aside = run.run_dir.with_name(f"{run.run_dir.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
    run.run_dir.rename(aside)
    return aside


def config_digest(run: RunConfig) -> str:
    """What a table cell was trained with: the run config without what every cell differs in
    (its name, output folder and seed). A carried cell must have been trained with today's row.

    Only values that differ from their defaults count, so that an option added later, left at a
    default that keeps the old behaviour, does not make every carried cell of every table stale."""
    import hashlib

    config = json.loads(run.model_dump_json(exclude_defaults=True))
    config.pop("name", None)
    config.pop("output_dir", None)
    config.get("train", {}).pop("seed", None)
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def summarise(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0, "n": len(values)}


# Systems a run may evaluate besides teacher and student, tabled (nDCG@10) where every seed has them.
OPTIONAL_SYSTEMS = {"retrieval nDCG@10": STUDENT_RETRIEVAL, "untrained nDCG@10": "untrained student"}
OPTIONAL_COLUMNS = {"retrieval nDCG@10": "nDCG@10, full retrieval", "untrained nDCG@10": "untrained student nDCG@10"}


def collect_rows(experiment: ExperimentConfig, results: dict[tuple[str, str], list[dict[str, Any]]]) -> dict[str, Any]:
    """The table: per dataset, the teachers and each row's metrics (mean/std over seeds).

    Rows may distil different teachers (CE -> DE rows, for instance): every row records its
    teacher, ``teachers`` holds each one's metrics, and ``retained`` is always against the row's
    own teacher (each run's own ratio). A symmetric student evaluated by re-ranking also has its full-retrieval nDCG@10."""
    table: dict[str, Any] = {}
    for dataset in dict.fromkeys(d for row in experiment.rows for d in (row.datasets or experiment.datasets)):
        entries: list[dict[str, Any]] = []
        teachers: dict[str, dict[str, float]] = {}
        for (_, d), ms in results.items():
            for m in ms:
                if d == dataset and "teacher" in m["metrics"]:
                    teachers.setdefault(_teacher_name(m), {k: m["metrics"]["teacher"][k] for k in TABLE_METRICS})
        for row in experiment.rows:
            ms = results.get((row.name, dataset), [])
            if not ms:
                continue
            entry: dict[str, Any] = {"row": row.name, "description": row.description, "seeds": [m["seed"] for m in ms],
                                     "teacher": _teacher_name(ms[0])}
            for metric in TABLE_METRICS:
                entry[metric] = summarise([m["metrics"]["student"][metric] for m in ms])
            entry["retained"] = summarise([m["retained"]["nDCG@10"] for m in ms]) if all("retained" in m for m in ms) else None
            for key, system in OPTIONAL_SYSTEMS.items():
                if all(system in m["metrics"] for m in ms):
                    entry[key] = summarise([m["metrics"][system]["nDCG@10"] for m in ms])
            if all(m.get("agreement") for m in ms):
                entry["agreement"] = {k: summarise([m["agreement"][k] for m in ms]) for k in AGREEMENT_COLUMNS
                                      if all(k in m["agreement"] for m in ms)}
            entry["train_s"] = summarise([m["timings"]["train_s"] for m in ms])
            entry["steps"] = ms[0]["steps"]
            # Seeds may train different step counts (a seeded dev split leaves a different number of training queries).
            entry["steps_per_seed"] = [m["steps"] for m in ms]
            entry["runs"] = [m["run"] for m in ms]
            entry["commits"] = sorted({m.get("commit", "not recorded") for m in ms})
            entry["config_digest"] = ms[0].get("config_digest")
            entries.append(entry)
        if not entries:
            continue  # a dataset none of the selected rows ran on
        first = next(m for (_, d), ms in results.items() if d == dataset for m in ms)
        table[dataset] = {"teachers": teachers,
                          "split": first.get("split", "test"), "eval": first.get("eval", {"mode": "retrieval"}),
                          "rows": entries}
    return table


def carry_over(previous: dict[str, Any], table: dict[str, Any], experiment: ExperimentConfig,
               rerun: set[tuple[str, str]], digests: dict[tuple[str, str], str] | None = None) -> list[str]:
    """Keep, in ``table``, the cells of the previous table (the results JSON) that this command
    neither ran nor found finished on disk: run folders stay on the machine that trained them
    (``runs/`` is not versioned), so re-running a few rows elsewhere must not drop the others.
    Carried entries keep their own commits and are marked ``carried``; rows no longer in the
    experiment file, and every cell this command ran, are not carried. With ``digests`` (each
    (row, dataset)'s :func:`config_digest` today), neither is a cell trained with another config
    (an edited row or base recipe): its figures would stand in the table under today's row. Returns
    the ``row on dataset`` cells dropped for that reason."""
    order = {row.name: i for i, row in enumerate(experiment.rows)}
    dropped: list[str] = []
    for dataset, old in previous.items():
        have = table.get(dataset)
        present = {e["row"] for e in have["rows"]} if have else set()
        candidates = [e for e in old.get("rows", [])
                      if e["row"] in order and e["row"] not in present and (e["row"], dataset) not in rerun]
        if digests is not None:
            stale = [e for e in candidates if e.get("config_digest") != digests.get((e["row"], dataset))]
            dropped += [f"{e['row']} on {dataset}" for e in stale]
            candidates = [e for e in candidates if e not in stale]
        carried = [{**e, "carried": True} for e in candidates]
        if not carried:
            continue
        if have is None:
            have = table[dataset] = {**{k: v for k, v in old.items() if k != "rows"}, "rows": []}
        for name, metrics in old.get("teachers", {}).items():
            have["teachers"].setdefault(name, metrics)
        have["rows"] = sorted(have["rows"] + carried, key=lambda e: order[e["row"]])
    return dropped


def run_setting(run: RunConfig) -> str:
    """What a row's student learned from, in a few words: labels or not, layers, whose scores
    (none where no loss term uses the teacher's scores)."""
    from student_trainer.losses import TEACHER_SCORE_LOSSES

    if run.data.train_split is not None:
        labels = "labels"
    else:
        labels = "no labels, query log" if run.data.query_log else "no labels"
    layers = "all layers" if run.student.num_layers is None else f"{run.student.num_layers} layer{'s' * (run.student.num_layers > 1)}"
    scorers = [m.name for m in run.teacher.members() if m.weight > 0] if TEACHER_SCORE_LOSSES & set(run.train.losses) else ["none"]
    return f"{labels}; {layers}; teacher scores: {' + '.join(scorers)}"


def in_file_order(table: dict[str, Any], datasets: list[str]) -> dict[str, Any]:
    """``table``'s datasets in the experiment file's order, whichever of them this command ran
    (cells carried from the previous table come in after the ones it ran); datasets the file no
    longer lists go last."""
    order = [d for d in datasets if d in table] + [d for d in table if d not in datasets]
    return {d: table[d] for d in order}


def add_settings(table: dict[str, Any], everything: list) -> None:
    """Every row's ``setting`` (:func:`run_setting`), carried rows included: they were trained with
    today's config of their row (``carry_over`` checks the digest)."""
    settings = {(row.name, dataset): run_setting(run) for row, dataset, _, run in everything}
    for dataset, block in table.items():
        for entry in block["rows"]:
            entry["setting"] = settings.get((entry["row"], dataset), entry.get("setting"))


def add_teacher_reranking(experiment: ExperimentConfig, table: dict[str, Any], runs: dict[str, RunConfig],
                          old_tables: dict[str, Any], address: str | None) -> None:
    """Each dataset's ``rerankers``: the experiment's ``teacher_evaluations``, read from their store
    beside the runs or measured once through the runs' teacher app (a minute or two: the queries'
    candidates only). A measurement that fails leaves the previous table's figures, if any, and the
    table is still written: the finished runs in it are what matters."""
    from student_trainer.teacher_reranking import rerank_figures

    if not experiment.teacher_evaluations:
        return
    for dataset, block in table.items():
        if dataset not in runs:  # a dataset the file no longer lists, carried in an old table
            continue
        store = experiment.output_dir / f"{experiment.name}-{Path(dataset).name}-teacher-reranking.json"
        try:
            block["rerankers"] = rerank_figures(runs[dataset], experiment.teacher_evaluations, store, address)
        except Exception as error:  # noqa: BLE001 - reported, and the table of finished runs is written regardless
            print(f"teacher re-ranking on {dataset} not measured ({type(error).__name__}: {error})", file=sys.stderr, flush=True)
            if "rerankers" in old_tables.get(dataset, {}):
                block["rerankers"] = old_tables[dataset]["rerankers"]


def add_peer_baselines(experiment: ExperimentConfig, table: dict[str, Any]) -> None:
    """Each dataset's ``peers``: the rows of the experiment's ``peer_baselines`` files on it, as
    measured (the bench trains its own tightdistill run beside the peer; neither is a cell here)."""
    for path in experiment.peer_baselines:
        if not path.is_file():
            raise ConfigError(f"peer_baselines: {path} not found (write it with bench/label_free_peer.py)")
        payload = json.loads(path.read_text())
        for r in payload.get("rows", []):
            block = table.get(r["dataset"])
            if block is None:
                continue
            student = r["student"]
            block.setdefault("peers", []).append({
                "file": str(path), "seed": payload.get("seed"), "commit": payload.get("commit"), "date": payload.get("date"),
                "layers": student["num_layers"], "teacher_nDCG@10": r["teacher"]["nDCG@10"],
                "peer": {k: r["peer"][k] for k in ("nDCG@10", "retained", "train_s", "steps")},
                "tightdistill": {k: r["tightdistill"][k] for k in ("nDCG@10", "retained", "train_s", "steps")},
                "ratio": r["ratio"]})


def _peer_lines(peers: list[dict[str, Any]], columns: int) -> list[str]:
    lines = []
    for p in peers:
        peer, td = p["peer"], p["tightdistill"]
        where = ", ".join(x for x in (f"seed {p['seed']}" if p.get("seed") is not None else "", p.get("date") or "",
                                      _short_commit(p["commit"]) if p.get("commit") else "") if x)
        label = (f"peer baseline: sentence-transformers MSELoss, {p['layers']}-layer student, no labels, same texts, "
                 f"initialisation and wall time as tightdistill's run beside it ({td['nDCG@10']:.3f}, {td['steps']} steps; "
                 f"tightdistill / peer **{p['ratio']:.3f}**; `{p['file']}`{', ' + where if where else ''})")
        cells = [label, f"{peer['nDCG@10']:.3f}", "-", "-", f"{peer['retained']:.3f}"]
        cells += ["-"] * (columns - len(cells) - 2) + [str(peer["steps"]), f"{peer['train_s']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _teacher_name(metrics: dict[str, Any]) -> str:
    return metrics.get("teacher", {}).get("name", "teacher")


def provenance(argv: list[str]) -> dict[str, str]:
    return {"command": "tightdistill experiment " + shlex.join(argv), "commit": code_commit(),
            "date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, "
            f"{os.cpu_count()} cores, Python {platform.python_version()}"}


def _cell(stat: dict[str, float] | None, digits: int = 3) -> str:
    if stat is None:
        return "-"
    return f"{stat['mean']:.{digits}f}" + (f" ± {stat['std']:.{digits}f}" if stat["n"] > 1 else "")


def render_markdown(experiment: ExperimentConfig, table: dict[str, Any], meta: dict[str, str]) -> str:
    lines = [f"# {experiment.name}", ""]
    if experiment.description:
        lines += [experiment.description.strip(), ""]
    lines += [f"Command: `{meta['command']}`  ", f"Commit: `{meta['commit']}`  ", f"Date: {meta['date']}; machine: {meta['machine']}", ""]
    for dataset, block in table.items():
        ev = block.get("eval", {"mode": "retrieval"})
        how = f", re-ranking {ev.get('candidates')}" if ev["mode"] == "rerank" else ""
        several = len(block["teachers"]) > 1
        optional = [key for key in OPTIONAL_COLUMNS if any(key in e for e in block["rows"])]
        head = ["row"] + (["teacher"] if several else []) + ["nDCG@10", "MRR@10", "R@100", "retained (nDCG@10)"]
        head += [OPTIONAL_COLUMNS[key] for key in optional]
        if any(e.get("setting") for e in block["rows"]):
            optional += ["setting", "seeds"]
            head += ["student learned from", "seeds"]
        head += ["steps", "train wall (s)"]
        lines += [f"## {dataset} ({block.get('split', 'test')}{how})", "", "| " + " | ".join(head) + " |",
                  "|" + " --- |" * len(head)]
        for name, t in block["teachers"].items():
            cells = [f"teacher {name}" if several else "teacher"] + ([name] if several else [])
            cells += [f"{t['nDCG@10']:.3f}", f"{t['MRR@10']:.3f}", f"{t['R@100']:.3f}", "1.000"]
            lines.append("| " + " | ".join(cells + ["-"] * len(optional) + ["-", "-"]) + " |")
        for label, m in block.get("rerankers", {}).items():
            # Retained against the first stage it re-ranks: above 1 is what a student of this teacher
            # could gain. (Figures stored before first_stage was recorded: the table's first teacher.)
            de = block["teachers"].get(m.get("first_stage"), next(iter(block["teachers"].values()), None))
            cells = [f"teacher {label}"] + (["-"] if several else [])
            cells += [f"{m['nDCG@10']:.3f}", f"{m['MRR@10']:.3f}", f"{m['R@100']:.3f}",
                      f"{m['nDCG@10'] / de['nDCG@10']:.3f}" if de else "-"]
            lines.append("| " + " | ".join(cells + ["-"] * len(optional) + ["-", "-"]) + " |")
        for e in block["rows"]:
            label = f"{e['row']}: {e['description']}" if e["description"] else e["row"]
            label += " (carried over)" if e.get("carried") else ""
            cells = [label] + ([e.get("teacher", "-")] if several else [])
            cells += [_cell(e["nDCG@10"]), _cell(e["MRR@10"]), _cell(e["R@100"]), _cell(e["retained"])]
            cells += [_text_cell(e, key) if key in ("setting", "seeds") else _cell(e.get(key)) for key in optional]
            cells += [" / ".join(str(n) for n in dict.fromkeys(e.get("steps_per_seed", [e["steps"]]))), _cell(e["train_s"], 0)]
            lines.append("| " + " | ".join(cells) + " |")
        lines += _peer_lines(block.get("peers", []), len(head))
        lines.append("")
        if block.get("rerankers"):
            lines += ["Teacher lines that re-rank: the pair-scoring teacher re-orders the DE teacher's first stage; their "
                      "'retained' is against the DE, so above 1 is what a student of that teacher could gain.", ""]
        lines += _agreement_table(block["rows"], block.get("split", "test"))
    commits: dict[str, list[str]] = {}
    for block in table.values():
        for e in block["rows"]:
            for commit in e.get("commits", []):
                commits.setdefault(commit, []).append(e["row"])
    if set(commits) - {meta["commit"]}:  # rows reused from earlier commands: say which code trained which
        lines += ["Trained at: " + "; ".join(f"`{_short_commit(c)}` ({', '.join(dict.fromkeys(rows))})" for c, rows in commits.items()), ""]
    if any(e.get("carried") for block in table.values() for e in block["rows"]):
        lines += ["Rows marked (carried over) come from this file's previous version: this command neither ran them "
                  "nor found their run folders; their commits are in the line above.", ""]
    lines.append("Mean ± sample standard deviation over seeds where a row ran with more than one.")
    return "\n".join(lines) + "\n"


def _text_cell(entry: dict[str, Any], key: str) -> str:
    value = entry.get(key)
    if isinstance(value, list):
        value = ", ".join(map(str, value))
    return value or "-"


def _short_commit(commit: str) -> str:
    """A commit hash cut to 12 characters, keeping ``code_commit``'s " (dirty tree)" mark."""
    head, _, rest = commit.partition(" ")
    return head[:12] + (f" {rest}" if rest else "")


def _agreement_table(rows: list[dict[str, Any]], split: str = "test") -> list[str]:
    """The rows' agreement with their teacher, where the runs measured it (otherwise nothing)."""
    measured = [e for e in rows if e.get("agreement")]
    if not measured:
        return []
    keys = [k for k in AGREEMENT_COLUMNS if any(k in e["agreement"] for e in measured)]
    lines = [f"Agreement with the teacher on the {split} queries (top-10 lists, in-batch distributions, query embeddings):", "",
             "| row | " + " | ".join(AGREEMENT_COLUMNS[k] for k in keys) + " |", "|" + " --- |" * (len(keys) + 1)]
    for e in measured:
        lines.append(f"| {e['row']} | " + " | ".join(_cell(e["agreement"].get(k)) for k in keys) + " |")
    return lines + [""]


def selected(planned: list, only: list[str] | None, datasets: list[str] | None) -> list:
    """The planned runs of the rows in ``only`` on the datasets in ``datasets`` (``None``: all)."""
    return [r for r in planned if (not only or r[0].name in only) and (not datasets or r[1] in datasets)]


def run_experiment(experiment: ExperimentConfig, argv: list[str], only: list[str] | None = None,
                   address: str | None = None, datasets: list[str] | None = None) -> dict[str, Any]:
    from student_trainer.run import run_distillation

    everything = experiment.runs()
    planned = selected(everything, only, datasets)
    meta = provenance(argv)  # the code the runs start from (a run reused from before may be older)
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    # Finished runs of the rows and datasets not selected this time stay in the table, so running
    # the missing cells one command at a time still ends with the whole table.
    chosen = {run.run_dir for *_, run in planned}
    for row, dataset, seed, run in everything:
        if run.run_dir not in chosen and (metrics := finished_metrics(run)) is not None:
            results.setdefault((row.name, dataset), []).append({**metrics, "seed": seed, "config_digest": config_digest(run)})
    for i, (row, dataset, seed, run) in enumerate(planned, start=1):
        metrics = finished_metrics(run)
        state = "reused" if metrics is not None else "running"
        print(f"[{i}/{len(planned)}] {row.name} on {dataset}, seed {seed}: {state} ({run.run_dir})", file=sys.stderr, flush=True)
        if metrics is None:
            aside = set_aside_stale(run)
            if aside is not None:
                print(f"  {run.run_dir} held a run of another config: moved to {aside}", file=sys.stderr, flush=True)
            metrics = run_distillation(run, address=address).metrics
        results.setdefault((row.name, dataset), []).append({**metrics, "seed": seed, "config_digest": config_digest(run)})
    table = collect_rows(experiment, results)
    experiment.results_dir.mkdir(parents=True, exist_ok=True)
    previous = experiment.results_dir / f"{experiment.name}.json"
    old_tables = json.loads(previous.read_text()).get("tables", {}) if previous.is_file() else {}
    if old_tables:
        dropped = carry_over(old_tables, table, experiment,
                             {(r.name, d) for r, d, *_ in planned}, {(r.name, d): config_digest(run) for r, d, _, run in everything})
        if dropped:
            print(f"not carried from the previous table (trained with another config of the row): {', '.join(dropped)}",
                  file=sys.stderr, flush=True)
    table = in_file_order(table, experiment.datasets)
    add_settings(table, everything)
    add_teacher_reranking(experiment, table, {d: run for _, d, _, run in everything}, old_tables, address)
    add_peer_baselines(experiment, table)
    out = {"experiment": experiment.name, **meta, "tables": table}
    previous.write_text(json.dumps(out, indent=2))
    (experiment.results_dir / f"{experiment.name}.md").write_text(render_markdown(experiment, table, meta))
    return out


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("experiment", help="run a table of distillation runs (an ablation) from one YAML file",
                       description="Run every row of an experiment file on each dataset and seed, then write the "
                                   "table as Markdown and JSON under its results_dir. Finished runs are reused.")
    p.add_argument("file", type=Path, help="experiment YAML, e.g. deploy/experiments/ablation.yaml")
    p.add_argument("--only", nargs="+", metavar="ROW", help="run only these rows (the table also keeps the finished runs of the others)")
    p.add_argument("--datasets", nargs="+", metavar="DATASET", help="run only on these of the file's datasets")
    p.add_argument("--dry-run", action="store_true", help="validate every run's config and list the runs, without running")
    p.add_argument("--address", default=None, help="Ray cluster address (default: an embedded local Ray)")
    p.set_defaults(handler=experiment_command)


def experiment_command(args: argparse.Namespace) -> int:
    experiment = load_config(ExperimentConfig, args.file)
    if args.only:
        unknown = sorted(set(args.only) - {r.name for r in experiment.rows})
        if unknown:
            raise ConfigError(f"{args.file}: no row named {', '.join(unknown)}")
    planned = experiment.runs()  # every override is validated before anything runs
    if args.datasets:
        unknown = sorted(set(args.datasets) - {r[1] for r in planned})
        if unknown:
            raise ConfigError(f"{args.file}: no row runs on {', '.join(unknown)}")
    if args.dry_run:
        for row, dataset, seed, run in selected(planned, args.only, args.datasets):
            print(f"{row.name:<24} {dataset:<10} seed {seed:<4} -> {run.run_dir}")
        return 0
    argv = ([str(args.file)] + (["--only", *args.only] if args.only else [])
            + (["--datasets", *args.datasets] if args.datasets else []))
    out = run_experiment(experiment, argv, args.only, args.address, args.datasets)
    print(f"wrote {experiment.results_dir / (experiment.name + '.md')} ({sum(len(b['rows']) for b in out['tables'].values())} rows)")
    return 0
