"""Caches of a teacher's outputs are keyed on everything that changes them: the corpus texts, the
teacher's options, and the checkpoint's weights (also when a directory is retrained in place)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from common.datasets import load_beir
from student_trainer.teacher_index import teacher_doc_embeddings
from teacher_service.client import TeacherClient
from teacher_service.kinds import build_teacher
from teacher_service.signal_cache import CachedPrimitives, EncodingCache, teacher_fingerprint
from teacher_service.spec import CacheConfig, TeacherSpec
from tiny_checkpoints import save_tiny_bert
from tiny_checkpoints import save_cross_encoder


def de_teacher(checkpoint: Path, **options):
    return build_teacher(TeacherSpec(name="t", kind="dual_encoder", checkpoint=str(checkpoint), options=options))


def write_corpus(src: Path, dst: Path, edit: dict[str, str] | None = None) -> Path:
    """``src``'s BEIR folder at ``dst`` (created or overwritten), some documents' texts replaced (same ids)."""
    if not dst.exists():
        shutil.copytree(src, dst)
    lines = [json.loads(line) for line in (src / "corpus.jsonl").read_text().splitlines()]
    for row in lines:
        if row["_id"] in (edit or {}):
            row["text"] = edit[row["_id"]]
    (dst / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return dst


def index(teacher, folder: Path, cache: Path):
    return teacher_doc_embeddings(TeacherClient.in_process(teacher), load_beir(folder), cache=cache, show_progress=False)


def test_an_edited_document_with_the_same_id_is_encoded_again(tiny_bert_dir, mini_beir, tmp_path):
    teacher = de_teacher(tiny_bert_dir)
    first_id = json.loads((mini_beir / "corpus.jsonl").read_text().splitlines()[0])["_id"]
    folder = write_corpus(mini_beir, tmp_path / "corpus")  # same folder, so the same dataset name
    original = index(teacher, folder, tmp_path / "cache")
    write_corpus(mini_beir, folder, {first_id: "an entirely different text"})
    edited = index(teacher, folder, tmp_path / "cache")
    assert edited.path != original.path
    corpus = load_beir(folder)
    fresh = teacher.encode([corpus.doc_texts[corpus.doc_index[first_id]]], "document").pooled[0]
    np.testing.assert_allclose(edited.lookup([first_id])[0], fresh, rtol=1e-4, atol=1e-5)
    assert not np.allclose(original.lookup([first_id])[0], fresh, atol=1e-3)
    # The unchanged corpus again is read from the cache, never re-encoded.
    write_corpus(mini_beir, folder)
    assert index(teacher, folder, tmp_path / "cache").path == original.path


@pytest.mark.parametrize("options", [{"document_prefix": "passage: "}, {"pooling": "cls"}, {"normalize": True}])
def test_an_option_that_changes_embeddings_changes_the_key(tiny_bert_dir, mini_beir, tmp_path, options):
    plain = index(de_teacher(tiny_bert_dir), mini_beir, tmp_path)
    changed = index(de_teacher(tiny_bert_dir, **options), mini_beir, tmp_path)
    assert changed.path != plain.path
    assert not np.allclose(changed.emb, plain.emb, atol=1e-4)


def test_request_limits_do_not_split_the_caches(minilm_dir, tmp_path):
    # A limit the service tightens at deployment must not make its replica miss the in-process cache.
    checkpoint = save_cross_encoder(tmp_path / "ce", minilm_dir)
    a = build_teacher(TeacherSpec(name="c", kind="cross_encoder", checkpoint=str(checkpoint)))
    b = build_teacher(TeacherSpec(name="c", kind="cross_encoder", checkpoint=str(checkpoint),
                                  options={"max_matrix_pairs": 16}))
    assert a.describe().fingerprint == b.describe().fingerprint


def test_a_checkpoint_retrained_in_place_misses_the_disk_cache(minilm_dir, tmp_path):
    checkpoint = save_tiny_bert(tmp_path / "ckpt", minilm_dir, seed=1)
    config = CacheConfig(disk_dir=str(tmp_path / "signal-cache"))

    def cached(teacher) -> CachedPrimitives:
        return CachedPrimitives(teacher, EncodingCache(config, teacher_fingerprint(teacher.describe().model_dump(), {})))

    before = de_teacher(checkpoint)
    old = cached(before)
    old_emb = old.encode(["what causes tides?"], "query").pooled
    old.cache.flush()

    save_tiny_bert(checkpoint, minilm_dir, seed=2)  # same directory, new weights
    after = de_teacher(checkpoint)
    new = cached(after).encode(["what causes tides?"], "query").pooled
    np.testing.assert_allclose(new, after.encode(["what causes tides?"], "query").pooled, rtol=1e-5, atol=1e-6)
    assert not np.allclose(new, old_emb, atol=1e-3), "the retrained teacher was answered from the old weights' cache"
