"""GPU figures: fp32 / fp16 / bf16 teachers, corpus encoding and search, teachers trained on the GPU.

Run on a machine with a CUDA GPU (issue #10 item 6, issue #6's full-length teachers). Everything
is measured in one process, one after the other, with the baselines in the same run:

1. **matmul peak** of the GPU per dtype (fp32 without TF32, fp16, bf16): the physical limit.
2. **corpus**: the dual-encoder teacher encodes the whole corpus per dtype, naive batches (32 texts
   in corpus order, padded to the longest) against length-sorted token-budget batches (what the
   service runs); texts/s, the fraction of the dtype's matmul peak, the cosine of each embedding
   to the fp32 one; then exact inner-product search of the test queries (top-100) on the GPU
   against the same search on the CPU, and nDCG@10 / MRR@10 / R@100 of each dtype's index.
3. **kinds**: each teacher kind called in-process on the GPU (as a replica runs it) for encoding,
   aligned pairs and 4x8 in-batch matrices, fp32 against ``dtype: auto`` (bf16 on GPUs that have it).
4. **teacher training** (section ``train``): ``train-teacher`` on the GPU at full length, a dual-pooled
   cross-encoder at 512 tokens and a ColBERT, for ``--epochs`` passes, with dev re-ranking figures.

faiss's GPU index is used when the installed faiss has GPU support; otherwise the GPU search is
torch's (a flat GPU index computes the same matmul + k-selection) and the JSON says which.
Writes bench/results/gpu.json.

    python bench/gpu.py [--model minilm-l6] [--sections corpus train kinds] [--epochs 10] [--teachers-out runs/teachers/gpu]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchlib import print_table, write_result
from common.batching import default_token_budget, plan_batches
from common.datasets import BeirDataset, load_beir
from common.metrics import evaluate_run
from common.text_encoder import DTYPES, TextEncoder
from encoding_efficiency import forward_flops
from teacher_throughput import cross_encoder_dir, merge, workloads

DTYPE_NAMES = ("float32", "float16", "bfloat16")
DEVICE = "cuda"  # --device cpu only smoke-tests this script on a machine without a GPU


def sync() -> None:
    if DEVICE.startswith("cuda"):
        torch.cuda.synchronize()


def cuda_timed(fn: Callable[[], Any], repeats: int = 1) -> float:
    """Best wall time of ``repeats`` runs, each ending when the GPU has finished its work."""
    best = float("inf")
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best


def matmul_tflops(dtype: torch.dtype, n: int) -> float:
    a = torch.randn(n, n, device=DEVICE, dtype=dtype)
    b = torch.randn(n, n, device=DEVICE, dtype=dtype)
    torch.mm(a, b)
    return 2 * n**3 / cuda_timed(lambda: torch.mm(a, b), repeats=5) / 1e12


def encode_plan(encoder: TextEncoder, ids: list[list[int]], plan: list[np.ndarray]) -> np.ndarray:
    out = np.empty((len(ids), encoder.dim), dtype=np.float32)
    with torch.inference_mode():
        for index in plan:
            out[index] = encoder(**encoder.collate([ids[i] for i in index])).float().cpu().numpy()
    return out


def search_top_k(queries: np.ndarray, docs: np.ndarray, k: int, device: str) -> tuple[np.ndarray, np.ndarray]:
    q, d = torch.from_numpy(queries).to(device), torch.from_numpy(docs).to(device)
    scores, rows = torch.topk(q @ d.T, k, dim=1)
    return scores.cpu().numpy(), rows.cpu().numpy()


def gpu_search(queries: np.ndarray, docs: np.ndarray, k: int) -> tuple[str, Callable[[], Any]]:
    """The GPU search to time: faiss's GPU flat index where faiss has one, else torch's."""
    try:
        from common.retrieval import DenseIndex, gpu_available

        if gpu_available():
            index = DenseIndex.from_embeddings([str(i) for i in range(len(docs))], docs, use_gpu=True)
            return "faiss GpuIndexFlatIP", lambda: index.search(queries, k)
    except ImportError:
        pass
    return f"torch matmul + topk ({DEVICE})", lambda: search_top_k(queries, docs, k, DEVICE)


def corpus_section(model: str, ds: BeirDataset, budget: int, k: int, peaks: dict[str, float],
                   limit: int = 0) -> list[dict[str, Any]]:
    qrels = ds.qrels("test")
    qids = [q for q in qrels if q in ds.query_text]
    doc_ids, doc_texts = ds.doc_ids[: limit or None], ds.doc_texts[: limit or None]
    k = min(k, len(doc_ids))
    rows: list[dict[str, Any]] = []
    reference: np.ndarray | None = None
    for name in DTYPE_NAMES:
        encoder = TextEncoder.from_pretrained(model, device=DEVICE, dtype=name).eval()
        ids = encoder.tokenize(doc_texts)
        lengths = [len(x) for x in ids]
        naive = plan_batches(lengths, 10**12, 32, sort=False)
        ordered = plan_batches(lengths, budget, 512, sort=True)
        # Warm-up over every batch shape of both plans (kernel choice and the allocator's pools
        # are per shape), then the best of three: the whole corpus takes about a second here.
        encode_plan(encoder, ids, naive)
        encode_plan(encoder, ids, ordered)
        t_naive = cuda_timed(lambda: encode_plan(encoder, ids, naive), repeats=3)
        docs = np.empty(0)

        def sorted_run() -> None:
            nonlocal docs
            docs = encode_plan(encoder, ids, ordered)

        t_sorted = cuda_timed(sorted_run, repeats=3)
        flops = forward_flops(encoder, [(len(ix), max(lengths[i] for i in ix)) for ix in ordered])
        queries = encoder.encode([ds.query_text[q] for q in qids])
        reference = docs if reference is None else reference
        cos = (docs * reference).sum(1) / (np.linalg.norm(docs, axis=1) * np.linalg.norm(reference, axis=1))
        what, search = gpu_search(queries, docs, k)
        search()
        t_gpu = cuda_timed(search, repeats=5)
        search_top_k(queries, docs, k, "cpu")
        start = time.perf_counter()
        search_top_k(queries, docs, k, "cpu")
        t_cpu = time.perf_counter() - start
        scores, found = search_top_k(queries, docs, k, DEVICE)
        run = {q: {doc_ids[j]: float(s) for j, s in zip(r, sc)} for q, r, sc in zip(qids, found, scores)}
        metrics = evaluate_run(qrels, run, k_values=(k,)).aggregate
        rows.append({
            "dtype": name, "docs": len(ids), "naive_texts_per_s": len(ids) / t_naive,
            "sorted_texts_per_s": len(ids) / t_sorted, "sorted_vs_naive": t_naive / t_sorted,
            "corpus_encode_s": t_sorted,
            "fraction_of_peak": flops / t_sorted / 1e12 / peaks[name], "min_cos_to_fp32": float(cos.min()),
            "gpu_search": what, "queries": len(qids), "search_gpu_ms": 1000 * t_gpu, "search_cpu_ms": 1000 * t_cpu,
            **{m: metrics[m] for m in ("nDCG@10", "MRR@10", f"R@{k}")},
        })
        del encoder
    return rows


def kinds_section(model: str, ds: BeirDataset, ce_dir: str | None, texts: int) -> list[dict[str, Any]]:
    from teacher_service.kinds import build_teacher
    from teacher_service.schemas import parse_request
    from teacher_service.spec import TeacherSpec

    table = {"dual_encoder": {"checkpoint": model}, "colbert": {"checkpoint": model, "options": {"zero_shot": True}}}
    # Without a trained CE, MiniLM with a fresh scoring head: throughput does not depend on the weights.
    table["cross_encoder"] = {"checkpoint": ce_dir or cross_encoder_dir(model), "options": {"max_matrix_pairs": 4096}}
    docs, queries = ds.doc_texts[:texts], list(ds.query_text.values())[:texts]
    rows = []
    for kind, spec in table.items():
        base: dict[str, float] = {}
        for dtype in ("float32", "auto"):
            teacher = build_teacher(TeacherSpec.model_validate({"name": kind, "kind": kind, "device": DEVICE,
                                                                "dtype": dtype, **spec}))
            for name, (op, payloads, count) in workloads(kind, docs, queries, 16).items():
                merged = [parse_request(op, {"teacher": kind, **m}) for m in merge(op, payloads)]
                teacher.run(merged[0])  # warm-up
                seconds = cuda_timed(lambda: [teacher.run(m) for m in merged], repeats=3)
                base.setdefault(name, seconds)
                rows.append({"teacher": kind, "dtype": teacher.dtype, "workload": name, "per_s": count / seconds,
                             "vs_fp32": base[name] / seconds})
            del teacher
    return rows


def training_section(model: str, dataset: str, epochs: int, max_steps: int | None, out: Path) -> list[dict[str, Any]]:
    from common.config import parse_config
    from teacher_trainer.config import TeacherJob
    from teacher_trainer.trainer import train_teacher

    jobs = {
        "ce-dual-512": {"kind": "ce", "max_length": 512},
        "ce-cls-512": {"kind": "ce", "pooling": "cls", "max_length": 512},
        "colbert": {"kind": "colbert"},
    }
    rows = []
    for name, model_cfg in jobs.items():
        job = parse_config(TeacherJob, {
            "out": out / name, "model": {"base_model": model, **model_cfg},
            "data": {"dataset": dataset, "miner": "bm25"},
            "train": {"epochs": epochs, "max_steps": max_steps, "precision": "auto", "device": DEVICE},
        }, source=f"gpu bench {name}")
        result = train_teacher(job, show_progress=True, overwrite=True).metrics
        dev = result["dev"]
        rows.append({"teacher": name, "steps": result["steps"], "device": result["device"],
                     "train_s": result["wall_s"]["training_steps"], "total_s": result["wall_s"]["total"],
                     "dev_nDCG@10_before": dev["before"]["nDCG@10"], "dev_nDCG@10_after": dev["after"]["nDCG@10"],
                     "dev_MRR@10_after": dev["after"]["MRR@10"], "bm25_dev_nDCG@10": dev["miner"]["nDCG@10"]})
        print_table(rows[-1:], list(rows[-1]))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="minilm-l6", help="dual-encoder teacher: registry name or directory")
    ap.add_argument("--dataset", default="scifact")
    ap.add_argument("--token-budget", type=int, default=default_token_budget("cuda"), help="padded tokens per length-sorted batch")
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--texts", type=int, default=1024, help="documents per kinds workload")
    ap.add_argument("--sections", nargs="+", choices=("corpus", "train", "kinds"), default=["corpus", "train", "kinds"],
                    help="what to measure (train: the CE and ColBERT teachers on the GPU; kinds uses the trained CE)")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--max-steps", type=int, default=None, help="cap on each teacher's training steps")
    ap.add_argument("--teachers-out", type=Path, default=Path("runs/teachers/gpu"))
    ap.add_argument("--device", default="cuda", help="'cpu' only smoke-tests the script")
    ap.add_argument("--matmul-n", type=int, default=8192)
    ap.add_argument("--docs", type=int, default=0, help="first N documents only (0: the whole corpus; a smoke test)")
    args = ap.parse_args()
    global DEVICE
    DEVICE = args.device
    if DEVICE.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("bench/gpu.py needs a CUDA GPU; torch sees none")
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32: TF32 would be a fourth dtype

    ds = load_beir(args.dataset)
    result: dict[str, Any] = {"args": {**vars(args), "teachers_out": str(args.teachers_out)}}
    result["matmul_tflops"] = {name: matmul_tflops(DTYPES[name], args.matmul_n) for name in DTYPE_NAMES}
    print("matmul peak TFLOP/s:", {k: round(v, 1) for k, v in result["matmul_tflops"].items()})
    if "corpus" in args.sections:
        result["corpus"] = corpus_section(args.model, ds, args.token_budget, args.k, result["matmul_tflops"], args.docs)
        print_table(result["corpus"], list(result["corpus"][0]))
        write_result("gpu", result)  # keep what is done if a later section fails
    if "train" in args.sections:
        result["training"] = training_section(args.model, args.dataset, args.epochs, args.max_steps, args.teachers_out)
        write_result("gpu", result)
    if "kinds" in args.sections:
        ce_dir = args.teachers_out / "ce-dual-512"
        result["kinds"] = kinds_section(args.model, ds, str(ce_dir) if ce_dir.is_dir() else None, args.texts)
        print_table(result["kinds"], list(result["kinds"][0]))
    print(f"wrote {write_result('gpu', result)}")


if __name__ == "__main__":
    main()
