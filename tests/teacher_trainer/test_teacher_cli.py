"""``tightdistill train-teacher`` and ``tightdistill eval --hybrid`` through the real CLI entry point
(in-process ``main``): flags map to the job, user errors are one line, both commands run."""

from __future__ import annotations

import json

import pytest

from common.cli import build_parser, main
from teacher_trainer.cli import job_from_args


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_help_explains_the_command(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train-teacher", "--help"])
    out = capsys.readouterr().out
    assert exc.value.code == 0 and "usage: tightdistill train-teacher" in out
    for words in ("--kind {ce,colbert}", "dual pooling", "hard negatives", "tightdistill_ce.json", "metrics.json", "example:"):
        assert words in " ".join(out.split()), words
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "train-teacher" in capsys.readouterr().out


def test_flags_map_to_the_job(tmp_path):
    args = build_parser().parse_args(["train-teacher", "--kind", "ce", "--out", str(tmp_path / "x"), "--pooling", "cls",
                                      "--max-steps", "7", "--lr", "1e-4", "--max-length", "128", "--miner", "bm25"])
    job = job_from_args(args)
    assert (job.model.kind, job.model.pooling, job.model.max_length, job.model.base_model) == ("ce", "cls", 128, "minilm-l6")
    assert (job.train.max_steps, job.train.lr, job.train.epochs, job.data.miner, job.negatives) == (7, 1e-4, 1, "bm25", 3)
    assert job.model.resolved_reconstruction_weight() == 0.0  # [CLS] pooling: no reconstruction by default
    colbert = job_from_args(build_parser().parse_args(["train-teacher", "--kind", "colbert", "--out", "y"]))
    assert (colbert.negatives, colbert.model.dim, colbert.model.resolved_reconstruction_weight()) == (1, 128, 0.0)


def test_user_errors_are_one_clear_line(capsys, tmp_path, mini_beir):
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("x")
    cases = [
        (("train-teacher", "--kind", "colbert", "--pooling", "cls", "--out", tmp_path / "a"), "--pooling only applies to --kind ce"),
        (("train-teacher", "--kind", "ce", "--out", full), "already exists and is not empty; pass --overwrite"),
        (("train-teacher", "--kind", "ce", "--data", "no-such-data", "--out", tmp_path / "b"), "dataset 'no-such-data' not found"),
        (("train-teacher", "--kind", "ce", "--max-steps", "0", "--out", tmp_path / "c"), "train.max_steps: Input should be greater than or equal to 1"),
        (("train-teacher", "--kind", "ce", "--data", mini_beir, "--base-model", "no-such-model", "--out", tmp_path / "d"), "unknown model 'no-such-model'"),
        (("train-teacher", "--kind", "ce", "--device", "gpu", "--out", tmp_path / "e"), "train.device: String should match pattern"),
        (("eval", "--model", "minilm-l6", "--hybrid", "--rerank"), "--hybrid fuses full-retrieval lists with BM25"),
        (("eval", "--model", "minilm-l6", "--alpha", "0.1"), "--alpha is the BM25 weight of --hybrid"),
    ]
    for args, message in cases:
        code, _, err = run_cli(capsys, *args)
        assert code == 2 and message in err, (args, err)
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_train_teacher_command_runs(capsys, tmp_path, mini_beir, tiny_bert_dir):
    out_dir = tmp_path / "colbert"
    code, out, err = run_cli(capsys, "train-teacher", "--kind", "colbert", "--data", mini_beir, "--out", out_dir,
                             "--base-model", tiny_bert_dir, "--miner", "bm25", "--max-steps", "1", "--batch-size", "2",
                             "--dev-queries", "2", "--no-progress")
    assert code == 0, err
    assert "trained 1 steps" in out and f"checkpoint: {out_dir} (teacher kind colbert)" in out
    assert (out_dir / "artifact.metadata").is_file() and (out_dir / "metrics.json").is_file()


def test_eval_hybrid_command(capsys, tmp_path, mini_beir, tiny_bert_dir):
    report = tmp_path / "hybrid.json"
    code, out, err = run_cli(capsys, "eval", "--model", tiny_bert_dir, "--data", mini_beir, "--hybrid", "--output", report)
    assert code == 0, err
    assert "alpha tuned on train queries (nDCG@10)" in out and "| BM25 |" in out and "| hybrid (alpha" in out
    saved = json.loads(report.read_text())
    assert saved["mode"] == "hybrid" and saved["num_queries"] == 24
    assert set(saved["components"]) == {"dense", "bm25", "hybrid"} and str(saved["alpha"]) in saved["alpha_grid"]
    assert saved["aggregate"] == saved["components"]["hybrid"]


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the message a machine without a GPU gives")
def test_cuda_without_a_gpu_fails_before_mining(capsys, tmp_path, mini_beir):
    code, _, err = run_cli(capsys, "train-teacher", "--kind", "ce", "--data", mini_beir, "--device", "cuda",
                           "--out", tmp_path / "gpu")
    assert code == 2 and "train.device is 'cuda' but torch sees no GPU" in err, err
    assert not (tmp_path / "gpu").exists()
