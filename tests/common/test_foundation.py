"""common/: config loading, model resolution, datasets, batching plans and the text encoder."""

from __future__ import annotations

import hashlib
import json
import sys
import zipfile

import numpy as np
import pytest
import torch

from common.batching import default_token_budget, plan_batches
from common.config import ConfigError, StrictModel, load_config
from common.datasets import DataError, load_beir, read_parquet, read_triples_tsv, write_parquet
from common.model_registry import ModelNotFoundError, PackagedModel, SplitZipModel, resolve_model
from common.text_encoder import TextEncoder, kept_layer_indices


class _Cfg(StrictModel):
    lr: float = 1e-3
    steps: int = 10


def test_config_loads_and_names_unknown_keys(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("lr: 0.01\nsteps: 5\n")
    assert load_config(_Cfg, good) == _Cfg(lr=0.01, steps=5)
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: 0.01\nstpes: 5\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown key 'stpes'"):
        load_config(_Cfg, bad)
    bad.write_text("steps: many\n")
    with pytest.raises(ConfigError, match="steps: Input should be a valid integer"):
        load_config(_Cfg, bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(_Cfg, tmp_path / "missing.yaml")


def test_registry_resolves_packaged_minilm(minilm_dir):
    assert (minilm_dir / "config.json").is_file() and (minilm_dir / "model.safetensors").is_file()
    assert resolve_model(str(minilm_dir)) == minilm_dir.resolve()


def test_missing_models_say_what_to_do(tmp_path):
    missing = PackagedModel("x", "a model", "no_such_module_td", "model", "no-such-pkg")
    with pytest.raises(ModelNotFoundError, match="pip install no-such-pkg"):
        missing.locate()
    with pytest.raises(ModelNotFoundError, match="unknown model 'nothing-here'"):
        resolve_model("nothing-here")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        resolve_model(tmp_path / "empty")


def test_split_zip_model_joins_verifies_and_caches(tmp_path, monkeypatch):
    archive = tmp_path / "model.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("m/config.json", json.dumps({"model_type": "bert"}))
        zf.writestr("m/weights.bin", b"\x00" * 5000)
    data = archive.read_bytes()
    site = tmp_path / "site"
    for n, chunk in enumerate((data[:2000], data[2000:4000], data[4000:]), start=1):
        (site / f"part_{n}" / "input").mkdir(parents=True)
        (site / f"part_{n}" / "input" / f"m.zip.{n:03d}").write_bytes(chunk)
    monkeypatch.setattr(sys, "path", [str(site), *sys.path])
    monkeypatch.setenv("TIGHTDISTILL_CACHE", str(tmp_path / "cache"))
    spec = dict(name="toy", description="toy", parts=("part_1", "part_2", "part_3"), part_file="input/m.zip.{n:03d}",
                inner_dir="m", pip_extra="toy")
    with pytest.raises(ModelNotFoundError, match="SHA-256"):
        SplitZipModel(**spec, sha256="0" * 64).locate()
    model = SplitZipModel(**spec, sha256=hashlib.sha256(data).hexdigest())
    path = model.locate()
    assert path == tmp_path / "cache" / "toy" / "m" and (path / "config.json").is_file()
    (site / "part_2" / "input" / "m.zip.002").unlink()  # once cached, the parts are not needed
    assert model.locate() == path


def test_plan_batches_covers_everything_within_budget():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 300, size=500)
    batches = plan_batches(lengths, token_budget=2048, max_batch_size=64)
    assert sorted(np.concatenate(batches).tolist()) == list(range(500))
    for b in batches:
        assert len(b) <= 64 and (len(b) == 1 or len(b) * lengths[b].max() <= 2048)
    # sorted plans pad far less than input-order plans
    waste = lambda bs: sum(len(b) * lengths[b].max() - lengths[b].sum() for b in bs)  # noqa: E731
    assert waste(batches) < 0.2 * waste(plan_batches(lengths, 2048, 64, sort=False))
    assert [len(b) for b in plan_batches([5000], 100, 8)] == [1]  # an oversized item still gets a batch


def test_text_encoder_batched_equals_one_by_one(tiny_bert_dir):
    enc = TextEncoder.from_pretrained(tiny_bert_dir).eval()
    assert enc.pooling == "mean" and enc.max_length == 128 and enc.dim == 32
    texts = ["short", "a somewhat longer text about glaciers and caves", "x " * 200, "mid length text here"]
    batched = enc.encode(texts, token_budget=64)
    single = np.stack([enc.encode([t])[0] for t in texts])
    np.testing.assert_allclose(batched, single, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        np.testing.assert_allclose(enc.embed(texts).numpy(), batched, rtol=1e-4, atol=1e-5)


def test_encode_defaults_to_the_devices_token_budget(tiny_bert_dir):
    """Without a budget, a CPU encoder runs small passes (they stay in cache: faster on a CPU); a
    GPU's default is large, and an unknown device type gets the CPU's."""
    assert default_token_budget("cpu") == 2048 < default_token_budget("cuda") == default_token_budget("cuda:1")
    assert default_token_budget("mps") == default_token_budget("cpu")
    enc = TextEncoder.from_pretrained(tiny_bert_dir).eval()
    shapes: list[tuple[int, int]] = []
    enc.model.register_forward_hook(lambda module, args, kwargs, out: shapes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True)
    texts = [("glacier cave ice " * 60)[: 40 + 7 * i] for i in range(64)]
    enc.encode(texts)
    assert len(shapes) > 1 and sum(n for n, _ in shapes) == len(texts)
    assert all(n * length <= default_token_budget("cpu") for n, length in shapes)
    shapes.clear()
    enc.encode(texts, token_budget=10**6)
    assert len(shapes) == 1  # an explicit budget still wins


def test_truncated_student_keeps_first_layers(tiny_bert_dir):
    enc = TextEncoder.from_pretrained(tiny_bert_dir, num_layers=1, pooling="cls", normalize=True)
    assert len(enc.model.encoder.layer) == 1 and enc.model.config.num_hidden_layers == 1
    np.testing.assert_allclose(np.linalg.norm(enc.encode(["hello world"]), axis=1), 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match="has 2 layers"):
        TextEncoder.from_pretrained(tiny_bert_dir, num_layers=3)


@pytest.mark.parametrize(("total", "k", "selection", "expected"), [
    (6, 2, "first", [0, 1]), (6, 2, "spread", [0, 5]), (6, 3, "spread", [0, 2, 5]), (6, 1, "spread", [5]),
    (12, 4, "spread", [0, 4, 7, 11]), (6, 6, "spread", [0, 1, 2, 3, 4, 5]),
])
def test_kept_layer_indices(total, k, selection, expected):
    assert kept_layer_indices(total, k, selection) == expected


def test_spread_cut_keeps_the_last_layer_with_its_weights(tiny_bert_dir):
    full = TextEncoder.from_pretrained(tiny_bert_dir)
    cut = TextEncoder.from_pretrained(tiny_bert_dir, num_layers=1, layer_selection="spread")
    assert cut.model.config.num_hidden_layers == 1
    kept, last = cut.model.encoder.layer[0].state_dict(), full.model.encoder.layer[-1].state_dict()
    assert all(torch.equal(kept[name], last[name]) for name in last)
    with pytest.raises(ValueError, match="'first' or 'spread'"):
        kept_layer_indices(6, 2, "middle")


def test_bundled_scifact_loads():
    ds = load_beir("scifact")
    assert ds.corpus.num_rows == 5183
    assert len(ds.split_query_ids("train")) == 809 and len(ds.split_query_ids("test")) == 300
    qrels = ds.qrels("test")
    assert all(did in ds.doc_index for docs in qrels.values() for did in docs)
    assert ds.doc_texts[0].startswith(ds.corpus.column("title")[0].as_py())


def test_empty_documents_keep_their_row_and_encode():
    ds = load_beir("cranfield")
    empty = [d for d, t in zip(ds.doc_ids, ds.doc_texts) if not t.strip()]
    assert empty == ["471", "995"] and len(ds.doc_texts) == len(ds.doc_ids)
    assert all(ds.doc_texts[ds.doc_index[d]] for d in empty)  # non-empty strings the API accepts


def test_wikiqa_candidates_load():
    ds = load_beir("wikiqa")
    cands = ds.candidates("test")
    assert len(cands) > 200 and all(len(v) >= 1 for v in cands.values())


def _beir(tmp_path, corpus_lines, qrels_lines):
    (tmp_path / "qrels").mkdir(parents=True, exist_ok=True)
    (tmp_path / "corpus.jsonl").write_text("\n".join(corpus_lines) + "\n")
    (tmp_path / "queries.jsonl").write_text('{"_id": "q1", "text": "a query"}\n')
    (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(qrels_lines) + "\n")
    return tmp_path


def test_malformed_dataset_files_name_file_and_line(tmp_path):
    good_doc = '{"_id": "d1", "title": "", "text": "a doc"}'
    with pytest.raises(DataError, match=r"corpus.jsonl:2: not valid JSON"):
        load_beir(_beir(tmp_path / "a", [good_doc, '{"_id": "d2", "text": '], ["q1\td1\t1"]))
    with pytest.raises(DataError, match=r"corpus.jsonl:1: missing field 'text'"):
        load_beir(_beir(tmp_path / "b", ['{"_id": "d1"}'], ["q1\td1\t1"]))
    ds = load_beir(_beir(tmp_path / "c", [good_doc], ["q1\td1\t1", "q1\td9\t1"]))
    with pytest.raises(DataError, match=r"test.tsv:3: unknown corpus id 'd9'"):
        ds.qrels("test")
    with pytest.raises(DataError, match="no qrels for split 'train'"):
        ds.qrels("train")
    with pytest.raises(DataError, match="not found"):
        load_beir(tmp_path / "nowhere")


def test_triples_and_parquet_roundtrip(tmp_path):
    tsv = tmp_path / "triples.tsv"
    tsv.write_text("q one\tpos one\tneg one\nq two\tpos two\tneg two\n")
    table = read_triples_tsv(tsv)
    assert table.num_rows == 2 and table.column_names == ["query", "positive", "negative"]
    path = write_parquet(table, tmp_path / "out" / "triples.parquet")
    assert read_parquet(path).equals(table)
    tsv.write_text("only\ttwo\n")
    with pytest.raises(DataError, match=r"triples.tsv:1: expected 3"):
        read_triples_tsv(tsv)
