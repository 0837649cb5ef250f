"""Signal-cache benchmark: two epochs of a training-like loop against a served MiniLM teacher.

Each step asks the teacher for the in-batch signals of one batch (``signals``: the query x
document score matrix plus query and document embeddings), as a distillation step does: scifact
training queries with their first positive document, the same batches in the same order in both
epochs. In epoch 1 every text is new; in epoch 2 the replica's signal cache already holds them
all. The same loop runs against the same model with the cache off as the control, so the ratio is
not a warm-up effect; the two teachers' epochs alternate (cached 1, control 1, cached 2, control 2)
so both see the same stretches of a shared machine's load, which each row records. A step here is the teacher round trip alone (through a Ray handle, as a Train
worker calls it): no student compute is timed.

Prints, for both teachers, the mean step time of each epoch, epoch 2 / epoch 1, and the cache hit
rate of each epoch; checks that the cached answers equal the computed ones; writes
bench/results/signal_cache.json.

    python bench/signal_cache.py [--batches 20] [--batch-size 32] [--threads 2] [--no-control]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import time

import numpy as np
from tqdm import tqdm

from benchlib import print_table, write_result
from common.datasets import load_beir


def training_batches(dataset: str, batches: int, batch_size: int) -> list[tuple[list[str], list[str]]]:
    """``batches`` x (queries, their first positive documents) from the training split, in order."""
    ds = load_beir(dataset)
    qrels, docs, index = ds.qrels("train"), ds.doc_texts, ds.doc_index
    qids = [q for q in ds.split_query_ids("train") if any(g > 0 for g in qrels[q].values())]
    need = batches * batch_size
    if len(qids) < need:
        raise SystemExit(f"{dataset} has {len(qids)} training queries with a positive; asked for {need}")
    out = []
    for b in range(batches):
        chunk = qids[b * batch_size : (b + 1) * batch_size]
        positives = [docs[index[min(d for d, g in qrels[q].items() if g > 0)]] for q in chunk]
        out.append(([ds.query_text[q] for q in chunk], positives))
    return out


def run_epoch(client, teacher: str, batches: list, epoch: int, stats) -> tuple[dict, list[dict]]:
    """One epoch: step times and the replica's cache counters; its signals, for checks."""
    before, times, answers = stats(), [], []
    load_before = os.getloadavg()[0]
    for queries, docs in tqdm(batches, desc=f"{teacher} epoch {epoch}", unit="step"):
        start = time.perf_counter()
        answers.append(client.signals(queries, docs, teacher=teacher))
        times.append(time.perf_counter() - start)
    after = stats()
    hits, misses = after["cache_hits"] - before["cache_hits"], after["cache_misses"] - before["cache_misses"]
    row = {"teacher": teacher, "epoch": epoch, "mean_step_s": statistics.mean(times), "median_step_s": statistics.median(times),
           "steps": len(times), "cache_hit_rate": hits / (hits + misses) if hits + misses else None, "cache_hits": hits,
           "cache_misses": misses, "cache_bytes": after["cache_bytes"],
           "load_avg_1min": [round(load_before, 1), round(os.getloadavg()[0], 1)]}  # other processes on the machine
    return row, answers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="scifact")
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the replica")
    ap.add_argument("--no-control", action="store_true", help="skip the cache-off control run")
    args = ap.parse_args()

    batches = training_batches(args.dataset, args.batches, args.batch_size)
    warmup = load_beir(args.dataset)
    warmup_texts = [warmup.query_text[q] for q in warmup.split_query_ids("test")[:8]]  # never in the batches

    from ray import serve

    from common.ray_runtime import init_ray
    from teacher_service.app import deploy
    from teacher_service.client import TeacherClient
    from teacher_service.spec import ServiceConfig, deployment_name

    base = {"kind": "dual_encoder", "checkpoint": "minilm-l6", "ray_actor_options": {"num_cpus": args.threads},
            "torch_threads": args.threads}
    teachers = [{"name": "cached", **base}]
    if not args.no_control:
        teachers.append({"name": "uncached", **base, "cache": {"max_bytes": 0}})
    init_ray(num_cpus=args.threads * len(teachers) + 2)
    with socket.socket() as sock:  # any free port: the loop uses handles, HTTP only has to start
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    deploy(ServiceConfig.model_validate({"teachers": teachers}), http_options={"host": "127.0.0.1", "port": port})
    client = TeacherClient.from_serve()

    names = [t["name"] for t in teachers]
    handles = {name: serve.get_deployment_handle(deployment_name(name), "tightdistill") for name in names}
    for name in names:
        client.signals(warmup_texts, warmup_texts, teacher=name)  # model warm-up on texts outside the loop
    rows, checks = [], {}
    for epoch in (1, 2):
        for name in names:
            row, answers = run_epoch(client, name, batches, epoch, lambda h=handles[name]: h.stats.remote().result())
            rows.append(row)
            if name == "cached" and epoch == 2:
                # Epoch 2 came from the cache; it must equal a fresh computation by the control teacher.
                checks["cached_answers"] = answers
    if "uncached" in names:
        fresh = [client.signals(q, d, teacher="uncached") for q, d in batches[:3]]
        checks["max_abs_diff_vs_fresh"] = max(float(np.abs(a[k] - f[k]).max())
                                              for a, f in zip(checks["cached_answers"], fresh) for k in f)
    serve.shutdown()

    summary = {}
    for spec in teachers:
        first, second = (r for r in rows if r["teacher"] == spec["name"])
        summary[spec["name"]] = {"epoch2_over_epoch1": second["mean_step_s"] / first["mean_step_s"],
                                 "epoch2_cache_hit_rate": second["cache_hit_rate"]}
    texts = sum(len(q) + len(d) for q, d in batches)
    print(f"\n{args.batches} batches x {args.batch_size} {args.dataset} training queries + their positives "
          f"({texts} texts per epoch), {args.threads} torch threads")
    print_table(rows, ["teacher", "epoch", "mean_step_s", "median_step_s", "cache_hit_rate", "cache_hits", "cache_misses",
                       "load_avg_1min"])
    for name, s in summary.items():
        print(f"{name}: epoch 2 / epoch 1 mean step time = {s['epoch2_over_epoch1']:.3f}, epoch 2 cache hit rate = "
              f"{s['epoch2_cache_hit_rate'] if s['epoch2_cache_hit_rate'] is not None else 'n/a (cache off)'}")
    if "max_abs_diff_vs_fresh" in checks:
        print(f"cached epoch-2 signals vs fresh computation: max |diff| = {checks['max_abs_diff_vs_fresh']:.2e}")
    payload = {"args": vars(args), "texts_per_epoch": texts, "rows": rows, "summary": summary,
               "max_abs_diff_vs_fresh": checks.get("max_abs_diff_vs_fresh")}
    print(f"wrote {write_result('signal_cache', payload)}")


if __name__ == "__main__":
    main()
