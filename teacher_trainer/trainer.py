"""The teacher training loop: data, AdamW with linear warm-up and decay, dev re-ranking, metrics.

One process, no Ray: a teacher is trained once, before it is served. The dev evaluation re-ranks
each dev query's mined candidates (the miner's top ``dev_depth``) and reports nDCG@10 / MRR@10
before training, every ``eval_every`` steps and after; ``metrics.json`` beside the checkpoint
keeps the settings, the per-step loss curve and those dev numbers, next to the miner's own.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from common.config import ConfigError
from common.datasets import load_beir
from common.metrics import evaluate_run
from common.model_registry import resolve_model
from common.retrieval import Run
from common.text_encoder import training_autocast
from teacher_trainer.config import TeacherJob, TeacherModelConfig
from teacher_trainer.data import TeacherData, build_teacher_data
from teacher_trainer.trainee import Trainee

METRICS_FILE = "metrics.json"
DEV_METRICS = ("nDCG@10", "MRR@10")


@dataclass
class TeacherTrainResult:
    out: Path
    metrics: dict[str, Any]
    trainee: Trainee


def build_trainee(config: TeacherModelConfig) -> Trainee:
    """The trainee of a model config: a cross-encoder or a ColBERT."""
    if config.kind == "ce":
        from teacher_trainer.cross_encoder import CrossEncoderTrainee

        return CrossEncoderTrainee(config)
    from teacher_trainer.colbert import ColBERTTrainee

    return ColBERTTrainee(config)


def check_output_dir(out: Path, overwrite: bool) -> None:
    """Refuse to mix a new checkpoint into a non-empty directory unless told to."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"--out {out} already exists and is not empty; pass --overwrite or choose another directory")


def training_device(wanted: str) -> torch.device:
    """The torch device of ``train.device`` (``auto``: the first GPU torch sees, else the CPU)."""
    if wanted == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if wanted.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device is '{wanted}' but torch sees no GPU (torch {torch.__version__}); "
                          "use 'auto' or 'cpu'")
    return torch.device(wanted)


def dev_run(trainee: Trainee, data: TeacherData, show_progress: bool = False) -> Run:
    """The trainee's scores of every dev query's candidates (eval mode, no dropout)."""
    trainee.eval()
    run: Run = {}
    for qid, candidates in tqdm(data.dev_candidates.items(), desc="dev re-ranking", unit="query",
                                disable=not show_progress, leave=False):
        scores = trainee.score(data.dataset.query_text[qid], [data.text(d) for d in candidates])
        run[qid] = dict(zip(candidates, scores.tolist()))
    return run


def dev_metrics(run: Run, data: TeacherData) -> dict[str, float]:
    aggregate = evaluate_run(data.dev_qrels, run, k_values=(10,)).aggregate
    return {name: aggregate[name] for name in DEV_METRICS}


def train_teacher(job: TeacherJob, show_progress: bool = True, overwrite: bool = False) -> TeacherTrainResult:
    """Train the teacher ``job`` describes, save it to ``job.out`` with ``metrics.json``."""
    check_output_dir(job.out, overwrite)
    # Wrong model names fail here, not after minutes of mining.
    resolve_model(job.model.base_model)
    if job.data.miner == "dense":
        resolve_model(job.data.miner_model)
    cfg = job.train
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = training_device(cfg.device)  # before minutes of mining, like the model names
    started = time.perf_counter()
    dataset = load_beir(job.data.dataset)
    data = build_teacher_data(dataset, job.data, cfg.seed, show_progress)
    torch.manual_seed(cfg.seed)  # new layers (classifier, projection, reconstruction head) and dropout
    trainee = build_trainee(job.model).to(device)
    steps = cfg.max_steps or cfg.epochs * data.steps_per_epoch(cfg.batch_size)
    optimizer = torch.optim.AdamW(trainee.param_groups(cfg))
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * steps), steps)
    prepared = time.perf_counter()

    has_dev = bool(data.dev_candidates)
    history: list[dict[str, Any]] = []
    if has_dev:
        history.append({"step": 0, **dev_metrics(dev_run(trainee, data, show_progress), data)})
    curve: list[dict[str, float]] = []
    train_time = 0.0
    trainee.train()
    autocast = training_autocast(cfg.precision, device)
    with tqdm(total=steps, desc=f"training {job.model.kind} teacher", unit="step", disable=not show_progress) as bar:
        for step, groups in enumerate(data.batches(cfg.batch_size, job.negatives, steps, cfg.seed), start=1):
            tick = time.perf_counter()
            with autocast:
                out = trainee.loss(groups)
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(trainee.parameters(), cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            train_time += time.perf_counter() - tick
            curve.append({"step": step, "loss": out.loss.item(), **out.parts, "grad_norm": float(grad_norm),
                          "lr": float(scheduler.get_last_lr()[0])})
            bar.set_postfix(loss=f"{curve[-1]['loss']:.4f}", refresh=False)
            bar.update()
            if has_dev and cfg.eval_every and step % cfg.eval_every == 0 and step < steps:
                history.append({"step": step, **dev_metrics(dev_run(trainee, data, show_progress), data)})
                trainee.train()
    final_run = dev_run(trainee, data, show_progress) if has_dev else {}
    if has_dev:
        history.append({"step": steps, **dev_metrics(final_run, data)})
    trainee.save(job.out)

    metrics: dict[str, Any] = {
        "kind": job.model.kind,
        "service_kind": trainee.service_kind,
        "job": job.summary(),
        "steps": steps,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "train_pairs": len(data.pairs),
        "wall_s": {"data_and_model": round(prepared - started, 1), "training_steps": round(train_time, 1),
                   "total": round(time.perf_counter() - started, 1)},
        "dev": None if not has_dev else {
            "queries": len(data.dev_candidates), "depth": job.data.dev_depth,
            "what": f"re-ranking the {job.data.miner} miner's top-{job.data.dev_depth} of held-out training queries",
            "miner": dev_metrics(data.dev_miner_run, data),
            "before": history[0], "after": history[-1], "history": history,
        },
        "loss_curve": curve,
    }
    (job.out / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
    return TeacherTrainResult(job.out, metrics, trainee)
