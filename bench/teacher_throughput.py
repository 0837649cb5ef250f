"""Teacher service throughput against an in-process batched forward pass of the same model.

For each teacher kind (dual-encoder, zero-shot ColBERT, cross-encoder) it measures, with the same
model and the same torch threads:

* the baseline: the kind called in-process, one batched call (length-sorted, token budget), once
  on a quiet machine before Ray starts and again with Ray and Serve up (``ratio`` is against the
  latter, measured just before the service; ``ratio_quiet`` against the former);
* the service: the Serve deployment saturated by concurrent clients, through a handle and over
  HTTP with Arrow responses;

for encoding (texts/s), aligned pairs (pairs/s) and in-batch matrices (pairs/s), and prints the
ratio service / baseline. The cross-encoder has MiniLM's architecture with an untrained scoring
head: throughput does not depend on the weights' values, and no trained CE ships with this repo.
Writes bench/results/teacher_throughput.json.

    python bench/teacher_throughput.py [--texts 128] [--threads 2] [--concurrency 8] [--repeats 2] [--kinds dual_encoder colbert]
"""

from __future__ import annotations

import argparse
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from benchlib import print_table, timed, write_result
from common.datasets import load_beir
from teacher_service.schemas import parse_request


def saturate(call, items: list, concurrency: int) -> None:
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(call, items))


def cross_encoder_dir(model: str = "minilm-l6") -> str:
    """A CrossEncoder directory with ``model``'s encoder weights and a fresh 1-logit head."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from common.model_registry import resolve_model

    src = resolve_model(model)
    out = Path(tempfile.mkdtemp(prefix="bench-ce-"))
    AutoModelForSequenceClassification.from_pretrained(src, num_labels=1).save_pretrained(out)
    AutoTokenizer.from_pretrained(src).save_pretrained(out)
    return str(out)


def specs(kinds: list[str], threads: int) -> list[dict]:
    # The signal cache is off: this measures compute, and every repeat would otherwise be a cache hit.
    common = {"ray_actor_options": {"num_cpus": threads}, "torch_threads": threads, "cache": {"max_bytes": 0}}
    table = {
        "dual_encoder": {"name": "de", "kind": "dual_encoder", "checkpoint": "minilm-l6"},
        "colbert": {"name": "colbert", "kind": "colbert", "checkpoint": "minilm-l6", "options": {"zero_shot": True}},
        "cross_encoder": {"name": "ce", "kind": "cross_encoder", "checkpoint": "", "options": {"max_matrix_pairs": 4096}},
    }
    out = []
    for kind in kinds:
        spec = {**table[kind], **common}
        if kind == "cross_encoder":
            spec["checkpoint"] = cross_encoder_dir()
        out.append(spec)
    return out


def workloads(kind: str, docs: list[str], queries: list[str], size: int) -> dict[str, tuple[str, list[dict], int]]:
    """name -> (op, request payloads, items counted)."""
    n = len(docs)
    out = {}
    if kind != "cross_encoder":
        out["encode texts/s"] = ("encode", [{"texts": docs[i : i + size], "role": "document"} for i in range(0, n, size)], n)
    out["pairs/s"] = ("score", [{"queries": queries[i : i + size], "documents": docs[i : i + size], "mode": "pairs"}
                                for i in range(0, n, size)], n)
    b = 4  # in-batch matrix: 4 queries x 8 documents, as a training step with 1 negative and batch 4 asks
    out["matrix pairs/s"] = ("score", [{"queries": queries[i : i + b], "documents": docs[2 * i : 2 * i + 2 * b], "mode": "matrix"}
                                       for i in range(0, n // 2, b)], (n // 2) * 2 * b)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="scifact")
    ap.add_argument("--texts", type=int, default=128, help="documents per measurement")
    ap.add_argument("--threads", type=int, default=2, help="torch threads, in-process and in the replica")
    ap.add_argument("--concurrency", type=int, default=8, help="concurrent client requests")
    ap.add_argument("--request-size", type=int, default=16, help="texts per client request")
    ap.add_argument("--kinds", nargs="+", default=["dual_encoder", "colbert", "cross_encoder"])
    ap.add_argument("--repeats", type=int, default=2, help="each measurement is the best of this many runs")
    ap.add_argument("--output", default="teacher_throughput", help="name of the JSON file in bench/results/")
    args = ap.parse_args()

    ds = load_beir(args.dataset)
    docs = ds.doc_texts[: args.texts]
    queries = list(ds.query_text.values())[: args.texts]
    teacher_specs = specs(args.kinds, args.threads)

    from teacher_service.kinds import build_teacher
    from teacher_service.spec import TeacherSpec

    torch.set_num_threads(args.threads)
    teachers = {spec["name"]: build_teacher(TeacherSpec.model_validate(spec)) for spec in teacher_specs}

    def in_process(name: str, op: str, payloads: list[dict]) -> float:
        """The baseline: one batched in-process call per workload (all of its texts at once, as a
        training loop with its teacher inline would call it); best of ``--repeats``."""
        merged = merge(op, payloads)
        return timed(lambda: [teachers[name].run(parse_request(op, {"teacher": name, **m})) for m in merged], args.repeats)

    # Baselines on a quiet machine first, before Ray starts and nothing else competes for the cores.
    quiet: dict[tuple[str, str], float] = {}
    for spec in teacher_specs:
        for name, (op, payloads, _) in workloads(spec["kind"], docs, queries, args.request_size).items():
            in_process(spec["name"], op, payloads[:1])  # warm-up
            quiet[(spec["name"], name)] = in_process(spec["name"], op, payloads)

    from ray import serve

    from common.ray_runtime import init_ray
    from teacher_service.app import deploy
    from teacher_service.client import TeacherClient
    from teacher_service.spec import ServiceConfig

    init_ray(num_cpus=args.threads * len(teacher_specs) + 2)  # every replica must fit at once
    deploy(ServiceConfig.model_validate({"teachers": teacher_specs}), http_options={"host": "127.0.0.1", "port": 8000})
    clients = {"handle": TeacherClient.from_serve(), "HTTP (Arrow)": TeacherClient.from_url("http://127.0.0.1:8000", arrow=True)}
    rows = []
    for spec in teacher_specs:
        for name, (op, payloads, count) in workloads(spec["kind"], docs, queries, args.request_size).items():
            # The same baseline again with Ray and Serve up and idle, just before the service is
            # measured: the machine an inline teacher in a Ray Train worker shares. Ray's own
            # processes take a few percent of a 2-core machine whether or not a request is served.
            base = in_process(spec["name"], op, payloads)
            q = quiet[(spec["name"], name)]
            rows.append({"teacher": spec["kind"], "workload": name, "path": "in-process (baseline)",
                         "per_s": count / base, "ratio": 1.0, "ratio_quiet": q / base})
            for path, client in clients.items():
                def call(payload, client=client, op=op):
                    return client._submit(op, {"teacher": spec["name"], **payload}).result()

                call(payloads[0])  # warm-up
                t = timed(lambda: saturate(call, payloads, args.concurrency), args.repeats)
                rows.append({"teacher": spec["kind"], "workload": name, "path": path, "per_s": count / t,
                             "ratio": base / t, "ratio_quiet": q / t})
    serve.shutdown()

    print(f"\n{len(docs)} {args.dataset} documents, {args.threads} torch threads, "
          f"{args.concurrency} concurrent requests of {args.request_size} texts, best of {args.repeats}; "
          "ratio: over the in-process baseline with Ray up, ratio_quiet: over it before Ray started")
    print_table(rows, ["teacher", "workload", "path", "per_s", "ratio", "ratio_quiet"])
    print(f"wrote {write_result(args.output, {'args': vars(args), 'rows': rows})}")


def merge(op: str, payloads: list[dict]) -> list[dict]:
    """The baseline's batching: one call with every text of the workload (matrix requests stay
    separate: each is its own in-batch matrix)."""
    if op == "encode":
        return [{"texts": [t for p in payloads for t in p["texts"]], "role": payloads[0]["role"]}]
    if payloads[0]["mode"] == "pairs":
        return [{"queries": [q for p in payloads for q in p["queries"]],
                 "documents": [d for p in payloads for d in p["documents"]], "mode": "pairs"}]
    return payloads


if __name__ == "__main__":
    main()
