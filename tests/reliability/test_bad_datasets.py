"""Malformed dataset files: always a :class:`DataError` naming the file and line, never another
exception and never a silently wrong table (the cases tests/common/test_foundation.py does not
cover, and Hypothesis-generated corpus and qrels files)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.datasets import DataError, load_beir, read_triples_tsv
from reliability_helpers import FUZZ

GOOD_DOC = b'{"_id": "d1", "title": "", "text": "a doc"}'
GOOD_QUERY = b'{"_id": "q1", "text": "a query"}'


def beir_dir(root: Path, corpus: list[bytes] = (GOOD_DOC,), queries: list[bytes] | None = (GOOD_QUERY,),
             qrels: list[bytes] = (b"q1\td1\t1",)) -> Path:
    """A BEIR folder written byte for byte (so files can hold bytes that are not UTF-8)."""
    (root / "qrels").mkdir(parents=True, exist_ok=True)
    (root / "corpus.jsonl").write_bytes(b"\n".join(corpus) + b"\n")
    if queries is not None:
        (root / "queries.jsonl").write_bytes(b"\n".join(queries) + b"\n")
    (root / "qrels" / "test.tsv").write_bytes(b"query-id\tcorpus-id\tscore\n" + b"\n".join(qrels) + b"\n")
    return root


CORPUS_CASES = {
    "not UTF-8": ([GOOD_DOC, b'{"_id": "d2", "text": "caf\xe9"}'], r"corpus.jsonl:2: not valid UTF-8"),
    "not an object": ([GOOD_DOC, b'["d2", "text"]'], r"corpus.jsonl:2: expected a JSON object"),
    "text is a list": ([b'{"_id": "d1", "text": ["a", "b"]}'], r"corpus.jsonl:1: field 'text' must be a string"),
    "id is a boolean": ([b'{"_id": true, "text": "a doc"}'], r"corpus.jsonl:1: field '_id' must be a string"),
    "missing _id": ([GOOD_DOC, b'{"text": "no id"}'], r"corpus.jsonl:2: missing field '_id'"),
    "duplicate id": ([GOOD_DOC, GOOD_DOC], r"corpus.jsonl:2: duplicate id 'd1'"),
}


@pytest.mark.parametrize("case", sorted(CORPUS_CASES))
def test_bad_corpus_lines_are_named(tmp_path, case):
    lines, message = CORPUS_CASES[case]
    with pytest.raises(DataError, match=message):
        load_beir(beir_dir(tmp_path, corpus=lines))


QRELS_CASES = {
    "unknown query id": ([b"q1\td1\t1", b"q7\td1\t1"], r"test.tsv:3: unknown query id 'q7'"),
    "missing score column": ([b"q1\td1"], r"test.tsv:2: expected tab-separated query-id, corpus-id, score"),
    "score not a number": ([b"q1\td1\tvery"], r"test.tsv:2: score 'very' is not a number"),
    "infinite score": ([b"q1\td1\tinf"], r"test.tsv:2: score 'inf' is not a number"),
    "NaN score": ([b"q1\td1\tnan"], r"test.tsv:2: score 'nan' is not a number"),
    "not UTF-8": ([b"q1\td1\t1", b"q1\td\xff\t1"], r"test.tsv:3: not valid UTF-8"),
}


@pytest.mark.parametrize("case", sorted(QRELS_CASES))
def test_bad_qrels_lines_are_named(tmp_path, case):
    lines, message = QRELS_CASES[case]
    ds = load_beir(beir_dir(tmp_path, qrels=lines))
    with pytest.raises(DataError, match=message):
        ds.qrels("test")


def test_missing_files_are_named(tmp_path):
    with pytest.raises(DataError, match="no queries.jsonl"):
        load_beir(beir_dir(tmp_path / "a", queries=None))
    (tmp_path / "b").mkdir()
    with pytest.raises(DataError, match=r"not a BEIR dataset folder \(no corpus.jsonl\)"):
        load_beir(tmp_path / "b")
    with pytest.raises(DataError, match=r"candidates.test.tsv missing"):
        load_beir(beir_dir(tmp_path / "c")).candidates("test")


def test_bad_triples_are_named(tmp_path):
    path = tmp_path / "triples.tsv"
    path.write_bytes(b"q\tpos\tneg\nq\tp\xc3\tneg\n")
    with pytest.raises(DataError, match=r"triples.tsv:2: not valid UTF-8"):
        read_triples_tsv(path)


# --- fuzzed files ----------------------------------------------------------------------------
json_value = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
                          lambda c: st.lists(c, max_size=2) | st.dictionaries(st.text(max_size=4), c, max_size=2), max_leaves=4)
corpus_line = st.one_of(
    st.fixed_dictionaries({"_id": st.one_of(st.text(max_size=4), st.integers(), json_value), "text": json_value},
                          optional={"title": json_value}).map(lambda d: json.dumps(d).encode()),
    json_value.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=30).filter(lambda b: b"\n" not in b),
)


def located(err: DataError, name: str, n_lines: int) -> bool:
    """The message names ``name`` and a line number within the file."""
    found = re.search(rf"{re.escape(name)}:(\d+): ", str(err))
    return found is not None and 1 <= int(found.group(1)) <= n_lines


@FUZZ
@given(lines=st.lists(corpus_line, min_size=1, max_size=6))
def test_fuzzed_corpus_loads_or_names_the_line(tmp_path_factory, lines: list[bytes]):
    root = beir_dir(tmp_path_factory.mktemp("fuzz"), corpus=lines, qrels=[])
    try:
        ds = load_beir(root)
    except DataError as err:
        assert located(err, "corpus.jsonl", len(lines)), str(err)
        return
    # Loaded: every non-blank line became exactly one row with string columns.
    assert ds.corpus.num_rows == sum(1 for line in lines if line.strip())
    assert len(set(ds.doc_ids)) == len(ds.doc_ids)
    assert all(isinstance(t, str) and t for t in ds.doc_texts)


qrels_field = st.one_of(st.sampled_from(["q1", "d1", "1", "0", "2.0", "-1", "nan", "inf", "1e400", ""]), st.text(max_size=5))
qrels_line = st.one_of(
    st.lists(qrels_field, min_size=1, max_size=4).map(lambda f: "\t".join(f).encode("utf-8", "surrogatepass")),
    st.binary(max_size=20).filter(lambda b: b"\n" not in b),
)


@FUZZ
@given(lines=st.lists(qrels_line, min_size=1, max_size=5))
def test_fuzzed_qrels_load_or_name_the_line(tmp_path_factory, lines: list[bytes]):
    ds = load_beir(beir_dir(tmp_path_factory.mktemp("fuzz"), qrels=lines))
    try:
        qrels = ds.qrels("test")
    except DataError as err:
        assert located(err, "test.tsv", len(lines) + 1), str(err)  # + the header line
        return
    assert set(qrels) <= {"q1"} and all(set(docs) <= {"d1"} for docs in qrels.values())
    assert all(isinstance(g, int) for docs in qrels.values() for g in docs.values())
