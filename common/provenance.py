"""Which code produced a result: the git commit of the working tree, recorded beside metrics."""

from __future__ import annotations

import subprocess
from pathlib import Path


def _git(*args: str, cwd: Path | None = None) -> str | None:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True, cwd=cwd).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def code_commit(cwd: Path | None = None) -> str:
    """``HEAD``'s hash, with ``" (dirty tree)"`` when tracked files differ from it; ``"unknown"``
    outside a git checkout (a ``ray job submit`` working directory, an installed package)."""
    head = _git("rev-parse", "HEAD", cwd=cwd)
    if head is None:
        return "unknown"
    return head + (" (dirty tree)" if _git("status", "--porcelain", "--untracked-files=no", cwd=cwd) else "")
