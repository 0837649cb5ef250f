"""A trained cross-encoder teacher re-ranking the dual-encoder teacher's top-100 on scifact test:
nDCG@10 / MRR@10 of the DE's ranking and of the CE's re-ranking of the same candidates.

The CE is loaded by the teacher service's ``cross_encoder`` kind from the directory
``tightdistill train-teacher --kind ce`` wrote, and runs in-process (length-sorted batches, as in a
replica). The DE document index comes from tightdistill's cache when a run has built it. Writes
bench/results/ce_rerank.json.

    python bench/ce_rerank.py [--checkpoint runs/teachers/ce-scifact] [--depth 100] [--max-queries N]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from benchlib import print_table, write_result
from common.datasets import load_beir
from common.metrics import evaluate_run
from student_trainer.teacher_index import teacher_doc_embeddings
from teacher_service.client import TeacherClient
from teacher_service.kinds import build_teacher
from teacher_service.spec import TeacherSpec

METRICS = ("nDCG@10", "MRR@10", "R@20", "R@100")


def dense_candidates(dataset, qids: list[str], depth: int) -> dict[str, dict[str, float]]:
    """The MiniLM DE teacher's top-``depth`` per query, with its scores."""
    de = build_teacher(TeacherSpec(name="minilm", kind="dual_encoder", checkpoint="minilm-l6", options={"similarity": "dot"}))
    index = teacher_doc_embeddings(TeacherClient.in_process(de), dataset)
    scores, ranked = index.index.search(de.encode([dataset.query_text[q] for q in qids], "query").pooled, depth)
    return {q: dict(zip(docs, row.tolist())) for q, docs, row in zip(qids, ranked, scores)}


def progress_file(args: argparse.Namespace) -> Path:
    """Where this checkpoint's per-query scores accumulate; the name changes with the weights."""
    weights = args.checkpoint / "model.safetensors"
    stat = weights.stat() if weights.is_file() else None
    key = json.dumps([str(args.checkpoint.resolve()), stat and (stat.st_size, stat.st_mtime_ns), args.dataset,
                      args.split, args.depth])
    path = Path("runs/bench/ce_rerank") / f"{args.checkpoint.name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def read_progress(path: Path, de_run: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Scores already computed for these candidate lists (a line for other candidates is ignored)."""
    if not path.is_file():
        return {}
    done = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        if set(row["scores"]) == set(de_run.get(row["query_id"], ())):
            done[row["query_id"]] = row["scores"]
    return done


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=Path("runs/teachers/ce-scifact"))
    ap.add_argument("--dataset", default="scifact")
    ap.add_argument("--split", default="test")
    ap.add_argument("--depth", type=int, default=100)
    ap.add_argument("--max-queries", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    ds = load_beir(args.dataset)
    qids = ds.split_query_ids(args.split)[: args.max_queries]
    de_run = dense_candidates(ds, qids, args.depth)
    ce = build_teacher(TeacherSpec(name="ce", kind="cross_encoder", checkpoint=str(args.checkpoint)))
    # Per-query scores are appended to a progress file as they come, so an interrupted run (30,000
    # CE forward passes take a while on a CPU) resumes where it stopped.
    progress = progress_file(args)
    ce_run = read_progress(progress, de_run)
    todo = [q for q in qids if q not in ce_run]
    started, cpu_started = time.perf_counter(), time.process_time()
    with progress.open("a") as fh:
        for q in tqdm(todo, desc=f"CE: re-ranking the DE top-{args.depth}", unit="query", initial=len(qids) - len(todo), total=len(qids)):
            docs = list(de_run[q])
            scores = ce.forward_pairs([ds.query_text[q]] * len(docs), [ds.doc_texts[ds.doc_index[d]] for d in docs]).scores
            ce_run[q] = dict(zip(docs, scores.tolist()))
            fh.write(json.dumps({"query_id": q, "scores": ce_run[q]}) + "\n")
            fh.flush()
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    ce_run = {q: ce_run[q] for q in qids}

    qrels = ds.qrels(args.split)
    qrels = {q: qrels[q] for q in qids}
    rows = []
    for name, run in (("DE teacher (all-MiniLM-L6-v2), full retrieval", de_run),
                      (f"trained CE ({ce.pooling} pooling) re-ranking DE top-{args.depth}", ce_run)):
        agg = evaluate_run(qrels, run, (5, 20, 100)).aggregate
        rows.append({"system": name, **{k: agg[k] for k in METRICS}})
    print(f"\n{args.dataset} {args.split}, {len(qids)} queries ({len(qids) - len(todo)} resumed from {progress}); "
          f"CE scoring {wall:.0f} s wall, {cpu:.0f} s CPU")
    print_table(rows, ["system", *METRICS])
    trained = json.loads((args.checkpoint / "metrics.json").read_text()) if (args.checkpoint / "metrics.json").is_file() else {}
    payload = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "teacher": {"pooling": ce.pooling, "score_scale": ce.score_scale, "max_length": ce.max_length,
                    "training": {k: trained.get(k) for k in ("steps", "train_pairs", "wall_s")} | {"job": trained.get("job")}},
        "pairs_scored": sum(len(v) for v in ce_run.values()),
        "ce_scoring_wall_s": round(wall, 1), "ce_scoring_cpu_s": round(cpu, 1),
        "queries_resumed": len(qids) - len(todo),
        "rows": rows,
    }
    print(f"wrote {write_result('ce_rerank', payload)}")


if __name__ == "__main__":
    main()
