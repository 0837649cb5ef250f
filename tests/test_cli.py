"""The ``tightdistill`` command line: helpful --help, one-line errors (no tracebacks)."""

from __future__ import annotations

import subprocess
import sys

import pytest


def cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "common.cli", *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def test_help_lists_every_subcommand():
    out = cli("--help")
    assert out.returncode == 0
    for command in ("train", "eval", "index", "report", "serve"):
        assert command in out.stdout
    for command in ("train", "eval", "index", "report", "serve"):
        sub = cli(command, "--help")
        assert sub.returncode == 0 and "usage: tightdistill " + command in sub.stdout


@pytest.mark.parametrize("args, message", [
    (("train", "--config", "missing.yaml"), "config file not found: missing.yaml"),
    (("train", "--set", "train.nope=1"), "unknown key 'train.nope'"),
    (("train", "--set", "nosection.x=1"), "'nosection' is not a config section"),
    (("train", "--set", "noequals"), "--set expects KEY=VALUE"),
    (("serve", "--config", "missing.yaml"), "config file not found"),
    (("eval", "--model", "minilm-l6", "--data", "no-such-data"), "dataset 'no-such-data' not found"),
    (("eval", "--model", "no-such-model", "--data", "scifact"), "unknown model 'no-such-model'"),
    (("report", "--run", "no/such/run"), "no metrics.json"),
])
def test_user_errors_are_one_clear_line(args, message):
    out = cli(*args)
    assert out.returncode == 2, out.stderr
    assert message in out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_bad_yaml_key_names_the_file(tmp_path):
    bad = tmp_path / "run.yaml"
    bad.write_text("name: x\ntrain:\n  epochz: 3\n")
    out = cli("train", "--config", str(bad))
    assert out.returncode == 2 and f"{bad}: unknown key 'train.epochz'" in out.stderr
