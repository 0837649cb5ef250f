"""Security of the HTTP API: loopback binding unless told otherwise, bearer-token auth compared in
constant time on every route but /healthz, no route that loads a model or unpickles what a
request sends, and a body cap that stops reading an endless upload."""

from __future__ import annotations

import ast
import asyncio
import hmac
import inspect
import pickle
import select
import socket
import textwrap
import time
from pathlib import Path

import psutil
import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]


# --- binding ---------------------------------------------------------------------------------
def non_loopback_ipv4() -> list[str]:
    return [a.address for addrs in psutil.net_if_addrs().values() for a in addrs
            if a.family == socket.AF_INET and not a.address.startswith("127.")]


def listening_ips(port: int) -> set[str]:
    return {c.laddr.ip for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN and c.laddr.port == port}


def test_http_proxy_listens_on_loopback_only(teacher_app, http_port):
    assert listening_ips(http_port) == {"127.0.0.1"}
    for ip in non_loopback_ipv4():  # this host's other addresses refuse the port
        with pytest.raises(OSError):
            socket.create_connection((ip, http_port), timeout=2).close()


def test_embedded_ray_requires_its_auth_token(ray_session):
    """Ray's own ports are not loopback-only: Ray 2.60 turns ``_node_ip_address="127.0.0.1"``
    (common/ray_runtime.py) into the host's routable address and its GCS listens on every
    interface. What guards them is Ray's token authentication, on by default for a new local
    cluster; a user who sets RAY_AUTH_MODE=disabled opens them to the network."""
    import ray
    from ray._private.authentication.authentication_utils import is_token_auth_enabled

    gcs_port = int(ray.get_runtime_context().gcs_address.rsplit(":", 1)[1])
    assert listening_ips(gcs_port), "no GCS listener found"
    assert is_token_auth_enabled()


def test_configs_and_cli_default_to_loopback(tmp_path):
    from common.cli import build_parser
    from teacher_service.app import DEFAULT_HTTP, ServeFile

    assert DEFAULT_HTTP["host"] == "127.0.0.1"
    bare = tmp_path / "serve.yaml"  # no http_options at all
    bare.write_text("applications:\n  - name: t\n    import_path: teacher_service.app:build_app\n"
                    "    args: {teachers: [{name: m, kind: dual_encoder, checkpoint: minilm-l6}]}\n")
    assert ServeFile(bare).http_options["host"] == "127.0.0.1"
    for name in ("teachers.yaml", "teachers.all-kinds.yaml"):  # the laptop configs (the GPU/K8s ones opt out, tokened)
        assert ServeFile(ROOT / "deploy" / name).http_options["host"] == "127.0.0.1", name
    assert build_parser().parse_args(["serve"]).host is None  # --host only overrides when given


# --- token auth ------------------------------------------------------------------------------
def test_guard_compares_tokens_with_hmac_compare_digest(monkeypatch):
    """The guard, run in-process on a real request scope, decides through hmac.compare_digest,
    and its source compares the token with no ``==``/``!=`` (which stops at the first mismatch)."""
    from teacher_service import http_api

    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(http_api.hmac, "compare_digest", spy)
    monkeypatch.setattr(http_api.GuardMiddleware, "token", "s3cret")
    reached: list[bool] = []

    async def app(scope, receive, send):
        reached.append(True)

    async def call(authorization: bytes) -> int:
        sent: list[dict] = []

        async def receive():
            return {"type": "http.request", "body": b"{}", "more_body": False}

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": "/v1/encode", "root_path": "", "headers": [(b"authorization", authorization)]}
        await http_api.GuardMiddleware(app)(scope, receive, send)
        return sent[0]["status"] if sent else 200

    assert asyncio.run(call(b"Bearer s3creX")) == 401 and not reached
    assert asyncio.run(call(b"Bearer s3cret")) == 200 and reached
    assert calls == [(b"Bearer s3creX", b"Bearer s3cret"), (b"Bearer s3cret", b"Bearer s3cret")]

    tree = ast.parse(textwrap.dedent(inspect.getsource(http_api.GuardMiddleware.__call__)))
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and any(isinstance(op, (ast.Eq, ast.NotEq)) for op in node.ops):
            names = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)} | {n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)}
            assert not names & {"token", "given", "authorization"}, ast.unparse(node)


def test_every_route_but_healthz_needs_the_token(secure_app):
    url, token = secure_app["url"], secure_app["token"]
    good = {"Authorization": f"Bearer {token}"}
    schema = requests.get(url + "/openapi.json", headers=good, timeout=30).json()
    routes = [(m.upper(), p) for p, ops in schema["paths"].items() for m in ops] + [("GET", "/openapi.json"), ("GET", "/docs")]
    assert ("POST", "/v1/signals") in routes and ("GET", "/healthz") in routes
    wrong = [{}, {"Authorization": f"Bearer {token}x"}, {"Authorization": f"Bearer {token[:-1]}"}, {"Authorization": token},
             {"Authorization": f"Basic {token}"}]
    for method, path in routes:
        if path == "/healthz":
            assert requests.get(url + path, timeout=30).status_code == 200
            continue
        for headers in wrong:
            resp = requests.request(method, url + path, headers=headers, params={"token": token}, json={}, timeout=30)
            assert resp.status_code == 401, (method, path, headers, resp.status_code)
            assert resp.json()["error"]["code"] == "unauthorized"
    ok = requests.post(url + "/v1/encode", headers=good, json={"teacher": "tiny-secure", "texts": ["a"]}, timeout=30)
    assert ok.status_code == 200


def test_auth_is_checked_before_the_body_is_read(secure_app):
    resp = requests.post(secure_app["url"] + "/v1/encode", data=b"x" * 40 * 2**20, timeout=60)  # over the 32 MiB cap
    assert resp.status_code == 401


# --- nothing loaded or unpickled from a request ----------------------------------------------
class Trap:
    """Unpickling this creates ``path``: proof that something unpickled the request."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def test_requests_cannot_make_the_service_load_or_unpickle(teacher_app, tiny_bert_dir, tmp_path):
    from ray import serve

    url = teacher_app["url"]
    before = set(serve.status().applications["tightdistill"].deployments)
    for name in (str(tiny_bert_dir), "minilm-l6", "sentence-transformers/all-MiniLM-L6-v2"):
        resp = requests.post(url + "/v1/encode", json={"teacher": name, "texts": ["a"]}, timeout=30)
        assert resp.status_code == 404 and resp.json()["error"]["code"] == "unknown_teacher"
        resp = requests.post(url + "/v1/encode", json={"teacher": "tiny", "texts": ["a"], "checkpoint": name}, timeout=30)
        assert resp.status_code == 422 and "checkpoint" in resp.json()["error"]["message"]
    marker = tmp_path / "unpickled"
    payload = pickle.dumps(Trap(marker))
    for op in ("encode", "score", "signals"):
        for ctype in ("application/octet-stream", "application/python-pickle", "application/json",
                      "application/vnd.apache.arrow.stream"):
            resp = requests.post(f"{url}/v1/{op}", data=payload, headers={"Content-Type": ctype}, timeout=30)
            assert 400 <= resp.status_code < 500 and resp.json()["error"]["message"], (op, ctype, resp.text[:200])
    assert not marker.exists(), "a request body was unpickled"
    assert set(serve.status().applications["tightdistill"].deployments) == before
    assert {t["name"] for t in requests.get(url + "/v1/teachers", timeout=30).json()["teachers"]} == {"tiny", "tiny-cls-cos", "minilm"}


LOADERS = {"from_pretrained", "build_teacher", "resolve_model", "load_base_model", "read_checkpoint_tensor",
           "load_state_dict"}
UNSAFE_MODULES = {"pickle", "cloudpickle", "dill", "marshal", "joblib", "shelve"}


def request_call_graph() -> tuple[dict[str, set[str]], dict[str, set[str]], set[str]]:
    """By function name, across the service's modules: the names each calls, the loaders and
    unsafe modules it touches, and the request entry points (route handlers, the guard, the
    replica's methods). Classes count as calls of their ``__init__``."""
    files = sorted((ROOT / "teacher_service").rglob("*.py")) + [ROOT / "common" / f for f in ("text_encoder.py", "pooling.py", "scoring.py")]
    calls: dict[str, set[str]] = {}
    risky: dict[str, set[str]] = {}
    roots: set[str] = set()
    for path in files:
        tree = ast.parse(path.read_text())
        for cls in [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)]:
            for fn in cls.body:
                if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) and fn.name == "__init__":
                    calls.setdefault(cls.name, set()).add(f"{cls.name}.__init__")
                    key = f"{cls.name}.__init__"
                    calls.setdefault(key, set())
                    _scan(fn, key, calls, risky)
            if cls.name in {"TeacherReplica", "GuardMiddleware", "TeacherAPI"}:
                roots |= {fn.name for fn in cls.body if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) and fn.name != "__init__"}
        for fn in [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name != "__init__"]:
            _scan(fn, fn.name, calls, risky)
            for dec in fn.decorator_list:  # @api.post(...), @router.get(...), @api.exception_handler(...)
                target = dec.func if isinstance(dec, ast.Call) else dec
                if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) and target.value.id in {"api", "router"}:
                    roots.add(fn.name)
    return calls, risky, roots


def _scan(fn: ast.AST, key: str, calls: dict[str, set[str]], risky: dict[str, set[str]]) -> None:
    for node in ast.walk(fn):
        if isinstance(node, ast.Call):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
            if name:
                calls.setdefault(key, set()).add(name)
                if name in LOADERS or (name == "load" and "torch" in ast.unparse(node.func)):
                    risky.setdefault(key, set()).add(ast.unparse(node.func))
        if isinstance(node, ast.Name) and node.id in UNSAFE_MODULES:
            risky.setdefault(key, set()).add(node.id)


def test_no_loader_or_unpickler_is_reachable_from_a_request():
    calls, risky, roots = request_call_graph()
    assert {"encode", "signals", "run", "__call__"} <= roots
    seen, todo = set(), list(roots)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo += [c for c in calls.get(name, ()) if c in calls]
    reachable_risks = {name: risky[name] for name in seen if name in risky}
    assert not reachable_risks
    # the check can fail: a replica's constructor does load its model, and is not reachable
    assert risky.get("TeacherReplica.__init__") or risky.get("build_teacher")


# --- body cap --------------------------------------------------------------------------------
def test_endless_chunked_upload_is_answered_413_mid_upload(teacher_app, http_port):
    """A chunked upload with no Content-Length and no end: the guard answers 413 once the cap is
    passed, while the client is still sending, instead of waiting for a body that never ends."""
    limit = teacher_app["config"].limits.max_body_bytes
    chunk, pause_s, give_up_s = b" " * 65536, 0.008, 20.0  # about 8 MB/s, like a fast uploader
    with socket.create_connection(("127.0.0.1", http_port), timeout=30) as sock:
        sock.sendall(b"POST /v1/encode HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        sent, start = 0, time.monotonic()
        while time.monotonic() - start < give_up_s:
            readable, _, _ = select.select([sock], [], [], pause_s)
            if readable:
                break  # the server answered mid-upload
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sent += len(chunk)
        answered_s = time.monotonic() - start
        status_line = sock.recv(65536).split(b"\r\n", 1)[0]
    assert b" 413 " in status_line, status_line
    assert answered_s < give_up_s and sent > limit, f"{sent} bytes sent, {answered_s:.1f}s"
