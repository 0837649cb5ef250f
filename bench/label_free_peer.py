"""The peer baseline of issue #24 (item 2): tightdistill's label-free run and the plain
sentence-transformers recipe, measured side by side in one invocation.

For each dataset this runs

1. **tightdistill**: ``student_trainer.run.run_distillation`` on the run config (embedded local
   Ray, the teacher app deployed from ``teacher.serve_config``), which draws pseudo-queries from the
   corpus, has the live teacher label them and trains the (asymmetric) student on Ray Train;
2. **the peer**: sentence-transformers' own distillation recipe (``SentenceTransformerTrainer`` +
   ``MSELoss`` to the teacher's query embeddings) on the SAME texts (the run's training
   pseudo-queries plus its extra queries, if any), from the SAME initialisation (the run's
   ``student.model`` cut to ``student.num_layers`` layers, reading queries as long as the run's
   student), with the run's batch size, learning rate, warm-up fraction, weight decay and gradient
   clipping, in fp32 on the CPU with 2 threads, and stopped at the SAME training wall time as
   tightdistill's ``train_s``. The targets come from the served teacher (the run's own targets,
   in the dtype it serves in), computed before the clock starts. Since the peer is stopped by the
   clock and not by a step count, its learning rate follows tightdistill's linear warm-up and
   decay over the wall-time budget instead of over steps;
3. both evaluated the same way: the query encoder searches the teacher's cached document index
   on the run's eval split (``eval_queries``), as tightdistill evaluates its asymmetric student;
   the peer before training is scored too (it should match the run's "untrained student").

It prints, per dataset, the teacher's, tightdistill's and the peer's nDCG@10, the retained
fractions, the ratio tightdistill / peer, both training wall times and step counts, the precision
each trained in and whether the CPU computes bfloat16 natively; and writes a JSON file (default
``bench/results/label_free_peer.json``) and a Markdown table next to it (``.md``).

tightdistill's ``train_s`` is Ray Train's whole ``fit()``: worker start-up and the online teacher
calls are part of it, so the peer gets that same wall time for pure training.

    .venv/bin/python bench/label_free_peer.py [--config deploy/label-free.yaml]
        [--datasets scifact cranfield ...] [--set KEY=VALUE ...] [--seed N] [--output FILE]

A quick check (a few minutes):

    .venv/bin/python bench/label_free_peer.py --datasets scifact --set train.max_steps=20 \\
        --set data.pseudo_queries=200 --set data.max_eval_queries=50
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from benchlib import RESULTS, cpu_bf16, print_table, write_result

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from common.datasets import BeirDataset
    from student_trainer.config import RunConfig
    from student_trainer.run import RunResult

BENCHMARK = "label_free_peer"
DEFAULT_CONFIG = Path("deploy/label-free.yaml")
METRIC = "nDCG@10"
PEER_THREADS = 2
# The peer is stopped by the clock; this many epochs only make sure the epochs never end it first.
PEER_MAX_EPOCHS = 100_000


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="run config YAML (default: %(default)s)")
    ap.add_argument("--datasets", nargs="+", default=["scifact"], metavar="DATASET",
                    help="bundled dataset names or BEIR directories (default: scifact)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a run config value, as `tightdistill train --set` (repeatable)")
    ap.add_argument("--seed", type=int, default=None, help="train.seed of both sides (default: the config's)")
    ap.add_argument("--output", type=Path, default=RESULTS / f"{BENCHMARK}.json",
                    help="JSON result file; the Markdown table goes next to it (default: %(default)s)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    return ap.parse_args(argv)


# --- configuration ---------------------------------------------------------------------------


def plan_runs(args: argparse.Namespace) -> list[RunConfig]:
    """One validated run config per dataset, before anything starts (bad input fails here, at once)."""
    from common.config import ConfigError
    from common.datasets import load_beir
    from student_trainer.cli import parse_overrides
    from student_trainer.config import load_run_config

    overrides = parse_overrides(args.overrides)
    if args.seed is not None:
        overrides["train.seed"] = args.seed
    stamp = time.strftime("%Y%m%d-%H%M%S")
    runs = []
    for name in args.datasets:
        dataset = load_beir(name)  # DataError (one line) for an unknown dataset
        base = load_run_config(args.config, {**overrides, "data.dataset": name})
        if not base.student.asymmetric:
            raise ConfigError("the peer baseline compares asymmetric students (they search the teacher's document "
                              "index); set student.asymmetric: true")
        if base.eval.mode == "rerank" or not base.eval.evaluate_teacher:
            raise ConfigError("the peer baseline compares full retrieval from the teacher's index and the fraction of "
                              "the teacher's nDCG@10 kept: it needs eval.mode auto or retrieval, and eval.evaluate_teacher")
        # A fresh name each time: a run folder that exists would be resumed from its checkpoints.
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", dataset.name)
        run_name = f"{base.name}-peer-{slug}-s{base.train.seed}-{stamp}"
        runs.append(load_run_config(args.config, {**overrides, "data.dataset": name, "name": run_name}))
    return runs


def teacher_dtype(run: RunConfig, info: dict[str, Any]) -> dict[str, Any]:
    """The dtype the teacher computes in, and the one its serve config asks for (e.g. 'auto')."""
    configured = None
    if run.teacher.serve_config is not None and Path(run.teacher.serve_config).is_file():
        from teacher_service.app import ServeFile

        specs = {s.name: s for s in ServeFile(run.teacher.serve_config).config.teachers}
        configured = specs[run.teacher.teacher].dtype if run.teacher.teacher in specs else None
    return {"served": info.get("dtype"), "configured": configured}


def tightdistill_precision(precision: str) -> dict[str, str]:
    """``train.precision`` and what it resolves to on this CPU."""
    from common.text_encoder import resolve_dtype

    resolved = {"fp32": "fp32", "bf16": "bf16"}.get(precision)
    if resolved is None:
        resolved = "bf16" if resolve_dtype("auto") == "bfloat16" else "fp32"
    return {"configured": precision, "resolved": resolved}


# --- the peer --------------------------------------------------------------------------------


def peer_texts(run: RunConfig, result: RunResult, dataset: BeirDataset) -> tuple[list[str], list[str]]:
    """The texts tightdistill trained on: its training pseudo-queries, and the extra queries rebuilt
    exactly as ``run_distillation`` builds them (none unless ``data.extra_query_ratio`` > 0)."""
    from student_trainer.run import run_extra_queries, training_queries

    train = training_queries(result.run_dir / "data" / "train.parquet")
    extra = run_extra_queries(run, dataset, train)
    expected = result.metrics.get("extra_queries", {}).get("pool")
    if extra and expected is not None and expected != len(extra):
        print(f"warning: rebuilt {len(extra)} extra queries, the run used {expected}", file=sys.stderr)
    return train, extra


def load_peer(run: RunConfig, query_length: int, teacher_dim: int) -> SentenceTransformer:
    """The student's checkpoint as a sentence-transformers model, cut to ``student.num_layers``
    layers (``student.layer_selection``) as ``DualEncoderStudent`` cuts it, reading queries up to
    ``query_length`` tokens."""
    from sentence_transformers import SentenceTransformer

    from common.config import ConfigError
    from common.model_registry import resolve_model
    from common.text_encoder import read_st_meta, truncate_layers

    path = resolve_model(run.student.model)
    meta = read_st_meta(path)
    if (run.student.pooling not in (None, meta.pooling)) or (run.student.normalize not in (None, meta.normalize)):
        raise ConfigError(f"the peer keeps {run.student.model}'s own pooling ({meta.pooling}) and normalisation "
                          f"({meta.normalize}); the run sets student.pooling/normalize otherwise")
    model = SentenceTransformer(str(path), device="cpu")
    if run.student.num_layers is not None:
        truncate_layers(model[0].auto_model, run.student.num_layers, run.student.layer_selection)
    if run.student.freeze_embeddings:
        for param in model[0].auto_model.embeddings.parameters():
            param.requires_grad_(False)
    model.max_seq_length = query_length
    if model.get_embedding_dimension() != teacher_dim:
        raise ConfigError(f"the peer has no projection: its {model.get_embedding_dimension()}-d embeddings "
                          f"must match the teacher's {teacher_dim}")
    return model


def peer_encoder(model: SentenceTransformer) -> Callable[[list[str]], np.ndarray]:
    def encode(texts: list[str]) -> np.ndarray:
        return np.asarray(model.encode(texts, batch_size=256, convert_to_numpy=True, show_progress_bar=False),
                          dtype=np.float32)

    return encode


def make_budget_callback(budget_s: float, warmup_ratio: float, show_progress: bool) -> Any:
    from transformers import TrainerCallback

    class WallClockBudget(TrainerCallback):
        """Stops training once ``budget_s`` seconds have passed since :meth:`start`; :meth:`lr_factor`
        is tightdistill's linear warm-up and decay to 0 (train_loop.build_optimizer), over the
        wall-time budget instead of a step count."""

        def __init__(self) -> None:
            self.t0 = time.perf_counter()
            self.bar = tqdm(total=round(budget_s), unit="s", desc="peer: training", disable=not show_progress)

        def start(self) -> None:
            self.t0 = time.perf_counter()

        def elapsed(self) -> float:
            return time.perf_counter() - self.t0

        def lr_factor(self, _step: int) -> float:
            done = min(1.0, self.elapsed() / budget_s)
            if done < warmup_ratio:
                return done / warmup_ratio
            return max(0.0, (1.0 - done) / max(1e-9, 1.0 - warmup_ratio))

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            self.bar.n = min(round(self.elapsed()), self.bar.total)
            self.bar.set_postfix(steps=state.global_step, refresh=True)
            if self.elapsed() >= budget_s:
                control.should_training_stop = True
            return control

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.bar.close()

    return WallClockBudget()


def train_peer(model: SentenceTransformer, texts: list[str], targets: np.ndarray, run: RunConfig, budget_s: float,
               show_progress: bool) -> dict[str, Any]:
    """sentence-transformers' MSE distillation of ``model`` onto ``targets`` for ``budget_s`` seconds."""
    import torch
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.losses import MSELoss

    torch.set_num_threads(PEER_THREADS)
    budget = make_budget_callback(budget_s, run.train.warmup_ratio, show_progress)

    class WallClockTrainer(SentenceTransformerTrainer):
        def add_model_card_callback(self, default_args_dict: dict[str, Any]) -> None:
            pass  # the model is never saved: no model card to collect examples and statistics for

        def create_scheduler(self, num_training_steps: int, optimizer: Any = None) -> Any:
            if self.lr_scheduler is None:
                self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer or self.optimizer, budget.lr_factor)
            return self.lr_scheduler

    data = Dataset.from_dict({"text": texts, "label": targets.astype(np.float32).tolist()})
    with tempfile.TemporaryDirectory(prefix="peer-") as out:
        args = SentenceTransformerTrainingArguments(
            output_dir=out, per_device_train_batch_size=run.train.batch_size, learning_rate=run.train.lr,
            weight_decay=run.train.weight_decay, max_grad_norm=run.train.max_grad_norm,
            num_train_epochs=PEER_MAX_EPOCHS, dataloader_drop_last=True, seed=run.train.seed,
            use_cpu=True, bf16=False, fp16=False, dataloader_pin_memory=False,
            save_strategy="no", eval_strategy="no", logging_strategy="no", report_to="none", disable_tqdm=True,
        )
        trainer = WallClockTrainer(model=model, args=args, train_dataset=data, loss=MSELoss(model), callbacks=[budget])
        budget.start()
        start = time.perf_counter()
        trainer.train()
        wall = time.perf_counter() - start
    return {"train_s": wall, "budget_s": budget_s, "steps": trainer.state.global_step,
            "epochs": round(float(trainer.state.epoch or 0), 2), "threads": PEER_THREADS, "precision": "fp32"}


# --- one dataset -----------------------------------------------------------------------------


def compare(run: RunConfig, show_progress: bool) -> dict[str, Any]:
    """tightdistill's run and the peer on ``run.data.dataset``; the row of the comparison."""
    from common.datasets import load_beir
    from common.evaluation import evaluate_encoder
    from student_trainer.run import connect_teacher, eval_queries, run_distillation
    from student_trainer.teacher_index import teacher_doc_embeddings
    from student_trainer.students import DEFAULT_QUERY_LENGTH

    dataset = load_beir(run.data.dataset)
    print(f"\n== {dataset.name}: tightdistill ({run.name})")
    result = run_distillation(run, show_progress=show_progress)
    metrics = result.metrics
    teacher = metrics["metrics"]["teacher"][METRIC]
    td = {"nDCG@10": metrics["metrics"]["student"][METRIC], "retained": metrics["retained"][METRIC],
          "untrained_nDCG@10": metrics["metrics"].get("untrained student", {}).get(METRIC),
          "train_s": metrics["timings"]["train_s"], "steps": metrics["steps"],
          "precision": tightdistill_precision(run.train.precision), "torch_threads": run.train.torch_threads,
          "run_dir": str(result.run_dir)}

    print(f"== {dataset.name}: peer (sentence-transformers MSELoss, {td['train_s']:.0f} s budget)")
    client = connect_teacher(run.teacher)  # Ray and the teacher app are still up
    info = client.describe()
    train, extra = peer_texts(run, result, dataset)
    texts = list(dict.fromkeys(train + extra))
    t = time.perf_counter()
    targets = client.encode_many(texts, role="query", progress="teacher: peer targets" if show_progress else None)
    targets_s = time.perf_counter() - t
    query_length = metrics.get("query_length", {}).get("limit") or run.student.max_query_length or DEFAULT_QUERY_LENGTH
    model = load_peer(run, query_length, info["dim"])

    doc_index = teacher_doc_embeddings(client, dataset, show_progress=show_progress)
    split, query_ids = eval_queries(run, dataset)

    def score(encode: Callable[[list[str]], np.ndarray]) -> float:
        return evaluate_encoder(encode, doc_index.index, dataset, split, run.eval.k_values, query_ids=query_ids,
                                ignore_identical_ids=run.eval.ignore_identical_ids).report.aggregate[METRIC]

    untrained = score(peer_encoder(model))
    trained = train_peer(model, texts, targets, run, td["train_s"], show_progress)
    peer_ndcg = score(peer_encoder(model))
    peer = {"nDCG@10": peer_ndcg, "retained": peer_ndcg / teacher if teacher else None,
            "untrained_nDCG@10": untrained, "targets_s": targets_s, **trained}
    return {
        "dataset": dataset.name, "split": split, "eval_queries": len(query_ids),
        "train_texts": {"training_queries": len(train), "extra_queries": len(extra), "distinct": len(texts)},
        "query_length": query_length, "student": {"model": run.student.model, "num_layers": run.student.num_layers,
                                                                 "layer_selection": run.student.layer_selection},
        "teacher": {"name": info["name"], "checkpoint": info["checkpoint"], "nDCG@10": teacher,
                    "dtype": teacher_dtype(run, info)},
        "tightdistill": td, "peer": peer,
        "ratio": td["nDCG@10"] / peer_ndcg if peer_ndcg else None,
    }


# --- output ----------------------------------------------------------------------------------


def table_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{
        "dataset": r["dataset"], "teacher": r["teacher"]["nDCG@10"],
        "tightdistill": r["tightdistill"]["nDCG@10"], "td kept": _pct(r["tightdistill"]["retained"]),
        "peer": r["peer"]["nDCG@10"], "peer kept": _pct(r["peer"]["retained"]),
        "td/peer": r["ratio"],
        "train s td/peer": f"{r['tightdistill']['train_s']:.0f}/{r['peer']['train_s']:.0f}",
        "steps td/peer": f"{r['tightdistill']['steps']}/{r['peer']['steps']}",
        "untrained td/peer": f"{_num(r['tightdistill']['untrained_nDCG@10'])}/{_num(r['peer']['untrained_nDCG@10'])}",
    } for r in rows]


COLUMNS = ["dataset", "teacher", "tightdistill", "td kept", "peer", "peer kept", "td/peer", "train s td/peer",
           "steps td/peer", "untrained td/peer"]


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1%}"


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def conditions(payload: dict[str, Any]) -> list[str]:
    """What both sides ran under, in words."""
    cpu = payload["cpu"]
    lines = [f"CPU: {cpu['kind']}" + (f" ({', '.join(cpu['flags'])})" if cpu["flags"] else "")]
    for r in payload["rows"]:
        p, d = r["tightdistill"]["precision"], r["teacher"]["dtype"]
        lines.append(f"{r['dataset']}: tightdistill trained in {p['resolved']} (train.precision: {p['configured']}), "
                     f"{r['tightdistill']['torch_threads']} thread(s) per worker beside the live teacher; the peer in "
                     f"{r['peer']['precision']} with {r['peer']['threads']} threads on precomputed targets "
                     f"({r['peer']['targets_s']:.0f} s, not counted); teacher served in {d['served']}"
                     + (f" (serve config dtype: {d['configured']})" if d["configured"] else "")
                     + f"; {r['train_texts']['distinct']} training texts, {r['eval_queries']} {r['split']} queries")
    return lines


def write_markdown(path: Path, payload: dict[str, Any]) -> Path:
    rows = table_rows(payload["rows"])
    out = ["# tightdistill vs. the sentence-transformers recipe (issue #24, peer baseline)", "",
           f"Config `{payload['config']}`" + (f", overrides `{' '.join(payload['overrides'])}`" if payload["overrides"] else "")
           + f"; nDCG@10 on each run's eval split; same texts, same initialisation, same training wall time.", "",
           "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    out += ["| " + " | ".join(_cell(r[c]) for c in COLUMNS) + " |" for r in rows]
    out += [""] + [f"- {line}" for line in conditions(payload)] + [""]
    path.write_text("\n".join(out))
    return path


def _cell(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def run_benchmark(args: argparse.Namespace) -> int:
    from common.provenance import code_commit

    runs = plan_runs(args)
    started = {"commit": code_commit(), "date": time.strftime("%Y-%m-%d %H:%M")}  # the code the runs start from
    rows = [compare(run, not args.no_progress) for run in tqdm(runs, desc="datasets", unit="dataset",
                                                               disable=len(runs) < 2 or args.no_progress)]
    payload = {"issue": "#24 item 2 (peer baseline)", "config": str(args.config), "overrides": args.overrides,
               "seed": runs[0].train.seed, **started, "cpu": cpu_bf16(), "rows": rows}
    print()
    print_table(table_rows(rows), COLUMNS)
    for line in conditions(payload):
        print(line)
    path = write_result(BENCHMARK, payload, args.output)
    print(f"wrote {path} and {write_markdown(path.with_suffix('.md'), payload)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from common.cli import user_errors

    try:
        return run_benchmark(args)
    except user_errors() as exc:
        print(f"{BENCHMARK}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{BENCHMARK}: interrupted", file=sys.stderr)
        return 130
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
