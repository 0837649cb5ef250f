"""The light HTTP client: no torch, Ray, transformers or FastAPI; retries and typed errors.

The main test runs a fresh Python whose import system refuses the heavy packages and has it call
the live service. ``TIGHTDISTILL_LIGHT_PYTHON`` may name another interpreter (a virtualenv holding
only the light client's dependencies) to run the same check against a real minimal install.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from teacher_service.client import TeacherClient
from teacher_service.errors import Overloaded, Unavailable

REPO = Path(__file__).resolve().parents[2]
BLOCKED = ("torch", "ray", "transformers", "fastapi", "starlette", "uvicorn", "yaml")
QUERIES = ["how are glacier caves formed?", "who wrote hamlet"]
DOCS = ["A glacier cave is a cave formed within the ice of a glacier.", "Hamlet is a tragedy by Shakespeare.",
        "Penguins live in the southern hemisphere."]

LIGHT_SCRIPT = """
import json, sys

BLOCKED = set(sys.argv[2].split(","))


class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked: the light client must not need it")
        return None


sys.meta_path.insert(0, Blocker())
from teacher_service.client import TeacherClient
from teacher_service.errors import UnknownTeacher

queries, docs = json.loads(sys.argv[3]), json.loads(sys.argv[4])
client = TeacherClient.from_url(sys.argv[1], teacher="tiny", retries=1)
out = {
    "teachers": sorted(t["name"] for t in client.teachers()),
    "encode": client.encode(docs, role="document").tolist(),
    "score": client.score(queries, docs, mode="matrix").tolist(),
    "signals": {k: v.tolist() for k, v in client.signals(queries, docs).items()},
}
try:
    client.encode(["a"], teacher="nope")
except UnknownTeacher as exc:
    out["error"] = [type(exc).__name__, exc.code, exc.status, exc.message]
out["loaded"] = sorted({m.partition(".")[0] for m in sys.modules} & BLOCKED)
print(json.dumps(out))
"""


def test_light_client_calls_the_live_service_without_heavy_imports(teacher_app):
    python = os.environ.get("TIGHTDISTILL_LIGHT_PYTHON", sys.executable)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([python, "-c", LIGHT_SCRIPT, teacher_app["url"], ",".join(BLOCKED), json.dumps(QUERIES), json.dumps(DOCS)],
                          capture_output=True, text=True, timeout=120, cwd=REPO, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["loaded"] == []
    assert out["teachers"] == ["minilm", "tiny", "tiny-cls-cos"]
    ref = TeacherClient.from_serve(teacher_app["app_name"], teacher="tiny")
    np.testing.assert_allclose(out["encode"], ref.encode(DOCS, role="document"), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["score"], ref.score(QUERIES, DOCS, mode="matrix"), rtol=1e-5, atol=1e-6)
    for key, value in ref.signals(QUERIES, DOCS).items():
        np.testing.assert_allclose(out["signals"][key], value, rtol=1e-5, atol=1e-6)
    name, code, status, message = out["error"]
    assert (name, code, status) == ("UnknownTeacher", "unknown_teacher", 404) and "available: minilm" in message


class Scripted(BaseHTTPRequestHandler):
    """Answers POSTs from a script of (status, headers, body) and records when each arrived."""

    script: list[tuple[int, dict, bytes]] = []
    arrivals: list[float] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        Scripted.arrivals.append(time.monotonic())
        status, headers, body = Scripted.script.pop(0)
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def scripted_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Scripted)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    Scripted.arrivals = []
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


OVERLOADED = (429, {"Retry-After": "0.6", "Content-Type": "application/json"},
              json.dumps({"error": {"code": "overloaded", "message": "teacher 't' is at its queue limit"}}).encode())
PROXY_DOWN = (503, {"Content-Type": "text/plain"}, b"Service Unavailable")
OK = (200, {"Content-Type": "application/json"}, json.dumps({"embeddings": [[1.0, 2.0]]}).encode())


def test_retries_honour_retry_after_then_succeed(scripted_server):
    Scripted.script = [OVERLOADED, PROXY_DOWN, OK]
    client = TeacherClient.from_url(scripted_server, teacher="t", retries=3, backoff_s=0.01, arrow=False)
    np.testing.assert_array_equal(client.encode(["a"]), [[1.0, 2.0]])
    assert len(Scripted.arrivals) == 3
    assert Scripted.arrivals[1] - Scripted.arrivals[0] >= 0.6  # Retry-After is a floor, jitter or not


def test_retries_run_out_into_typed_errors(scripted_server):
    Scripted.script = [OVERLOADED, OVERLOADED]
    with pytest.raises(Overloaded, match="queue limit") as info:
        TeacherClient.from_url(scripted_server, teacher="t", retries=1, backoff_s=0.01).encode(["a"])
    assert info.value.status == 429
    Scripted.script = [PROXY_DOWN, PROXY_DOWN]
    with pytest.raises(Unavailable, match="HTTP 503 from the teacher service: Service Unavailable"):
        TeacherClient.from_url(scripted_server, teacher="t", retries=1, backoff_s=0.01).encode(["a"])


def test_unreachable_service_is_unavailable_after_retries():
    with socket.socket() as s:  # a port nobody listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = TeacherClient.from_url(f"http://127.0.0.1:{port}", teacher="t", retries=2, backoff_s=0.05, timeout_s=2)
    start = time.monotonic()
    with pytest.raises(Unavailable, match="unreachable after 3 tries") as info:
        client.encode(["a"])
    assert info.value.code == "unavailable" and time.monotonic() - start >= 0.05 * (0.5 + 1.0)


def _requirement_names(requirements: list[str]) -> set[str]:
    import re

    return {re.split(r"[\s\[<>=!~;]", req, maxsplit=1)[0].lower() for req in requirements}


def test_client_install_brings_no_heavy_package():
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    light = _requirement_names(project["dependencies"] + project["optional-dependencies"]["client"])
    heavy = {"torch", "ray", "transformers", "fastapi", "faiss-cpu", "sentence-transformers"}
    assert not light & heavy, f"pip install tightdistill[client] would bring {sorted(light & heavy)}"
    # ... and the full extra has what the service and the trainer import.
    full = _requirement_names(project["optional-dependencies"]["all"])
    assert {"torch", "ray", "transformers", "faiss-cpu", "fastapi"} <= full


def test_command_line_on_a_client_only_install_says_what_to_install():
    """Without torch and Ray (the base install), --help still works (it needs neither) and a
    command that would run says what to install."""
    script = (
        "import sys\n"
        "class Blocker:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.partition('.')[0] in ('torch', 'ray'):\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Blocker())\n"
        "from common.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    helped = subprocess.run([sys.executable, "-c", script, "train", "--help"], cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    assert helped.returncode == 0 and "usage: tightdistill train" in helped.stdout, helped.stderr
    proc = subprocess.run([sys.executable, "-c", script, "train", "--config", "deploy/default.yaml"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "pip install 'tightdistill[all]'" in proc.stderr
    assert "Traceback" not in proc.stderr
