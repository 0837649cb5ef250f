"""The ``tightdistill`` command line: helpful --help, one-line errors (no tracebacks).

Most cases call the entry point's ``main`` in this process (what ``python -m common.cli`` runs,
without paying a new interpreter's torch and Ray imports per case); one case runs the real module
in its own process, so the exit status and stderr a shell sees are checked too.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from common.cli import main

COMMANDS = ("train", "eval", "index", "report", "serve")


def cli(capsys, *args: str) -> tuple[int, str, str]:
    """``tightdistill ARGS`` in-process: (exit status, stdout, stderr)."""
    try:
        code = main(list(args))
    except SystemExit as exc:  # argparse's --help and usage errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def test_help_lists_every_subcommand(capsys):
    code, out, _ = cli(capsys, "--help")
    assert code == 0
    for command in COMMANDS:
        assert command in out
    for command in COMMANDS:
        code, out, _ = cli(capsys, command, "--help")
        assert code == 0 and "usage: tightdistill " + command in out


def one_clear_line(code: int, err: str, message: str) -> None:
    assert code == 2, err
    assert message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err


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
def test_user_errors_are_one_clear_line(capsys, args, message):
    code, _, err = cli(capsys, *args)
    one_clear_line(code, err, message)


def test_bad_yaml_key_names_the_file(capsys, tmp_path):
    bad = tmp_path / "run.yaml"
    bad.write_text("name: x\ntrain:\n  epochz: 3\n")
    code, _, err = cli(capsys, "train", "--config", str(bad))
    one_clear_line(code, err, f"{bad}: unknown key 'train.epochz'")


def test_the_real_command_exits_2_with_one_line_on_stderr(tmp_path):
    """``python -m common.cli`` in its own process: the status and stderr a shell sees."""
    bad = tmp_path / "run.yaml"
    bad.write_text("name: x\ntrain:\n  epochz: 3\n")
    out = subprocess.run([sys.executable, "-m", "common.cli", "train", "--config", str(bad)],
                         capture_output=True, text=True, timeout=120)
    one_clear_line(out.returncode, out.stderr, f"{bad}: unknown key 'train.epochz'")
    assert out.stdout == ""


def test_a_config_error_is_reported_before_the_heavy_imports(tmp_path):
    """A typo in a run config is told at once: torch and transformers are not imported for it
    (with Ray Train and Serve they took 7.7 s of a 2-core CPU before the error line)."""
    bad = tmp_path / "run.yaml"
    bad.write_text("name: x\ntrain:\n  epochz: 3\n")
    code = ("import sys; from common.cli import main; rc = main(['train', '--config', sys.argv[1]]); "
            "print(rc, *[m for m in ('torch', 'transformers') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code, str(bad)], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["2"], out.stdout + out.stderr
    assert "unknown key 'train.epochz'" in out.stderr
