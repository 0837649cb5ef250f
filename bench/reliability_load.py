"""Load on one teacher app: concurrent HTTP clients and trainers, a fixed number of requests.

Phase ``normal``: 8 HTTP clients (plain ``requests``, no retries, rotating over ``/v1/encode``,
``/v1/score`` and ``/v1/signals``) and 2 trainers (2 threads each calling
``TeacherClient.from_serve().signals(queries, documents)`` in a loop, as Ray Train workers do)
against one teacher with the default queue limits, for ``--rounds`` rounds of the same requests.
It reports failed requests (any exception or non-200; expected 0), p50/p99 latency per caller
kind, throughput, and the RSS of the teacher replica (pid from its ``stats()``), the HTTP
ingress replica and the Serve proxy after every round (stable = no growth after round 1).

Phase ``overload``: the same callers, all through ``TeacherClient.from_url`` (HttpTransport
retries 429 after ``Retry-After`` with backoff), against the same teacher deployed with tiny
queue limits. It reports the 429s answered, failures (expected 0) and latency: overload slows
callers but fails none. A few more callers use Ray handles, past the same limit, to show what
handle users get (``TeacherClient.from_serve`` does not retry; trainers' ``TeacherSignalSource`` does).

Everything runs on an embedded local Ray bound to 127.0.0.1, stops by itself (``--max-seconds``
bounds it) and writes bench/results/reliability_load.json.

    python bench/reliability_load.py [--teacher minilm-l6] [--rounds 5] [--requests 5] [--name reliability_load]
"""

from __future__ import annotations

import argparse
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from benchlib import print_table, write_result
from common.datasets import load_beir
from reliability_lib import our_processes, percentile, replica_stats, rss_mib, start_local_serve

APP, OVER_APP, TEACHER = "rel-load", "rel-load-over", "t"


def text_pools(dataset: str, doc_chars: int) -> tuple[list[str], list[str]]:
    ds = load_beir(dataset)
    return list(ds.query_text.values()), [t[:doc_chars] for t in ds.doc_texts]


def http_payloads(queries: list[str], docs: list[str], caller: int, n: int, batch: int) -> list[tuple[str, dict]]:
    """Caller ``caller``'s ``n`` requests, the same in every round: encode, score and signals in turn."""
    out = []
    for i in range(n):
        k = (caller * n + i) * batch
        q = [queries[(k + j) % len(queries)] for j in range(batch // 2)]
        d = [docs[(k + j) % len(docs)] for j in range(batch)]
        out.append([("encode", {"texts": d, "role": "document"}),
                    ("score", {"queries": q, "documents": d[: len(q)], "mode": "pairs"}),
                    ("signals", {"queries": q, "documents": d, "mode": "matrix"})][i % 3])
    return [(op, {"teacher": TEACHER, **body}) for op, body in out]


def trainer_batches(queries: list[str], docs: list[str], trainer: int, thread: int, n: int,
                    batch: int) -> list[tuple[list[str], list[str]]]:
    """A trainer thread's ``n`` in-batch requests: ``batch`` queries with a positive and a
    negative document each, the layout a training step sends."""
    out = []
    for i in range(n):
        k = ((trainer * 2 + thread) * n + i) * batch
        out.append(([queries[(k + j) % len(queries)] for j in range(batch)],
                    [docs[(2 * k + j) % len(docs)] for j in range(2 * batch)]))
    return out


def timed_calls(calls: list[Any], run_one) -> list[dict[str, Any]]:
    """Run ``calls`` one after the other; per call: latency, success, error type."""
    out = []
    for call in calls:
        start = time.perf_counter()
        try:
            run_one(call)
            out.append({"s": time.perf_counter() - start, "ok": True})
        except Exception as exc:  # noqa: BLE001 - a failure is a result here, counted and reported
            out.append({"s": time.perf_counter() - start, "ok": False, "error": f"{type(exc).__name__}: {str(exc)[:120]}"})
    return out


def run_callers(callers: dict[str, tuple[list[Any], Any]]) -> dict[str, list[dict[str, Any]]]:
    """Start every caller at the same instant (one thread each) and wait for all of them."""
    gate = threading.Barrier(len(callers))

    def go(item):
        name, (calls, run_one) = item
        gate.wait()
        return name, timed_calls(calls, run_one)

    with ThreadPoolExecutor(len(callers)) as pool:
        return dict(pool.map(go, callers.items()))


def summarize(results: dict[str, list[dict[str, Any]]], wall_s: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    kinds = sorted({name.split("-")[0] for name in results})
    for kind in [*kinds, "all"]:  # "all": the HTTP clients and trainers (not the handle probe)
        rows = [r for name, rs in results.items() for r in rs
                if name.split("-")[0] == kind or (kind == "all" and not name.startswith("handle"))]
        lat = [1000 * r["s"] for r in rows if r["ok"]]
        out[kind] = {"requests": len(rows), "failed": sum(not r["ok"] for r in rows),
                     "p50_ms": percentile(lat, 50), "p99_ms": percentile(lat, 99), "max_ms": max(lat, default=float("nan"))}
    out["all"]["throughput_rps"] = out["all"]["requests"] / wall_s
    errors = Counter(f"{name.split('-')[0]}: {r['error']}" for name, rs in results.items() for r in rs if not r["ok"])
    out["errors"] = dict(errors.most_common(5))
    return out


def memory(app: str) -> dict[str, float]:
    """RSS (MiB) of the teacher replica, the app's HTTP ingress replica and the Serve proxy."""
    out = {"replica": rss_mib(replica_stats(app, TEACHER)["pid"])}
    for role, needle in (("ingress", f"ServeReplica:{app}:TeacherAPI"), ("proxy", "ProxyActor")):
        procs = our_processes(needle)
        if procs:
            out[role] = sum(p.memory_info().rss for p in procs) / 2**20
    return out


def deploy_teacher(name: str, args: argparse.Namespace, port: int, **limits: Any) -> str:
    from teacher_service.app import deploy
    from teacher_service.spec import ServiceConfig

    spec = {"name": TEACHER, "kind": "dual_encoder", "checkpoint": args.teacher, "cache": {"max_bytes": 0},
            "ray_actor_options": {"num_cpus": 1}, "torch_threads": args.threads, **limits}
    deploy(ServiceConfig.model_validate({"teachers": [spec]}), app_name=name, route_prefix=f"/{name}",
           http_options={"host": "127.0.0.1", "port": port})
    return f"http://127.0.0.1:{port}/{name}"


def normal_phase(args: argparse.Namespace, url: str, queries: list[str], docs: list[str], deadline: float) -> dict[str, Any]:
    import requests

    from teacher_service.client import TeacherClient

    handle_client = TeacherClient.from_serve(APP, teacher=TEACHER)
    sessions = [requests.Session() for _ in range(args.http_clients)]

    def http_call(session):
        def call(item):
            op, body = item
            resp = session.post(f"{url}/v1/{op}", json=body, timeout=300)
            if resp.status_code != 200:
                raise RuntimeError(f"HTTP {resp.status_code}: {resp.text[:100]}")
        return call

    def trainer_call(item):
        q, d = item
        out = handle_client.signals(q, d)
        assert out["scores"].shape == (len(q), len(d)) and np.isfinite(out["scores"]).all()

    callers: dict[str, tuple[list[Any], Any]] = {}
    for c in range(args.http_clients):
        callers[f"http-{c}"] = (http_payloads(queries, docs, c, args.requests, args.batch), http_call(sessions[c]))
    for t in range(args.trainers):
        for th in range(args.trainer_threads):
            callers[f"trainer-{t}.{th}"] = (trainer_batches(queries, docs, t, th, args.requests, args.batch), trainer_call)

    run_callers({name: (calls[:1], fn) for name, (calls, fn) in callers.items()})  # warm-up, not measured
    rounds, mem = [], [memory(APP)]
    for r in tqdm(range(args.rounds), desc="normal load", unit="round"):
        if time.monotonic() > deadline:
            break
        start = time.perf_counter()
        results = run_callers(callers)
        rounds.append({"round": r + 1, **summarize(results, time.perf_counter() - start), "results": results})
        mem.append(memory(APP))
    merged = {name: [x for rd in rounds for x in rd["results"][name]] for name in callers}
    for rd in rounds:
        del rd["results"]
    return {"rounds": rounds, "total": summarize(merged, sum(rd["all"]["requests"] / rd["all"]["throughput_rps"] for rd in rounds)),
            "rss_mib": mem, "rss_growth_after_round_1_mib": {k: mem[-1][k] - mem[1][k] for k in mem[1]} if len(mem) > 2 else None}


def overload_phase(args: argparse.Namespace, url: str, queries: list[str], docs: list[str]) -> dict[str, Any]:
    from teacher_service.client import TeacherClient

    statuses: Counter = Counter()
    lock = threading.Lock()

    def http_client() -> TeacherClient:
        client = TeacherClient.from_url(url, teacher=TEACHER, retries=args.retries, backoff_s=0.2)

        def note(resp, *a, **k):
            with lock:
                statuses[resp.status_code] += 1

        client.transport.session.hooks["response"].append(note)
        return client

    def encode_call(client):
        def call(item):
            op, body = item
            client._submit(op, dict(body)).result()
        return call

    def signals_call(client):
        return lambda item: client.signals(*item)

    callers: dict[str, tuple[list[Any], Any]] = {}
    for c in range(args.http_clients):
        callers[f"http-{c}"] = (http_payloads(queries, docs, c, args.requests, args.batch), encode_call(http_client()))
    for t in range(args.trainers):
        for th in range(args.trainer_threads):
            callers[f"trainer-{t}.{th}"] = (trainer_batches(queries, docs, t, th, args.requests, args.batch),
                                            signals_call(http_client()))
    # Handle callers share this process's router, whose queue limit they exceed together.
    handle = TeacherClient.from_serve(OVER_APP, teacher=TEACHER)
    for h in range(args.max_ongoing + args.max_queued + 2):
        callers[f"handle-{h}"] = (trainer_batches(queries, docs, 9, h, 1, args.batch), signals_call(handle))
    start = time.perf_counter()
    results = run_callers(callers)
    summary = summarize(results, time.perf_counter() - start)
    return {**summary, "http_statuses": {str(k): v for k, v in sorted(statuses.items())}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", default="minilm-l6", help="teacher checkpoint (registry name or directory)")
    ap.add_argument("--dataset", default="scifact")
    ap.add_argument("--doc-chars", type=int, default=400, help="documents cut to this many characters")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the replica")
    ap.add_argument("--http-clients", type=int, default=8)
    ap.add_argument("--trainers", type=int, default=2)
    ap.add_argument("--trainer-threads", type=int, default=2)
    ap.add_argument("--requests", type=int, default=5, help="requests per caller per round")
    ap.add_argument("--batch", type=int, default=8, help="texts per HTTP request; queries per trainer request")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--max-ongoing", type=int, default=2, help="overload phase: the replica's max_ongoing_requests")
    ap.add_argument("--max-queued", type=int, default=2, help="overload phase: max_queued_requests")
    ap.add_argument("--retries", type=int, default=10, help="overload phase: HttpTransport retries")
    ap.add_argument("--max-seconds", type=float, default=1800, help="no new round starts after this")
    ap.add_argument("--name", default="reliability_load", help="result file: bench/results/<name>.json")
    args = ap.parse_args()

    from ray import serve

    deadline = time.monotonic() + args.max_seconds
    queries, docs = text_pools(args.dataset, args.doc_chars)
    port = start_local_serve()
    url = deploy_teacher(APP, args, port)
    normal = normal_phase(args, url, queries, docs, deadline)
    serve.delete(APP)
    over_url = deploy_teacher(OVER_APP, args, port, max_ongoing_requests=args.max_ongoing, max_queued_requests=args.max_queued)
    overload = overload_phase(args, over_url, queries, docs)
    serve.shutdown()

    rows = [{"phase": "normal", "round": rd["round"], **{k: rd["all"][k] for k in ("requests", "failed", "p50_ms", "p99_ms")},
             "rps": rd["all"]["throughput_rps"], **{f"rss_{k}_mib": v for k, v in normal["rss_mib"][rd["round"]].items()}}
            for rd in normal["rounds"]]
    rows.append({"phase": "overload", **{k: overload["all"][k] for k in ("requests", "failed", "p50_ms", "p99_ms")},
                 "rps": overload["all"]["throughput_rps"]})
    print_table(rows, ["phase", "round", "requests", "failed", "p50_ms", "p99_ms", "rps", "rss_replica_mib", "rss_ingress_mib", "rss_proxy_mib"])
    print("normal, by caller:", {k: v for k, v in normal["total"].items() if k not in ("errors",)})
    print("overload HTTP statuses:", overload["http_statuses"], "errors:", overload["errors"])
    print(f"wrote {write_result(args.name, {'args': vars(args), 'normal': normal, 'overload': overload})}")


if __name__ == "__main__":
    main()
