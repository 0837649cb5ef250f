"""The teacher's corpus encoding survives a kill -9: a rerun re-encodes only the missing and the
corrupt parts (counted at the real replica), and assembles the same embeddings in the usual file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

from common.datasets import load_beir
from student_trainer.teacher_index import MANIFEST, parts_dir, teacher_doc_embeddings
from teacher_service.client import TeacherClient

REPO = Path(__file__).resolve().parents[2]
PART, CHUNK = 16, 8  # two requests a part

# The encoding a user starts, in its own process, over HTTP; each request is held back a little so
# that the test can kill the process while parts are still to do (the tiny teacher is fast).
ENCODE = textwrap.dedent("""
    import sys, time
    from common.datasets import load_beir
    from student_trainer.teacher_index import teacher_doc_embeddings
    from teacher_service.client import TeacherClient

    class Unhurried(TeacherClient):
        def submit_encode(self, *args, **kwargs):
            time.sleep(0.1)
            return super().submit_encode(*args, **kwargs)

    url, data, cache = sys.argv[1:]
    client = Unhurried.from_url(url, teacher="tiny")
    teacher_doc_embeddings(client, load_beir(data), cache=__import__("pathlib").Path(cache), part_size=16, chunk_size=8,
                           show_progress=False)
""")


def replica_requests() -> int:
    from ray import serve

    return serve.get_deployment_handle("teacher-tiny", "tightdistill").stats.remote().result()["requests"]


def test_a_killed_encoding_resumes_with_only_the_missing_and_corrupt_parts(teacher_app, mini_beir, tmp_path):
    dataset = load_beir(mini_beir)
    n_parts = -(-len(dataset.doc_ids) // PART)
    cache = tmp_path / "cache"
    proc = subprocess.Popen([sys.executable, "-c", ENCODE, teacher_app["url"], str(mini_beir), str(cache)], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    deadline = time.monotonic() + 120
    manifest = None
    while time.monotonic() < deadline and proc.poll() is None:
        found = list(cache.glob(f"*.parts/{MANIFEST}"))
        if found and len(json.loads(found[0].read_text())["parts"]) >= 3:
            manifest = found[0]
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert manifest is not None, "no parts were written before the deadline (or the encoding finished first)"
    done = {int(i): e for i, e in json.loads(manifest.read_text())["parts"].items()}
    assert 3 <= len(done) < n_parts, f"{len(done)} of {n_parts} parts: the kill came too late to test a resume"
    # A part damaged on disk (a bad sector, a copy cut short) fails its checksum: encoded again.
    corrupt = min(done)
    part_file = manifest.parent / done[corrupt]["file"]
    part_file.write_bytes(part_file.read_bytes()[:-7] + b"garbage")

    client = TeacherClient.from_url(teacher_app["url"], teacher="tiny")
    before = replica_requests()
    index = teacher_doc_embeddings(client, dataset, cache=cache, part_size=PART, chunk_size=CHUNK, show_progress=False)
    redone = [i for i in range(n_parts) if i not in done or i == corrupt]
    sizes = [min(PART, len(dataset.doc_ids) - i * PART) for i in redone]
    assert replica_requests() - before == sum(-(-s // CHUNK) for s in sizes)
    assert index.path is not None and index.path.is_file() and not parts_dir(index.path).exists()
    assert index.ids == dataset.doc_ids
    np.testing.assert_allclose(index.emb, client.encode_many(dataset.doc_texts, role="document"), rtol=1e-5, atol=1e-6)
    # The assembled file is the cache: a third call asks the teacher nothing.
    before = replica_requests()
    again = teacher_doc_embeddings(client, dataset, cache=cache, part_size=PART, chunk_size=CHUNK, show_progress=False)
    assert replica_requests() == before and again.path == index.path
