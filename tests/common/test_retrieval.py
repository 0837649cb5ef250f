"""common.retrieval: real FAISS flat search, parquet embeddings, re-ranking, checked against numpy."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from common.metrics import evaluate_run
from common.retrieval import DenseIndex, load_embeddings, rerank, retrieve, save_embeddings

DIM = 16


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    docs = rng.standard_normal((300, DIM)).astype(np.float32)
    queries = rng.standard_normal((7, DIM)).astype(np.float32)
    doc_ids = [f"d{i}" for i in range(len(docs))]
    query_ids = [f"q{i}" for i in range(len(queries))]
    return doc_ids, docs, query_ids, queries


def _brute_force(docs: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = queries.astype(np.float64) @ docs.astype(np.float64).T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), order


def test_search_matches_numpy_brute_force(data):
    doc_ids, docs, _, queries = data
    index = DenseIndex(DIM, use_gpu=False)
    index.add(docs[:100], doc_ids[:100])
    index.add(docs[100:], doc_ids[100:])  # appends keep row order
    assert len(index) == 300 and index.ids == doc_ids

    scores, ids = index.search(queries, 10)
    ref_scores, ref_rows = _brute_force(docs, queries, 10)
    assert scores.shape == (7, 10) and scores.dtype == np.float32
    assert ids == [[doc_ids[r] for r in row] for row in ref_rows]
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-5)

    capped_scores, capped_ids = index.search(torch.from_numpy(queries), 1000)  # k capped at index size
    assert capped_scores.shape == (7, 300) and all(len(row) == 300 for row in capped_ids)


def test_retrieve_returns_run(data):
    doc_ids, docs, _, _ = data
    unit = docs / np.linalg.norm(docs, axis=1, keepdims=True)  # unit docs: a document's own direction wins
    index = DenseIndex.from_embeddings(doc_ids, unit, use_gpu=False)
    qids = ["a", "b", "c"]
    run = retrieve(index, qids, unit[[5, 17, 42]] * 10, k=5)
    assert list(run) == qids and all(len(r) == 5 for r in run.values())
    assert [max(run[q], key=run[q].get) for q in qids] == ["d5", "d17", "d42"]
    assert run["a"]["d5"] == pytest.approx(10.0, rel=1e-5)
    report = evaluate_run({"a": {"d5": 1}, "b": {"d17": 1}, "c": {"d42": 1}}, run, k_values=(5,))
    assert report.aggregate == {"MRR@10": 1.0, "nDCG@10": 1.0, "R@5": 1.0}


def test_save_load_roundtrip_through_parquet(tmp_path, data):
    doc_ids, docs, _, queries = data
    index = DenseIndex.from_embeddings(doc_ids, docs, use_gpu=False)
    path = index.save(tmp_path / "sub" / "index.parquet")
    assert sorted(p.name for p in path.parent.iterdir()) == ["index.parquet"]  # no temp files left

    schema = pq.read_schema(path)
    assert schema.field("id").type == pa.string()
    assert schema.field("embedding").type == pa.list_(pa.float32(), DIM)

    ids, emb = load_embeddings(path)
    assert ids == doc_ids and emb.dtype == np.float32
    np.testing.assert_array_equal(emb, docs)

    loaded = DenseIndex.load(path, use_gpu=False)
    for got, want in zip(loaded.search(queries, 20), index.search(queries, 20)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))

    # the public helpers write the same format, from float64 / torch input too
    save_embeddings(tmp_path / "emb.parquet", ["x", "y"], np.array([[1.0, 2.0], [3.0, 4.0]]))
    ids2, emb2 = load_embeddings(tmp_path / "emb.parquet")
    assert ids2 == ["x", "y"] and emb2.tolist() == [[1.0, 2.0], [3.0, 4.0]]
    save_embeddings(tmp_path / "emb.parquet", ["z"], torch.ones(1, 3))  # overwrite in place
    assert load_embeddings(tmp_path / "emb.parquet")[1].shape == (1, 3)


def test_rerank_equals_numpy_dot_on_candidates(data):
    doc_ids, docs, query_ids, queries = data
    rng = np.random.default_rng(1)
    candidates = {q: [doc_ids[i] for i in rng.choice(300, size=25, replace=False)] for q in query_ids[:-1]}
    candidates["unknown-query"] = ["d0"]  # ignored: not in query_ids
    row_of = {d: i for i, d in enumerate(doc_ids)}

    by_pair = rerank(candidates, query_ids, queries, (doc_ids, docs))
    by_callable = rerank(candidates, query_ids, queries, lambda ids: docs[[row_of[d] for d in ids]])
    assert list(by_pair) == query_ids and by_pair[query_ids[-1]] == {}  # no candidates -> empty ranking
    for qi, qid in enumerate(query_ids[:-1]):
        cands = candidates[qid]
        expected = docs[[row_of[d] for d in cands]] @ queries[qi]
        assert list(by_pair[qid]) == cands
        np.testing.assert_allclose(list(by_pair[qid].values()), expected, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(list(by_callable[qid].values()), expected, rtol=1e-5, atol=1e-5)

    with pytest.raises(ValueError, match="'nope' of query 'q0' has no embedding"):
        rerank({"q0": ["d1", "nope"]}, query_ids, queries, (doc_ids, docs))
    with pytest.raises(ValueError, match="returned 1 rows for 2 candidates"):
        rerank({"q0": ["d1", "d2"]}, query_ids, queries, lambda ids: docs[:1])


def test_bad_inputs_raise_value_error(tmp_path, data):
    doc_ids, docs, query_ids, queries = data
    index = DenseIndex(DIM, use_gpu=False)
    with pytest.raises(ValueError, match="dim 8, expected 16"):
        index.add(docs[:, :8], doc_ids)
    with pytest.raises(ValueError, match="2-D"):
        index.add(docs[0], ["d0"])
    with pytest.raises(ValueError, match="floating-point"):
        index.add(docs.astype(np.int64), doc_ids)
    with pytest.raises(ValueError, match="299 ids for 300"):
        index.add(docs, doc_ids[:-1])
    with pytest.raises(ValueError, match="duplicate id 'd0'"):
        index.add(docs[:2], ["d0", "d0"])
    index.add(docs, doc_ids)
    with pytest.raises(ValueError, match="already in the index"):
        index.add(docs[:1], ["d3"])
    with pytest.raises(ValueError, match="query_emb has dim 15"):
        index.search(queries[:, :15], 5)
    with pytest.raises(ValueError, match="k must be a positive"):
        index.search(queries, 0)
    with pytest.raises(ValueError, match="query_ids: got 6 ids for 7"):
        retrieve(index, query_ids[:-1], queries, 5)
    with pytest.raises(ValueError, match="query_emb has dim 4"):
        rerank({}, query_ids, queries[:, :4], (doc_ids, docs))
    with pytest.raises(ValueError, match="dim must be a positive"):
        DenseIndex(0)
    with pytest.raises(ValueError, match="use_gpu=True"):
        DenseIndex(DIM, use_gpu=True)  # faiss-cpu: no GPU support
    pq.write_table(pa.table({"id": ["a"], "vec": [[1.0]]}), tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match="missing column"):
        load_embeddings(tmp_path / "bad.parquet")
