"""Fixture of the reliability tests: throw-away teacher apps in the shared Ray session."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest


@pytest.fixture
def own_app(http_port: int) -> Iterator[Callable[..., dict[str, Any]]]:
    """Deploy a teacher app of this test's own (distinct name and route prefix) in the shared Ray
    session; every app it deployed is deleted when the test ends, pass or fail."""
    from ray import serve

    from teacher_service.app import deploy
    from teacher_service.spec import ServiceConfig

    deployed: list[str] = []

    def make(app_name: str, teachers: list[dict[str, Any]], limits: dict[str, Any] | None = None) -> dict[str, Any]:
        config = ServiceConfig.model_validate({"teachers": teachers, **({"limits": limits} if limits else {})})
        deploy(config, app_name=app_name, route_prefix=f"/{app_name}", http_options={"host": "127.0.0.1", "port": http_port})
        deployed.append(app_name)
        return {"app_name": app_name, "url": f"http://127.0.0.1:{http_port}/{app_name}", "config": config}

    yield make
    for name in deployed:
        serve.delete(name)
