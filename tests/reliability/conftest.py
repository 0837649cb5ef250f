"""Fixture of the reliability tests: throw-away teacher apps in the shared Ray session."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from net import delete_app
from reliability_helpers import deploy_own_app


@pytest.fixture(scope="module")
def own_app(http_port: int) -> Iterator[Callable[..., dict[str, Any]]]:
    """Deploy a teacher app of this module's own (distinct name and route prefix) in the shared Ray
    session; every app it deployed is deleted when the module's tests end, pass or fail (one
    deployment serves all the module's tests that use it)."""
    deployed: list[str] = []

    def make(app_name: str, teachers: list[dict[str, Any]], limits: dict[str, Any] | None = None) -> dict[str, Any]:
        deployed.append(app_name)
        return deploy_own_app(app_name, teachers, http_port, limits)

    yield make
    for name in deployed:
        delete_app(name)
