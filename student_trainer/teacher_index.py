"""The teacher's document embeddings for a corpus: computed once through the service, cached as parquet.

An asymmetric student inherits them (EmbedDistill's "inherit doc embeddings"), negatives are mined
from them, and both teacher and student are evaluated against them. The cache key covers the
teacher's self-description (kind, checkpoint, dims, lengths, dtype, and its fingerprint: the
checkpoint's file contents and the options that change outputs) and the corpus's ids and texts, so
a changed teacher or corpus is re-encoded and an unchanged one never is.
"""

from __future__ import annotations

import hashlib
import json
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


def teacher_doc_embeddings(client: TeacherClient, dataset: BeirDataset, teacher: str | None = None,
                           cache: Path | None = None, chunk_size: int = 64, in_flight: int = 4,
                           show_progress: bool = True) -> DocEmbeddings:
    """Embeddings of every document of ``dataset`` from ``teacher``, from the cache when present."""
    info = client.describe(teacher)
    path = (cache or cache_dir() / "doc-embeddings") / f"{dataset.name}-{Path(info['checkpoint']).name}-{cache_key(info, dataset)}.parquet"
    if path.is_file():
        ids, emb = load_embeddings(path)
        return DocEmbeddings(ids, emb, path)
    emb = client.encode_many(dataset.doc_texts, role="document", teacher=info["name"], chunk_size=chunk_size,
                             in_flight=in_flight, progress=f"teacher {info['name']}: encoding {dataset.name} corpus" if show_progress else None)
    save_embeddings(path, dataset.doc_ids, emb)
    return DocEmbeddings(list(dataset.doc_ids), emb, path)
