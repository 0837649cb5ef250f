"""Corpus encoding efficiency: length-sorted token-budget batching against naive batching, and the
fraction of the machine's measured matmul FLOP/s that the teacher's forward pass reaches.

Same model (the packaged all-MiniLM-L6-v2 teacher), same texts (a seeded sample of the corpus, or
all of it with ``--docs 0``), same torch threads, in one process, one after the other:

* **naive**: batches of ``--batch-size`` texts in corpus order, each padded to its longest text
  (what a plain ``for i in range(0, n, 32)`` loop over a tokenizer does);
* **naive, padded to max_length**: the same with every text padded to the truncation length;
* **length-sorted**: ``TextEncoder.encode`` (sorted by length, batches capped by padded tokens),
  what the teacher service runs.

The physical limit: FLOPs of the forward pass (linear layers: 2 x parameters x tokens; attention:
4 x length^2 x hidden per layer and text, counted over the tokens actually computed, padding
included) divided by the wall time, against the best of a few large fp32 matmuls with the same
threads. Writes bench/results/encoding_efficiency.json.

Scifact's abstracts are long: at the teacher's 256-token truncation most of them hit the cap, so
sorting can save little there; ``--max-length 512`` shows the gain where lengths vary.

    python bench/encoding_efficiency.py [--docs 1024] [--threads 2] [--max-length 512]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from benchlib import print_table, timed, write_result
from common.batching import plan_batches
from common.datasets import load_beir
from common.text_encoder import TextEncoder


def matmul_gflops(threads: int, n: int = 1536, repeats: int = 5) -> float:
    """The machine's fp32 matmul rate with ``threads`` threads (best of ``repeats``)."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)  # warm-up
    best = timed(lambda: torch.mm(a, b), repeats=repeats)
    return 2 * n**3 / best / 1e9


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


def run_plan(encoder: TextEncoder, ids: list[list[int]], plan: list[np.ndarray], pad_to: int | None) -> float:
    """Wall time of encoding ``ids`` batch by batch as ``plan`` says (optionally padded to ``pad_to``)."""
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

    return timed(go)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="scifact")
    ap.add_argument("--docs", type=int, default=1024, help="seeded sample of documents (0: the whole corpus)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32, help="naive batch size")
    ap.add_argument("--max-length", type=int, default=None, help="truncation in tokens (default: the model's, 256)")
    ap.add_argument("--token-budget", type=int, default=16384, help="padded tokens per length-sorted batch")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    texts = load_beir(args.dataset).doc_texts
    if args.docs:
        rng = np.random.default_rng(0)
        texts = [texts[i] for i in sorted(rng.choice(len(texts), min(args.docs, len(texts)), replace=False))]
    encoder = TextEncoder.from_pretrained("minilm-l6").eval()
    if args.max_length:
        encoder.max_length = args.max_length
    ids = encoder.tokenize(texts)
    lengths = [len(x) for x in ids]
    peak = matmul_gflops(args.threads)

    plans = {
        f"naive (batches of {args.batch_size}, corpus order)": (plan_batches(lengths, 10**12, args.batch_size, sort=False), None),
        f"naive, padded to {encoder.max_length}": (plan_batches(lengths, 10**12, args.batch_size, sort=False), encoder.max_length),
        "length-sorted, token budget": (plan_batches(lengths, args.token_budget, 256, sort=True), None),
    }
    run_plan(encoder, ids, plans["length-sorted, token budget"][0][:2], None)  # warm-up
    rows = []
    for name, (plan, pad_to) in plans.items():
        t0 = time.perf_counter()
        seconds = run_plan(encoder, ids, plan, pad_to)
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
          f"{args.threads} threads; fp32 matmul peak measured {peak:.1f} GFLOP/s")
    print_table(rows, ["batching", "texts_per_s", "speedup_vs_naive", "padded_tokens", "gflops_computed", "fraction_of_matmul_peak"])
    name = "encoding_efficiency" + (f"_len{args.max_length}" if args.max_length else "")
    print(f"wrote {write_result(name, {'args': vars(args), 'max_length': encoder.max_length, 'matmul_gflops': peak, 'rows': rows})}")


if __name__ == "__main__":
    main()
