"""What only a live teacher makes possible: student-mined negatives re-scored on demand, teacher
ensembles with calibrated scores, agreement metrics during training. Real Serve teachers ("tiny"
and "tiny-cls-cos" of the ``teacher_app`` fixture), real FAISS, real Ray Train."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from common.datasets import load_beir
from student_trainer.config import NegativeRefreshConfig, RunConfig
from student_trainer.losses import DistillBatch, build_loss
from student_trainer.negative_refresh import NegativeRefresher, TrainingQueries
from student_trainer.export import ExportedStudent
from student_trainer.extra_queries import perturbed_queries
from student_trainer.run import connect_teacher, eval_queries, prepare_examples, run_distillation, training_queries
from student_trainer.score_calibration import calibrate, combine, minmax_per_query, temperature_scale, zscore_per_query
from student_trainer.students import DualEncoderStudent
from student_trainer.teacher_index import teacher_doc_embeddings
from student_trainer.teacher_signals import TeacherMember, TeacherSignalSource
from student_trainer.train_loop import to_train_batch


def top_k(ids: list[str], scores: np.ndarray, k: int) -> list[str]:
    return [ids[j] for j in np.argsort(-scores, kind="stable")[:k]]


def rbo_by_definition(a: list[str], b: list[str], p: float) -> float:
    """Extrapolated RBO (Webber et al. 2010, Eq. 32) with X_d = |a[:d] & b[:d]| counted directly:
    X_k / k * p^k + (1 - p) / p * sum_d X_d / d * p^d."""
    k = len(a)
    x = [len(set(a[:d]) & set(b[:d])) for d in range(1, k + 1)]
    return x[-1] / k * p**k + (1 - p) / p * sum(x[d - 1] / d * p**d for d in range(1, k + 1))


def replica_requests(teacher: str) -> int:
    from ray import serve

    return serve.get_deployment_handle(f"teacher-{teacher}", "tightdistill").stats.remote().result()["requests"]


def live_run(tmp_path: Path, tiny_bert_dir: Path, mini_beir: Path, teacher: dict | None = None, **sections) -> RunConfig:
    config = {
        "name": "live", "output_dir": str(tmp_path),
        "teacher": {"teacher": "tiny", "app_name": "tightdistill", "serve_config": None, **(teacher or {})},
        "student": {"model": str(tiny_bert_dir), "num_layers": 1},
        "data": {"dataset": str(mini_beir), "num_negatives": 1},
        "train": {"batch_size": 8, "num_workers": 1, "cpus_per_worker": 0.5, "report_every": 2, "checkpoint_every": 2,
                  "epochs": 1},
    }
    for name, values in sections.items():
        config[name] = {**config.get(name, {}), **values}
    return RunConfig.model_validate(config)


@pytest.fixture(scope="module")
def live(teacher_app, tiny_bert_dir, mini_beir, tmp_path_factory):
    run = live_run(tmp_path_factory.mktemp("live"), tiny_bert_dir, mini_beir)
    client = connect_teacher(run.teacher)
    dataset = load_beir(run.data.dataset)
    index = teacher_doc_embeddings(client, dataset, show_progress=False)
    examples, _ = prepare_examples(run, dataset, client, index)
    table = pq.read_table(examples)
    return {"run": run, "client": client, "dataset": dataset, "index": index, "table": table,
            "info": {name: client.describe(name) for name in ("tiny", "tiny-cls-cos")}}


# ----------------------------------------------------------------------------- calibration


def test_calibration_functions_against_hand_computed_values():
    s = np.array([[1.0, 2.0, 3.0], [2.0, 4.0, 3.0], [5.0, 5.0, 5.0]])
    # z-score: mean 2, population std sqrt(2/3) -> -/+ 1 / sqrt(2/3) = 1.2247...
    np.testing.assert_allclose(zscore_per_query(s)[0], [-1.224744871, 0.0, 1.224744871])
    np.testing.assert_allclose(zscore_per_query(s)[1], [-1.224744871, 1.224744871, 0.0])
    np.testing.assert_allclose(minmax_per_query(s), [[0.0, 0.5, 1.0], [0.0, 1.0, 0.5], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(temperature_scale(s[:1], 0.25), [[4.0, 8.0, 12.0]])
    np.testing.assert_allclose(zscore_per_query(s)[2], [0.0, 0.0, 0.0])  # a constant row carries no ranking
    assert calibrate(s, "none") is s  # uncalibrated scores pass through untouched
    # a row-wise calibration of a 1-D candidate list equals that of the same row in a matrix
    np.testing.assert_allclose(calibrate(s[1], "zscore"), calibrate(s, "zscore")[1])
    # weights are normalised: (1 * [0, 4] + 3 * [4, 0]) / 4
    np.testing.assert_allclose(combine([np.array([0.0, 4.0]), np.array([4.0, 0.0])], [1.0, 3.0]), [3.0, 1.0])
    with pytest.raises(ValueError, match="not all 0"):
        combine([s, s], [0.0, 0.0])
    with pytest.raises(ValueError, match="differ in shape"):
        combine([s, s[:2]], [1.0, 1.0])
    with pytest.raises(ValueError, match="unknown calibration"):
        calibrate(s, "softmax")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- ensembles


def test_ensemble_weights_one_zero_equal_the_single_teachers_loss(live):
    info, index, client = live["info"], live["index"], live["client"]
    rows = live["table"].slice(0, 4).to_pydict()
    batch = to_train_batch({k: np.asarray(v, dtype=object) for k, v in rows.items()}, 1, [])

    def source(*members: tuple[str, float]) -> TeacherSignalSource:
        # "tiny" scores from its inherited index; "tiny-cls-cos" through the service's score matrix
        ensemble = [TeacherMember(name, info[name], weight, "zscore") for name, weight in members]
        return TeacherSignalSource(client, members[0][0], info[members[0][0]], index if members[0][0] == "tiny" else None,
                                   want_query_embeddings=True, ensemble=ensemble)

    before = {t: replica_requests(t) for t in info}
    single = source(("tiny", 1.0)).collect(source(("tiny", 1.0)).submit(batch))
    ens_10 = source(("tiny", 1.0), ("tiny-cls-cos", 0.0))
    signals_10 = ens_10.collect(ens_10.submit(batch))
    signals_01 = source(("tiny", 0.0), ("tiny-cls-cos", 1.0)).collect(source(("tiny", 0.0), ("tiny-cls-cos", 1.0)).submit(batch))
    signals_11 = source(("tiny", 1.0), ("tiny-cls-cos", 1.0)).collect(source(("tiny", 1.0), ("tiny-cls-cos", 1.0)).submit(batch))
    # both teachers were asked by each ensemble (3 ensembles + the single source's 1 for "tiny")
    after = {t: replica_requests(t) for t in info}
    assert after["tiny"] - before["tiny"] >= 4 and after["tiny-cls-cos"] - before["tiny-cls-cos"] == 3
    assert ens_10.requests_by_teacher == {"tiny": 1, "tiny-cls-cos": 1}

    loss_fn = build_loss({"in_batch_kl": {"tau": 0.25, "gamma": 0.1}, "margin_mse": {}})
    student = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))

    def loss(signals) -> float:
        return float(loss_fn(DistillBatch(student_scores=student, labels=DistillBatch.layout_labels(4, 1),
                                          teacher_scores=torch.from_numpy(np.asarray(signals.scores, dtype=np.float32)),
                                          num_negatives=1)))

    assert loss(signals_10) == pytest.approx(loss(single), rel=1e-6)
    # the other corner is the other teacher alone, z-scored
    cos_raw = client.score(batch.queries, batch.documents, mode="matrix", teacher="tiny-cls-cos")
    np.testing.assert_allclose(signals_01.scores, zscore_per_query(cos_raw), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(signals_11.scores, (signals_10.per_teacher["tiny"] + signals_01.per_teacher["tiny-cls-cos"]) / 2,
                               rtol=1e-5, atol=1e-5)
    assert loss(signals_11) != pytest.approx(loss(single), rel=1e-3)  # the second teacher does change the target
    assert set(signals_11.per_teacher) == {"tiny", "tiny-cls-cos"}
    # embeddings always come from the primary teacher
    np.testing.assert_array_equal(signals_10.query_embeddings, single.query_embeddings)


# ----------------------------------------------------------------------------- refreshed negatives


@pytest.mark.parametrize("asymmetric", [True, False], ids=["asymmetric", "symmetric"])
def test_refresh_mines_new_negatives_and_asks_the_teacher_for_them(live, tiny_bert_dir, asymmetric):
    run, info, client, dataset, table = live["run"], live["info"], live["client"], live["dataset"], live["table"]
    data = TrainingQueries.from_examples(table.column("query").to_pylist(), table.column("positive_id").to_pylist(),
                                         dataset.doc_ids, dataset.doc_texts)
    student = DualEncoderStudent(run.student.model_copy(update={"asymmetric": asymmetric}), teacher_dim=info["tiny"]["dim"])
    # "tiny-cls-cos" has no index here, so it scores every (query, candidate) pair through the service
    source = TeacherSignalSource(client, "tiny-cls-cos", info["tiny-cls-cos"], None, want_query_embeddings=False)
    config = NegativeRefreshConfig(every=2, top_k=6, queries=10, false_negative_margin=0.0, corpus_sample=120)
    refresher = NegativeRefresher(config, data, source, live["index"] if asymmetric else None, seed=1)
    assert refresher.due(2) and not refresher.due(3) and not refresher.due(0)

    before = replica_requests("tiny-cls-cos")
    stats = refresher.refresh(student, step=2)
    picked = [data.queries.index(q) for q in refresher.pools]
    pairs = sum(len(data.positives[i]) for i in refresher._next_queries(2)) + stats["refresh/candidates"]
    # one pairs request per 64 (query, document) pairs: the positives and every fresh candidate
    assert replica_requests("tiny-cls-cos") - before == stats["refresh/teacher_requests"] == int(np.ceil(pairs / 64))
    assert stats["refresh/queries"] == 10 and stats["refresh/candidates"] == 60
    assert stats["refresh/candidates"] - stats["refresh/dropped_false_negatives"] == sum(map(len, refresher.pools.values()))

    static = {q: set(n) for q, n in zip(table.column("query").to_pylist(), table.column("negative_ids").to_pylist())}
    assert refresher.pools and sum(set(pool) != static[q] for q, pool in refresher.pools.items()) >= len(refresher.pools) - 1
    for q, i in zip(refresher.pools, picked):
        pool = refresher.pools[q]
        assert not set(pool) & set(data.positives[i])  # never a labelled positive
        # the guard: every kept candidate scores at most the weakest positive (margin 0), by the teacher itself
        docs = [dataset.doc_texts[dataset.doc_index[d]] for d in data.positives[i] + pool]
        scores = client.score([q] * len(docs), docs, mode="pairs", teacher="tiny-cls-cos")
        assert scores[len(data.positives[i]):].max() <= scores[: len(data.positives[i])].min() + 1e-5

    # batches of refreshed queries now train on the fresh negatives
    rows = {k: np.asarray(v, dtype=object) for k, v in table.to_pydict().items()}
    fresh_rows, changed = refresher.substitute(rows, 1, np.random.default_rng(0))
    refreshed = [r for r, q in enumerate(rows["query"]) if q in refresher.pools]
    assert changed == len(refreshed) > 0
    for r in refreshed:
        assert fresh_rows["negative_ids"][r][0] in refresher.pools[rows["query"][r]]
        assert fresh_rows["negatives"][r][0] == dataset.doc_texts[dataset.doc_index[fresh_rows["negative_ids"][r][0]]]

    # without the guard the teacher is not asked at refresh time (the batch signals score them online)
    unguarded = NegativeRefresher(config.model_copy(update={"false_negative_margin": None}), data, source,
                                  live["index"] if asymmetric else None, seed=1)
    before = replica_requests("tiny-cls-cos")
    assert unguarded.refresh(student, step=2)["refresh/dropped_false_negatives"] == 0
    assert replica_requests("tiny-cls-cos") == before


# ----------------------------------------------------------------------------- end to end


def test_run_with_ensemble_refresh_and_agreement(live, tiny_bert_dir, mini_beir, tmp_path):
    """A whole run with every new option on: ensemble of both tiny teachers (z-scored), negatives
    refreshed every 2 steps, agreement measured every 2 steps; the run records it all."""
    run = live_run(tmp_path, tiny_bert_dir, mini_beir,
                   teacher={"teacher": None, "teachers": ["tiny", {"name": "tiny-cls-cos", "weight": 0.5}], "calibration": "zscore"},
                   # a margin no z-score reaches: the teacher checks every candidate and keeps them all (random
                   # tiny teachers rank the labelled positives anywhere, so a real guard could empty the pools)
                   data={"refresh": {"every": 2, "top_k": 8, "queries": None, "false_negative_margin": 100.0},
                         "extra_queries": "perturbed", "extra_query_ratio": 0.5},
                   train={"max_steps": 4, "losses": {"in_batch_kl": {}, "margin_mse": {"weight": 0.1}, "query_embedding": {}}},
                   eval={"agreement_every": 2, "agreement_queries": 16, "agreement_k": 5})
    before = replica_requests("tiny-cls-cos")
    result = run_distillation(run, show_progress=False)
    assert replica_requests("tiny-cls-cos") > before
    history = result.history
    assert [h["step"] for h in history] == [0, 2, 4]
    assert {"agreement/overlap@5", "agreement/RBO@5", "agreement/kendall_tau@5", "agreement/inbatch_kl",
            "agreement/query_cosine_mean"} <= set(history[0]) and "agreement/RBO@5" in history[-1]
    for h in history[1:]:
        assert {"teacher_kl/tiny", "teacher_kl/tiny-cls-cos", "teacher_requests/tiny-cls-cos"} <= set(h)
        assert h["teacher_requests/tiny-cls-cos"] >= h["step"]  # asked for every batch
    assert history[1]["refresh/queries"] == 62  # every training query, refreshed at step 2
    assert "refresh/queries" not in history[2]  # no refresh after the last step: nothing left to train on
    assert history[1]["refresh/fresh_rows"] == 0  # the first batches train on the negatives mined before training
    assert history[-1]["refresh/fresh_rows"] > 0.5  # the batch after the first refresh trains on fresh negatives

    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert [t["name"] for t in metrics["signals"]["teachers"]] == ["tiny", "tiny-cls-cos"]
    assert metrics["signals"]["teachers"][1]["weight"] == 0.5 and metrics["signals"]["teachers"][1]["calibration"] == "zscore"
    assert metrics["signals"]["query_embeddings"] == "tiny"
    # the pool: every distinct perturbation of the run's training queries (fewer than extra_query_pool)
    variants = perturbed_queries(training_queries(result.run_dir / "data" / "train.parquet"), run.data.generated_per_query,
                                 run.train.seed)
    assert metrics["extra_queries"] == {"source": "perturbed", "pool": min(len(variants), run.data.extra_query_pool)}
    per_query = json.loads((result.run_dir / "agreement.json").read_text())
    assert len(per_query["overlap@5"]) == metrics["num_eval_queries"]
    # overlap@5 and RBO@5 recomputed from the saved student and the primary teacher: for each eval
    # query, the teacher's top 5 of its document index and the (asymmetric) student's top 5 of the
    # same document embeddings, both by inner product ("tiny" scores by dot product).
    assert live["info"]["tiny"]["similarity"] == "dot" and run.student.similarity == "dot"
    dataset, index = live["dataset"], live["index"]
    texts = [dataset.query_text[q] for q in eval_queries(run, dataset)[1]]
    teacher_q = live["client"].encode_many(texts, role="query")
    student_q = ExportedStudent(result.student_dir).encode_queries(texts)
    tops = [(top_k(index.ids, index.emb @ t, 5), top_k(index.ids, index.emb @ s, 5)) for t, s in zip(teacher_q, student_q)]
    overlap = [len(set(t) & set(s)) / 5 for t, s in tops]
    rbos = [rbo_by_definition(t, s, run.eval.rbo_p) for t, s in tops]
    np.testing.assert_allclose(per_query["overlap@5"], overlap, err_msg="per-query overlap@5")
    np.testing.assert_allclose(per_query["RBO@5"], rbos, rtol=1e-9, err_msg="per-query RBO@5")
    assert metrics["agreement"]["overlap@5"] == pytest.approx(np.mean(overlap))
    assert metrics["agreement"]["RBO@5"] == pytest.approx(np.mean(rbos))
    report = (result.run_dir / "report.md").read_text()
    assert "Agreement with the teacher" in report and "tiny-cls-cos" in report
    for name in ("agreement_curves.png", "teacher_kl.png", "loss_curves.png"):
        assert (result.run_dir / name).is_file(), name


# ----------------------------------------------------------------------------- configs


def test_teacher_config_single_and_list_forms():
    from common.config import ConfigError, parse_config
    from student_trainer.config import TeacherRef

    single = TeacherRef(teacher="minilm")
    assert [(m.name, m.weight, m.calibration) for m in single.members()] == [("minilm", 1.0, "none")]
    ens = TeacherRef.model_validate({"teachers": ["minilm", {"name": "colbert", "weight": 0.5, "calibration": "minmax"}],
                                     "calibration": "zscore"})
    assert ens.teacher == "minilm"  # the primary is the first member
    assert [(m.name, m.weight, m.calibration) for m in ens.members()] == [("minilm", 1.0, "zscore"), ("colbert", 0.5, "minmax")]
    assert TeacherRef.model_validate(ens.model_dump(mode="json")) == ens  # what run.py hands the workers
    for bad, message in [({"teacher": "ce", "teachers": ["minilm"]}, "not the first"),
                         ({"teachers": ["a", "a"]}, "twice"), ({"teachers": [{"name": "a", "weight": 0}]}, "weight"),
                         ({"teachers": [{"name": "a", "wieght": 1}]}, "unknown key"),
                         ({"calibration": "softmax"}, "calibration")]:
        with pytest.raises(ConfigError, match=message):
            parse_config(TeacherRef, bad)
