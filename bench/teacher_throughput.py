"""Teacher service throughput against an in-process batched forward pass of the same model.

Measures texts/s of (a) the model called in-process with length-sorted batching (the baseline),
(b) the Serve deployment through a handle and (c) over HTTP with Arrow responses, both saturated
by concurrent clients; and pairs/s of pair scoring. Same model, same torch threads. Prints the
ratios and writes bench/results/teacher_throughput.json.

    python bench/teacher_throughput.py [--texts 256] [--threads 2] [--concurrency 8]
"""

from __future__ import annotations

import argparse
from concurrent.futures import ThreadPoolExecutor

import torch

from benchlib import print_table, timed, write_result
from common.datasets import load_beir


def saturate(call, batches: list, concurrency: int) -> None:
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(call, batches))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="minilm-l6")
    ap.add_argument("--dataset", default="scifact")
    ap.add_argument("--texts", type=int, default=256, help="documents per measurement")
    ap.add_argument("--threads", type=int, default=2, help="torch threads, in-process and in the replica")
    ap.add_argument("--concurrency", type=int, default=8, help="concurrent client requests")
    ap.add_argument("--request-size", type=int, default=16, help="texts per client request")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    ds = load_beir(args.dataset)
    docs = ds.doc_texts[: args.texts]
    queries = list(ds.query_text.values())[: args.texts]
    chunks = [docs[i : i + args.request_size] for i in range(0, len(docs), args.request_size)]
    pair_chunks = [(queries[i : i + args.request_size], docs[i : i + args.request_size]) for i in range(0, len(docs), args.request_size)]

    # (a) baseline first, before Ray starts, so nothing else competes for the cores.
    from teacher_service.kinds import build_teacher
    from teacher_service.spec import TeacherSpec

    spec = TeacherSpec(name="bench", kind="dual_encoder", checkpoint=args.model,
                       ray_actor_options={"num_cpus": args.threads}, torch_threads=args.threads)
    torch.set_num_threads(args.threads)
    teacher = build_teacher(spec)
    encoder = teacher.encoder
    encoder.encode(docs[:16])  # warm-up
    t_base = timed(lambda: encoder.encode(docs, token_budget=spec.token_budget), args.repeats)
    t_base_pairs = timed(lambda: (encoder.encode(queries, token_budget=spec.token_budget),
                                  encoder.encode(docs, token_budget=spec.token_budget)), 1)
    del teacher, encoder

    from ray import serve

    from common.ray_runtime import init_ray
    from teacher_service.app import deploy
    from teacher_service.client import TeacherClient
    from teacher_service.spec import ServiceConfig

    init_ray(num_cpus=args.threads + 2)
    deploy(ServiceConfig(teachers=[spec]), http_options={"host": "127.0.0.1", "port": 8000})
    handle = TeacherClient.from_serve(teacher="bench")
    http = TeacherClient.from_url("http://127.0.0.1:8000", teacher="bench", arrow=True)
    saturate(lambda c: handle.encode(c, role="document"), chunks[:2], 2)  # warm-up
    t_handle = timed(lambda: saturate(lambda c: handle.encode(c, role="document"), chunks, args.concurrency), args.repeats)
    t_http = timed(lambda: saturate(lambda c: http.encode(c, role="document"), chunks, args.concurrency), args.repeats)
    t_pairs = timed(lambda: saturate(lambda qd: handle.score(*qd, mode="pairs"), pair_chunks, args.concurrency), 1)
    serve.shutdown()

    n = len(docs)
    rows = [
        {"path": "in-process batched forward (baseline)", "texts_per_s": n / t_base, "ratio": 1.0},
        {"path": "service via handle", "texts_per_s": n / t_handle, "ratio": t_base / t_handle},
        {"path": "service via HTTP (Arrow)", "texts_per_s": n / t_http, "ratio": t_base / t_http},
        {"path": "in-process pairs (baseline)", "pairs_per_s": n / t_base_pairs, "ratio": 1.0},
        {"path": "service pairs via handle", "pairs_per_s": n / t_pairs, "ratio": t_base_pairs / t_pairs},
    ]
    print(f"\nteacher {args.model}, {n} {args.dataset} documents, {args.threads} threads, "
          f"{args.concurrency} concurrent requests of {args.request_size} texts")
    print_table(rows, ["path", "texts_per_s", "pairs_per_s", "ratio"])
    path = write_result("teacher_throughput", {"args": vars(args), "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
