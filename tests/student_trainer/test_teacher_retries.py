"""Which teacher errors a training run waits out and which it raises at once.

An overloaded teacher (429 over HTTP, a full Serve queue over a handle) must slow a trainer, never
fail it; a request the teacher refuses as wrong (4xx) fails at once, since resending cannot help.
"""

from __future__ import annotations

import time

import pytest
from ray.serve.exceptions import BackPressureError

from student_trainer.teacher_signals import Pending, TeacherSignalSource, TeacherUnavailable
from teacher_service.client import _HandleFuture
from teacher_service.errors import InvalidRequest, Overloaded

INFO = {"name": "t", "kind": "dual_encoder", "similarity": "dot", "dim": 4}


class _Client:
    """What TeacherSignalSource asks of a client before sending anything."""

    def with_teacher(self, name: str) -> _Client:
        return self


class _Future:
    def __init__(self, outcome: object) -> None:
        self.outcome = outcome

    def result(self, timeout: float | None = None) -> object:
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome


def _source(timeout_s: float = 30.0) -> TeacherSignalSource:
    return TeacherSignalSource(_Client(), "t", INFO, None, want_query_embeddings=False, timeout_s=timeout_s)


def _retry(outcomes: list[object], timeout_s: float = 30.0) -> tuple[object, int]:
    """Run the source's retry loop over a sequence of outcomes; return the result and the resends."""
    sends = iter(outcomes)
    resent = []

    def resend() -> dict[str, _Future]:
        resent.append(1)
        return {"scores": _Future(next(sends))}

    pending = Pending(batch=None, futures={"scores": _Future(next(sends))}, sent_at=time.monotonic())
    result = _source(timeout_s)._with_retries(pending, lambda results: results["scores"], resend)
    return result, len(resent)


def test_overload_is_waited_out():
    result, resent = _retry([Overloaded("queue full"), Overloaded("queue full"), "signals"])
    assert (result, resent) == ("signals", 2)


def test_a_refused_request_fails_at_once():
    with pytest.raises(InvalidRequest, match="bad batch"):
        _retry([InvalidRequest("bad batch"), "never reached"])


def test_an_overload_past_the_deadline_is_teacher_unavailable():
    with pytest.raises(TeacherUnavailable, match="Overloaded"):
        _retry([Overloaded("queue full")] * 50, timeout_s=1.0)


def test_a_full_serve_queue_is_overloaded_over_a_handle():
    class _Response:
        def result(self, timeout_s: float | None = None) -> None:
            raise BackPressureError(num_queued_requests=8, max_queued_requests=8)

    with pytest.raises(Overloaded, match="queue is full"):
        _HandleFuture(_Response()).result(timeout=1.0)
