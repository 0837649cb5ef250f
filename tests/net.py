"""Free local ports for the tests' servers (importable from any test module, unlike conftest.py:
pytest imports each folder's conftest.py under the same name, so ``from conftest import`` finds
whichever one came last)."""

from __future__ import annotations

import socket


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
