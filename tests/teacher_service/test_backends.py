"""Teacher backends: every kind's encoder through ONNX Runtime (fp32, dynamic int8) gives torch's
outputs, the graph is exported once per checkpoint and read back from the cache, ``auto`` measures
once and keeps its decision, bad combinations are refused in the spec with a clear message, and an
ONNX teacher serves through the real Serve app.

The graphs are exported from tiny checkpoints (random weights, MiniLM's tokenizer) into the
session's throw-away cache, which the Serve replicas share (``TIGHTDISTILL_CACHE``, conftest).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

import common.onnx_runtime as onnx_runtime
from common.model_registry import cache_dir
from common.onnx_runtime import row_cosines
from teacher_service.kinds import ONNX_KINDS, build_teacher
from teacher_service.kinds.backend import OnnxEncoder, auto_candidates, calibration_texts
from teacher_service.spec import ServiceConfig, TeacherSpec
from net import delete_app
from tiny_checkpoints import DUAL_META, save_cross_encoder

APP = "backends"
TEXTS = ["how are glacier caves formed?", "A glacier cave is a cave formed within the ice of a glacier. " * 4,
         "a", "Vaccines train the immune system to recognise a pathogen."]


def spec(checkpoint: Path | str, kind: str = "dual_encoder", **extra) -> TeacherSpec:
    return TeacherSpec(name="t", kind=kind, checkpoint=str(checkpoint), **extra)


def test_dual_encoder_onnx_matches_torch_and_is_exported_once(tiny_bert_dir):
    torch_teacher = build_teacher(spec(tiny_bert_dir))
    onnx_teacher = build_teacher(spec(tiny_bert_dir, backend="onnx"))
    assert isinstance(onnx_teacher.encoder.model, OnnxEncoder)
    for role in ("query", "document"):
        cos = row_cosines(onnx_teacher.encode(TEXTS, role).pooled, torch_teacher.encode(TEXTS, role).pooled)
        assert cos.min() >= 0.999
    info, torch_info = onnx_teacher.describe(), torch_teacher.describe()
    assert info.backend == "onnx-fp32" and torch_info.backend is None  # a torch teacher's description is as it was
    assert info.parameters == torch_info.parameters and info.fingerprint == torch_info.fingerprint

    graph = onnx_teacher.encoder.model.path
    mtime, written = graph.stat().st_mtime_ns, onnx_runtime.exports_written
    again = build_teacher(spec(tiny_bert_dir, backend="onnx"))  # a second start reads the cached graph
    assert again.encoder.model.path == graph and graph.stat().st_mtime_ns == mtime
    assert onnx_runtime.exports_written == written
    np.testing.assert_array_equal(again.encode(TEXTS, "document").pooled, onnx_teacher.encode(TEXTS, "document").pooled)

    int8 = build_teacher(spec(tiny_bert_dir, backend="onnx", precision="int8"))
    assert int8.describe().backend == "onnx-int8"
    assert row_cosines(int8.encode(TEXTS, "document").pooled, torch_teacher.encode(TEXTS, "document").pooled).min() > 0.99
    assert int8.encoder.model.path.stat().st_size < graph.stat().st_size


def test_colbert_token_embeddings_through_onnx(tiny_bert_dir):
    """A zero-shot ColBERT over the same checkpoint runs the same encoder graph: no second export."""
    options = {"zero_shot": True, "doc_maxlen": 64}
    written = onnx_runtime.exports_written
    ours = build_teacher(spec(tiny_bert_dir, "colbert", backend="onnx", options=options))
    theirs = build_teacher(spec(tiny_bert_dir, "colbert", options=options))
    assert onnx_runtime.exports_written == written
    a, b = ours.encode(TEXTS, "document", with_tokens=True), theirs.encode(TEXTS, "document", with_tokens=True)
    np.testing.assert_array_equal(a.lengths, b.lengths)
    assert row_cosines(a.tokens, b.tokens).min() >= 0.999
    np.testing.assert_allclose(ours.score_encoded(a, a, "matrix"), theirs.score_encoded(b, b, "matrix"), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("meta", [None, DUAL_META], ids=["cls", "dual-pooled"])
def test_cross_encoder_scores_and_embeddings_through_onnx(tmp_path, minilm_dir, meta):
    checkpoint = save_cross_encoder(tmp_path / "ce", minilm_dir, ce_meta=meta)
    ours, theirs = (build_teacher(spec(checkpoint, "cross_encoder", backend=b)) for b in ("onnx", "torch"))
    a = ours.forward_pairs(TEXTS, TEXTS[::-1], with_embeddings=True)
    b = theirs.forward_pairs(TEXTS, TEXTS[::-1], with_embeddings=True)
    np.testing.assert_allclose(a.scores, b.scores, rtol=1e-3, atol=1e-4)
    for name in ("joint", "query_proxy", "document_proxy"):
        if getattr(b, name) is not None:
            assert row_cosines(getattr(a, name), getattr(b, name)).min() >= 0.999


def test_auto_measures_once_and_keeps_its_decision(tiny_bert_dir):
    teacher = build_teacher(spec(tiny_bert_dir, backend="auto"))
    records = [json.loads(p.read_text()) for p in (cache_dir() / "backend-choice").glob("*.json")]
    assert len(records) == 1 and records[0]["measured"]
    record = records[0]
    labels = [r["backend"] for r in record["rows"]]
    assert labels[0] == "torch-fp32" and "onnx-fp32" in labels and "onnx-int8" not in labels  # int8 only where the bench allows
    assert record["chosen"] in [r["backend"] for r in record["rows"] if r["faithful"]]
    chosen = teacher.describe()
    assert (chosen.backend or {"float32": "torch-fp32", "bfloat16": "torch-bf16"}[chosen.dtype]) == record["chosen"]
    assert row_cosines(teacher.calibration_outputs(calibration_texts()[:4]),
                       build_teacher(spec(tiny_bert_dir)).calibration_outputs(calibration_texts()[:4])).min() >= 0.999

    path = next((cache_dir() / "backend-choice").glob("*.json"))
    mtime = path.stat().st_mtime_ns
    build_teacher(spec(tiny_bert_dir, backend="auto"))  # a second start reads the decision
    assert path.stat().st_mtime_ns == mtime
    forced = auto_candidates(spec(tiny_bert_dir, backend="auto", precision="fp32"), ONNX_KINDS, record["weights"])
    assert [c.label for c in forced] == ["torch-fp32", "onnx-fp32"]  # fp32 forced on a bf16 CPU: only fp32 candidates


@pytest.mark.parametrize(("fields", "message"), [
    ({"backend": "tensorrt"}, "Input should be 'torch', 'onnx' or 'auto'"),
    ({"backend": "onnx", "precision": "bf16"}, "ONNX Runtime's CPU provider has no bfloat16 kernels"),
    ({"backend": "onnx", "dtype": "bfloat16"}, "ONNX Runtime's CPU provider has no bfloat16 kernels"),
    ({"backend": "onnx", "dtype": "float16"}, "dtype float16 is the torch backend's"),
    ({"precision": "int8"}, "precision int8 needs backend onnx"),
    ({"backend": "onnx", "device": "cuda"}, "backend onnx runs on ONNX Runtime's CPU provider"),
    ({"precision": "fp32", "dtype": "bfloat16"}, "precision fp32 and dtype bfloat16 disagree"),
    ({"precision": "fp8"}, "Input should be 'fp32', 'bf16' or 'int8'"),
])
def test_bad_combinations_are_refused_by_the_spec(fields, message):
    with pytest.raises(ValidationError, match=message):
        spec("minilm-l6", **fields)


def test_onnx_teacher_serves_through_the_real_app(http_port, tiny_bert_dir):
    from teacher_service.app import deploy
    from teacher_service.client import TeacherClient

    config = ServiceConfig.model_validate({"teachers": [
        {"name": "tiny-onnx", "kind": "dual_encoder", "checkpoint": str(tiny_bert_dir), "backend": "onnx",
         "precision": "int8", "ray_actor_options": {"num_cpus": 0.25}, "cache": {"max_bytes": 0}}]})
    written = onnx_runtime.exports_written
    local = build_teacher(config.teachers[0])  # exports here, if no test before did: the replica reads the cache
    deploy(config, app_name=APP, route_prefix=f"/{APP}", http_options={"host": "127.0.0.1", "port": http_port})
    try:
        for client in (TeacherClient.from_serve(APP), TeacherClient.from_url(f"http://127.0.0.1:{http_port}/{APP}")):
            assert client.describe("tiny-onnx")["backend"] == "onnx-int8"
            np.testing.assert_allclose(client.encode(TEXTS, "document", teacher="tiny-onnx"),
                                       local.encode(TEXTS, "document").pooled, rtol=1e-4, atol=1e-5)
    finally:
        delete_app(APP)
    assert onnx_runtime.exports_written <= written + 2  # fp32 and int8 at most, once each


def test_a_spec_survives_its_own_dump():
    """A replica receives its spec as a dict dump (dtype then set explicitly): it must pin the same backend."""
    for fields in ({"backend": "onnx", "precision": "int8"}, {"backend": "auto"}, {"backend": "auto", "precision": "fp32"},
                   {"dtype": "auto"}, {"precision": "bf16"}):
        original = spec("minilm-l6", **fields)
        again = TeacherSpec.model_validate(original.model_dump())
        assert again.requested_precision() == original.requested_precision()
