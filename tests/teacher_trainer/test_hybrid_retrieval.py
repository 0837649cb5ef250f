"""Hybrid dense + sparse retrieval (TCT-ColBERT Eq. 7): fusion against hand-computed scores, alpha
tuning, real BM25 (bm25s) retrieval, and the whole recipe on a small real dataset."""

from __future__ import annotations

import pytest

from common.datasets import DataError, load_beir
from common.hybrid_retrieval import BM25Index, evaluate_hybrid, fuse_runs, tune_alpha
from common.retrieval import DenseIndex
from common.text_encoder import TextEncoder

DENSE = {"q1": {"a": 0.9, "b": 0.5, "c": 0.2}, "q2": {"x": 1.0, "z": 0.25}}
SPARSE = {"q1": {"b": 12.0, "d": 8.0, "a": 4.0}, "q3": {"y": 5.0}}


def test_fusion_matches_hand_computation_with_the_missing_score_rule():
    fused = fuse_runs(DENSE, SPARSE, alpha=0.1)
    # q1: dense minimum 0.2, sparse minimum 4.0.
    #   a: 0.1 * 4.0 + 0.9 = 1.3      b: 0.1 * 12.0 + 0.5 = 1.7
    #   c: 0.1 * 4.0 (missing from BM25: its minimum) + 0.2 = 0.6
    #   d: 0.1 * 8.0 + 0.2 (missing from the dense list: its minimum) = 1.0
    assert fused["q1"] == pytest.approx({"a": 1.3, "b": 1.7, "c": 0.6, "d": 1.0})
    assert sorted(fused["q1"], key=fused["q1"].get, reverse=True) == ["b", "a", "d", "c"]
    # A query with no BM25 list keeps its dense scores; one with no dense list gets alpha * BM25.
    assert fused["q2"] == pytest.approx({"x": 1.0, "z": 0.25})
    assert fused["q3"] == pytest.approx({"y": 0.5})
    assert fuse_runs(DENSE, SPARSE, alpha=0.1, k=2)["q1"] == pytest.approx({"b": 1.7, "a": 1.3})
    assert fuse_runs(DENSE, SPARSE, alpha=0.0)["q1"] == pytest.approx({"a": 0.9, "b": 0.5, "c": 0.2, "d": 0.2})
    with pytest.raises(ValueError, match="alpha must be >= 0"):
        fuse_runs(DENSE, SPARSE, alpha=-1)


def test_alpha_is_tuned_on_the_given_queries():
    # d, relevant, is only in the BM25 list: alpha 0 and 0.1 rank it 3rd (nDCG@10 = 1/log2(4)),
    # alpha 1 and 10 rank it 2nd (1/log2(3)); ties go to the smaller alpha.
    search = tune_alpha({"q1": DENSE["q1"]}, {"q1": SPARSE["q1"]}, {"q1": {"d": 1}}, grid=(0.0, 0.1, 1.0, 10.0))
    assert search.alpha == 1.0 and search.metric == "nDCG@10"
    assert search.scores == pytest.approx({0.0: 0.5, 0.1: 0.5, 1.0: 0.63093, 10.0: 0.63093}, abs=1e-5)


def test_bm25_retrieves_the_exact_match_first():
    docs = {
        "glacier": "A glacier cave is a cave formed within the ice of a glacier.",
        "market": "The stock market fell sharply on Monday.",
        "photo": "Photosynthesis in plants uses chlorophyll to capture light.",
        "empty": " ",
        "penguin": "Penguins live in the southern hemisphere, far from glaciers.",
    }
    bm25 = BM25Index(list(docs), list(docs.values()))
    hits = bm25.search(["chlorophyll photosynthesis", "how are caves formed in glaciers", "zebra quantum", "the of and"], k=3)
    assert hits[0][0][0] == "photo" and len(hits[0]) == 1  # only documents sharing a term are retrieved
    assert [doc for doc, _ in hits[1]][:2] == ["glacier", "penguin"]  # stemming: caves/cave, glaciers/glacier
    assert hits[2] == [] and hits[3] == []  # no known term; stop words only
    run = bm25.retrieve(["q"], ["stock market"], k=10)
    assert list(run["q"]) == ["market"] and run["q"]["market"] > 0


def test_hybrid_evaluation_on_a_small_dataset(mini_beir, tiny_bert_dir):
    dataset = load_beir(mini_beir)
    encoder = TextEncoder.from_pretrained(tiny_bert_dir).eval()
    index = DenseIndex.from_embeddings(dataset.doc_ids, encoder.encode(dataset.doc_texts))
    tuned = evaluate_hybrid(encoder.encode, index, dataset, "test", grid=(0.0, 0.05, 0.5))
    assert tuned.search is not None and set(tuned.search.scores) == {0.0, 0.05, 0.5}
    assert tuned.alpha == max(tuned.search.scores, key=lambda a: (tuned.search.scores[a], -a))
    assert set(tuned.reports) == {"dense", "bm25", "hybrid"}
    assert all(len(r.per_query) == 24 for r in tuned.reports.values())
    # BM25 is far better than a random tiny encoder here, so the tuned fusion leans on it.
    assert tuned.reports["bm25"].aggregate["nDCG@10"] > tuned.reports["dense"].aggregate["nDCG@10"]
    assert tuned.alpha > 0 and tuned.reports["hybrid"].aggregate["nDCG@10"] > tuned.reports["dense"].aggregate["nDCG@10"]
    # alpha 0: every document is in the dense list (288 < 1000), so the fusion is the dense ranking.
    dense_only = evaluate_hybrid(encoder.encode, index, dataset, "test", alpha=0.0)
    assert dense_only.search is None
    assert dense_only.reports["hybrid"].aggregate == pytest.approx(dense_only.reports["dense"].aggregate)
    with pytest.raises(DataError, match="being evaluated"):
        evaluate_hybrid(encoder.encode, index, dataset, "train")
