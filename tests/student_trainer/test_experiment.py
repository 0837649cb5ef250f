"""Experiments: a table of real (tiny) distillation runs, written as Markdown and JSON, resumable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from common.config import ConfigError, load_config
from student_trainer.experiment import ExperimentConfig, ExperimentRow, collect_rows, render_markdown, run_experiment, selected
from student_trainer.config import RunConfig
from shared_runs import write_experiment_base


def test_collect_rows_means_and_spreads_over_seeds():
    def metrics(ndcg: float, seed: int) -> dict:
        student = {"nDCG@10": ndcg, "MRR@10": ndcg / 2, "R@100": 0.9}
        return {"run": f"r{seed}", "seed": seed, "steps": 10 + seed, "timings": {"train_s": 100.0 + seed},
                "metrics": {"teacher": {"nDCG@10": 0.5, "MRR@10": 0.4, "R@100": 1.0}, "student": student},
                "retained": {"nDCG@10": ndcg / 0.5}}

    exp = ExperimentConfig(name="x", base=Path("b.yaml"), seeds=[1, 2], rows=[ExperimentRow(name="a")])
    table = collect_rows(exp, {("a", "scifact"): [metrics(0.3, 1), metrics(0.4, 2)]})
    row = table["scifact"]["rows"][0]
    assert row["nDCG@10"]["mean"] == pytest.approx(0.35)
    assert row["nDCG@10"]["std"] == pytest.approx(0.0707107, rel=1e-5)  # sample std of {0.3, 0.4}
    assert row["retained"]["mean"] == pytest.approx(0.7)
    assert row["train_s"]["mean"] == pytest.approx(101.5) and row["seeds"] == [1, 2]
    assert table["scifact"]["teachers"]["teacher"]["nDCG@10"] == 0.5  # metrics without a teacher name
    # seeded dev splits leave the seeds different numbers of training queries: the table shows each count
    assert row["steps_per_seed"] == [11, 12] and "| 11 / 12 |" in render_markdown(exp, table, {"command": "c", "commit": "x", "date": "d", "machine": "m"})


def test_agreement_with_the_teacher_is_tabled_where_measured():
    def metrics(seed: int, overlap: float | None) -> dict:
        m = {"run": f"r{seed}", "seed": seed, "steps": 4, "timings": {"train_s": 1.0},
             "metrics": {"teacher": {"nDCG@10": 0.5, "MRR@10": 0.4, "R@100": 1.0},
                         "student": {"nDCG@10": 0.4, "MRR@10": 0.3, "R@100": 0.9}}}
        if overlap is not None:
            m["agreement"] = {"overlap@10": overlap, "RBO@10": 0.5, "inbatch_kl": 0.02}
        return m

    exp = ExperimentConfig(name="x", base=Path("b.yaml"), rows=[ExperimentRow(name="a"), ExperimentRow(name="b")])
    table = collect_rows(exp, {("a", "scifact"): [metrics(1, 0.4), metrics(2, 0.6)], ("b", "scifact"): [metrics(1, None)]})
    a, b = table["scifact"]["rows"]
    assert a["agreement"]["overlap@10"]["mean"] == pytest.approx(0.5) and "agreement" not in b
    md = render_markdown(exp, table, {"command": "c", "commit": "h", "date": "d", "machine": "m"})
    assert "| row | overlap@10 | RBO@10 | in-batch KL |" in md
    agreement = md.split("Agreement with the teacher")[1]
    assert "| a | 0.500 ± 0.141 | 0.500 ± 0.000 | 0.020 ± 0.000 |" in agreement and "| b |" not in agreement
    no_agreement = collect_rows(exp, {("b", "scifact"): [metrics(1, None)]})
    assert "Agreement with the teacher" not in render_markdown(exp, no_agreement, {"command": "c", "commit": "h", "date": "d", "machine": "m"})


def test_rows_with_different_teachers_keep_their_own_teacher():
    """CE -> DE tables: each row distils its own teacher and is re-ranked like it; retained is per row."""
    def metrics(teacher: str, t: float, ndcg: float) -> dict:
        return {"run": teacher, "seed": 1, "steps": 10, "timings": {"train_s": 5.0}, "split": "test", "commit": f"{teacher}-commit" + (" (dirty tree)" if teacher == "ce-dual" else ""),
                "teacher": {"name": teacher}, "eval": {"mode": "rerank", "candidates": "candidates.test.tsv"},
                "metrics": {"teacher": {"nDCG@10": t, "MRR@10": t, "R@100": 1.0},
                            "student": {"nDCG@10": ndcg, "MRR@10": ndcg, "R@100": 1.0},
                            "student (retrieval)": {"nDCG@10": ndcg / 2, "MRR@10": 0.1, "R@100": 0.5}},
                "retained": {"nDCG@10": ndcg / t}}

    exp = ExperimentConfig(name="x", base=Path("b.yaml"), datasets=["wikiqa"], rows=[ExperimentRow(name="a"), ExperimentRow(name="b")])
    table = collect_rows(exp, {("a", "wikiqa"): [metrics("ce-cls", 0.5, 0.4)], ("b", "wikiqa"): [metrics("ce-dual", 0.8, 0.4)]})
    block = table["wikiqa"]
    assert set(block["teachers"]) == {"ce-cls", "ce-dual"}
    assert [e["teacher"] for e in block["rows"]] == ["ce-cls", "ce-dual"]
    assert [e["retained"]["mean"] for e in block["rows"]] == pytest.approx([0.8, 0.5])
    assert block["rows"][0]["retrieval nDCG@10"]["mean"] == pytest.approx(0.2)
    md = render_markdown(exp, table, {"command": "c", "commit": "h", "date": "d", "machine": "m"})
    assert "## wikiqa (test, re-ranking candidates.test.tsv)" in md
    assert "| teacher ce-dual | ce-dual | 0.800 |" in md and "nDCG@10, full retrieval" in md
    assert "| a | ce-cls | 0.400 | 0.400 | 1.000 | 0.800 | 0.200 | 10 | 5 |" in md
    assert "Trained at: `ce-cls-commi` (a); `ce-dual-comm (dirty tree)` (b)" in md  # rows trained by different code say so
    one_commit = collect_rows(exp, {("a", "wikiqa"): [metrics("ce-cls", 0.5, 0.4)]})
    meta = {"command": "c", "commit": "ce-cls-commit", "date": "d", "machine": "m"}
    assert "Trained at" not in render_markdown(exp, one_commit, meta)  # the header's commit trained every row
    assert "Trained at: `ce-cls-commi` (a)" in render_markdown(exp, one_commit, {**meta, "commit": "later"})  # reused runs


def test_only_and_datasets_select_runs():
    a, b = ExperimentRow(name="a"), ExperimentRow(name="b")
    planned = [(a, "scifact", 1, "a-s"), (a, "wikiqa", 1, "a-w"), (b, "scifact", 1, "b-s"), (b, "wikiqa", 1, "b-w")]
    assert [r[3] for r in selected(planned, None, None)] == ["a-s", "a-w", "b-s", "b-w"]
    assert [r[3] for r in selected(planned, ["b"], None)] == ["b-s", "b-w"]
    assert [r[3] for r in selected(planned, None, ["scifact"])] == ["a-s", "b-s"]
    assert [r[3] for r in selected(planned, ["a"], ["wikiqa"])] == ["a-w"]


def test_seeds_per_dataset(tmp_path, tiny_bert_dir, mini_beir):
    """A row can run three seeds where its neighbours are close and one where they are far apart."""
    exp = ExperimentConfig(name="x", base=write_experiment_base(tmp_path / "base.yaml", tiny_bert_dir, mini_beir),
                           datasets=["scifact", "wikiqa"], seeds=[13],
                           rows=[ExperimentRow(name="a", seeds={"wikiqa": [13, 14, 15]}), ExperimentRow(name="b", seeds=[1, 2])])
    assert [(r[0].name, r[1], r[2]) for r in exp.runs()] == [
        ("a", "scifact", 13), ("a", "wikiqa", 13), ("a", "wikiqa", 14), ("a", "wikiqa", 15),
        ("b", "scifact", 1), ("b", "scifact", 2), ("b", "wikiqa", 1), ("b", "wikiqa", 2)]
    with pytest.raises(ValueError, match="row a: seeds given for nfcorpus, which the row does not run on"):
        ExperimentConfig(name="x", base=Path("b.yaml"), rows=[ExperimentRow(name="a", seeds={"nfcorpus": [1]})])


def test_bad_experiment_files_name_the_problem(tmp_path, tiny_bert_dir, mini_beir):
    base = write_experiment_base(tmp_path / "base.yaml", tiny_bert_dir, mini_beir)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"name": "x", "base": str(base), "rows": [{"name": "a", "set": {"train.lr": -1}}]}))
    with pytest.raises(ConfigError, match="lr"):
        load_config(ExperimentConfig, bad).runs()
    bad.write_text(yaml.safe_dump({"name": "x", "base": str(base), "rows": [{"name": "a"}, {"name": "a"}]}))
    with pytest.raises(ConfigError, match="duplicate row names: a"):
        load_config(ExperimentConfig, bad)


def test_experiment_runs_rows_writes_the_table_and_reuses_finished_runs(experiment_runs, mini_beir):
    """The session's experiment (``experiment_runs``): two rows, two real runs with different
    teachers (the tiny one and all-MiniLM-L6-v2); each run is also checked by its own test."""
    from ray import serve

    exp, out, root = experiment_runs["exp"], experiment_runs["out"], experiment_runs["root"]
    block = out["tables"][str(mini_beir)]
    assert [r["row"] for r in block["rows"]] == ["sym", "wide"]
    assert [r["teacher"] for r in block["rows"]] == ["tiny", "minilm"] and set(block["teachers"]) == {"tiny", "minilm"}
    for row in block["rows"]:
        run_metrics = json.loads((root / "runs" / row["runs"][0] / "metrics.json").read_text())
        assert run_metrics["teacher"]["name"] == row["teacher"]
        assert row["nDCG@10"]["mean"] == run_metrics["metrics"]["student"]["nDCG@10"]
        assert row["retained"]["mean"] == pytest.approx(run_metrics["metrics"]["student"]["nDCG@10"]
                                                        / run_metrics["metrics"]["teacher"]["nDCG@10"])
        assert row["steps"] == 2
    history = json.loads((experiment_runs["runs"]["wide"].run_dir / "history.json").read_text())
    assert history[-1]["margin_mse"] > 0 and history[-1]["loss"] == pytest.approx(history[-1]["margin_mse"])  # the row's loss ran
    markdown = (root / "results" / "tiny-ablation.md").read_text()
    assert "| sym: label-free, symmetric, bf16 | tiny |" in markdown and "| teacher minilm | minilm |" in markdown
    assert "Commit: `" in markdown
    assert json.loads((root / "results" / "tiny-ablation.json").read_text())["tables"] == out["tables"]

    # Run again: both runs are found finished and reused, so neither teacher is asked anything.
    def requests() -> list[int]:
        return [serve.get_deployment_handle(f"teacher-{t}", "tightdistill").stats.remote().result()["requests"]
                for t in ("tiny", "minilm")]

    before = requests()
    again = run_experiment(exp, ["exp.yaml"])
    assert requests() == before
    assert again["tables"] == out["tables"]
    # One row selected: the other's finished run stays in the table (cells can be filled one command at a time).
    assert run_experiment(exp, ["exp.yaml", "--only", "wide"], only=["wide"])["tables"] == out["tables"]


def test_a_folder_of_another_config_is_set_aside_not_resumed(tmp_path, tiny_bert_dir, mini_beir):
    from student_trainer.experiment import set_aside_stale

    base = write_experiment_base(tmp_path / "base.yaml", tiny_bert_dir, mini_beir)
    exp = ExperimentConfig.model_validate({"name": "x", "base": str(base), "output_dir": str(tmp_path / "runs"),
                                           "datasets": [str(mini_beir)], "rows": [{"name": "a"}]})
    run = exp.runs()[0][3]
    run.run_dir.mkdir(parents=True)
    (run.run_dir / "config.json").write_text(run.model_dump_json())
    assert set_aside_stale(run) is None and run.run_dir.is_dir()  # same config: an interrupted run resumes
    other = run.model_copy(update={"train": run.train.model_copy(update={"lr": run.train.lr * 2})})
    aside = set_aside_stale(other)
    assert aside is not None and aside.is_dir() and not run.run_dir.exists()
    assert (aside / "config.json").read_text() == run.model_dump_json()


def test_a_finished_run_stays_reusable_when_a_new_option_appears(tmp_path, tiny_bert_dir, mini_beir):
    """A run recorded before an option existed is the same config when today's default is kept,
    and another config when the option is set otherwise (or the record no longer validates)."""
    from student_trainer.experiment import finished_metrics

    run = RunConfig.model_validate({"name": "r", "output_dir": str(tmp_path), "student": {"model": str(tiny_bert_dir)},
                                    "data": {"dataset": str(mini_beir)}})
    run.run_dir.mkdir(parents=True)
    recorded = json.loads(run.model_dump_json())
    del recorded["eval"]["mode"]  # written by a version that had no eval.mode yet
    (run.run_dir / "config.json").write_text(json.dumps(recorded))
    (run.run_dir / "metrics.json").write_text(json.dumps({"run": "r"}))
    assert finished_metrics(run) == {"run": "r"}
    assert finished_metrics(run.model_copy(update={"eval": run.eval.model_copy(update={"mode": "rerank"})})) is None
    recorded["eval"]["no_such_option"] = 1
    (run.run_dir / "config.json").write_text(json.dumps(recorded))
    assert finished_metrics(run) is None


def test_rows_neither_run_nor_on_disk_are_carried_from_the_previous_table():
    """Run folders stay on the machine that trained them: re-running one row elsewhere keeps the
    other rows of the results JSON, marked as carried, and never carries a cell it re-ran."""
    from student_trainer.experiment import carry_over

    def metrics(ndcg: float) -> dict:
        return {"run": "r", "seed": 13, "steps": 10, "timings": {"train_s": 1.0}, "commit": "new",
                "metrics": {"teacher": {"nDCG@10": 0.5, "MRR@10": 0.4, "R@100": 1.0},
                            "student": {"nDCG@10": ndcg, "MRR@10": ndcg, "R@100": 0.9}}}

    rows = [ExperimentRow(name=n, description=n.upper()) for n in ("a", "b", "c")]
    exp = ExperimentConfig(name="x", base=Path("b.yaml"), seeds=[13], datasets=["d1", "d2"], rows=rows)
    previous = collect_rows(exp, {(r, d): [metrics(0.1)] for r in ("a", "b", "c", "gone") for d in ("d1", "d2")})
    previous["d1"]["rows"].append({**previous["d1"]["rows"][0], "row": "gone"})  # a row since removed from the file
    table = collect_rows(exp, {("b", "d1"): [metrics(0.3)]})
    carry_over(previous, table, exp, rerun={("b", "d1"), ("c", "d1")})

    d1 = {e["row"]: e for e in table["d1"]["rows"]}
    assert list(d1) == ["a", "b"]  # file order; c was re-run here without a result, gone is gone
    assert d1["a"].get("carried") and d1["a"]["nDCG@10"]["mean"] == pytest.approx(0.1)
    assert not d1["b"].get("carried") and d1["b"]["nDCG@10"]["mean"] == pytest.approx(0.3)
    assert [e["row"] for e in table["d2"]["rows"]] == ["a", "b", "c"]  # a dataset this command did not touch
    markdown = render_markdown(exp, table, {"command": "c", "commit": "new", "date": "d", "machine": "m"})
    assert "| a: A (carried over) |" in markdown and "| b: B |" in markdown


def test_tables_keep_the_files_dataset_order_whichever_cells_ran():
    from student_trainer.experiment import in_file_order

    ran_second_first = {"d2": {"rows": []}, "old": {"rows": []}, "d1": {"rows": []}}
    assert list(in_file_order(ran_second_first, ["d1", "d2"])) == ["d1", "d2", "old"]


def test_cells_trained_with_another_config_are_not_carried():
    """An edited row (or base recipe) makes the previous table's cells of that row stale: carried,
    they would show another recipe's figures under today's row."""
    from student_trainer.experiment import carry_over

    def metrics(digest: str) -> dict:
        return {"run": "r", "seed": 13, "steps": 10, "timings": {"train_s": 1.0}, "config_digest": digest,
                "metrics": {"teacher": {"nDCG@10": 0.5, "MRR@10": 0.4, "R@100": 1.0},
                            "student": {"nDCG@10": 0.2, "MRR@10": 0.2, "R@100": 0.9}}}

    exp = ExperimentConfig(name="x", base=Path("b.yaml"), seeds=[13], datasets=["d1"],
                           rows=[ExperimentRow(name=n) for n in ("a", "b", "c")])
    previous = collect_rows(exp, {("a", "d1"): [metrics("same")], ("b", "d1"): [metrics("old")], ("c", "d1"): [metrics("x")]})
    del previous["d1"]["rows"][2]["config_digest"]  # a table written before digests were recorded
    table: dict = {}
    dropped = carry_over(previous, table, exp, rerun=set(), digests={("a", "d1"): "same", ("b", "d1"): "new", ("c", "d1"): "x"})
    assert [e["row"] for e in table["d1"]["rows"]] == ["a"]
    assert dropped == ["b on d1", "c on d1"]


def test_an_option_added_at_its_default_keeps_carried_cells_current(tmp_path, mini_beir):
    """A new option left at a default that keeps the old behaviour is not another config: the
    digest a cell was recorded with still matches; setting the option otherwise changes it."""
    from pydantic import create_model

    from student_trainer.config import DataConfig
    from student_trainer.experiment import config_digest

    fields = {"name": "r", "output_dir": str(tmp_path), "data": {"dataset": str(mini_beir)}}
    today = RunConfig.model_validate(fields)
    data_later = create_model("DataLater", __base__=DataConfig, new_option=(int, 0))
    later = create_model("RunLater", __base__=RunConfig, data=(data_later, data_later()))
    assert config_digest(later.model_validate(fields)) == config_digest(today)
    assert config_digest(later.model_validate({**fields, "data": {**fields["data"], "new_option": 2}})) != config_digest(today)
    assert config_digest(RunConfig.model_validate({**fields, "data": {**fields["data"], "pseudo_queries": 9}})) != config_digest(today)


def test_peer_baselines_from_the_bench_show_beside_the_rows(tmp_path):
    """bench/label_free_peer.py's result file (its format, two datasets) gives each dataset's table
    a peer line: the peer's figure, its retained share, its steps and wall time, and the
    tightdistill run it was measured beside with the ratio; a dataset it has no row for gets none."""
    from student_trainer.experiment import add_peer_baselines

    def bench_row(dataset: str, peer: float, td: float) -> dict:
        side = {"nDCG@10": peer, "retained": peer / 0.6, "untrained_nDCG@10": 0.3, "train_s": 300.4, "steps": 1400}
        return {"dataset": dataset, "student": {"model": "minilm-l6", "num_layers": 2, "layer_selection": "spread"},
                "teacher": {"name": "minilm", "nDCG@10": 0.6}, "peer": side,
                "tightdistill": {**side, "nDCG@10": td, "retained": td / 0.6, "steps": 1000}, "ratio": td / peer}

    peers = tmp_path / "label_free_peer.json"
    peers.write_text(json.dumps({"seed": 13, "commit": "0123456789abcdef", "date": "2026-12-07 21:00",
                                 "rows": [bench_row("d1", 0.54, 0.57), bench_row("elsewhere", 0.5, 0.5)]}))
    exp = ExperimentConfig(name="x", base=Path("b.yaml"), datasets=["d1", "d2"], rows=[ExperimentRow(name="a")],
                           peer_baselines=[peers])
    run = {"run": "r", "seed": 13, "steps": 1000, "timings": {"train_s": 1.0},
           "metrics": {"teacher": {"nDCG@10": 0.6, "MRR@10": 0.4, "R@100": 1.0}, "student": {"nDCG@10": 0.57, "MRR@10": 0.5, "R@100": 0.9}}}
    table = collect_rows(exp, {("a", "d1"): [run], ("a", "d2"): [run]})
    add_peer_baselines(exp, table)
    md = render_markdown(exp, table, {"command": "c", "commit": "h", "date": "d", "machine": "m"})
    d1, d2 = md.split("## d2")
    line = next(x for x in d1.splitlines() if x.startswith("| peer baseline"))
    assert "(0.570, 1000 steps; tightdistill / peer **1.056**;" in line and "seed 13, 2026-12-07 21:00, 0123456789ab" in line
    assert line.endswith("| 0.540 | - | - | 0.900 | 1400 | 300 |") and "peer baseline" not in d2
    exp.peer_baselines = [tmp_path / "missing.json"]
    with pytest.raises(ConfigError, match="missing.json not found"):
        add_peer_baselines(exp, table)


def test_the_untrained_student_gets_a_column_where_runs_measured_it():
    def metrics(ndcg: float, untrained: float | None) -> dict:
        systems = {"teacher": {"nDCG@10": 0.5, "MRR@10": 0.4, "R@100": 1.0},
                   "student": {"nDCG@10": ndcg, "MRR@10": ndcg, "R@100": 0.9}}
        if untrained is not None:
            systems["untrained student"] = {"nDCG@10": untrained, "MRR@10": 0.0, "R@100": 0.0}
        return {"run": "r", "seed": 13, "steps": 10, "timings": {"train_s": 1.0}, "metrics": systems}

    exp = ExperimentConfig(name="x", base=Path("b.yaml"), rows=[ExperimentRow(name="a"), ExperimentRow(name="b")])
    table = collect_rows(exp, {("a", "scifact"): [metrics(0.3, 0.125)], ("b", "scifact"): [metrics(0.4, None)]})
    assert table["scifact"]["rows"][0]["untrained nDCG@10"]["mean"] == 0.125 and "untrained nDCG@10" not in table["scifact"]["rows"][1]
    markdown = render_markdown(exp, table, {"command": "c", "commit": "k", "date": "d", "machine": "m"})
    assert "| untrained student nDCG@10 |" in markdown and "| a | 0.300 | 0.300 | 0.900 | - | 0.125 | 10 | 1 |" in markdown


def test_the_setting_says_no_teacher_scores_where_no_loss_uses_them():
    """A row trained on the labels alone (one-hot) must not read as if a teacher's scores taught it."""
    from student_trainer.experiment import run_setting

    base = {"teacher": {"teacher": "minilm"}, "data": {"dataset": "scifact"}}
    labels_only = RunConfig.model_validate({**base, "train": {"losses": {"onehot": {"weight": 1.0}}}})
    distilled = RunConfig.model_validate({**base, "train": {"losses": {"in_batch_kl": {}, "query_embedding": {}}}})
    matched = RunConfig.model_validate({**base, "train": {"losses": {"query_embedding": {}}}})
    assert run_setting(labels_only) == "labels; 2 layers; teacher scores: none"
    assert run_setting(distilled) == "labels; 2 layers; teacher scores: minilm"
    assert run_setting(matched) == "labels; 2 layers; teacher scores: none"  # its embeddings only
