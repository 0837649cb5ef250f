"""Teacher training end to end on tiny models: train a few steps, save, load through the teacher
service's kinds (``build_teacher``), score; and the losses fall on a tiny overfit set.

Jobs run on ``mini_beir`` (scifact cut down) from ``tiny_bert_dir`` (a random 2-layer BERT with
MiniLM's tokenizer); their checkpoints are the real on-disk layouts the service loads.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from common.datasets import load_beir
from teacher_service.client import TeacherClient
from teacher_service.kinds import build_teacher
from teacher_service.spec import TeacherSpec
from teacher_trainer.config import TeacherJob, TeacherModelConfig
from teacher_trainer.data import TrainingGroup, build_teacher_data
from teacher_trainer.trainer import METRICS_FILE, build_trainee, train_teacher

QUERY = "what do vaccines do"
DOCS = ["Vaccines train the immune system to recognise a pathogen.", "The stock market fell sharply on Monday!",
        "Hamlet is a tragedy, written by William Shakespeare."]
STEPS = 3


def tiny_job(out: Path, base: Path, mini_beir: Path, miner: str = "bm25", train: dict | None = None, **model) -> TeacherJob:
    return TeacherJob.model_validate({
        "out": out,
        "model": {"base_model": str(base), "max_length": 64, "doc_maxlen": 48, "query_maxlen": 12, "dim": 16, **model},
        "data": {"dataset": str(mini_beir), "dev_queries": 4, "dev_depth": 5, "miner": miner, "miner_model": str(base)},
        "train": {"max_steps": STEPS, "batch_size": 2, "lr": 1e-3, "seed": 0, **(train or {})},
    })


def tiny_jobs(root: Path, tiny_bert_dir: Path, mini_beir: Path) -> dict[str, TeacherJob]:
    """One short job per layout: dual-pooled CE (dense miner, bf16 autocast), [CLS] CE and ColBERT (BM25 miner)."""
    return {
        "ce-seg": tiny_job(root / "ce-seg", tiny_bert_dir, mini_beir, miner="dense", train={"precision": "bf16"},
                           kind="ce", pooling="segment_mean"),
        "ce-cls": tiny_job(root / "ce-cls", tiny_bert_dir, mini_beir, kind="ce", pooling="cls"),
        "colbert": tiny_job(root / "colbert", tiny_bert_dir, mini_beir, kind="colbert"),
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_bert_dir: Path, mini_beir: Path) -> dict:
    jobs = tiny_jobs(tmp_path_factory.mktemp("teachers"), tiny_bert_dir, mini_beir)
    return {name: train_teacher(job, show_progress=False) for name, job in jobs.items()}


def served(result, name: str) -> TeacherClient:
    kind = result.metrics["service_kind"]
    return TeacherClient.in_process(build_teacher(TeacherSpec(name=name, kind=kind, checkpoint=str(result.out))))


@pytest.mark.parametrize("name", ["ce-seg", "ce-cls", "colbert"])
def test_saved_checkpoint_serves_the_trained_scores(trained, name):
    """The teacher kind loads the checkpoint unchanged and scores exactly as the trained model did."""
    result = trained[name]
    client = served(result, name)
    got = client.score([QUERY] * len(DOCS), DOCS, mode="pairs")
    with torch.no_grad():
        expected = result.trainee.eval().score(QUERY, DOCS)
    # A tiny, briefly trained [CLS] CE scores its documents within ~1e-5 of each other: compare
    # relative to the scores, not with an absolute slack that would swallow their differences.
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-7)
    assert np.unique(got).size == len(DOCS)  # real, distinct scores
    np.testing.assert_array_equal(np.argsort(got), np.argsort(expected))


def test_dual_pooled_checkpoint_gives_proxies(trained):
    result = trained["ce-seg"]
    meta = json.loads((result.out / "tightdistill_ce.json").read_text())
    assert meta["pooling"] == "segment_mean" and meta["reconstruction_weight"] == 0.1
    assert meta["score_scale"] == pytest.approx(result.trainee.score_scale)
    client = served(result, "ce-seg")
    info = client.describe()
    assert info["signals"] == ["scores", "proxy_embeddings"] and info["max_query_length"] == 64  # trained length
    sig = client.signals([QUERY] * 2, DOCS[:2], mode="pairs")
    assert sig["query_embeddings"].shape == (2, 32) and sig["document_embeddings"].shape == (2, 32)
    recomputed = meta["score_scale"] * (sig["query_embeddings"] * sig["document_embeddings"]).sum(-1)
    np.testing.assert_allclose(sig["scores"], recomputed, rtol=1e-4, atol=1e-5)


def test_cls_checkpoint_is_a_sentence_transformers_cross_encoder(trained):
    from sentence_transformers import CrossEncoder

    result = trained["ce-cls"]
    st_scores = CrossEncoder(str(result.out), device="cpu").predict([(QUERY, d) for d in DOCS])
    ours = served(result, "ce-cls").score([QUERY] * len(DOCS), DOCS, mode="pairs")
    np.testing.assert_allclose(st_scores, ours, rtol=1e-4, atol=1e-4)  # identity activation: the raw logit


def test_colbert_checkpoint_layout(trained):
    out = trained["colbert"].out
    meta = json.loads((out / "artifact.metadata").read_text())
    assert (meta["dim"], meta["query_maxlen"], meta["doc_maxlen"], meta["similarity"]) == (16, 12, 48, "cosine")
    assert json.loads((out / "config.json").read_text())["architectures"] == ["HF_ColBERT"]
    info = served(trained["colbert"], "colbert").describe()
    assert (info["token_dim"], info["max_query_length"], info["max_document_length"]) == (16, 12, 48)


def dev_metrics_by_hand(run: dict[str, dict[str, float]], qrels: dict[str, dict[str, int]]) -> dict[str, float]:
    """Mean nDCG@10 and MRR@10 over the judged queries, in trec_eval's order (score descending,
    ties by document id descending): gain = grade, discount log2(rank + 1); MRR: first grade > 0."""
    ndcg, mrr = [], []
    for qid, judged in qrels.items():
        ranked = [d for d, _ in sorted(run.get(qid, {}).items(), key=lambda item: (item[1], item[0]), reverse=True)][:10]
        dcg = sum(max(judged.get(d, 0), 0) / math.log2(r + 2) for r, d in enumerate(ranked))
        ideal = sorted((g for g in judged.values() if g > 0), reverse=True)[:10]
        ndcg.append(dcg / sum(g / math.log2(r + 2) for r, g in enumerate(ideal)))
        mrr.append(next((1 / (r + 1) for r, d in enumerate(ranked) if judged.get(d, 0) > 0), 0.0))
    return {"nDCG@10": float(np.mean(ndcg)), "MRR@10": float(np.mean(mrr))}


def trainee_run(trainee, data) -> dict[str, dict[str, float]]:
    with torch.no_grad():
        trainee.eval()
        return {q: dict(zip(docs, trainee.score(data.dataset.query_text[q], [data.text(d) for d in docs]).tolist()))
                for q, docs in data.dev_candidates.items()}


@pytest.mark.parametrize("name", ["ce-seg", "ce-cls", "colbert"])
def test_metrics_json(trained, name, tiny_bert_dir, mini_beir):
    result = trained[name]
    saved = json.loads((result.out / METRICS_FILE).read_text())
    assert saved["steps"] == STEPS and [row["step"] for row in saved["loss_curve"]] == [1, 2, 3]
    assert all(np.isfinite(row["loss"]) and row["loss"] > 0 for row in saved["loss_curve"])
    assert ("reconstruction" in saved["loss_curve"][0]) == (name == "ce-seg")
    dev = saved["dev"]
    assert dev["queries"] == 4 and dev["depth"] == 5
    assert [h["step"] for h in dev["history"]] == [0, STEPS]
    # The dev metrics recomputed by hand from the job's own dev candidates: the miner's scores,
    # the untrained trainee's (seeded as the job seeds it: the same initial weights) and the
    # trained one's. Each must be the metric of that model's ranking, not just a number in [0, 1].
    job = tiny_jobs(result.out.parent, tiny_bert_dir, mini_beir)[name]
    data = build_teacher_data(load_beir(mini_beir), job.data, job.train.seed, show_progress=False)
    torch.manual_seed(job.train.seed)
    untrained = build_trainee(job.model)
    for what, run in (("miner", data.dev_miner_run), ("before", trainee_run(untrained, data)),
                      ("after", trainee_run(result.trainee, data))):
        expected = dev_metrics_by_hand(run, data.dev_qrels)
        assert {k: dev[what][k] for k in expected} == pytest.approx(expected, abs=1e-9), what
    assert saved["job"]["data"]["negatives"] == (3 if name.startswith("ce") else 1)


# --- the losses fall on a tiny overfit set -----------------------------------------------------
OVERFIT = [
    TrainingGroup("how are glacier caves formed", "A glacier cave is a cave formed within the ice of a glacier.",
                  ["The stock market fell sharply on Monday.", "Penguins live in the southern hemisphere."]),
    TrainingGroup("what do vaccines do", "Vaccines train the immune system to recognise a pathogen.",
                  ["Photosynthesis converts light into chemical energy.", "Hamlet is a tragedy by Shakespeare."]),
]


@pytest.mark.parametrize("model", [{"kind": "ce", "pooling": "special_token"}, {"kind": "ce", "pooling": "cls"},
                                   {"kind": "colbert", "dim": 16}], ids=["ce-special-token", "ce-cls", "colbert"])
def test_loss_decreases_on_a_tiny_overfit_set(tiny_bert_dir, model):
    torch.manual_seed(0)
    trainee = build_trainee(TeacherModelConfig(base_model=str(tiny_bert_dir), max_length=48, doc_maxlen=32, **model))
    from teacher_trainer.config import TeacherOptimConfig

    optimizer = torch.optim.AdamW(trainee.param_groups(TeacherOptimConfig(lr=5e-3, scale_lr=2e-2)))
    trainee.train()
    losses = []
    for _ in range(15):
        out = trainee.loss(OVERFIT)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(out.parts["rank"])
    assert losses[-1] < 0.5 * losses[0], losses
