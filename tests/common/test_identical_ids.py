"""BEIR's ignore_identical_ids: a query that is also a document does not retrieve itself."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from common.datasets import load_beir
from common.evaluation import drop_identical_ids, evaluate_encoder, evaluate_pair_scorer
from common.retrieval import DenseIndex


@pytest.fixture
def self_retrieving(tmp_path: Path):
    """Three documents; query "d1" is document d1's own text and judges d2 relevant."""
    docs = {"d1": "tides come from the moon", "d2": "the moon pulls the oceans", "d3": "volcanoes erupt"}
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps({"_id": k, "title": "", "text": v}) + "\n" for k, v in docs.items()))
    (tmp_path / "queries.jsonl").write_text(json.dumps({"_id": "d1", "text": docs["d1"]}) + "\n")
    (tmp_path / "qrels").mkdir()
    (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nd1\td2\t1\n")
    emb = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]], dtype=np.float32)  # d1 itself ranks first, d2 second
    return load_beir(tmp_path), DenseIndex.from_embeddings(list(docs), emb)


def test_the_query_itself_is_dropped_and_the_depth_kept(self_retrieving):
    dataset, index = self_retrieving
    encode = lambda texts: np.array([[1.0, 0.0]], dtype=np.float32)  # noqa: E731 - the query is d1's text
    plain = evaluate_encoder(encode, index, dataset, "test", k_values=(2,))
    ignored = evaluate_encoder(encode, index, dataset, "test", k_values=(2,), ignore_identical_ids=True)
    assert list(plain.run["d1"]) == ["d1", "d2"] and list(ignored.run["d1"]) == ["d2", "d3"]
    assert plain.report.aggregate["nDCG@10"] == pytest.approx(1 / math.log2(3))  # relevant at rank 2
    assert ignored.report.aggregate["nDCG@10"] == pytest.approx(1.0)  # relevant at rank 1


def test_pair_scorers_drop_it_too(self_retrieving):
    dataset, _ = self_retrieving
    scores = {"tides come from the moon": 3.0, "the moon pulls the oceans": 2.0, "volcanoes erupt": 1.0}
    scorer = lambda qs, ds: np.array([scores[d] for d in ds])  # noqa: E731
    ev = evaluate_pair_scorer(scorer, dataset, "test", {"d1": ["d1", "d2", "d3"]}, k_values=(10,), ignore_identical_ids=True)
    assert list(ev.run["d1"]) == ["d2", "d3"] and ev.report.aggregate["MRR@10"] == pytest.approx(1.0)


def test_drop_identical_ids_keeps_other_queries_whole():
    run = {"q1": {"q1": 0.9, "a": 0.8, "b": 0.1}, "q2": {"a": 0.5}}
    assert drop_identical_ids(run, depth=1) == {"q1": {"a": 0.8}, "q2": {"a": 0.5}}
