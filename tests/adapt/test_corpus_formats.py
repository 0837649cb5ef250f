"""`tightdistill adapt`'s readers: each input format gives the same BEIR corpus, and each bad input
is one line naming the problem (through the real command line, before any Ray starts)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from common.cli import main
from common.corpus_formats import read_documents, write_beir
from common.datasets import load_beir


def scifact_rows(n: int = 40) -> list[dict[str, str]]:
    """Real documents: the first ``n`` of scifact, shortened."""
    ds = load_beir("scifact")
    return [{"id": r["id"], "title": r["title"], "text": r["text"][:300]} for r in ds.corpus.to_pylist()[:n]]


def write_formats(root: Path, rows: list[dict[str, str]]) -> dict[str, Path]:
    """The same documents in every format adapt reads."""
    beir = root / "beir"
    beir.mkdir()
    with (beir / "corpus.jsonl").open("w") as fh:
        for r in rows:
            fh.write(json.dumps({"_id": r["id"], "title": r["title"], "text": r["text"]}) + "\n")
    bare = root / "docs.jsonl"
    bare.write_text((beir / "corpus.jsonl").read_text())
    table = pa.Table.from_pylist(rows)
    pq.write_table(table, root / "docs.parquet")
    pcsv.write_csv(table, root / "docs.csv")
    folder = root / "texts"
    folder.mkdir()
    for r in rows:
        (folder / f"{r['id']}.{'md' if int(r['id']) % 2 else 'txt'}").write_text(f"{r['title']} {r['text']}")
    return {"beir": beir, "jsonl": bare, "parquet": root / "docs.parquet", "csv": root / "docs.csv", "texts": folder}


def test_every_format_gives_the_same_documents(tmp_path):
    rows = scifact_rows()
    expected = {r["id"]: f"{r['title']} {r['text']}".strip() for r in rows}
    for fmt, path in write_formats(tmp_path, rows).items():
        dataset = load_beir(write_beir(read_documents(path), tmp_path / "out" / fmt))
        got = dict(zip(dataset.doc_ids, dataset.doc_texts))
        # the text folder has no titles: the file's text is title and text joined, as the others' doc_texts are
        assert got == {d: " ".join(t.split()) for d, t in expected.items()} if fmt == "texts" else got == expected, fmt


def test_a_beir_folder_keeps_its_queries_and_qrels_without_skipped_documents(mini_beir, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "qrels").mkdir()
    lines = (mini_beir / "corpus.jsonl").read_text().splitlines()
    first = json.loads(lines[0])["_id"]
    (src / "corpus.jsonl").write_text("\n".join(["{broken", *lines]) + "\n")
    (src / "queries.jsonl").write_text((mini_beir / "queries.jsonl").read_text())
    (src / "qrels" / "test.tsv").write_text((mini_beir / "qrels" / "test.tsv").read_text() + f"{json.loads((mini_beir / 'queries.jsonl').read_text().splitlines()[0])['_id']}\tgone\t1\n")
    docs = read_documents(src, "skip")
    assert docs.skipped == {"malformed line": 1} and docs.ids[0] == first
    dataset = load_beir(write_beir(docs, tmp_path / "out"))  # the judgment of the unknown 'gone' is dropped
    assert dataset.split_query_ids("test") == load_beir(mini_beir).split_query_ids("test")


def one_line_error(capsys, *argv: str) -> str:
    assert main(["adapt", *map(str, argv)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith("tightdistill adapt: error: ")
    return err


def test_bad_inputs_are_one_line(tmp_path, capsys):
    assert "no such file or directory" in one_line_error(capsys, tmp_path / "missing.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    assert "has no documents" in one_line_error(capsys, tmp_path / "empty.jsonl")
    (tmp_path / "latin1.jsonl").write_bytes(b'{"_id": "1", "text": "ok"}\n{"_id": "2", "text": "caf\xe9"}\n')
    assert "latin1.jsonl:2: not valid UTF-8" in one_line_error(capsys, tmp_path / "latin1.jsonl")
    folder = tmp_path / "txt"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_bytes(b"fine text here")
    (folder / "b.md").write_bytes(b"line one\nbad \xff byte")
    assert "b.md:2: not valid UTF-8" in one_line_error(capsys, folder)
    (folder / "b.md").write_text("now fine")
    (folder / "sub" / "a.md").write_text("same stem, another folder")
    assert "duplicate id 'a'" in one_line_error(capsys, folder)
    (tmp_path / "dup.jsonl").write_text('{"_id": "7", "text": "x y"}\n{"_id": 7, "text": "z"}\n')
    assert "dup.jsonl:2: duplicate id '7' (first at" in one_line_error(capsys, tmp_path / "dup.jsonl")
    (tmp_path / "dup.csv").write_text("id,text\n1,a b c\n2,d e f\n1,g h\n")
    assert "dup.csv:4: duplicate id '1'" in one_line_error(capsys, tmp_path / "dup.csv")
    (tmp_path / "cols.csv").write_text("doc,body\n1,a\n")
    assert "needs columns 'id' and 'text'" in one_line_error(capsys, tmp_path / "cols.csv")
    (tmp_path / "latin1.csv").write_bytes(b"id,text\n1,caf\xe9\n")
    assert "not valid UTF-8" in one_line_error(capsys, tmp_path / "latin1.csv")
    (tmp_path / "notes.docx").write_text("x")
    assert "unknown corpus format '.docx'" in one_line_error(capsys, tmp_path / "notes.docx")


def test_malformed_lines_and_empty_documents_error_by_default_and_are_counted_with_skip(tmp_path, capsys):
    path = tmp_path / "corpus.jsonl"
    path.write_text('{"_id": "1", "text": "a first document"}\n{"_id": "2", "text": \n'
                    '{"_id": "3", "title": "", "text": "  "}\n{"text": "no id"}\n{"_id": "5", "text": "last one"}\n')
    assert f"{path}:2: not valid JSON" in one_line_error(capsys, path)
    docs = read_documents(path, "skip")
    assert docs.ids == ["1", "5"] and docs.skipped == {"malformed line": 2, "empty document": 1}
    path.write_text('{"_id": "1", "text": "a first document"}\n{"_id": "3", "title": "", "text": "  "}\n')
    assert f"{path}:2: empty document '3'" in one_line_error(capsys, path)
    (tmp_path / "all-bad.jsonl").write_text("nope\n")
    assert "no documents (1 lines skipped)" in one_line_error(capsys, tmp_path / "all-bad.jsonl", "--on-bad-input", "skip")
