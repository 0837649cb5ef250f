"""The coupled training loop on real Ray Train workers against a real Serve teacher."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pyarrow.parquet as pq

import numpy as np
import pytest
import torch

from common.datasets import load_beir
from student_trainer.config import RunConfig
from student_trainer.export import ExportedStudent, export_sentence_transformers
from student_trainer.run import train_student
from student_trainer.students import DualEncoderStudent, StudentConfig
from student_trainer.train_loop import CheckpointError, load_checkpoint
from shared_runs import resumable_copy


def tiny_run(tmp_path: Path, tiny_bert_dir: Path, mini_beir: Path, **train) -> RunConfig:
    return RunConfig.model_validate({
        "name": "t", "output_dir": str(tmp_path),
        "teacher": {"teacher": "tiny", "app_name": "tightdistill", "serve_config": None},
        "student": {"model": str(tiny_bert_dir), "num_layers": 1},
        "data": {"dataset": str(mini_beir), "num_negatives": 1},
        "train": {"batch_size": 8, "num_workers": 2, "cpus_per_worker": 0.5, "report_every": 2,
                  "checkpoint_every": 2, "epochs": 1, **train},
    })


def normalised(text: str) -> str:
    """Lower case, punctuation as spaces, single spaces."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def ndcg_at_10(scores: np.ndarray, doc_ids: list[str], judged: dict[str, int]) -> float:
    """trec_eval's ndcg_cut.10 by hand: rank by score (ties: document id descending), gain = grade,
    discount log2(rank + 1), over the ideal ordering of the judged grades."""
    ranked = sorted(range(len(doc_ids)), key=lambda j: (scores[j], doc_ids[j]), reverse=True)[:10]
    dcg = sum(max(judged.get(doc_ids[j], 0), 0) / math.log2(r + 2) for r, j in enumerate(ranked))
    ideal = sorted((g for g in judged.values() if g > 0), reverse=True)[:10]
    return dcg / sum(g / math.log2(r + 2) for r, g in enumerate(ideal))


def replica_requests(app: str = "tightdistill", teacher: str = "tiny") -> int:
    from ray import serve

    return serve.get_deployment_handle(f"teacher-{teacher}", app).stats.remote().result()["requests"]


def test_every_step_asks_the_teacher_and_resume_continues(ddp_trained, tmp_path):
    """The session's 4-step run on two DDP workers (``ddp_trained``), then a resume of it."""
    run, info, history = ddp_trained["run"], ddp_trained["info"], ddp_trained["history"]
    # 4 steps x 2 workers, one request each (query embeddings; the matrix uses the inherited index)
    assert ddp_trained["requests"] == 8
    assert [h["step"] for h in history] == [2, 4]
    # A worker's own count at each report. Prefetch is on (the default): with_prefetch sends batch
    # t+1's request before it hands batch t to the step, and each request is one _send (query
    # embeddings only, no ensemble, no extra queries). So at the report after step 2 the worker
    # has sent batches 1, 2 and 3: exactly 3 (without prefetch it would be 2). At step 4 the
    # budget (max_steps 4) stops the prefetcher: 4, no request for a 5th batch.
    assert history[0]["teacher_requests"] == 3, f"prefetch={run.train.prefetch}: {history[0]}"
    assert history[-1]["teacher_requests"] == 4, history
    assert np.isfinite([h["loss"] for h in history]).all()

    # Same run folder (a copy of it), higher step budget, no time budget: Ray Train restores the
    # last checkpoint (step 4) and the loop continues from there, asking the teacher only for the new steps.
    resumed = resumable_copy(ddp_trained, tmp_path, max_steps=6, epochs=2, max_minutes=None)
    before = replica_requests()
    checkpoint, history = train_student(resumed, info, ddp_trained["examples"], ddp_trained["n"], ddp_trained["index"],
                                        [], False)
    assert replica_requests() - before == 4
    assert [h["step"] for h in history] == [2, 4, 6]
    student = DualEncoderStudent(run.student, teacher_dim=info["dim"])
    assert load_checkpoint(checkpoint, student)["global_step"] == 6


def test_corrupt_checkpoint_is_a_clear_error(tiny_bert_dir, mini_beir, tmp_path):
    from ray.train import Checkpoint

    (tmp_path / "student.pt").write_bytes(b"not a torch file")
    (tmp_path / "state.json").write_text("{}")
    student = DualEncoderStudent(tiny_run(tmp_path, tiny_bert_dir, mini_beir).student, teacher_dim=32)
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


def test_label_free_symmetric_run_on_a_bare_corpus(experiment_runs, mini_beir):
    """No training queries or qrels: pseudo-queries from the corpus, labelled by the teacher online.
    A symmetric student (it encodes documents too, matched to the teacher's document embeddings);
    the whole run (index, examples, Train, export, eval on its own index, report) completes. The
    run is the "sym" row of the session's experiment (shared_runs.SHARED_ROWS), trained once."""
    run = experiment_runs["runs"]["sym"]
    assert run.data.train_split is None and run.data.pseudo_queries == 40 and not run.student.asymmetric
    assert run.train.precision == "bf16" and run.train.num_workers == 1 and run.train.max_steps == 2
    metrics = json.loads((run.run_dir / "metrics.json").read_text())
    history = json.loads((run.run_dir / "history.json").read_text())
    table = pq.read_table(run.run_dir / "data" / "train.parquet")
    assert table.num_rows == 40 and all(q.startswith("pseudo-") for q in table.column("query_id").to_pylist())
    dataset = load_beir(mini_beir)
    # No real query leaks in: by id, and by text up to case, punctuation and spacing (an exact
    # string check would miss a lightly edited copy); each pseudo-query is text of the corpus.
    assert not set(table.column("query_id").to_pylist()) & set(dataset.query_text), "a real query id was trained on"
    pseudo = [normalised(q) for q in table.column("query").to_pylist()]
    leaked = set(pseudo) & {normalised(q) for q in dataset.query_text.values()}
    assert not leaked, f"real queries among the pseudo-queries: {sorted(leaked)[:3]}"
    corpus = [normalised(t) for column in ("title", "text") for t in dataset.corpus.column(column).to_pylist() if t]
    assert all(any(q in text for text in corpus) for q in pseudo), "a pseudo-query that is not corpus text"
    assert (run.run_dir / "student" / "modules.json").is_file()
    assert set(metrics["metrics"]) == {"teacher", "student"} and metrics["steps"] == 2
    assert {"query_embedding", "document_embedding", "in_batch_kl"} <= set(history[-1])
    assert all(np.isfinite(history[-1][k]) for k in ("loss", "query_embedding", "document_embedding"))  # bf16 forward
    assert metrics["num_eval_queries"] == 24
    # The student's nDCG@10, recomputed from the exported student: it retrieves from its own
    # embeddings of the corpus (symmetric), by inner product.
    exported = ExportedStudent(run.run_dir / "student")
    qids = dataset.split_query_ids("test")
    scores = exported.encode_queries([dataset.query_text[q] for q in qids]) @ exported.encode_documents(dataset.doc_texts).T
    qrels = dataset.qrels("test")
    expected = np.mean([ndcg_at_10(row, dataset.doc_ids, qrels[q]) for q, row in zip(qids, scores)])
    assert metrics["metrics"]["student"]["nDCG@10"] == pytest.approx(expected, abs=1e-6)
    for name in ("metrics.json", "report.md", "loss_curves.png", "metrics.png", "query_cosine.png"):
        assert (run.run_dir / name).is_file(), name


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
