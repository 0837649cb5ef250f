"""`tightdistill adapt` end to end through the real command line: a folder of text files (no
queries, no qrels) -> real Serve teacher -> real Ray Train worker -> sentence-transformers and ONNX
exports -> a report measured on held-out pseudo-queries that training never saw."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from common.cli import main
from common.datasets import load_beir
from student_trainer.export import ExportedStudent, OnnxStudent
from student_trainer.held_out import held_out_pseudo_queries, normalised


@pytest.fixture(scope="module")
def text_folder(mini_beir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("my-notes")
    for row in load_beir(mini_beir).corpus.to_pylist():
        (folder / f"{row['id']}.txt").write_text(f"{row['title']}. {row['text']}")
    return folder


def test_a_folder_of_text_files_becomes_a_fast_query_encoder(teacher_app, text_folder, tmp_path, capsys):
    out = tmp_path / "adapted"
    assert main(["adapt", str(text_folder), "--teacher", "tiny", "--layers", "1", "--out", str(out), "--max-steps", "3",
                 "--minutes", "5", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "report.json").read_text())
    first = (out / "report.md").read_text().splitlines()[2]
    assert first.startswith("* kept ") and "% of the teacher" in first and first in printed
    assert f"the model is at {out / 'student'}" in printed and "times faster" in printed
    assert report["corpus"]["documents"] == len(list(text_folder.glob("*.txt"))) and "test" not in report
    assert report["training"]["steps"] == 3 and report["latency_queries"] >= 200
    held = report["held_out"]
    assert 0 <= held["overlap@10"] <= 1 and 0 <= held["nDCG@10_teacher_top10"] <= 1 and held["queries"] >= 10

    # The held-out pseudo-queries were never trained on, not even as a span inside a training text.
    dataset = load_beir(report["corpus"]["dataset_dir"])
    held_out = held_out_pseudo_queries(dataset, held["queries"], 13)
    trained = [normalised(q) for q in pq.read_table(out / "data" / "train.parquet").column("query").to_pylist()]
    assert not [h for h in map(normalised, held_out) if any(h in q or q in h for q in trained)]

    # Both exports give the student's query embeddings.
    texts = held_out[:5]
    torch_emb = ExportedStudent(out / "student").encode_queries(texts)
    np.testing.assert_allclose(OnnxStudent(out / "student").encode_queries(texts), torch_emb, rtol=1e-4, atol=1e-5)
    assert report["onnx"]["exported"] and report["onnx"]["min_cosine"] >= 0.9999


def test_a_teacher_that_is_not_served_is_one_line(teacher_app, text_folder, tmp_path, capsys):
    assert main(["adapt", str(text_folder), "--teacher", "no-such-teacher", "--out", str(tmp_path / "x"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "teacher 'no-such-teacher' is not served" in err and "tiny" in err


def test_a_beir_folder_with_test_queries_is_also_scored_on_them(teacher_app, mini_beir, tmp_path, capsys):
    """Every other input format's reader gives the same documents as the text folder's
    (test_corpus_formats.py), and from there the same pipeline as the test above runs; one
    end-to-end run per format repeated it. A BEIR folder with test queries and qrels takes one
    more path: the report scores teacher and student on those queries too."""
    out = tmp_path / "adapted"
    assert main(["adapt", str(mini_beir), "--teacher", "tiny", "--layers", "1", "--out", str(out), "--max-steps", "1",
                 "--no-progress"]) == 0
    report = json.loads((out / "report.json").read_text())
    dataset = load_beir(mini_beir)
    assert report["corpus"] == {**report["corpus"], "format": "BEIR folder", "documents": len(dataset.doc_ids)}
    assert report["training"]["steps"] == 1 and (out / "student" / "model.onnx").is_file()
    real = report["test"]
    assert real["queries"] == len(dataset.split_query_ids("test")) == 24
    assert real["retained_nDCG@10"] == pytest.approx(real["student"]["nDCG@10"] / real["teacher"]["nDCG@10"])
    printed = capsys.readouterr().out
    assert f"test queries (student {real['student']['nDCG@10']:.3f}, teacher {real['teacher']['nDCG@10']:.3f})" in printed
    assert "| test queries (24) | nDCG@10 | MRR@10 | R@100 |" in (out / "report.md").read_text()
