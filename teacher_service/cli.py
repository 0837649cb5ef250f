"""``tightdistill serve``: run the teacher service until Ctrl-C (or answer one sample request)."""

from __future__ import annotations

import argparse
import json
import signal
import threading
from pathlib import Path

DEFAULT_CONFIG = Path("deploy/teachers.yaml")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve",
        help="serve frozen teachers (scores and embeddings) over HTTP and Ray handles",
        description="Deploy the teachers declared in a Serve config (deploy/teachers.yaml) on an embedded local Ray "
        "(or the cluster at --address) and serve them on http://127.0.0.1:8000 until Ctrl-C.",
    )
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="Serve config YAML (default: %(default)s)")
    p.add_argument("--address", default=None, help="join this Ray cluster ('auto' or host:port) instead of starting one")
    p.add_argument("--host", default=None, help="HTTP host (default: the config's, 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="HTTP port (default: the config's, 8000)")
    p.add_argument("--sample", action="store_true", help="answer one sample request, print it and exit (a smoke check)")
    p.set_defaults(handler=serve_command)


def serve_command(args: argparse.Namespace) -> int:
    from ray import serve

    from common.ray_runtime import init_ray
    from teacher_service.app import ServeFile, deploy
    from teacher_service.client import TeacherClient

    serve_file = ServeFile(args.config)  # parse before starting Ray: config errors come first
    http = dict(serve_file.http_options)
    if args.host:
        http["host"] = args.host
    if args.port:
        http["port"] = args.port
    init_ray(args.address)
    deploy(serve_file.config, serve_file.app_name, serve_file.route_prefix, http)
    url = f"http://{http['host']}:{http['port']}"
    client = TeacherClient.from_url(url, token=_token(serve_file))
    names = [t["name"] for t in client.teachers()]
    print(f"teacher service up at {url} (app '{serve_file.app_name}'), teachers: {', '.join(names)}", flush=True)
    if args.sample:
        _sample(client, names)
        serve.shutdown()
        return 0
    print(f"try: curl -s {url}/v1/teachers ; Ctrl-C to stop", flush=True)
    stop = threading.Event()
    # Both signals stop the service cleanly; SIGINT explicitly too, because a shell starts
    # background jobs with SIGINT ignored and `kill -INT` would otherwise do nothing.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    print("stopping the teacher service", flush=True)
    serve.shutdown()
    return 0


def _token(serve_file) -> str | None:
    import os

    return os.environ.get(serve_file.config.auth_token_env) or None


def _sample(client, names: list[str]) -> None:
    queries = ["how are glacier caves formed?"]
    documents = ["A glacier cave is a cave formed within the ice of a glacier.", "The stock market fell sharply on Monday."]
    for name in names:
        scores = client.score(queries, documents, mode="matrix", teacher=name)
        print(json.dumps({"teacher": name, "query": queries[0], "documents": documents, "scores": [round(float(x), 4) for x in scores[0]]}))
