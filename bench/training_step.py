"""Where a default-run training step goes, and what length-sorted passes save: the student of
``deploy/default.yaml`` (asymmetric, 2 layers) on batches like the run's (32 scifact training
queries + 32 corpus pseudo-queries, random stand-ins for the teacher's signals, which cost the
student nothing to read), timed per phase (forward, loss, backward, gradient clipping, AdamW).

Two ways of encoding the step's texts take turns on the same batches, in one run: one pass padded
to the batch's longest text (the baseline, what steps did before) and length-sorted passes of at
most ``--budget`` padded tokens (what ``DualEncoderStudent`` does now on a CPU,
``common.batching.training_token_budget``). The served teacher is not in this loop:
``bench/coupling_overhead.py`` measures what it adds. Writes bench/results/training_step.json.

    python bench/training_step.py [--steps 40] [--precision fp32|bf16] [--budget 1024]
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import nullcontext

import numpy as np
import torch
from tqdm.auto import trange

import common.batching as batching
from benchlib import cpu_bf16, print_table, write_result
from common.datasets import load_beir
from student_trainer.config import load_run_config
from student_trainer.extra_queries import corpus_pseudo_queries
from student_trainer.losses import DistillBatch, build_loss
from student_trainer.train_loop import build_optimizer, build_student

PHASES = ("forward", "loss", "backward", "clip", "optimizer")
TEACHER_DIM = 384  # all-MiniLM-L6-v2's, the default run's teacher: the stand-in signals have its width
ONE_PASS = 10**9  # a budget no batch reaches: one padded pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="deploy/default.yaml")
    ap.add_argument("--steps", type=int, default=40, help="timed steps per variant (after 3 warm-up steps each)")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--budget", type=int, default=batching.TRAINING_TOKEN_BUDGET["cpu"])
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    run = load_run_config(a.config, {"student.max_query_length": 64})
    dataset = load_beir(run.data.dataset)
    queries = [dataset.query_text[q] for q in dataset.split_query_ids(run.data.train_split)]
    pseudo = corpus_pseudo_queries(dataset, run.data.extra_query_pool, seed=13)
    b = run.train.batch_size
    n_extra = int(round(run.data.extra_query_ratio * b))
    docs_per_query = 1 + run.data.num_negatives
    rng = np.random.default_rng(0)
    variants = {"one padded pass": ONE_PASS, f"length-sorted passes of {a.budget} tokens": a.budget}
    models = {}
    for name in variants:
        torch.manual_seed(0)  # the same initial student for both
        student = build_student(run, {"dim": TEACHER_DIM}).train()
        models[name] = (student, build_optimizer(student, run, total_steps=10**6)[0])
    loss_fn = build_loss(run.train.losses)
    labels = DistillBatch.layout_labels(b, run.data.num_negatives)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if a.precision == "bf16" else nullcontext()
    times = {name: {p: [] for p in PHASES} for name in variants}
    tokens = {"real": [], "padded_one_pass": []}
    for step in trange(a.steps + 3, desc="steps (each variant in turn)"):
        texts = list(rng.choice(queries, b)) + list(rng.choice(pseudo, n_extra))
        doc_emb = torch.nn.functional.normalize(torch.randn(b * docs_per_query, TEACHER_DIM), dim=-1)
        teacher_q = torch.nn.functional.normalize(torch.randn(len(texts), TEACHER_DIM), dim=-1)
        teacher_scores = torch.randn(b, b * docs_per_query)
        for name in (variants if step % 2 == 0 else reversed(list(variants))):  # alternate who goes first
            batching.TRAINING_TOKEN_BUDGET["cpu"] = variants[name]
            student, optimizer = models[name]
            t = [time.perf_counter()]
            with autocast:
                out = student(texts, b, document_embeddings=doc_emb)
            t.append(time.perf_counter())
            loss = loss_fn(DistillBatch(student_scores=out.scores.float(), labels=labels, teacher_scores=teacher_scores,
                                        student_query_emb=out.query_embeddings.float(), teacher_query_emb=teacher_q,
                                        num_negatives=run.data.num_negatives, score_scale=student.score_scale))
            t.append(time.perf_counter())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            t.append(time.perf_counter())
            torch.nn.utils.clip_grad_norm_(student.parameters(), run.train.max_grad_norm)
            t.append(time.perf_counter())
            optimizer.step()
            t.append(time.perf_counter())
            if step >= 3:
                for phase, dt in zip(PHASES, np.diff(t)):
                    times[name][phase].append(float(dt))
        if step >= 3:  # both variants see the same texts: count their tokens once
            lengths = [len(x) for x in next(iter(models.values()))[0].query_encoder.tokenize(texts, 64)]
            tokens["real"].append(sum(lengths))
            tokens["padded_one_pass"].append(len(lengths) * max(lengths))
    rows = []
    for name in variants:
        med = {p: statistics.median(v) for p, v in times[name].items()}
        step_s = statistics.median([sum(x) for x in zip(*times[name].values())])
        rows.append({"encoding": name, **{f"{p}_ms": round(1000 * v, 1) for p, v in med.items()},
                     "step_ms": round(1000 * step_s, 1)})
    base = rows[0]["step_ms"]
    for r in rows:
        r["speedup"] = round(base / r["step_ms"], 2)
    print(f"{a.steps} steps per variant, {a.precision}, {a.threads} threads; real tokens per batch "
          f"{statistics.mean(tokens['real']):.0f}, padded in one pass {statistics.mean(tokens['padded_one_pass']):.0f}")
    print_table(rows, ["encoding", *[f"{p}_ms" for p in PHASES], "step_ms", "speedup"])
    write_result("training_step", {"cpu_bf16": cpu_bf16(), "args": vars(a),  # write_result adds the machine
                                   "tokens": {k: statistics.mean(v) for k, v in tokens.items()}, "rows": rows})


if __name__ == "__main__":
    main()
