"""``tightdistill train-teacher``: train a cross-encoder or ColBERT teacher the service can load."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from common.config import ConfigError, parse_config

CE_ONLY = ("pooling", "max_length", "reconstruction_weight")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train-teacher", help="train a cross-encoder or ColBERT teacher on a dataset's training pairs",
        description="Train a teacher from an encoder checkpoint (default: the packaged all-MiniLM-L6-v2) on the "
        "training queries of a dataset, each with its relevant document and hard negatives mined once with the "
        "MiniLM dual-encoder (or BM25). Some training queries are held out as a dev split: the teacher re-ranks "
        "their mined candidates before and after training (nDCG@10, MRR@10). Writes a checkpoint the teacher "
        "service loads (--kind ce: a sentence-transformers CrossEncoder directory with tightdistill_ce.json; "
        "--kind colbert: a ColBERTv2 directory) and metrics.json with the loss curve and dev numbers. "
        "Serve it with kind cross_encoder or colbert and checkpoint: <--out>.",
        epilog="example: tightdistill train-teacher --kind ce --data scifact --out runs/teachers/ce-scifact "
        "--max-steps 300 --max-length 256",
    )
    p.add_argument("--kind", required=True, choices=("ce", "colbert"), help="'ce': cross-encoder; 'colbert': late interaction (MaxSim)")
    p.add_argument("--data", default="scifact", help="bundled dataset name or BEIR directory with train qrels (default: %(default)s)")
    p.add_argument("--out", required=True, type=Path, help="output directory for the checkpoint and metrics.json")
    p.add_argument("--base-model", default="minilm-l6", help="encoder to start from: registry name, directory or hub id (default: %(default)s)")
    p.add_argument("--pooling", choices=("cls", "special_token", "segment_mean"), default=None,
                   help="ce only: 'cls' (classifier on [CLS]) or EmbedDistill's dual pooling, which also gives query/"
                   "document proxy embeddings: 'special_token' ([CLS]/[SEP]) or 'segment_mean' (default)")
    p.add_argument("--max-length", type=int, default=None, help="ce only: (query, document) pair length in tokens (default: 256)")
    p.add_argument("--reconstruction-weight", type=float, default=None,
                   help="ce only: weight of EmbedDistill's token-reconstruction loss (default: 0.1 with dual pooling, 0 with cls)")
    p.add_argument("--epochs", type=int, default=None, help="passes over the training pairs (default: 1)")
    p.add_argument("--max-steps", type=int, default=None, help="train exactly this many steps (overrides --epochs)")
    p.add_argument("--batch-size", type=int, default=None, help="queries per step, each with its positive and negatives (default: 8)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate, AdamW with linear warm-up and decay (default: 3e-5)")
    p.add_argument("--negatives", type=int, default=None, help="hard negatives per query (default: 3 for ce, 1 for colbert)")
    p.add_argument("--miner", choices=("dense", "bm25"), default=None,
                   help="what mines the negatives: the MiniLM dual-encoder over the corpus (dense, default) or BM25")
    p.add_argument("--dev-queries", type=int, default=None, help="training queries held out for the dev evaluation (default: 50)")
    p.add_argument("--seed", type=int, default=None, help="seed of the dev split, negatives, new layers and dropout (default: 13)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--precision", choices=("fp32", "bf16", "auto"), default=None,
                   help="training forward pass: fp32, bf16 autocast, or auto (bf16 where the CPU/GPU runs it natively; default: fp32)")
    p.add_argument("--device", default=None, help="'cpu', 'cuda', 'cuda:N' or 'auto': the first GPU torch sees, "
                   "else the CPU (default: auto)")
    p.add_argument("--overwrite", action="store_true", help="write into --out even if it is not empty")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(handler=train_teacher_command)


def job_from_args(args: argparse.Namespace) -> Any:
    """The :class:`~teacher_trainer.config.TeacherJob` the flags describe (unset flags keep the defaults)."""
    from teacher_trainer.config import TeacherJob

    if args.kind != "ce":
        given = [f"--{name.replace('_', '-')}" for name in CE_ONLY if getattr(args, name) is not None]
        if given:
            raise ConfigError(f"{', '.join(given)} only appl{'ies' if len(given) == 1 else 'y'} to --kind ce")

    def pick(**fields: Any) -> dict[str, Any]:
        return {k: v for k, v in fields.items() if v is not None}

    return parse_config(TeacherJob, {
        "out": args.out,
        "model": pick(kind=args.kind, base_model=args.base_model, pooling=args.pooling, max_length=args.max_length,
                      reconstruction_weight=args.reconstruction_weight),
        "data": pick(dataset=args.data, negatives=args.negatives, miner=args.miner, dev_queries=args.dev_queries),
        "train": pick(epochs=args.epochs, max_steps=args.max_steps, batch_size=args.batch_size, lr=args.lr,
                      seed=args.seed, threads=args.threads, precision=args.precision,
                      device=args.device),
    }, source="train-teacher")


def train_teacher_command(args: argparse.Namespace) -> int:
    from teacher_trainer.trainer import train_teacher

    job = job_from_args(args)
    result = train_teacher(job, show_progress=not args.no_progress, overwrite=args.overwrite)
    m = result.metrics
    curve = m["loss_curve"]
    print(f"trained {m['steps']} steps on {m['train_pairs']} training pairs in {m['wall_s']['total']:.0f} s; "
          f"loss {curve[0]['loss']:.4f} -> {curve[-1]['loss']:.4f} (first -> last step)")
    if m["dev"]:
        dev = m["dev"]
        line = "  ".join(f"{k} {dev['miner'][k]:.3f} / {dev['before'][k]:.3f} / {dev['after'][k]:.3f}" for k in ("nDCG@10", "MRR@10"))
        print(f"dev ({dev['queries']} queries, {dev['what']}), miner / before / after: {line}")
    print(f"checkpoint: {result.out} (teacher kind {m['service_kind']}); metrics: {result.out / 'metrics.json'}")
    return 0
