"""Corpus encoding efficiency: length-sorted token-budget batching against naive batching, and the
fraction of the machine's measured matmul FLOP/s that the teacher's forward pass reaches.

Same model (the packaged all-MiniLM-L6-v2 teacher), same texts (a seeded sample of the corpus, or
all of it with ``--docs 0``), same torch threads, in one process, one after the other:

* **naive**: batches of ``--batch-size`` texts in corpus order, each padded to its longest text
  (what a plain ``for i in range(0, n, 32)`` loop over a tokenizer does);
* **naive, padded to max_length**: the same with every text padded to the truncation length;
* **length-sorted**: ``TextEncoder.encode`` (sorted by length, batches capped by padded tokens),
  what the teacher service runs, at each of ``--budgets`` padded tokens per pass (the CPU default,
  2,048, among them: smaller passes whose activations stay in cache run faster on a CPU).

The physical limit: FLOPs of the forward pass (linear layers: 2 x parameters x tokens; attention:
4 x length^2 x hidden per layer and text, counted over the tokens actually computed, padding
included) divided by the wall time, against the best of a few large matmuls in the same dtype
with the same threads. ``--device cuda --dtype bfloat16`` measures the same on a GPU. Writes
bench/results/encoding_efficiency[_len<N>][_<device>_<dtype>].json.

Scifact's abstracts are long: at the teacher's 256-token truncation most of them hit the cap, so
sorting can save little there; ``--max-length 512`` shows the gain where lengths vary.

    python bench/encoding_efficiency.py [--docs 1024] [--threads 2] [--max-length 512] [--budgets 1024 2048 16384]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from benchlib import print_table, timed, write_result
from common.batching import default_token_budget, plan_batches
from common.datasets import load_beir
from common.text_encoder import DTYPES, TextEncoder


def synced(fn: Callable[[], Any], device: str) -> Callable[[], Any]:
    """``fn`` that returns only when ``device`` has finished its work (GPU kernels run async)."""
    if not device.startswith("cuda"):
        return fn

    def run() -> None:
        fn()
        torch.cuda.synchronize()

    return run


def matmul_gflops(threads: int, repeats: int = 5, device: str = "cpu", dtype: str = "float32") -> float:
    """The machine's matmul rate in ``dtype`` with ``threads`` threads (best of ``repeats``), on
    1,536-wide matrices on a CPU and 8,192-wide on a GPU, which needs them to reach its peak."""
    torch.set_num_threads(threads)
    n = 8192 if device.startswith("cuda") else 1536
    a = torch.randn(n, n, device=device, dtype=DTYPES[dtype])
    b = torch.randn(n, n, device=device, dtype=DTYPES[dtype])
    mm = synced(lambda: torch.mm(a, b), device)
    mm()  # warm-up
    return 2 * n**3 / timed(mm, repeats=repeats) / 1e9


def forward_flops(encoder: TextEncoder, batches: list[tuple[int, int]]) -> float:
    """FLOPs of the encoder's forward pass over ``(batch_size, padded_length)`` batches."""
    cfg = encoder.model.config
    embedding = sum(p.numel() for p in encoder.model.embeddings.parameters())
    linear = sum(p.numel() for p in encoder.model.parameters()) - embedding
    total = 0.0
    for size, length in batches:
        tokens = size * length
        total += 2 * linear * tokens  # every weight once per token: multiply + add
        total += cfg.num_hidden_layers * 4 * size * length**2 * cfg.hidden_size  # QK^T and AV
    return total


def run_plan(encoder: TextEncoder, ids: list[list[int]], plan: list[np.ndarray], pad_to: int | None, repeats: int = 1) -> float:
    """Wall time of encoding ``ids`` batch by batch as ``plan`` says (optionally padded to
    ``pad_to``), best of ``repeats``."""
    pad_id = encoder.tokenizer.pad_token_id or 0

    def go() -> None:
        with torch.inference_mode():
            for index in plan:
                batch = encoder.collate([ids[i] for i in index])
                if pad_to is not None and batch["input_ids"].shape[1] < pad_to:
                    extra = pad_to - batch["input_ids"].shape[1]
                    batch = {"input_ids": torch.nn.functional.pad(batch["input_ids"], (0, extra), value=pad_id),
                             "attention_mask": torch.nn.functional.pad(batch["attention_mask"], (0, extra), value=0)}
                encoder(**batch)

    return timed(synced(go, str(encoder.device)), repeats)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="scifact")
    ap.add_argument("--docs", type=int, default=1024, help="seeded sample of documents (0: the whole corpus)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32, help="naive batch size")
    ap.add_argument("--max-length", type=int, default=None, help="truncation in tokens (default: the model's, 256)")
    ap.add_argument("--budgets", type=int, nargs="+", default=[1024, default_token_budget("cpu"), 4096, 16384],
                    help="padded tokens per length-sorted batch, one row each")
    ap.add_argument("--model", default="minilm-l6", help="registry name or checkpoint directory")
    ap.add_argument("--device", default="cpu", help="'cpu' or 'cuda'")
    ap.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    ap.add_argument("--repeats", type=int, default=1, help="each plan's time is the best of this many runs")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    texts = load_beir(args.dataset).doc_texts
    if args.docs:
        rng = np.random.default_rng(0)
        texts = [texts[i] for i in sorted(rng.choice(len(texts), min(args.docs, len(texts)), replace=False))]
    encoder = TextEncoder.from_pretrained(args.model, device=args.device, dtype=args.dtype).eval()
    if args.max_length:
        encoder.max_length = args.max_length
    ids = encoder.tokenize(texts)
    lengths = [len(x) for x in ids]
    peak = matmul_gflops(args.threads, device=args.device, dtype=args.dtype)

    plans = {
        f"naive (batches of {args.batch_size}, corpus order)": (plan_batches(lengths, 10**12, args.batch_size, sort=False), None),
        f"naive, padded to {encoder.max_length}": (plan_batches(lengths, 10**12, args.batch_size, sort=False), encoder.max_length),
        **{f"length-sorted, {budget}-token passes": (plan_batches(lengths, budget, 256, sort=True), None) for budget in args.budgets},
    }
    if args.device.startswith("cuda"):  # kernel choice and the allocator's pools are per shape: warm every plan
        for plan, pad_to in plans.values():
            run_plan(encoder, ids, plan, pad_to)
    else:
        run_plan(encoder, ids, plan_batches(lengths, args.budgets[0], 256)[:2], None)
    rows = []
    for name, (plan, pad_to) in plans.items():
        t0 = time.perf_counter()
        seconds = run_plan(encoder, ids, plan, pad_to, args.repeats)
        shapes = [(len(ix), pad_to or max(lengths[i] for i in ix)) for ix in plan]
        computed = forward_flops(encoder, shapes)
        useful = forward_flops(encoder, [(1, n) for n in lengths])
        rows.append({"batching": name, "texts_per_s": len(ids) / seconds, "seconds": seconds,
                     "padded_tokens": sum(s * n for s, n in shapes), "gflops_computed": computed / seconds / 1e9,
                     "useful_gflops": useful / seconds / 1e9, "fraction_of_matmul_peak": computed / seconds / 1e9 / peak,
                     "wall_s": time.perf_counter() - t0})
    base = rows[0]["texts_per_s"]
    for row in rows:
        row["speedup_vs_naive"] = row["texts_per_s"] / base

    print(f"\n{len(ids)} {args.dataset} documents ({sum(lengths)} real tokens, mean {np.mean(lengths):.0f}), "
          f"{args.threads} threads, {args.device} {args.dtype}; matmul peak measured {peak:.1f} GFLOP/s")
    print_table(rows, ["batching", "texts_per_s", "speedup_vs_naive", "padded_tokens", "gflops_computed", "fraction_of_matmul_peak"])
    name = "encoding_efficiency" + (f"_len{args.max_length}" if args.max_length else "")
    name += "" if args.device == "cpu" and args.dtype == "float32" else f"_{args.device.split(':')[0]}_{args.dtype}"
    print(f"wrote {write_result(name, {'args': vars(args), 'max_length': encoder.max_length, 'matmul_gflops': peak, 'rows': rows})}")


if __name__ == "__main__":
    main()
