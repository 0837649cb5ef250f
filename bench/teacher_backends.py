"""Teacher backends side by side: the dual-encoder teacher (all-MiniLM-L6-v2) encoding the scifact
corpus on torch fp32, torch bf16 (where the CPU computes bf16 natively), ONNX Runtime fp32 and
ONNX Runtime dynamic int8, in one run.

For each backend: documents/s over the corpus; cosine of its document and query embeddings to
torch fp32's (mean and min); the teacher's nDCG@10 / R@100 on scifact test by full retrieval over
its own index; how long the teacher took to build (an ONNX export on a cold cache, a load on a
warm one). The corpus is cut into chunks and every chunk is encoded by each backend in turn
(rotating who goes first), so load from other processes on a shared machine falls on all
backends alike; every engine gets ``--threads`` intra-op threads (torch and ONNX Runtime).
Finally ``backend: auto`` resolves on this machine and its decision is recorded.
Writes bench/results/teacher_backends.json (``--max-docs``: teacher_backends_maxN.json).

    python bench/teacher_backends.py [--max-docs 512] [--threads 2] [--backends torch-fp32 onnx-int8]

``--max-docs`` is for quick checks: nDCG@10 is then over that part of the corpus only, lower than
the real figure, but still comparable between backends.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from tqdm.auto import tqdm

import common.onnx_runtime as onnx_runtime
from benchlib import cpu_bf16, print_table, write_result
from common.datasets import load_beir
from common.evaluation import eval_query_ids, evaluate_encoder
from common.onnx_runtime import row_cosines
from common.retrieval import DenseIndex
from common.text_encoder import resolve_dtype
from teacher_service.kinds import build_teacher, build_with
from common.model_registry import checkpoint_fingerprint, resolve_model
from teacher_service.kinds.backend import INT8_VERIFIED, OnnxEncoder, parse_label
from teacher_service.spec import TeacherSpec

BACKENDS = ["torch-fp32", "torch-bf16", "onnx-fp32", "onnx-int8"]
REFERENCE = "torch-fp32"
# issue #23: int8 may be used by `auto` only if the teacher's nDCG@10 stays within this of fp32.
INT8_NDCG_TOLERANCE = 0.003


def teacher_spec(backend: str = "torch") -> TeacherSpec:
    return TeacherSpec(name="minilm", kind="dual_encoder", checkpoint="minilm-l6", backend=backend)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="scifact")
    ap.add_argument("--split", default="test")
    ap.add_argument("--max-docs", type=int, default=None, help="encode only the first N documents (quick checks)")
    ap.add_argument("--threads", type=int, default=2, help="intra-op threads of every engine")
    ap.add_argument("--chunks", type=int, default=16, help="corpus chunks the backends take turns on")
    ap.add_argument("--backends", nargs="+", default=BACKENDS, choices=BACKENDS)
    ap.add_argument("--output", default=None, help="name of the JSON file in bench/results/")
    ap.add_argument("--auto-only", action="store_true", help="only resolve backend auto (teacher_backends_auto.json)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)  # ONNX Runtime sessions take torch's thread count (kinds/backend.py)
    if args.auto_only:
        record = resolve_auto()
        print(f"wrote {write_result(args.output or 'teacher_backends_auto', {'args': vars(args), 'auto': record})}")
        return
    load_before = os.getloadavg()

    labels = [b for b in dict.fromkeys([REFERENCE, *args.backends])]
    skipped = {}
    if "torch-bf16" in labels and resolve_dtype("auto", "cpu") != "bfloat16":
        labels.remove("torch-bf16")
        skipped["torch-bf16"] = "this CPU has no native bf16 (AVX512-BF16/AMX)"

    ds = load_beir(args.dataset)
    n = min(args.max_docs or len(ds.doc_ids), len(ds.doc_ids))
    ids, texts = ds.doc_ids[:n], ds.doc_texts[:n]
    qids = eval_query_ids(ds, args.split)
    queries = [ds.query_text[q] for q in qids]

    teachers, build = {}, {}
    for label in labels:
        written, start = onnx_runtime.exports_written, time.perf_counter()
        teachers[label] = build_with(teacher_spec(), parse_label(label))
        model = teachers[label].encoder.model
        build[label] = {"build_s": time.perf_counter() - start, "exported_now": onnx_runtime.exports_written > written,
                        "graph_mb": model.path.stat().st_size / 2**20 if isinstance(model, OnnxEncoder) else None}
        teachers[label].encode(texts[:16], "document")  # warm-up

    doc_emb = {label: np.empty((n, teachers[label].encoder.dim), np.float32) for label in labels}
    seconds = dict.fromkeys(labels, 0.0)
    for c, rows in enumerate(tqdm(np.array_split(np.arange(n), args.chunks), desc="encoding the corpus, backends in turn")):
        chunk = [texts[i] for i in rows]
        for label in labels[c % len(labels):] + labels[: c % len(labels)]:
            start = time.perf_counter()
            doc_emb[label][rows] = teachers[label].encode(chunk, "document").pooled
            seconds[label] += time.perf_counter() - start

    q_emb, query_s = {}, {}
    for label in labels:
        start = time.perf_counter()
        q_emb[label] = teachers[label].encode(queries, "query").pooled
        query_s[label] = time.perf_counter() - start
    table = []
    for label in labels:
        index = DenseIndex.from_embeddings(ids, doc_emb[label])
        report = evaluate_encoder(lambda _texts, label=label: q_emb[label], index, ds, args.split, k_values=(10, 100)).report
        cos, q_cos = row_cosines(doc_emb[label], doc_emb[REFERENCE]), row_cosines(q_emb[label], q_emb[REFERENCE])
        table.append({"backend": label, "docs_per_s": n / seconds[label], "queries_per_s": len(queries) / query_s[label],
                      "speedup": seconds[REFERENCE] / seconds[label], "doc_cos_mean": float(cos.mean()),
                      "doc_cos_min": float(cos.min()), "query_cos_mean": float(q_cos.mean()), "query_cos_min": float(q_cos.min()),
                      "nDCG@10": report.aggregate["nDCG@10"], "R@100": report.aggregate["R@100"], **build[label]})
    for row in table:
        row["nDCG_delta"] = row["nDCG@10"] - table[0]["nDCG@10"]

    int8 = next((r for r in table if r["backend"] == "onnx-int8"), None)
    int8_faithful = None if int8 is None else abs(int8["nDCG_delta"]) <= INT8_NDCG_TOLERANCE
    weights = checkpoint_fingerprint(resolve_model("minilm-l6"))

    auto = resolve_auto()

    print(f"\n{args.dataset}: {n} documents, {len(queries)} {args.split} queries, {args.threads} threads per engine, "
          f"{args.chunks} chunks in turn; load average {load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after")
    print_table(table, ["backend", "docs_per_s", "speedup", "doc_cos_mean", "doc_cos_min", "query_cos_min",
                        "nDCG@10", "nDCG_delta", "R@100", "build_s", "exported_now"])
    for label, why in skipped.items():
        print(f"{label}: not measured, {why}")
    if int8 is not None:
        print(f"onnx-int8: nDCG@10 {int8['nDCG_delta']:+.4f} against torch fp32 -> "
              f"{'within' if int8_faithful else 'outside'} the {INT8_NDCG_TOLERANCE} that lets auto use it; "
              f"this checkpoint ({weights}) is {'' if weights in INT8_VERIFIED else 'not '}in kinds/backend.py INT8_VERIFIED")
    payload = {"args": vars(args), "cpu_bf16": cpu_bf16(), "documents": n, "queries": len(queries),
               "load_average_before": load_before, "load_average_after": os.getloadavg(), "rows": table,
               "skipped": skipped, "int8_within_tolerance": int8_faithful,
               "weights": weights, "int8_verified": weights in INT8_VERIFIED,
               "auto": auto}
    name = args.output or ("teacher_backends" if args.max_docs is None else f"teacher_backends_max{args.max_docs}")
    print(f"wrote {write_result(name, payload)}")


def resolve_auto() -> dict:
    """Resolve ``backend: auto`` for the teacher on this machine (a cached decision, or a fresh
    measurement) and print what it chose."""
    start = time.perf_counter()
    auto = build_teacher(teacher_spec("auto"))
    seconds = time.perf_counter() - start
    print(f"backend auto on this machine: {auto.backend.label} ({seconds:.1f} s to resolve and build)")
    for row in (auto.backend_choice or {}).get("rows", []):
        print(f"  {row['backend']}: {row['texts_per_s']:.1f} calibration texts/s, min cosine {row['min_cosine']:.5f}, "
              f"{'faithful' if row['faithful'] else 'not faithful'}")
    return {"chosen": auto.backend.label, "seconds": seconds, "decision": auto.backend_choice}


if __name__ == "__main__":
    main()
