"""Only outages are retried (issue #20, "bugs are retried as outages").

A teacher that is restarting or overloaded is waited for, up to ``teacher.timeout_s``; a bug (an id
missing from the held document index, a replica's own exception, a request the service refuses)
fails the step at once with its own exception, instead of being retried for ``timeout_s`` and then
reported as an unavailable teacher. A real tiny dual-encoder answers in this process; only the
faults are injected, at the transport, where a replica's death or a proxy's 503 would surface.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from ray.exceptions import ActorUnavailableError, RayTaskError

from student_trainer.teacher_index import DocEmbeddings
from student_trainer.teacher_signals import TeacherSignalSource, TeacherUnavailable, TrainBatch
from teacher_service.client import LocalTransport, TeacherClient
from teacher_service.errors import InvalidRequest, Overloaded, TeacherServiceError, Unavailable
from teacher_service.kinds import build_teacher
from teacher_service.spec import TeacherSpec

DOC_IDS = ["d1", "d2", "d3", "d4"]
BATCH = TrainBatch(["q one", "q two"], [], DOC_IDS, ["doc a", "doc b", "doc c", "doc d"], 1)


class FailingFuture:
    """What a request's future looks like when the teacher fails it."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def result(self, timeout: float | None = None) -> Any:
        raise self.error


class ScriptedTransport:
    """The real in-process transport, except that the first requests fail with ``faults`` (one
    each, in order; an endless iterable fails every request). ``max_sends`` stops a source that
    re-sends when it must not: the extra request raises at once, so a regression fails the test
    instead of retrying for ``timeout_s``."""

    def __init__(self, inner: LocalTransport, faults: Iterable[BaseException] = (), max_sends: int | None = None) -> None:
        self.inner = inner
        self.faults = iter(faults)
        self.max_sends = max_sends
        self.sent = 0

    def teachers(self) -> list[dict[str, Any]]:
        return self.inner.teachers()

    def submit(self, op: str, request: Any) -> Any:
        self.sent += 1
        if self.max_sends is not None and self.sent > self.max_sends:
            raise AssertionError(f"request {self.sent} sent, at most {self.max_sends} expected: an error was retried")
        fault = next(self.faults, None)
        return FailingFuture(fault) if fault is not None else self.inner.submit(op, request)


@pytest.fixture(scope="module")
def tiny(tiny_bert_dir: Path) -> TeacherClient:
    """A tiny dual-encoder in this process, warmed up so that timings measure the retries alone."""
    client = TeacherClient.in_process(build_teacher(TeacherSpec(name="tiny", kind="dual_encoder",
                                                                checkpoint=str(tiny_bert_dir))))
    client.encode(["warm up"])
    return client


@pytest.fixture(scope="module")
def index(tiny: TeacherClient) -> DocEmbeddings:
    """The teacher's own embeddings of the batch's documents: the index a run holds."""
    return DocEmbeddings(DOC_IDS, tiny.encode(BATCH.documents, role="document"))


def source_over(tiny: TeacherClient, index: DocEmbeddings, timeout_s: float,
                **transport: Any) -> tuple[TeacherSignalSource, ScriptedTransport]:
    scripted = ScriptedTransport(tiny.transport, **transport)
    client = TeacherClient(scripted, "tiny")
    return TeacherSignalSource(client, "tiny", tiny.describe(), index, want_query_embeddings=True,
                               timeout_s=timeout_s), scripted


def replica_bug() -> BaseException:
    """A replica's own exception as a Serve handle raises it: a RayTaskError that is also the cause's type."""
    return RayTaskError("TeacherReplica.run", "Traceback (most recent call last): ...",
                        RuntimeError("mat1 and mat2 shapes cannot be multiplied (2x32 and 16x4)")).as_instanceof_cause()


def test_a_doc_id_missing_from_the_held_index_fails_at_once(tiny, index):
    source, scripted = source_over(tiny, index, timeout_s=300.0, max_sends=1)
    pending = source.submit(TrainBatch(BATCH.queries, [], ["d1", "d2", "not-in-index", "d4"], BATCH.documents, 1))
    started = time.monotonic()
    with pytest.raises(KeyError, match="not-in-index"):
        source.collect(pending)
    assert time.monotonic() - started < 1.0
    assert scripted.sent == 1


@pytest.mark.parametrize("error", [replica_bug(), InvalidRequest("texts must not be empty")],
                         ids=["replica-bug", "invalid-request"])
def test_an_error_that_is_no_outage_is_raised_as_it_is(tiny, index, error):
    source, scripted = source_over(tiny, index, timeout_s=300.0, faults=[error], max_sends=1)
    pending = source.submit(BATCH)
    started = time.monotonic()
    with pytest.raises(type(error)) as raised:
        source.collect(pending)
    assert raised.value is error and time.monotonic() - started < 1.0


@pytest.mark.parametrize("error", [
    ActorUnavailableError("replica restarting", None),
    Unavailable("HTTP 503 from the teacher service"),
    Overloaded("teacher 'tiny' is at its queue limit"),
    # Serve's proxy answers a replica that died mid-request with a bare 500 (see is_transient).
    TeacherServiceError("HTTP 500 from the teacher service: Internal Server Error", code="http_error", status=500),
], ids=["actor-unavailable", "unavailable-503", "overloaded-429", "bare-500"])
def test_a_transient_error_is_retried_and_the_resent_request_answers(tiny, index, error):
    expected = source_over(tiny, index, timeout_s=300.0)[0]
    source, scripted = source_over(tiny, index, timeout_s=300.0, faults=[error], max_sends=2)
    signals = source.collect(source.submit(BATCH))
    assert scripted.sent == 2
    np.testing.assert_allclose(signals.scores, expected.collect(expected.submit(BATCH)).scores, rtol=1e-5)


def test_a_persistent_outage_ends_in_teacher_unavailable_at_the_deadline(tiny, index):
    source, scripted = source_over(tiny, index, timeout_s=1.0,
                                   faults=itertools.repeat(ActorUnavailableError("replica restarting", None)))
    started = time.monotonic()
    with pytest.raises(TeacherUnavailable, match="ActorUnavailableError"):
        source.collect(source.submit(BATCH))
    assert 1.0 <= time.monotonic() - started < 3.0
    assert scripted.sent >= 2


def test_candidate_scores_ride_out_an_outage_but_not_a_missing_id(tiny, index):
    """Re-scoring student-mined negatives (``score_candidates``) follows the same rule."""
    expected = source_over(tiny, index, timeout_s=300.0)[0].score_candidates(["q one"], [DOC_IDS], [BATCH.documents])
    source, scripted = source_over(tiny, index, timeout_s=300.0, faults=[Unavailable("HTTP 503")], max_sends=2)
    got = source.score_candidates(["q one"], [DOC_IDS], [BATCH.documents])
    assert scripted.sent == 2
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-5)

    source, scripted = source_over(tiny, index, timeout_s=300.0, max_sends=1)
    started = time.monotonic()
    with pytest.raises(KeyError, match="not-in-index"):
        source.score_candidates(["q one"], [["d1", "not-in-index"]], [["doc a", "doc x"]])
    assert time.monotonic() - started < 1.0
