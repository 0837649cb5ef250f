"""`tightdistill export --format onnx [--quantize int8]` and `tightdistill eval --backend`: the student
users deploy, through ONNX Runtime, ranks as the torch student does."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from common.cli import main
from common.datasets import load_beir
from common.retrieval import save_embeddings
from student_trainer.export import ONNX_FILE, ONNX_INT8_FILE, OnnxStudent, export_sentence_transformers
from student_trainer.students import DualEncoderStudent, StudentConfig


@pytest.fixture()
def tiny_student(tiny_bert_dir, mini_beir, tmp_path):
    """An exported asymmetric tiny student and a document index of mini-scifact it searches."""
    torch.manual_seed(0)
    student = DualEncoderStudent(StudentConfig(model=str(tiny_bert_dir), num_layers=1, normalize=True,
                                               projection="always"), teacher_dim=32)
    dataset = load_beir(mini_beir)
    index = save_embeddings(tmp_path / "index.parquet", dataset.doc_ids,
                            np.random.default_rng(0).standard_normal((len(dataset.doc_ids), 32)).astype(np.float32))
    return export_sentence_transformers(student, tmp_path / "student", {"doc_index": str(index)}), student


def test_export_writes_fp32_and_int8_graphs_that_rank_like_torch(tiny_student, mini_beir, tmp_path, capsys):
    path, student = tiny_student
    assert main(["export", "--student", str(path), "--quantize", "int8"]) == 0
    printed = capsys.readouterr().out
    assert "min cosine to torch 1.0000" in printed and "model_int8.onnx" in printed
    texts = ["how are glacier caves formed?", "vitamin d and bone density", "a"]
    ours = student.encode_queries(texts).numpy()
    np.testing.assert_allclose(OnnxStudent(path, path / ONNX_FILE).encode_queries(texts), ours, rtol=1e-3, atol=1e-4)
    int8 = OnnxStudent(path, path / ONNX_INT8_FILE).encode_queries(texts)
    cos = (int8 * ours).sum(1) / np.linalg.norm(int8, axis=1) / np.linalg.norm(ours, axis=1)
    assert cos.min() > 0.9 and (path / ONNX_INT8_FILE).stat().st_size < (path / ONNX_FILE).stat().st_size
    # Per-channel weight scales (one per output column), as the teachers' int8 graphs: one scale per
    # matrix cost all-MiniLM-L6-v2 its ranking (common.onnx_runtime.quantize_int8).
    import onnx

    scales = [t for t in onnx.load(path / ONNX_INT8_FILE).graph.initializer if t.name.endswith("_scale") and t.dims]
    assert scales and all(len(t.dims) == 1 and t.dims[0] > 1 for t in scales)
    reports = {}
    for backend in ("torch", "onnx", "onnx-int8"):
        out = tmp_path / f"{backend}.json"
        assert main(["eval", "--model", str(path), "--data", str(mini_beir), "--backend", backend, "--output", str(out)]) == 0
        reports[backend] = json.loads(out.read_text())
    assert reports["onnx"]["backend"] == "onnx"
    assert reports["onnx"]["aggregate"]["nDCG@10"] == pytest.approx(reports["torch"]["aggregate"]["nDCG@10"], abs=1e-6)


def test_export_and_backend_errors_are_one_line(tiny_student, mini_beir, tmp_path, capsys):
    path, _ = tiny_student
    assert main(["export", "--student", str(tmp_path / "nowhere")]) == 2
    assert "is not an exported tightdistill student" in capsys.readouterr().err
    assert main(["eval", "--model", str(path), "--data", str(mini_beir), "--backend", "onnx-int8"]) == 2
    err = capsys.readouterr().err
    assert "model_int8.onnx does not exist" in err and "--quantize int8" in err and "Traceback" not in err
