"""A shared teacher app is never redeployed by a transient error (issue #20).

``connect_teacher`` deploys the job's ``serve_config`` only when Serve has no app of that name: an
app that exists may serve other runs, and a redeploy would replace the teachers under them. A
running app that fails to answer is asked again, then reported; never redeployed. A real Serve app
with one tiny teacher; the errors are injected into the handle transport's ``teachers`` call.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from net import delete_app
from ray import serve
from ray.exceptions import ActorUnavailableError

import teacher_service.app
from common.config import ConfigError
from student_trainer.config import TeacherRef
from student_trainer.run import connect_teacher
from student_trainer.teacher_signals import TeacherUnavailable
from teacher_service.client import HandleTransport

APP = "connect-teacher"


@pytest.fixture(scope="module")
def serve_config(tmp_path_factory: pytest.TempPathFactory, tiny_bert_dir: Path, http_port: int) -> Path:
    """A job's Serve config for an app of its own (own name and route prefix) with one tiny teacher."""
    path = tmp_path_factory.mktemp("connect") / "teachers.yaml"
    path.write_text(yaml.safe_dump({
        "http_options": {"host": "127.0.0.1", "port": http_port},  # the session's Serve instance
        "applications": [{
            "name": APP, "route_prefix": f"/{APP}", "import_path": "teacher_service.app:build_app",
            "args": {"teachers": [{"name": "tiny", "kind": "dual_encoder", "checkpoint": str(tiny_bert_dir),
                                   "ray_actor_options": {"num_cpus": 0.25}}]},
        }],
    }))
    return path


def spy_on_deploy(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record the name of every app ``teacher_service.app.deploy`` is asked for, then deploy it."""
    calls: list[str] = []
    real = teacher_service.app.deploy

    def deploy(config: Any, app_name: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(app_name)
        return real(config, app_name, *args, **kwargs)

    monkeypatch.setattr(teacher_service.app, "deploy", deploy)
    return calls


def ref(serve_config: Path | None, timeout_s: float = 60.0) -> TeacherRef:
    return TeacherRef(teacher="tiny", app_name=APP, serve_config=serve_config, timeout_s=timeout_s)


@pytest.fixture(scope="module")
def first_connect(serve_config: Path) -> Iterator[dict[str, Any]]:
    """The first run to connect: the app does not exist yet, so this one deploys it."""
    assert APP not in serve.status().applications
    with pytest.MonkeyPatch.context() as mp:
        deploys = spy_on_deploy(mp)
        client = connect_teacher(ref(serve_config))
    yield {"client": client, "deploys": deploys}
    delete_app(APP)


@pytest.fixture
def deploys(first_connect: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Deploy calls made during the test, with the app already running."""
    return spy_on_deploy(monkeypatch)


def failing_teachers(monkeypatch: pytest.MonkeyPatch, failures: int) -> list[int]:
    """Make the first ``failures`` ``teachers()`` calls over Serve handles raise what a replica
    that is restarting raises; later calls reach the app. Returns the call count (one item)."""
    calls = [0]
    real = HandleTransport.teachers

    def teachers(self: HandleTransport) -> list[dict[str, Any]]:
        calls[0] += 1
        if calls[0] <= failures:
            raise ActorUnavailableError("replica restarting", None)
        return real(self)

    monkeypatch.setattr(HandleTransport, "teachers", teachers)
    return calls


def test_a_missing_app_is_deployed_from_the_serve_config(first_connect):
    assert first_connect["deploys"] == [APP]
    assert first_connect["client"].encode(["a query"]).shape[0] == 1


def test_a_transient_error_on_a_running_app_is_retried_not_redeployed(deploys, serve_config, monkeypatch):
    calls = failing_teachers(monkeypatch, failures=1)
    client = connect_teacher(ref(serve_config))
    assert deploys == []
    assert calls[0] >= 2  # asked again after the failure
    assert client.encode(["a query"]).shape[0] == 1


def test_a_persistent_error_on_a_running_app_is_reported_not_redeployed(deploys, serve_config, monkeypatch):
    failing_teachers(monkeypatch, failures=10**6)
    with pytest.raises(TeacherUnavailable, match=f"'{APP}'.*ActorUnavailableError.*not redeployed"):
        connect_teacher(ref(serve_config, timeout_s=1.0))
    assert deploys == []
    monkeypatch.undo()
    assert connect_teacher(ref(None)).encode(["a query"]).shape[0] == 1  # the app other runs use still serves


def test_no_app_and_no_serve_config_is_a_config_error(ray_session):
    with pytest.raises(ConfigError, match="serve_config is not set"):
        connect_teacher(TeacherRef(teacher="tiny", app_name="no-such-app", serve_config=None))
