"""Coupling overhead: a training step with the teacher on Serve against the teacher in-process.

The default run's step (asymmetric 2-layer MiniLM student, batch 32 training queries + 32 extra
corpus queries, in-batch KL over the inherited document embeddings + query embedding matching),
timed over the same batches with the teacher's query embeddings obtained three ways:

* **precomputed**: read from a parquet file written beforehand (the Margin-MSE way: the lower bound);
* **in-process**: the teacher called inline in the training loop before each step (the TCT-ColBERT way);
* **service + prefetch**: the teacher on Ray Serve through ``TeacherSignalSource``, the request for
  batch t+1 sent before step t computes (what ``tightdistill train`` does).

Same student initialisation, same batches, same torch threads (student and teacher); the served
teacher runs with its signal cache off, so every request is computed (the first epoch's case).
Prints mean step times and the ratios; writes bench/results/coupling_overhead.json.

    python bench/coupling_overhead.py [--steps 20] [--threads 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from benchlib import print_table, write_result
from common.datasets import load_beir
from student_trainer.extra_queries import corpus_pseudo_queries
from student_trainer.losses import DistillBatch, build_loss
from student_trainer.students import DualEncoderStudent, StudentConfig
from student_trainer.teacher_index import teacher_doc_embeddings
from student_trainer.teacher_signals import TeacherSignalSource, TrainBatch
from student_trainer.train_loop import with_prefetch
from teacher_service.client import TeacherClient
from teacher_service.kinds import build_teacher
from teacher_service.spec import TeacherSpec

LOSSES = {"in_batch_kl": {"weight": 1.0, "tau": 0.25, "gamma": 0.1}, "query_embedding": {"weight": 1.0}}


def make_batches(steps: int, batch_size: int) -> list[TrainBatch]:
    """``steps`` batches of training queries with their first positive and a random negative."""
    ds = load_beir("scifact")
    qrels, text = ds.qrels("train"), ds.query_text
    rng = np.random.default_rng(0)
    pairs = [(q, next(iter(docs))) for q, docs in qrels.items()]
    rng.shuffle(pairs)
    extra = corpus_pseudo_queries(ds, steps * batch_size, seed=0)
    doc_ids = ds.doc_ids
    batches = []
    for s in range(steps):
        chunk = pairs[s * batch_size : (s + 1) * batch_size]
        ids = [d for _, pos in chunk for d in (pos, doc_ids[int(rng.integers(len(doc_ids)))])]
        batches.append(TrainBatch([text[q] for q, _ in chunk], extra[s * batch_size : (s + 1) * batch_size], ids,
                                  ["" for _ in ids], num_negatives=1))
    return batches


class Trainer:
    """The default run's student step, fed query embeddings by whichever teacher path is measured."""

    def __init__(self, doc_emb: dict[str, np.ndarray], seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.student = DualEncoderStudent(StudentConfig(), teacher_dim=384)
        self.student.train()
        self.opt = torch.optim.AdamW([p for p in self.student.parameters() if p.requires_grad], lr=3e-4)
        self.loss = build_loss(LOSSES)
        self.doc_emb = doc_emb

    def step(self, batch: TrainBatch, teacher_queries: np.ndarray) -> float:
        d = torch.from_numpy(np.stack([self.doc_emb[i] for i in batch.doc_ids]))
        out = self.student(batch.all_queries, len(batch.queries), document_embeddings=d)
        q_t = torch.from_numpy(np.require(teacher_queries, requirements="W"))
        loss = self.loss(DistillBatch(
            student_scores=out.scores, labels=DistillBatch.layout_labels(len(batch.queries), 1),
            teacher_scores=q_t[: len(batch.queries)] @ d.T, student_query_emb=out.query_embeddings,
            teacher_query_emb=q_t, num_negatives=1))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return float(loss)


def timed_steps(trainer: Trainer, feed: Iterator[tuple[TrainBatch, Callable[[], np.ndarray]]], warmup: int) -> list[float]:
    """Per-step wall time (teacher wait included), after ``warmup`` untimed steps."""
    times = []
    t = time.perf_counter()
    for i, (batch, teacher_queries) in enumerate(feed):
        trainer.step(batch, teacher_queries())
        now = time.perf_counter()
        if i >= warmup:
            times.append(now - t)
        t = now
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per mode")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the student and of the teacher")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    batches = make_batches(args.steps + args.warmup, args.batch_size)
    spec = TeacherSpec(name="minilm", kind="dual_encoder", checkpoint="minilm-l6", torch_threads=args.threads)
    teacher = build_teacher(spec)
    local = TeacherClient.in_process(teacher)
    index = teacher_doc_embeddings(local, load_beir("scifact"), show_progress=True)  # cached after the first run
    doc_emb = {d: index.emb[i] for i, d in enumerate(index.ids)}

    # Precomputed: every batch's teacher query embeddings, through a parquet file.
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "teacher_queries.parquet"
        texts = [q for b in batches for q in b.all_queries]
        emb = local.encode(texts, role="query")
        pq.write_table(pa.table({"text": texts, "emb": list(emb)}), path)
        table = pq.read_table(path)
        stored = dict(zip(table.column("text").to_pylist(), np.stack(table.column("emb").to_numpy(zero_copy_only=False))))
    precomputed = timed_steps(Trainer(doc_emb), ((b, lambda b=b: np.stack([stored[q] for q in b.all_queries])) for b in batches),
                              args.warmup)

    inline = timed_steps(Trainer(doc_emb), ((b, lambda b=b: teacher.encode(b.all_queries, "query").pooled) for b in batches),
                         args.warmup)
    del teacher

    from ray import serve

    from common.ray_runtime import init_ray
    from teacher_service.app import deploy
    from teacher_service.spec import ServiceConfig

    init_ray()
    # The replica with the trainer's thread count, and (on a multi-core machine) with one thread:
    # with prefetch, the replica's forward pass overlaps the student's step, and two thread pools
    # each as wide as the machine fight over the same cores.
    services = {}
    for replica_threads in dict.fromkeys([args.threads, 1]):
        served = TeacherSpec.model_validate({**spec.model_dump(), "torch_threads": replica_threads,
                                             "ray_actor_options": {"num_cpus": 1}, "cache": {"max_bytes": 0}})
        deploy(ServiceConfig(teachers=[served]), app_name="coupling-bench", route_prefix=None)
        client = TeacherClient.from_serve("coupling-bench")
        info = client.describe("minilm")
        source = TeacherSignalSource(client, "minilm", info, index, want_query_embeddings=True)
        services[f"service + prefetch (replica {replica_threads} thread{'s' if replica_threads > 1 else ''})"] = timed_steps(
            Trainer(doc_emb), ((p.batch, lambda p=p: source.collect(p).query_embeddings)
                               for p in with_prefetch(iter(batches), source, prefetch=True)), args.warmup)
        serve.delete("coupling-bench")

    base = float(np.mean(inline))
    rows = [{"teacher": name, "step_s": float(np.mean(t)), "p50_s": float(np.median(t)), "ratio_vs_in_process": float(np.mean(t)) / base}
            for name, t in (("precomputed (parquet)", precomputed), ("in-process, inline", inline), *services.items())]
    print(f"\n{args.steps} steps of batch {args.batch_size} + {args.batch_size} extra queries, {args.threads} threads")
    print_table(rows, ["teacher", "step_s", "p50_s", "ratio_vs_in_process"])
    print(f"wrote {write_result('coupling_overhead', {'args': vars(args), 'rows': rows})}")


if __name__ == "__main__":
    main()
