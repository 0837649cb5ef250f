"""The tests' servers: free local ports, and the teardown of apps deployed into the session's Serve
instance (importable from any test module, unlike conftest.py: pytest imports each folder's
conftest.py under the same name, so ``from conftest import`` finds whichever one came last)."""

from __future__ import annotations

import socket


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def delete_app(name: str) -> None:
    """Start deleting a Serve app without waiting for its replicas' graceful shutdown (about 3 s
    each): no later test deploys an app under the same name."""
    from ray import serve

    serve.delete(name, _blocking=False)
