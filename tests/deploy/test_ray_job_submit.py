"""`ray job submit` against a cluster started with `ray start --head` on 127.0.0.1, exactly as a
user runs it: the job deploys its teacher app into that cluster and trains a tiny student.

The cluster is the user's, not the test session's: it has a private temp dir, and teardown stops
only the processes started under it (never `ray stop`, which would stop every Ray on the machine).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from net import free_port

REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).parent / "ray")


def cluster_pids(temp_dir: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if temp_dir.encode() in (proc / "cmdline").read_bytes():
                    pids.append(int(proc.name))
            except OSError:
                continue
    return pids


@pytest.fixture
def head_node():
    temp_dir = tempfile.mkdtemp(prefix="tdray-", dir="/tmp")  # short: Ray's socket paths have a length cap
    gcs, dashboard, agent = free_port(), free_port(), free_port()
    # Token auth, as Ray enables by default, with this cluster's own token (not ~/.ray's).
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    subprocess.run([RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs}", "--num-cpus=4",
                    "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
                    # The test session's own Ray already holds the agent's default port (52365): the head's
                    # job agent would fail to bind it and every submission would be refused "No available agent".
                    f"--dashboard-agent-listen-port={agent}",
                    f"--temp-dir={temp_dir}", "--disable-usage-stats"],
                   check=True, env=env, capture_output=True, timeout=180)
    try:
        yield f"http://127.0.0.1:{dashboard}", env
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in cluster_pids(temp_dir):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 2  # up to 2 s to exit, as long as any is left
            while cluster_pids(temp_dir) and time.monotonic() < deadline:
                time.sleep(0.1)


def test_ray_job_submit_trains_against_a_head_node(head_node, tiny_bert_dir, mini_beir, tmp_path):
    address, env = head_node
    http_port = free_port()
    teachers = tmp_path / "teachers.yaml"
    teachers.write_text(yaml.safe_dump({
        "http_options": {"host": "127.0.0.1", "port": http_port},
        "applications": [{"name": "tightdistill", "route_prefix": "/", "import_path": "teacher_service.app:build_app",
                          "args": {"teachers": [{"name": "tiny", "kind": "dual_encoder", "checkpoint": str(tiny_bert_dir),
                                                 "ray_actor_options": {"num_cpus": 0.5}}]}}],
    }))
    run_config = tmp_path / "run.yaml"
    run_config.write_text(yaml.safe_dump({
        "name": "job", "output_dir": str(tmp_path / "runs"),
        "teacher": {"teacher": "tiny", "serve_config": str(teachers)},
        "student": {"model": str(tiny_bert_dir), "num_layers": 1},
        "data": {"dataset": str(mini_beir)},
        "train": {"batch_size": 8, "max_steps": 2, "report_every": 1, "checkpoint_every": 2},
        "eval": {"evaluate_untrained": False},
    }))
    for _ in range(6):
        job = subprocess.run(
            [RAY, "job", "submit", f"--address={address}", "--working-dir", str(REPO),
             "--runtime-env-json", json.dumps({"excludes": [".venv", "runs", ".git", "data/wikiqa", "data/vaswani_npl"]}),
             "--", sys.executable, "-m", "student_trainer.run", "--config", str(run_config), "--no-progress"],
            capture_output=True, text=True, timeout=900, env=env,
        )
        # On a loaded machine the head's job agent can register after `ray start` returns; Ray then
        # refuses the submission with "please try again later", as a user would be told to.
        if "No available agent to submit job" not in job.stderr:
            break
        time.sleep(10)
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
    assert "succeeded" in job.stdout
    metrics = json.loads((tmp_path / "runs" / "job" / "metrics.json").read_text())
    assert metrics["steps"] == 2 and set(metrics["metrics"]) == {"teacher", "student"}
    assert (tmp_path / "runs" / "job" / "student" / "modules.json").is_file()
