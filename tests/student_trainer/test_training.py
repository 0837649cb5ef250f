"""The coupled training loop on real Ray Train workers against a real Serve teacher."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

import numpy as np
import pytest
import torch

from common.datasets import load_beir
from student_trainer.config import RunConfig
from student_trainer.export import ExportedStudent, export_sentence_transformers
from student_trainer.run import connect_teacher, prepare_examples, run_distillation, train_student
from student_trainer.students import DualEncoderStudent, StudentConfig
from student_trainer.teacher_index import teacher_doc_embeddings
from student_trainer.train_loop import CheckpointError, load_checkpoint


def tiny_run(tmp_path: Path, tiny_bert_dir: Path, mini_beir: Path, **train) -> RunConfig:
    return RunConfig.model_validate({
        "name": "t", "output_dir": str(tmp_path),
        "teacher": {"teacher": "tiny", "app_name": "tightdistill", "serve_config": None},
        "student": {"model": str(tiny_bert_dir), "num_layers": 1},
        "data": {"dataset": str(mini_beir), "num_negatives": 1},
        "train": {"batch_size": 8, "num_workers": 2, "cpus_per_worker": 0.5, "report_every": 2,
                  "checkpoint_every": 2, "epochs": 1, **train},
    })


def replica_requests(app: str = "tightdistill", teacher: str = "tiny") -> int:
    from ray import serve

    return serve.get_deployment_handle(f"teacher-{teacher}", app).stats.remote().result()["requests"]


@pytest.fixture(scope="module")
def prepared(teacher_app, tiny_bert_dir, mini_beir, tmp_path_factory):
    run = tiny_run(tmp_path_factory.mktemp("run"), tiny_bert_dir, mini_beir, max_steps=4)
    client = connect_teacher(run.teacher)
    dataset = load_beir(run.data.dataset)
    index = teacher_doc_embeddings(client, dataset, show_progress=False)
    examples, n = prepare_examples(run, dataset, client, index)
    return {"run": run, "client": client, "index": index, "examples": examples, "n": n}


def test_every_step_asks_the_teacher_and_resume_continues(prepared):
    run = prepared["run"]
    info = prepared["client"].describe()
    before = replica_requests()
    checkpoint, history = train_student(run, info, prepared["examples"], prepared["n"], prepared["index"], [], False)
    # 4 steps x 2 workers, one request each (query embeddings; the matrix uses the inherited index)
    assert replica_requests() - before == 8
    assert [h["step"] for h in history] == [2, 4]
    # at a report, a worker has asked for every step so far and, prefetching, maybe the next one
    assert history[0]["teacher_requests"] in (2, 3) and history[-1]["teacher_requests"] == 4
    assert np.isfinite([h["loss"] for h in history]).all()

    # Same run folder, higher step budget: Ray Train restores the last checkpoint (step 4) and
    # the loop continues from there, asking the teacher only for the new steps.
    resumed = run.model_copy(update={"train": run.train.model_copy(update={"max_steps": 6, "epochs": 2})})
    before = replica_requests()
    checkpoint, history = train_student(resumed, info, prepared["examples"], prepared["n"], prepared["index"], [], False)
    assert replica_requests() - before == 4
    assert [h["step"] for h in history] == [2, 4, 6]
    student = DualEncoderStudent(run.student, teacher_dim=info["dim"])
    assert load_checkpoint(checkpoint, student)["global_step"] == 6


def test_corrupt_checkpoint_is_a_clear_error(prepared, tmp_path):
    from ray.train import Checkpoint

    (tmp_path / "student.pt").write_bytes(b"not a torch file")
    (tmp_path / "state.json").write_text("{}")
    student = DualEncoderStudent(prepared["run"].student, teacher_dim=32)
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(Checkpoint.from_directory(str(tmp_path)), student)
    (tmp_path / "student.pt").unlink()
    with pytest.raises(CheckpointError, match="missing student.pt"):
        load_checkpoint(Checkpoint.from_directory(str(tmp_path)), student)


def test_training_autocast_follows_the_precision_setting():
    from common.text_encoder import resolve_dtype, training_autocast

    cpu, layer, x = torch.device("cpu"), torch.nn.Linear(4, 4), torch.ones(2, 4)
    native = resolve_dtype("auto", "cpu") == "bfloat16"
    for precision, expected in (("fp32", torch.float32), ("bf16", torch.bfloat16),
                                ("auto", torch.bfloat16 if native else torch.float32)):
        with training_autocast(precision, cpu):
            assert layer(x).dtype == expected, precision
    assert layer.weight.dtype == torch.float32  # the weights the optimizer updates stay float32


def test_export_loads_in_sentence_transformers(tiny_bert_dir, tmp_path):
    from sentence_transformers import SentenceTransformer

    config = StudentConfig(model=str(tiny_bert_dir), num_layers=1, normalize=True, projection="always")
    student = DualEncoderStudent(config, teacher_dim=48)
    torch.nn.init.normal_(student.projection.weight)  # a projection that is not the identity
    path = export_sentence_transformers(student, tmp_path / "student", {"teacher": {"name": "t"}})
    texts = ["how are glacier caves formed?", "what do vaccines do", "a much longer query " * 5]
    ours = student.encode_queries(texts).numpy()
    st = SentenceTransformer(str(path), device="cpu").encode(texts, convert_to_numpy=True)
    assert st.shape == (3, 48)
    np.testing.assert_allclose(st, ours, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ExportedStudent(path).encode_queries(texts), ours, rtol=1e-4, atol=1e-5)


def test_label_free_symmetric_run_on_a_bare_corpus(teacher_app, tiny_bert_dir, mini_beir, tmp_path):
    """No training queries or qrels: pseudo-queries from the corpus, labelled by the teacher online.
    A symmetric student (it encodes documents too, matched to the teacher's document embeddings);
    the whole run (index, examples, Train, export, eval on its own index, report) completes."""
    run = tiny_run(tmp_path, tiny_bert_dir, mini_beir, max_steps=2, num_workers=1, precision="bf16",
                   losses={"in_batch_kl": {}, "query_embedding": {}, "document_embedding": {"weight": 0.5}})
    run = run.model_copy(update={
        "data": run.data.model_copy(update={"train_split": None, "pseudo_queries": 40}),
        "student": run.student.model_copy(update={"asymmetric": False}),
    })
    result = run_distillation(run, show_progress=False)
    table = pq.read_table(result.run_dir / "data" / "train.parquet")
    assert table.num_rows == 40 and all(q.startswith("pseudo-") for q in table.column("query_id").to_pylist())
    dataset = load_beir(mini_beir)
    assert not set(table.column("query").to_pylist()) & set(dataset.query_text.values())  # no real query leaks in
    assert (result.student_dir / "modules.json").is_file()
    metrics = result.metrics
    assert set(metrics["metrics"]) == {"teacher", "student"} and metrics["steps"] == 2
    assert {"query_embedding", "document_embedding", "in_batch_kl"} <= set(result.history[-1])
    assert all(np.isfinite(result.history[-1][k]) for k in ("loss", "query_embedding", "document_embedding"))  # bf16 forward
    assert metrics["num_eval_queries"] == 24 and 0 <= metrics["metrics"]["student"]["nDCG@10"] <= 1
    for name in ("metrics.json", "report.md", "loss_curves.png", "metrics.png", "query_cosine.png"):
        assert (result.run_dir / name).is_file(), name


def test_dev_evaluation_uses_held_out_training_queries(tiny_bert_dir, mini_beir, tmp_path):
    from common.config import ConfigError, parse_config
    from student_trainer.examples import split_queries
    from student_trainer.run import eval_queries

    run = tiny_run(tmp_path, tiny_bert_dir, mini_beir)
    run = run.model_copy(update={"data": run.data.model_copy(update={"dev_queries": 5, "eval_split": "dev"})})
    dataset = load_beir(mini_beir)
    split, ids = eval_queries(run, dataset)
    held_out = split_queries(dataset, run.data, run.train.seed)
    assert split == "train" and ids == held_out.dev and len(ids) == 5
    assert not set(ids) & set(held_out.train)  # never trained on
    with pytest.raises(ConfigError, match="dev_queries > 0"):
        parse_config(RunConfig, {**run.model_dump(mode="json"), "data": {**run.data.model_dump(mode="json"), "dev_queries": 0}})
