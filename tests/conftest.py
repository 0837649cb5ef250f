"""Session fixtures: one Ray instance, tiny checkpoints in real on-disk layouts, one teacher app.

Tiny models keep the suite fast; they are real Hugging Face checkpoints (random weights) with the
real all-MiniLM-L6-v2 tokenizer, saved in the layouts users point tightdistill at.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest
import torch

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Teacher indexes the tests build go to a throw-away cache, not the user's ~/.cache (set before
# Ray starts, so replicas and Train workers inherit it).
os.environ["TIGHTDISTILL_CACHE"] = tempfile.mkdtemp(prefix="tightdistill-test-cache-")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Ray Train's controller polls its workers this often (default 2 s): a finished, failed or killed
# worker is noticed that much sooner, on each of the suite's few dozen Train runs. A missed poll
# is awaited at the next one, as with the default. Set before Ray starts, so its actors inherit it.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")
# Ray exports the service's Prometheus metrics this often (default 10 s): the metrics test waits
# for its own requests' counts to show up on the endpoint.
os.environ.setdefault("RAY_metrics_report_interval_ms", "2000")

from net import free_port  # noqa: E402 - after the environment above
from tiny_checkpoints import save_tiny_bert  # noqa: E402

TEST_TOKEN_ENV = "TIGHTDISTILL_TEST_TOKEN"
TEST_TOKEN = "s3cret-test-token"


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    from common.model_registry import resolve_model

    return resolve_model("minilm-l6")


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path) -> Path:
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), minilm_dir)


@pytest.fixture(scope="session")
def ray_session():
    """The one Ray instance of the test session (logical CPUs so Serve and Train both fit)."""
    import ray

    from common.ray_runtime import init_ray

    init_ray(num_cpus=8)
    yield
    # No serve.shutdown(): deleting every app replica by replica took 5-7 s, and stopping the
    # session's local Ray instance ends the Serve controller, proxy and replicas with it.
    ray.shutdown()


@pytest.fixture(scope="session")
def http_port(ray_session) -> int:
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config={"enable_access_log": False})
    return port


def teacher_specs(tiny_bert_dir: Path) -> list[dict]:
    tiny = {"ray_actor_options": {"num_cpus": 0.5}, "batch_wait_timeout_s": 0.05}
    return [
        # "tiny" runs without the signal cache, so tests of dynamic batching see every request
        # reach the batcher; the other teachers keep the default cache.
        {"name": "tiny", "kind": "dual_encoder", "checkpoint": str(tiny_bert_dir), "cache": {"max_bytes": 0}, **tiny},
        {"name": "tiny-cls-cos", "kind": "dual_encoder", "checkpoint": str(tiny_bert_dir),
         "options": {"pooling": "cls", "similarity": "cosine", "max_query_length": 16}, **tiny},
        {"name": "minilm", "kind": "dual_encoder", "checkpoint": "minilm-l6", "ray_actor_options": {"num_cpus": 0.5}},
    ]


@pytest.fixture(scope="session")
def teacher_app(http_port: int, tiny_bert_dir: Path) -> dict:
    """The teacher service app ('tightdistill') with tiny and real teachers, on HTTP and handles."""
    from teacher_service.app import deploy
    from teacher_service.spec import ServiceConfig

    config = ServiceConfig.model_validate({
        "teachers": teacher_specs(tiny_bert_dir),
        "limits": {"max_texts": 64, "max_text_chars": 5000, "max_body_bytes": 200_000, "max_matrix_pairs": 64},
    })
    deploy(config, app_name="tightdistill", route_prefix="/", http_options={"host": "127.0.0.1", "port": http_port})
    return {"url": f"http://127.0.0.1:{http_port}", "config": config, "app_name": "tightdistill"}


@pytest.fixture(scope="session")
def secure_app(http_port: int, tiny_bert_dir: Path) -> dict:
    """A second app under /secure whose API needs a bearer token."""
    from teacher_service.app import deploy
    from teacher_service.spec import ServiceConfig

    os.environ[TEST_TOKEN_ENV] = TEST_TOKEN
    config = ServiceConfig.model_validate({
        "teachers": [{"name": "tiny-secure", "kind": "dual_encoder", "checkpoint": str(tiny_bert_dir),
                      "ray_actor_options": {"num_cpus": 0.25}}],
        "auth_token_env": TEST_TOKEN_ENV,
    })
    deploy(config, app_name="secure", route_prefix="/secure")
    return {"url": f"http://127.0.0.1:{http_port}/secure", "token": TEST_TOKEN}


@pytest.fixture(scope="session")
def pair_checkpoints(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path) -> dict[str, Path]:
    """Tiny teachers that score pairs, in their on-disk layouts (tiny_checkpoints.py)."""
    from tiny_checkpoints import DUAL_META, save_colbert_checkpoint, save_cross_encoder

    root = tmp_path_factory.mktemp("pair-checkpoints")
    return {
        "colbert": save_colbert_checkpoint(root / "colbert", minilm_dir),
        "ce": save_cross_encoder(root / "ce", minilm_dir),
        "ce-dual": save_cross_encoder(root / "ce-dual", minilm_dir, seed=3, ce_meta=DUAL_META),
    }


@pytest.fixture(scope="session")
def pair_app(http_port: int, pair_checkpoints: dict[str, Path]) -> dict:
    """One app ('pair-teachers') of the teachers that score pairs, for the tests of these kinds
    through the service and of the students distilled from them: ColBERT (tiny, and zero-shot on
    the real all-MiniLM-L6-v2 weights), a [CLS]-pooled cross-encoder twice (as "ce" with a small
    max_matrix_pairs, as "ce-cls" without) and a dual-pooled one."""
    from teacher_service.app import deploy
    from teacher_service.spec import ServiceConfig

    common = {"ray_actor_options": {"num_cpus": 0.25}, "batch_wait_timeout_s": 0.05}
    config = ServiceConfig.model_validate({"teachers": [
        {"name": "colbert", "kind": "colbert", "checkpoint": str(pair_checkpoints["colbert"]), **common},
        {"name": "colbert-minilm", "kind": "colbert", "checkpoint": "minilm-l6", "options": {"zero_shot": True}, **common},
        {"name": "ce", "kind": "cross_encoder", "checkpoint": str(pair_checkpoints["ce"]), "options": {"max_matrix_pairs": 12},
         **common},
        {"name": "ce-cls", "kind": "cross_encoder", "checkpoint": str(pair_checkpoints["ce"]), **common},
        {"name": "ce-dual", "kind": "cross_encoder", "checkpoint": str(pair_checkpoints["ce-dual"]), **common},
    ]})
    deploy(config, app_name="pair-teachers", route_prefix="/pair-teachers",
           http_options={"host": "127.0.0.1", "port": http_port})
    return {"url": f"http://127.0.0.1:{http_port}/pair-teachers", "config": config, "app_name": "pair-teachers"}


@pytest.fixture(scope="session")
def mini_beir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small real BEIR folder cut from scifact: 64 train and 24 test queries, their relevant
    documents plus 200 others, texts shortened (tests train on it in seconds)."""
    import random

    from common.datasets import load_beir

    out = tmp_path_factory.mktemp("mini-scifact")
    ds = load_beir("scifact")
    rng = random.Random(0)
    splits = {"train": ds.split_query_ids("train")[:64], "test": ds.split_query_ids("test")[:24]}
    keep = {d for split, qids in splits.items() for q in qids for d in ds.qrels(split)[q]}
    others = [d for d in ds.doc_ids if d not in keep]
    rng.shuffle(others)
    keep |= set(others[:200])
    (out / "qrels").mkdir()
    with open(out / "corpus.jsonl", "w") as fh:
        for row in ds.corpus.to_pylist():
            if row["id"] in keep:
                fh.write(json.dumps({"_id": row["id"], "title": row["title"], "text": row["text"][:300]}) + "\n")
    with open(out / "queries.jsonl", "w") as fh:
        for qids in splits.values():
            for q in qids:
                fh.write(json.dumps({"_id": q, "text": ds.query_text[q]}) + "\n")
    for split, qids in splits.items():
        lines = [f"{q}\t{d}\t{g}" for q in qids for d, g in ds.qrels(split)[q].items()]
        (out / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(lines) + "\n")
    return out


@pytest.fixture(scope="session")
def ddp_trained(teacher_app, tiny_bert_dir: Path, mini_beir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One 4-step run on two DDP Train workers, trained once for the tests that resume it (each
    from its own copy): see :func:`shared_runs.train_ddp`."""
    from shared_runs import ddp_run_config, train_ddp

    return train_ddp(ddp_run_config(tmp_path_factory.mktemp("ddp"), tiny_bert_dir, mini_beir, max_steps=4, max_minutes=10.0))


@pytest.fixture(scope="session")
def experiment_runs(teacher_app, tiny_bert_dir: Path, mini_beir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The experiment runner's two-row table, run once: its rows are also the label-free and the
    projection-fit runs their own tests check (see :func:`shared_runs.shared_experiment`)."""
    from shared_runs import shared_experiment

    return shared_experiment(tmp_path_factory.mktemp("experiment"), tiny_bert_dir, mini_beir)
