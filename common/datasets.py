"""Retrieval datasets: BEIR folders and MS MARCO style triples, as Arrow tables and parquet files.

A BEIR folder holds ``corpus.jsonl`` (``_id``, ``title``, ``text``), ``queries.jsonl`` (``_id``,
``text``) and ``qrels/<split>.tsv`` (``query-id``, ``corpus-id``, ``score`` with a header line);
tightdistill also reads ``candidates.<split>.tsv`` (``query-id``, ``corpus-id``) for re-ranking.
The small datasets the default job and the tests use live in the project's ``data/`` folder.
Malformed files raise :class:`DataError` naming the file and line.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

DATA_ROOT = Path(os.environ.get("TIGHTDISTILL_DATA", Path(__file__).resolve().parents[1] / "data"))

CORPUS_SCHEMA = pa.schema([("id", pa.string()), ("title", pa.string()), ("text", pa.string())])
QUERIES_SCHEMA = pa.schema([("id", pa.string()), ("text", pa.string())])
QRELS_SCHEMA = pa.schema([("query_id", pa.string()), ("doc_id", pa.string()), ("score", pa.int32())])
TRIPLES_SCHEMA = pa.schema([("query", pa.string()), ("positive", pa.string()), ("negative", pa.string())])

Qrels = dict[str, dict[str, int]]
EMPTY_DOCUMENT = " "


class DataError(ValueError):
    """A dataset file is missing or malformed; the message names the file (and line)."""


def available_datasets() -> list[str]:
    return sorted(p.name for p in DATA_ROOT.iterdir() if (p / "corpus.jsonl").is_file()) if DATA_ROOT.is_dir() else []


def resolve_dataset(name_or_dir: str | Path) -> Path:
    """A bundled dataset name (``scifact``) or a BEIR-layout directory."""
    path = Path(name_or_dir).expanduser()
    if not path.is_dir():
        bundled = DATA_ROOT / str(name_or_dir)
        if not bundled.is_dir():
            raise DataError(
                f"dataset '{name_or_dir}' not found: not a directory, and not a bundled dataset "
                f"({', '.join(available_datasets()) or 'none bundled'})"
            )
        path = bundled
    if not (path / "corpus.jsonl").is_file():
        raise DataError(f"{path}: not a BEIR dataset folder (no corpus.jsonl)")
    return path


def _text_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Numbered lines of a UTF-8 text file, without their line ending. Each line is decoded on
    its own, so bytes that are not UTF-8 are a :class:`DataError` naming the line (decoding the
    whole file would only say a byte offset, and not as a DataError)."""
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"{path}:{lineno}: not valid UTF-8 (byte {exc.start + 1} of the line)") from None
            yield lineno, line.rstrip("\r\n")


def _read_jsonl(path: Path, fields: dict[str, bool]) -> dict[str, list[str]]:
    """Read string fields from a JSONL file. ``fields`` maps output name -> required."""
    columns: dict[str, list[str]] = {name: [] for name in fields}
    seen: set[str] = set()
    for lineno, line in _text_lines(path):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
        except (ValueError, RecursionError) as exc:  # integers over Python's digit limit, absurd nesting
            raise DataError(f"{path}:{lineno}: not valid JSON ({type(exc).__name__}: {str(exc)[:100]})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object")
        for name, required in fields.items():
            key = "_id" if name == "id" else name
            value = row.get(key)
            if value is None and required:
                raise DataError(f"{path}:{lineno}: missing field '{key}'")
            # Integer ids are common (BEIR's own files have them); a JSON true/false is not an id or a text.
            if value is not None and (isinstance(value, bool) or not isinstance(value, (str, int))):
                raise DataError(f"{path}:{lineno}: field '{key}' must be a string")
            columns[name].append("" if value is None else str(value))
        doc_id = columns["id"][-1]
        if doc_id in seen:
            raise DataError(f"{path}:{lineno}: duplicate id '{doc_id}'")
        seen.add(doc_id)
    return columns


def read_corpus(path: Path) -> pa.Table:
    cols = _read_jsonl(path, {"id": True, "title": False, "text": True})
    return pa.Table.from_pydict(cols, schema=CORPUS_SCHEMA)


def read_queries(path: Path) -> pa.Table:
    cols = _read_jsonl(path, {"id": True, "text": True})
    return pa.Table.from_pydict(cols, schema=QUERIES_SCHEMA)


def read_pairs_tsv(path: Path, with_score: bool, known_queries: set[str], known_docs: set[str]) -> pa.Table:
    """Read a ``query-id<TAB>corpus-id[<TAB>score]`` file with a header; ids must exist."""
    qids: list[str] = []
    dids: list[str] = []
    scores: list[int] = []
    for lineno, line in _text_lines(path):
        parts = line.split("\t")
        if lineno == 1 and parts[0] in ("query-id", "query_id", "qid"):
            continue
        if not line.strip():
            continue
        if len(parts) < (3 if with_score else 2):
            raise DataError(f"{path}:{lineno}: expected tab-separated query-id, corpus-id" + (", score" if with_score else ""))
        qid, did = parts[0], parts[1]
        if qid not in known_queries:
            raise DataError(f"{path}:{lineno}: unknown query id '{qid}' (not in queries.jsonl)")
        if did not in known_docs:
            raise DataError(f"{path}:{lineno}: unknown corpus id '{did}' (not in corpus.jsonl)")
        qids.append(qid)
        dids.append(did)
        if with_score:
            try:
                scores.append(int(float(parts[2])))
            except (ValueError, OverflowError):  # OverflowError: 'inf' parses as a float but is no grade
                raise DataError(f"{path}:{lineno}: score '{parts[2]}' is not a number") from None
        else:
            scores.append(1)
    return pa.Table.from_pydict({"query_id": qids, "doc_id": dids, "score": scores}, schema=QRELS_SCHEMA)


def qrels_to_dict(table: pa.Table) -> Qrels:
    """Arrow qrels -> ``{query_id: {doc_id: grade}}`` (the pytrec_eval layout)."""
    out: Qrels = defaultdict(dict)
    for qid, did, score in zip(*(table.column(c).to_pylist() for c in ("query_id", "doc_id", "score"))):
        out[qid][did] = score
    return dict(out)


@dataclass
class BeirDataset:
    """A BEIR folder loaded into Arrow tables."""

    path: Path
    corpus: pa.Table
    queries: pa.Table
    _qrels: dict[str, pa.Table] = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return self.path.name

    @cached_property
    def doc_ids(self) -> list[str]:
        return self.corpus.column("id").to_pylist()

    @cached_property
    def doc_index(self) -> dict[str, int]:
        return {d: i for i, d in enumerate(self.doc_ids)}

    @cached_property
    def query_text(self) -> dict[str, str]:
        return dict(zip(self.queries.column("id").to_pylist(), self.queries.column("text").to_pylist()))

    @cached_property
    def doc_texts(self) -> list[str]:
        """Document texts as sentence-transformers models see them: ``title + " " + text``."""
        titles = self.corpus.column("title").to_pylist()
        texts = self.corpus.column("text").to_pylist()
        joined = [f"{t} {x}".strip() if t else x.strip() for t, x in zip(titles, texts)]
        # A document with neither title nor text (cranfield has two) keeps its row, so ids and
        # embeddings stay aligned, and is encoded as whitespace: only the encoder's special
        # tokens, a content-free embedding. Encoders and the teacher API refuse empty strings.
        return [text or EMPTY_DOCUMENT for text in joined]

    def splits(self) -> list[str]:
        return sorted(p.stem for p in (self.path / "qrels").glob("*.tsv"))

    def qrels_table(self, split: str) -> pa.Table:
        if split not in self._qrels:
            path = self.path / "qrels" / f"{split}.tsv"
            if not path.is_file():
                raise DataError(f"{self.path}: no qrels for split '{split}' (have: {', '.join(self.splits()) or 'none'})")
            self._qrels[split] = read_pairs_tsv(path, True, set(self.query_text), set(self.doc_index))
        return self._qrels[split]

    def qrels(self, split: str) -> Qrels:
        return qrels_to_dict(self.qrels_table(split))

    def split_query_ids(self, split: str) -> list[str]:
        """Ids of the queries that have at least one relevant document in ``split``, in file order."""
        relevant = {q for q, docs in self.qrels(split).items() if any(g > 0 for g in docs.values())}
        return [q for q in self.queries.column("id").to_pylist() if q in relevant]

    def candidates(self, split: str) -> dict[str, list[str]]:
        """Per-query candidate lists for re-ranking (``candidates.<split>.tsv``)."""
        path = self.path / f"candidates.{split}.tsv"
        if not path.is_file():
            raise DataError(f"{self.path}: no candidate lists for split '{split}' ({path.name} missing)")
        table = read_pairs_tsv(path, False, set(self.query_text), set(self.doc_index))
        out: dict[str, list[str]] = defaultdict(list)
        for qid, did in zip(table.column("query_id").to_pylist(), table.column("doc_id").to_pylist()):
            out[qid].append(did)
        return dict(out)


def load_beir(name_or_dir: str | Path) -> BeirDataset:
    """Load a bundled dataset by name or a BEIR-layout directory."""
    path = resolve_dataset(name_or_dir)
    queries_path = path / "queries.jsonl"
    if not queries_path.is_file():
        raise DataError(f"{path}: no queries.jsonl")
    return BeirDataset(path=path, corpus=read_corpus(path / "corpus.jsonl"), queries=read_queries(queries_path))


def read_triples_tsv(path: str | Path) -> pa.Table:
    """MS MARCO style ``query<TAB>positive<TAB>negative`` text triples (no header)."""
    path = Path(path)
    cols: dict[str, list[str]] = {"query": [], "positive": [], "negative": []}
    for lineno, line in _text_lines(path):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 3:
            raise DataError(f"{path}:{lineno}: expected 3 tab-separated fields (query, positive, negative), got {len(parts)}")
        for name, value in zip(cols, parts):
            cols[name].append(value)
    return pa.Table.from_pydict(cols, schema=TRIPLES_SCHEMA)


def write_parquet(table: pa.Table, path: str | Path) -> Path:
    """Write atomically (temp file + rename) so a crash never leaves a truncated parquet file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)
    return path


def read_parquet(path: str | Path) -> pa.Table:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"parquet file not found: {path}")
    return pq.read_table(path)
