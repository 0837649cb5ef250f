"""A user's documents in the formats they come in, turned into a BEIR folder tightdistill reads.

One reader a format, and :func:`read_documents` to pick one by what the path is:

* a BEIR folder (``corpus.jsonl``, with ``queries.jsonl`` and ``qrels/`` when it has them);
* a bare ``corpus.jsonl`` (or any ``.jsonl``: ``_id`` or ``id``, ``text``, optional ``title``);
* a parquet or CSV file with ``id`` and ``text`` columns (optional ``title``);
* a folder of ``.txt`` / ``.md`` files, one document each, the file name's stem as its id.

A malformed line (JSON that does not parse, a missing id or text) or an empty document is a
:class:`~common.datasets.DataError` naming the file and line with ``on_bad_input="error"`` (the
default), or skipped and counted with ``"skip"``. Problems no skip can mend (a missing path, a
file that is not UTF-8, duplicate ids, nothing left to train on) are errors either way.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pyarrow as pa

from common.datasets import DataError, _text_lines

OnBadInput = Literal["error", "skip"]
TEXT_SUFFIXES = (".txt", ".md")


@dataclass
class Documents:
    """Documents read from the user's path, and what was skipped on the way."""

    name: str
    ids: list[str] = field(default_factory=list)
    titles: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)  # reason -> count
    beir_dir: Path | None = None  # a BEIR folder's own queries and qrels travel with it
    _where: dict[str, str] = field(default_factory=dict, repr=False)  # id -> "file:line" of its first occurrence

    def add(self, doc_id: str, title: str, text: str, where: str, on_bad_input: OnBadInput) -> None:
        """Append one document; ``where`` ("file:line") names it in errors."""
        if doc_id in self._where:
            raise DataError(f"{where}: duplicate id '{doc_id}' (first at {self._where[doc_id]})")
        if not (title or "").strip() and not (text or "").strip():
            self.bad(f"{where}: empty document '{doc_id}' (no title, no text)", "empty document", on_bad_input)
            return
        self._where[doc_id] = where
        self.ids.append(doc_id)
        self.titles.append(title or "")
        self.texts.append(text or "")

    def bad(self, message: str, reason: str, on_bad_input: OnBadInput) -> None:
        """A line that cannot be a document: an error, or a counted skip."""
        if on_bad_input == "error":
            raise DataError(message + " (use --on-bad-input skip to skip such lines and count them)")
        self.skipped[reason] += 1


def read_jsonl(path: Path, on_bad_input: OnBadInput = "error", docs: Documents | None = None) -> Documents:
    """A JSONL corpus: one object a line with ``_id`` (or ``id``), ``text`` and optional ``title``."""
    docs = docs or Documents(path.stem if path.stem != "corpus" else path.resolve().parent.name)
    for lineno, line in _text_lines(path):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            row = json.loads(line)
        except (ValueError, RecursionError) as exc:
            docs.bad(f"{where}: not valid JSON ({getattr(exc, 'msg', type(exc).__name__)})", "malformed line", on_bad_input)
            continue
        doc_id = row.get("_id", row.get("id")) if isinstance(row, dict) else None
        text, title = (row.get("text"), row.get("title")) if isinstance(row, dict) else (None, None)
        if doc_id is None or isinstance(doc_id, bool) or not isinstance(doc_id, (str, int)):
            docs.bad(f"{where}: no '_id' (a string or integer)", "malformed line", on_bad_input)
            continue
        if not isinstance(text, (str, type(None))) or not isinstance(title, (str, type(None))):
            docs.bad(f"{where}: 'text' and 'title' must be strings", "malformed line", on_bad_input)
            continue
        docs.add(str(doc_id), title or "", text or "", where, on_bad_input)
    return docs


def read_table(path: Path, on_bad_input: OnBadInput = "error") -> Documents:
    """A parquet or CSV file with ``id`` and ``text`` columns (``title`` optional)."""
    try:
        if path.suffix.lower() == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(path)
            first_row = 1  # rows are counted from 1; parquet has no header line
        else:
            import pyarrow.csv as pcsv

            table = pcsv.read_csv(path)
            first_row = 2  # CSV: line 1 is the header
    except pa.ArrowInvalid as exc:
        message = str(exc).splitlines()[0]
        if "utf8" in message.lower() or "utf-8" in message.lower():
            raise DataError(f"{path}: not valid UTF-8 ({message})") from None
        raise DataError(f"{path}: cannot be read as {path.suffix.lstrip('.')} ({message})") from None
    missing = {"id", "text"} - set(table.column_names)
    if missing:
        raise DataError(f"{path}: needs columns 'id' and 'text' (missing {', '.join(sorted(missing))}; "
                        f"has {', '.join(table.column_names) or 'none'})")
    ids = _strings(table, "id", path, first_row)
    texts = _strings(table, "text", path, first_row)
    titles = _strings(table, "title", path, first_row) if "title" in table.column_names else [None] * len(ids)
    docs = Documents(path.stem)
    for row, (doc_id, title, text) in enumerate(zip(ids, titles, texts), start=first_row):
        where = f"{path}:{row}"
        if doc_id is None or not doc_id.strip():
            docs.bad(f"{where}: empty id", "malformed line", on_bad_input)
            continue
        docs.add(doc_id, title or "", text or "", where, on_bad_input)
    return docs


def _strings(table: pa.Table, column: str, path: Path, first_row: int) -> list[str | None]:
    """A column as Python strings; bytes that are not UTF-8 (pyarrow reads such a CSV column as
    binary) are a :class:`DataError` naming the row."""
    values = table.column(column)
    if not (pa.types.is_binary(values.type) or pa.types.is_large_binary(values.type)):
        return values.cast(pa.string()).to_pylist()
    out: list[str | None] = []
    for row, raw in enumerate(values.to_pylist(), start=first_row):
        try:
            out.append(None if raw is None else raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}:{row}: not valid UTF-8 (column '{column}', byte {exc.start + 1})") from None
    return out


def read_text_folder(path: Path, on_bad_input: OnBadInput = "error") -> Documents:
    """A folder of ``.txt`` / ``.md`` files (searched recursively), one document each, the file
    name's stem as its id (two files with one stem are duplicate ids)."""
    docs = Documents(path.resolve().name)
    for file in sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES):
        raw = file.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = raw[: exc.start].count(b"\n") + 1
            raise DataError(f"{file}:{line}: not valid UTF-8 (byte {exc.start + 1} of the file)") from None
        docs.add(file.stem, "", " ".join(text.split()), f"{file}:1", on_bad_input)
    return docs


def read_documents(path: str | Path, on_bad_input: OnBadInput = "error") -> Documents:
    """The documents at ``path``, whichever of the supported formats it is in."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    if path.is_dir():
        if (path / "corpus.jsonl").is_file():
            docs = read_jsonl(path / "corpus.jsonl", on_bad_input, Documents(path.resolve().name, beir_dir=path))
        else:
            docs = read_text_folder(path, on_bad_input)
            if not docs.ids and not docs.skipped:
                raise DataError(f"{path}: no corpus.jsonl and no .txt or .md files: not a corpus tightdistill reads "
                                "(a BEIR folder, corpus.jsonl, parquet/CSV with id and text, or a folder of .txt/.md)")
    elif path.suffix.lower() == ".jsonl":
        docs = read_jsonl(path, on_bad_input)
    elif path.suffix.lower() in (".parquet", ".csv"):
        docs = read_table(path, on_bad_input)
    else:
        raise DataError(f"{path}: unknown corpus format '{path.suffix}' (a BEIR folder, .jsonl, .parquet, .csv, "
                        "or a folder of .txt/.md files)")
    if not docs.ids:
        skipped = f" ({sum(docs.skipped.values())} lines skipped)" if docs.skipped else ""
        raise DataError(f"{path}: the corpus has no documents{skipped}")
    return docs


def write_beir(docs: Documents, folder: Path) -> Path:
    """Write ``docs`` as a BEIR folder (``corpus.jsonl``, ``queries.jsonl``, ``qrels/``): a BEIR
    input's queries and qrels are carried over, without judgments of documents that were skipped;
    any other input gets an empty ``queries.jsonl`` (label-free runs need none)."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "corpus.jsonl.tmp"
    with tmp.open("w", encoding="utf-8") as fh:
        for doc_id, title, text in zip(docs.ids, docs.titles, docs.texts):
            fh.write(json.dumps({"_id": doc_id, "title": title, "text": text}, ensure_ascii=False) + "\n")
    tmp.replace(folder / "corpus.jsonl")
    source = docs.beir_dir
    if source is not None and (source / "queries.jsonl").is_file():
        shutil.copyfile(source / "queries.jsonl", folder / "queries.jsonl")
    else:
        (folder / "queries.jsonl").write_text("")
    shutil.rmtree(folder / "qrels", ignore_errors=True)
    if source is not None and (source / "qrels").is_dir():
        (folder / "qrels").mkdir()
        kept = set(docs.ids)
        for qrels in sorted((source / "qrels").glob("*.tsv")):
            lines = [line for n, line in _text_lines(qrels)
                     if n == 1 or len(line.split("\t")) < 2 or line.split("\t")[1] in kept]
            (folder / "qrels" / qrels.name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


__all__ = ["Documents", "OnBadInput", "read_documents", "read_jsonl", "read_table", "read_text_folder", "write_beir"]
