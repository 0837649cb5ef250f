"""The teacher's document embeddings for a corpus: computed once through the service, cached as parquet.

An asymmetric student inherits them (EmbedDistill's "inherit doc embeddings"), negatives are mined
from them, and both teacher and student are evaluated against them. The cache key covers the
teacher's self-description (kind, checkpoint, dims, lengths, dtype, and its fingerprint: the
checkpoint's file contents and the options that change outputs) and the corpus's ids and texts, so
a changed teacher or corpus is re-encoded and an unchanged one never is. Encoding a large corpus is
chunked and resumable (:func:`teacher_doc_embeddings`): nothing finished is lost to an interruption.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from common.datasets import BeirDataset
from common.model_registry import cache_dir
from common.retrieval import DenseIndex, load_embeddings, save_embeddings
from teacher_service.client import TeacherClient
from teacher_service.spec import teacher_identity


@dataclass
class DocEmbeddings:
    """Document ids and their teacher embeddings ``[n, dim]`` (float32)."""

    ids: list[str]
    emb: np.ndarray
    path: Path | None = None
    _row: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._row = {d: i for i, d in enumerate(self.ids)}

    def lookup(self, ids: list[str]) -> np.ndarray:
        return self.emb[[self._row[d] for d in ids]]

    def top_k_ids(self, queries: np.ndarray, k: int) -> list[list[str]]:
        """Each query's ``k`` best document ids in this index (exact inner-product search)."""
        return self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)[1]

    def top_k_embeddings(self, queries: np.ndarray, k: int) -> np.ndarray:
        """``[nq, k, dim]``: the embeddings of each query's ``k`` best documents in this index
        (exact inner-product search): the candidates ``CandidateKLLoss`` ranks."""
        return self.emb[[[self._row[d] for d in row] for row in self.top_k_ids(queries, k)]]

    @cached_property
    def index(self) -> DenseIndex:
        return DenseIndex.from_embeddings(self.ids, self.emb)


def corpus_hash(dataset: BeirDataset) -> str:
    """Hash of the corpus's ids and texts in order: an edited document under the same id changes it."""
    digest = hashlib.sha256()
    for doc_id, text in zip(dataset.doc_ids, dataset.doc_texts):
        # Length-prefixed, so no two corpora hash alike by moving text across a boundary.
        for part in (doc_id, text):
            raw = part.encode("utf-8", "surrogatepass")
            digest.update(len(raw).to_bytes(8, "little") + raw)
    return digest.hexdigest()


def cache_key(teacher_info: dict[str, Any], dataset: BeirDataset) -> str:
    """Hash of what determines the embeddings: the teacher's description with its fingerprint (not
    its service name, so the same model served under another name shares the cache) and the corpus."""
    payload = json.dumps({"teacher": teacher_identity(teacher_info), "dataset": dataset.name, "corpus": corpus_hash(dataset)},
                         sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


# Documents per part of an encoding in progress: a part is the most a kill can lose (about
# 15-40 s of the MiniLM teacher on 2 cores), and small enough that its file and checksum are cheap.
PART_SIZE = 4096
MANIFEST = "manifest.json"


def parts_dir(path: Path) -> Path:
    """Where the parts of the encoding that will become ``path`` are kept until it is assembled."""
    return path.with_name(path.name.removesuffix(".parquet") + ".parts")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, path)  # a kill leaves the old manifest or the new one, never half of one


def finished_parts(folder: Path, n_docs: int, part_size: int) -> dict[int, str]:
    """Parts of an interrupted encoding that are whole: listed in the manifest (written only after
    the part's file was renamed into place) with a checksum their file still matches. A manifest
    from another corpus size or part size, or a part that fails its checksum, is not trusted."""
    manifest = folder / MANIFEST
    try:
        data = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return {}
    if data.get("n_docs") != n_docs or data.get("part_size") != part_size:
        return {}
    good = {}
    for name, entry in data.get("parts", {}).items():
        file = folder / entry.get("file", "")
        if file.is_file() and _sha256(file) == entry.get("sha256"):
            good[int(name)] = entry["sha256"]
    return good


def teacher_doc_embeddings(client: TeacherClient, dataset: BeirDataset, teacher: str | None = None,
                           cache: Path | None = None, chunk_size: int = 64, in_flight: int = 4,
                           show_progress: bool = True, part_size: int = PART_SIZE) -> DocEmbeddings:
    """Embeddings of every document of ``dataset`` from ``teacher``, from the cache when present.

    The encoding is written in parts of ``part_size`` documents (``<cache file>.parts/``, one
    ``.npy`` a part, each with its SHA-256 in ``manifest.json``) as they finish, so an encoding
    stopped at any point (Ctrl-C, a killed process, a lost teacher) resumes with the parts that
    are missing or fail their checksum; the parts are then assembled into the one parquet file
    (same name and cache key as ever) and removed. Progress shows documents/s and an ETA.
    """
    info = client.describe(teacher)
    path = (cache or cache_dir() / "doc-embeddings") / f"{dataset.name}-{Path(info['checkpoint']).name}-{cache_key(info, dataset)}.parquet"
    if path.is_file():
        ids, emb = load_embeddings(path)
        return DocEmbeddings(ids, emb, path)
    texts = dataset.doc_texts
    folder = parts_dir(path)
    folder.mkdir(parents=True, exist_ok=True)
    n_parts = -(-len(texts) // part_size)
    done = finished_parts(folder, len(texts), part_size)
    manifest = {"n_docs": len(texts), "part_size": part_size, "parts": {
        str(i): {"file": f"part-{i:05d}.npy", "sha256": sha} for i, sha in done.items()}}
    todo = [i for i in range(n_parts) if i not in done]
    from tqdm.auto import tqdm

    resumed = sum(min(part_size, len(texts) - i * part_size) for i in done)
    desc = f"teacher {info['name']}: encoding {dataset.name} corpus" + (f" (resumed, {len(done)}/{n_parts} parts done)" if done else "")
    with tqdm(total=len(texts), initial=resumed, desc=desc, unit="doc", disable=not show_progress, smoothing=0.1) as bar:
        for i in todo:
            part = texts[i * part_size : (i + 1) * part_size]
            # Sub-chunks of a part are pipelined as before; the bar moves per part of requests.
            emb = np.ascontiguousarray(client.encode_many(part, role="document", teacher=info["name"], chunk_size=chunk_size,
                                                          in_flight=in_flight), dtype=np.float32)
            file = folder / f"part-{i:05d}.npy"
            tmp = file.with_name(file.name + ".tmp")
            with tmp.open("wb") as fh:
                np.save(fh, emb)
            os.replace(tmp, file)
            manifest["parts"][str(i)] = {"file": file.name, "sha256": _sha256(file)}
            _write_json_atomic(folder / MANIFEST, manifest)
            bar.update(len(part))
    emb = np.concatenate([np.load(folder / manifest["parts"][str(i)]["file"]) for i in range(n_parts)]) if n_parts else \
        np.empty((0, int(info["dim"])), dtype=np.float32)
    save_embeddings(path, dataset.doc_ids, emb)
    shutil.rmtree(folder, ignore_errors=True)  # the parquet holds it all now
    return DocEmbeddings(list(dataset.doc_ids), emb, path)
