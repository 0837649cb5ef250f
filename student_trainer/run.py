"""A distillation run, end to end: teacher service -> teacher index -> examples -> Ray Train ->
exported student -> evaluation of teacher and student.

Entry point for ``ray job submit``::

    ray job submit --working-dir . -- python -m student_trainer.run --config deploy/default.yaml

and the function behind ``tightdistill train``. The run finds the teacher app already deployed on
the cluster, or deploys it from ``teacher.serve_config``.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import ray
import ray.train
from ray import serve
from tqdm.auto import tqdm
from ray.train import CheckpointConfig, FailureConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from common.config import ConfigError
from common.datasets import BeirDataset, load_beir, write_parquet
from common.agreement import query_cosines
from common.evaluation import STUDENT_RETRIEVAL, eval_query_ids, evaluate_encoder, evaluate_pair_scorer, rerank_candidates
from common.metrics import MetricReport
from common.provenance import code_commit
from common.ray_runtime import init_ray
from student_trainer.agreement_monitor import run_agreement
from student_trainer.config import RunConfig, TeacherRef, load_run_config
from student_trainer.examples import build_examples, label_free_examples, split_queries
from student_trainer.export import ExportedStudent, export_sentence_transformers
from student_trainer.extra_queries import build_extra_queries, corpus_pseudo_queries
from student_trainer.held_out import without_held_out
from student_trainer.negative_refresh import TrainingQueries
from student_trainer.progress import ProgressBar
from student_trainer.projection_fit import fit_projection, needs_fit
from student_trainer.query_length import resolve_query_length
from student_trainer.report import write_report
from student_trainer.students import DualEncoderStudent
from student_trainer.teacher_index import DocEmbeddings, teacher_doc_embeddings
from student_trainer.teacher_signals import TeacherUnavailable
from student_trainer.train_loop import (
    CheckpointError,
    build_student,
    load_checkpoint,
    total_training_steps,
    train_loop_per_worker,
)
from teacher_service.client import TeacherClient
from teacher_service.errors import TeacherServiceError


@dataclass
class RunResult:
    run_dir: Path
    student_dir: Path
    metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)


def connect_teacher(ref: TeacherRef) -> TeacherClient:
    """A client for the configured teacher; deploys the teacher app only if Serve has no app of that name.

    The app may be shared by other runs: deploying this job's ``serve_config`` over it would
    replace the teachers they are using. So only an app that Serve does not list is deployed; a
    listed app that does not answer (a replica restarting, the controller busy) is asked again
    with backoff for up to ``ref.timeout_s`` and then reported as :class:`TeacherUnavailable`.
    """
    if ref.url:
        client = TeacherClient.from_url(ref.url, teacher=ref.teacher)
        client.describe()
        return client
    client = TeacherClient.from_serve(ref.app_name, teacher=ref.teacher)
    if ref.app_name not in serve.status().applications:  # Serve's own word, not a failed call's guess
        if ref.serve_config is None:
            raise ConfigError(f"no teacher app '{ref.app_name}' is running and teacher.serve_config is not set")
        from teacher_service.app import ServeFile, deploy

        serve_file = ServeFile(ref.serve_config)
        deploy(serve_file.config, ref.app_name, serve_file.route_prefix, serve_file.http_options)
    deadline = time.monotonic() + ref.timeout_s
    attempt, delay = 0, 0.5
    while True:
        attempt += 1
        try:
            client.teachers()
            break
        except Exception as exc:  # noqa: BLE001 - the app exists: whatever failed, a redeploy is not the cure
            error = exc
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            app = serve.status().applications.get(ref.app_name)
            state = f"{app.status}{': ' + app.message if app.message else ''}" if app else "no longer listed"
            raise TeacherUnavailable(
                f"teacher app '{ref.app_name}' (Serve status {state}) did not answer for {ref.timeout_s:.0f}s "
                f"({attempt} tries; last error: {type(error).__name__}: {(str(error).splitlines() or [''])[0][:200]}); "
                "it was not redeployed, as other runs may be using it: check `serve status`, or redeploy it yourself"
            ) from error
        logging.getLogger(__name__).warning("teacher app '%s' did not answer (%s); asking again in %.1fs",
                                            ref.app_name, type(error).__name__, min(delay, remaining))
        time.sleep(min(delay, remaining))
        delay = min(2 * delay, 5.0)
    client.describe()  # fails clearly if the teacher name is not in the app
    for member in ref.members()[1:]:
        client.describe(member.name)  # every ensemble member too
    return client


def describe_ensemble(run: RunConfig, client: TeacherClient, dataset: BeirDataset,
                      show_progress: bool) -> list[dict[str, Any]]:
    """Each ensemble member's description, and for the dual-encoders after the primary one a Ray
    reference to their own document index (cached like the primary's), so their in-batch scores
    need only query embeddings from the service. Empty for a single teacher."""
    members = run.teacher.members()
    if len(members) == 1:
        return []
    out = []
    for i, m in enumerate(members):
        info = client.describe(m.name)
        entry: dict[str, Any] = {"name": m.name, "info": info, "index_ref": None}
        if i > 0 and info["kind"] == "dual_encoder":
            index = teacher_doc_embeddings(client, dataset, teacher=m.name, show_progress=show_progress)
            entry["index_ref"] = ray.put((index.ids, index.emb))
        out.append(entry)
    return out


def signal_provenance(run: RunConfig, described: list[dict[str, Any]], primary: dict[str, Any],
                      asymmetric: bool) -> dict[str, Any]:
    """Which teacher produced which training signal, for ``metrics.json``."""
    infos = {d["name"]: d for d in described}
    teachers = []
    for i, m in enumerate(run.teacher.members()):
        info = infos.get(m.name, {}).get("info", primary)
        local = info["kind"] == "dual_encoder" and (i == 0 or infos.get(m.name, {}).get("index_ref") is not None)
        teachers.append({"name": m.name, "kind": info["kind"], "checkpoint": info["checkpoint"], "weight": m.weight,
                         "calibration": m.calibration, "temperature": m.temperature,
                         "scores_from": "query embeddings (service) x own document index" if local else "service (score matrix)"})
    first = run.teacher.members()[0].name
    return {
        "teachers": teachers,
        "scores": "weighted mean of the calibrated scores of " + ", ".join(f"{t['name']} ({t['weight']:g})" for t in teachers),
        "query_embeddings": first,
        "document_embeddings": f"{first} ({'inherited index' if asymmetric else 'service'})",
        "negatives": ("student-mined, refreshed every " f"{run.data.refresh.every} steps, checked by the teacher"
                      if run.data.refresh.every else f"{run.data.negatives}, fixed before training"),
    }


def refresh_inputs(run: RunConfig, examples: Path, dataset: BeirDataset) -> Any:
    """What a worker needs to refresh negatives: training queries with their positives, corpus texts."""
    if run.data.refresh.every is None:
        return None
    from dataclasses import asdict

    table = pq.read_table(examples, columns=["query", "positive_id"])
    data = TrainingQueries.from_examples(table.column("query").to_pylist(), table.column("positive_id").to_pylist(),
                                         dataset.doc_ids, dataset.doc_texts)
    return ray.put(asdict(data))


def warm_candidate_scorers(run: RunConfig, client: TeacherClient, dataset: BeirDataset, described: list[dict[str, Any]],
                           show_progress: bool) -> int:
    """Have each late-interaction member of the ensemble encode the corpus once before training, so
    its replicas' signal caches hold every document's token embeddings and scoring a step's
    candidates costs MaxSim only (the DE's index, encoded before training too, is the same
    trade). Only when ``candidate_kl`` asks the ensemble for its candidates' scores; a
    cross-encoder has nothing to cache (each pair is one joint pass). Returns the documents sent."""
    if not candidate_corpus_needed(run):
        return 0
    sent = 0
    for entry in described:
        if entry["info"]["kind"] == "colbert":
            # One short query against every document: the replica encodes (and caches) each document.
            client.score_many(["warm-up"] * len(dataset.doc_texts), dataset.doc_texts, teacher=entry["name"],
                              progress=f"{entry['name']}: encoding the corpus for candidate scoring" if show_progress else None)
            sent += len(dataset.doc_texts)
    return sent


def candidate_corpus_needed(run: RunConfig) -> bool:
    return "candidate_kl" in run.train.losses and len(run.teacher.teachers or []) >= 2


def candidate_corpus(run: RunConfig, dataset: BeirDataset) -> Any:
    """The corpus texts, for a worker whose ensemble scores ``candidate_kl``'s candidates through the
    service (a single dual-encoder scores them from the index it holds: no texts needed)."""
    return ray.put((dataset.doc_ids, dataset.doc_texts)) if candidate_corpus_needed(run) else None


def fitted_projection(run: RunConfig, info: dict[str, Any], client: TeacherClient, texts: list[str]) -> dict[str, Any] | None:
    """The least-squares start of a projection between different widths (None where the student
    starts from the identity or asks for torch's initialisation); see :mod:`student_trainer.projection_fit`."""
    if not needs_fit(run, info.get("dim")):
        return None
    student = build_student(run, info)
    fitted = fit_projection(run, student, client, texts)
    print(f"projection {student.query_encoder.dim} -> {student.teacher_dim} fitted on {fitted['texts']} queries: "
          f"mean cosine to the teacher {fitted['cosine_before']:.3f} -> {fitted['cosine_after']:.3f}")
    return fitted


def eval_queries(run: RunConfig, dataset: BeirDataset) -> tuple[str | None, list[str]]:
    """``(qrels split, query ids)`` the run is evaluated on: the eval split's queries, or with
    ``eval_split: dev`` the training queries held out as the dev split (judged by train qrels);
    ``(None, [])`` for a run without an eval split (a corpus with no judged queries)."""
    if run.data.eval_split is None:
        return None, []
    if run.data.eval_split == "dev":
        return run.data.train_split, split_queries(dataset, run.data, run.train.seed).dev  # type: ignore[return-value]
    return run.data.eval_split, eval_query_ids(dataset, run.data.eval_split, run.data.max_eval_queries)


def agreement_inputs(run: RunConfig, dataset: BeirDataset, client: TeacherClient) -> Any:
    """The held-out queries measured during training (dev queries, else the eval split's), their
    teacher embeddings (fetched once: the teacher is frozen), and corpus texts for symmetric students."""
    if run.eval.agreement_every is None:
        return None
    dev_file = run.run_dir / "data" / "dev_queries.json"
    ids = json.loads(dev_file.read_text()) if dev_file.is_file() else []
    ids = ids or eval_queries(run, dataset)[1]
    rng = np.random.default_rng(run.train.seed)
    ids = [ids[i] for i in sorted(rng.choice(len(ids), min(run.eval.agreement_queries, len(ids)), replace=False))]
    texts = [dataset.query_text[q] for q in ids]
    teacher_q = client.encode_many(texts, role="query")
    corpus = None if run.student.asymmetric else dict(zip(dataset.doc_ids, dataset.doc_texts))
    return ray.put((texts, teacher_q, corpus))


def has_document_index(info: dict[str, Any]) -> bool:
    """Whether the teacher embeds a text on its own, i.e. has a single-vector document index the run
    can retrieve from, mine negatives with and let an asymmetric student inherit: dual-encoders do;
    cross-encoders (pairs only) and ColBERT (MaxSim over token vectors) score pairs instead."""
    return info["kind"] == "dual_encoder"


def check_teacher_fits(run: RunConfig, info: dict[str, Any]) -> None:
    """Refuse, before any work, a config that needs a document index from a teacher without one."""
    if has_document_index(info):
        return
    what = f"teacher '{info['name']}' is a {info['kind']}, which scores (query, document) pairs and has no single-vector document index"
    problems = []
    if run.student.asymmetric:
        problems.append("an asymmetric student inherits the teacher's document embeddings: set student.asymmetric: false")
    if run.data.train_split is None:
        problems.append("label-free runs label pseudo-queries with the teacher's own ranking: set data.train_split")
    elif run.data.negatives == "mined" and run.data.num_negatives:
        problems.append("data.negatives 'mined' draws from the teacher's own ranking of the corpus: use 'bm25' or 'random'")
    if run.eval.mode == "retrieval" and run.eval.evaluate_teacher:
        problems.append("eval.mode 'retrieval' would need it to retrieve from the corpus: use 'rerank' (or 'auto')")
    if run.eval.agreement_every is not None:
        problems.append("agreement metrics compare single-vector rankings of the corpus: unset eval.agreement_every")
    if problems:
        raise ConfigError(f"{what}; " + "; ".join(problems))


def check_losses_fit(run: RunConfig, info: dict[str, Any]) -> None:
    """Refuse, before any work, a loss the teacher or the student cannot feed."""
    if "candidate_kl" in run.train.losses and not (run.student.asymmetric and has_document_index(info)):
        raise ConfigError("train.losses.candidate_kl ranks the teacher's own top documents with the student's query "
                          "embedding: it needs an asymmetric student (student.asymmetric: true) and a dual-encoder "
                          f"teacher with a document index; the run has a {'asymmetric' if run.student.asymmetric else 'symmetric'} "
                          f"student and teacher '{info['name']}' ({info['kind']})")
    if "joint_embedding" not in run.train.losses:
        return
    if "joint_embeddings" not in info["signals"]:
        raise ConfigError(f"train.losses.joint_embedding matches a [CLS]-pooled cross-encoder's joint embeddings; teacher "
                          f"'{info['name']}' ({info['kind']}) gives {', '.join(info['signals'])}")
    if run.student.asymmetric:
        raise ConfigError("train.losses.joint_embedding maps the student's query and document embeddings of a pair "
                          "into the joint space: it needs a symmetric student (student.asymmetric: false)")


def first_stage_rankings(run: RunConfig, dataset: BeirDataset, query_ids: list[str], client: TeacherClient,
                         doc_index: DocEmbeddings | None) -> list[list[str]] | None:
    """Each training query's ranking that hard negatives are drawn from: the teacher's own
    (``data.negatives: mined``) or BM25's (``bm25``); None for random negatives."""
    if not run.data.num_negatives or run.data.negatives == "random":
        return None
    texts = [dataset.query_text[q] for q in query_ids]
    if run.data.negatives == "bm25":
        from common.hybrid_retrieval import BM25Index

        return [[d for d, _ in hits] for hits in BM25Index.from_dataset(dataset).search(texts, run.data.mine_top_k)]
    assert doc_index is not None  # check_teacher_fits refused 'mined' without an index
    return doc_index.index.search(client.encode_many(texts, role="query"), run.data.mine_top_k)[1]


def prepare_examples(run: RunConfig, dataset: BeirDataset, client: TeacherClient,
                     doc_index: DocEmbeddings | None, held_out: Sequence[str] = ()) -> tuple[Path, int]:
    """Training examples as parquet: labelled queries with mined negatives, or, with no
    ``data.train_split``, pseudo-queries from the corpus labelled by the teacher's ranking, less
    any that repeat ``held_out`` texts (pseudo-queries kept back to measure the student on)."""
    split = split_queries(dataset, run.data, run.train.seed)
    if run.data.train_split is None:
        queries = corpus_pseudo_queries(dataset, run.data.pseudo_queries, run.train.seed,
                                        per_document=run.data.pseudo_queries_per_document,
                                        question_share=run.data.pseudo_question_share)
        if run.data.query_log is not None:  # real queries without their labels: the teacher labels them too
            logged = [dataset.query_text[q] for q in dataset.split_query_ids(run.data.query_log)]
            queries = list(dict.fromkeys(logged + queries))
        if held_out:
            queries = without_held_out(queries, held_out)
        q_emb = client.encode_many(queries, role="query", progress="teacher: embedding pseudo-queries")
        table = label_free_examples(dataset, queries, run.data, doc_index, q_emb, run.train.seed)
    else:
        if not split.train:
            raise ConfigError(f"dataset {dataset.name}: no training queries in split '{run.data.train_split}'")
        ranked = first_stage_rankings(run, dataset, split.train, client, doc_index)
        table = build_examples(dataset, split.train, run.data, ranked, run.train.seed)
    path = write_parquet(table, run.run_dir / "data" / "train.parquet")
    (run.run_dir / "data" / "dev_queries.json").write_text(json.dumps(split.dev))
    return path, table.num_rows


def training_queries(examples: Path) -> list[str]:
    """The distinct training queries of the examples file (what perturbed / generated extra queries start from)."""
    return list(dict.fromkeys(pq.read_table(examples, columns=["query"]).column("query").to_pylist()))


def run_extra_queries(run: RunConfig, dataset: BeirDataset, train_queries: list[str], show_progress: bool = False) -> list[str]:
    """The run's extra queries for embedding matching (none unless ``data.extra_query_ratio`` > 0)."""
    if run.data.extra_query_ratio <= 0:
        return []
    data = run.data
    return build_extra_queries(data.extra_queries, dataset, train_queries, data.extra_query_pool, data.generated_per_query,
                               run.train.seed, data.generator, data.generator_noise, show_progress,
                               data.pseudo_queries_per_document, data.pseudo_question_share)


def user_facing_training_error(error: BaseException) -> BaseException:
    """The error a user can act on, out of Ray Train's wrappers.

    Ray reports a failed worker as ``WorkerGroupError`` (its ``worker_failures`` hold the workers'
    exceptions) and a run directory it cannot resume as ``CheckpointManagerInitializationError``;
    the ``tightdistill`` command line prints a :class:`CheckpointError`, a teacher error or
    :class:`TeacherUnavailable` as one line, so those are raised as themselves. Anything else is
    returned unchanged.
    """
    from ray.train.v2._internal.exceptions import CheckpointManagerInitializationError

    seen: set[int] = set()
    stack: list[BaseException] = [error]
    while stack:
        exc = stack.pop()
        if id(exc) in seen:
            continue
        seen.add(id(exc))
        if isinstance(exc, (CheckpointError, TeacherUnavailable, TeacherServiceError)):
            return exc
        if isinstance(exc, CheckpointManagerInitializationError):
            return CheckpointError(f"cannot resume from the run's checkpoints: {' '.join(str(exc).split())}")
        # Raised in the Train controller's constructor, it reaches the driver only as the text of
        # an ActorDiedError (Ray keeps the creation task's error as a message, not an object).
        found = re.search(rf"{CheckpointManagerInitializationError.__name__}: (.+)", str(exc))
        if found:
            return CheckpointError(f"cannot resume from the run's checkpoints: {found.group(1).strip()}")
        stack.extend(getattr(exc, "worker_failures", {}).values())
        stack.extend(e for e in (getattr(exc, "controller_failure", None), exc.__cause__, exc.__context__) if e is not None)
    return error


def raise_user_facing(error: BaseException) -> None:
    """Raise the user-facing error found inside ``error``, chained to it; return if there is none."""
    found = user_facing_training_error(error)
    if found is not error:
        raise found from error


def train_student(run: RunConfig, info: dict[str, Any], examples: Path, num_examples: int, doc_index: DocEmbeddings | None,
                  extra_queries: list[str], show_progress: bool,
                  hooks: dict[str, Any] | None = None) -> tuple[Any, list[dict[str, Any]]]:
    """Train on Ray Train; ``hooks`` holds the optional inputs of the loop's hooks: ``ensemble``
    (:func:`describe_ensemble`), ``refresh_ref`` (:func:`refresh_inputs`), ``agreement_ref``
    (:func:`agreement_inputs`), ``corpus_ref`` (:func:`candidate_corpus`)."""
    total_steps = total_training_steps(run, num_examples)
    with ProgressBar(total_steps, desc="training student", enabled=show_progress) as bar:
        loop_config = {
            "run": run.model_dump(mode="json"),
            "teacher_info": info,
            "total_steps": total_steps,
            "doc_index_ref": ray.put((doc_index.ids, doc_index.emb)) if doc_index is not None else None,
            "extra_queries_ref": ray.put(extra_queries) if extra_queries else None,
            "examples_ref": ray.put(pq.read_table(examples)),  # each worker takes its shard (train_loop.shard_rows)
            "progress_board": bar.board,
            **(hooks or {}),
        }
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config=loop_config,
            scaling_config=ScalingConfig(num_workers=run.train.num_workers, use_gpu=run.train.use_gpu,
                                         resources_per_worker={"CPU": run.train.cpus_per_worker}),
            run_config=ray.train.RunConfig(
                name="train", storage_path=str(run.run_dir / "ray"),
                checkpoint_config=CheckpointConfig(num_to_keep=run.train.keep_checkpoints),
                failure_config=FailureConfig(max_failures=run.train.max_failures),
            ),
        )
        try:
            result = trainer.fit()
        except Exception as exc:  # noqa: BLE001 - Ray wraps a worker's error in its own types
            raise_user_facing(exc)
            raise
    if result.error:
        raise_user_facing(result.error)
        raise result.error
    history = (result.return_value or {}).get("history", []) if hasattr(result, "return_value") else []
    return result.checkpoint, history


def evaluate(run: RunConfig, dataset: BeirDataset, doc_index: DocEmbeddings, encoders: dict[str, Any],
             candidates: dict[str, list[str]] | None = None) -> tuple[dict[str, MetricReport], dict[str, np.ndarray]]:
    """Each encoder's metrics on the eval split (full retrieval from ``doc_index``, or re-ranking
    ``candidates`` with its embeddings), and the query embeddings it produced."""
    reports, embeddings = {}, {}
    split, query_ids = eval_queries(run, dataset)
    for name, encode in tqdm(encoders.items(), desc="evaluating", unit="model", disable=len(encoders) < 2):
        def capture(texts: list[str], encode=encode, name=name) -> np.ndarray:
            embeddings[name] = np.asarray(encode(texts), dtype=np.float32)
            return embeddings[name]

        ev = evaluate_encoder(capture, doc_index.index, dataset, split, run.eval.k_values, query_ids=query_ids,
                              candidates=candidates, ignore_identical_ids=run.eval.ignore_identical_ids)
        reports[name] = ev.report
    return reports, embeddings


@dataclass
class RunEvaluation:
    reports: dict[str, MetricReport]
    query_embeddings: dict[str, np.ndarray]
    student_index: DocEmbeddings | None  # a symmetric student's own index of the corpus
    description: dict[str, Any]


def evaluate_run_models(run: RunConfig, dataset: BeirDataset, client: TeacherClient, info: dict[str, Any],
                        doc_index: DocEmbeddings | None, student: DualEncoderStudent, exported: ExportedStudent,
                        show_progress: bool) -> RunEvaluation:
    """Teacher and student on the eval split, the same way for both (``eval.mode``).

    Full retrieval: the teacher and an asymmetric student search the teacher's document index, a
    symmetric student its own. Re-ranking: both re-rank the same candidate lists, a dual-encoder
    teacher and the student with their embeddings, any other teacher by scoring every (query,
    candidate) pair through the service. A symmetric student is also scored by full retrieval
    (``STUDENT_RETRIEVAL``, from the query embeddings it already computed): replacing a re-ranker with a first-stage retriever is why one
    distills a cross-encoder into a dual-encoder.
    """
    mode = run.eval.mode if run.eval.mode != "auto" else ("retrieval" if has_document_index(info) else "rerank")
    split, query_ids = eval_queries(run, dataset)
    candidates, description = None, {"mode": mode, "split": split, "queries": len(query_ids)}
    if mode == "rerank":
        candidates, description["candidates"] = rerank_candidates(dataset, split, query_ids, run.eval.rerank_depth)
    reports: dict[str, MetricReport] = {}
    query_emb: dict[str, np.ndarray] = {}
    encoders: dict[str, Any] = {}
    if run.eval.evaluate_teacher and doc_index is not None:
        encoders["teacher"] = lambda texts: client.encode_many(texts, role="query")
    elif run.eval.evaluate_teacher:
        def score_pairs(queries: list[str], documents: list[str]) -> np.ndarray:
            return client.score_many(queries, documents, progress=f"teacher {info['name']}: re-ranking" if show_progress else None)

        reports["teacher"] = evaluate_pair_scorer(score_pairs, dataset, split, candidates, run.eval.k_values, query_ids,
                                                  ignore_identical_ids=run.eval.ignore_identical_ids).report
    if student.asymmetric:
        encoders["student"] = exported.encode_queries
        if run.eval.evaluate_untrained:
            untrained = DualEncoderStudent(run.student, teacher_dim=info["dim"])
            encoders["untrained student"] = lambda texts: untrained.encode_queries(texts).numpy()
    if encoders:
        found, emb = evaluate(run, dataset, doc_index, encoders, candidates)
        reports.update(found)
        query_emb.update(emb)
    own = None
    if not student.asymmetric:  # a symmetric student searches its own index of the corpus
        own = DocEmbeddings(list(dataset.doc_ids), exported.encode_documents(dataset.doc_texts, show_progress=show_progress))
        found, emb = evaluate(run, dataset, own, {"student": exported.encode_queries}, candidates)
        reports.update(found)
        query_emb.update(emb)
        if candidates is not None:
            encoded = emb["student"]
            reports[STUDENT_RETRIEVAL] = evaluate(run, dataset, own, {"student": lambda texts: encoded})[0]["student"]
    return RunEvaluation(reports, query_emb, own, description)


def cosines(a: np.ndarray, b: np.ndarray) -> list[float]:
    return query_cosines(a, b).round(5).tolist()


def query_latencies(info: dict[str, Any], student: ExportedStudent, dataset: BeirDataset, run: RunConfig,
                    n: int = 30, fallback: Sequence[str] = ()) -> dict[str, float]:
    """Median milliseconds to embed one query, in this process: the student, and a dual-encoder
    teacher loaded the same way (other teacher kinds have no single-text query encoder); timed on
    evaluation queries, or on ``fallback`` texts (the training queries) in a run without them."""
    queries = [dataset.query_text[q] for q in eval_queries(run, dataset)[1][:n]] or list(fallback[:n])
    encoders = {"student": student.encode_queries}
    if info["kind"] == "dual_encoder":
        from common.text_encoder import TextEncoder

        encoders["teacher"] = TextEncoder.from_pretrained(info["checkpoint"], max_length=info["max_query_length"]).eval().encode
    return median_latencies_ms(encoders, queries)


def median_latencies_ms(encoders: dict[str, Any], texts: Sequence[str]) -> dict[str, float]:
    """Median milliseconds each encoder takes to embed one text (batch 1) over ``texts``, after one
    warm-up call each. The encoders take turns on every text, so a burst of load from another
    process slows all of them alike instead of whichever happened to be timed then (one run measured
    the teacher 30x slower that way), and torch runs on one intra-op thread: on a shared 2-core
    machine two threads per batch-1 forward measured 4-190 ms for the same student, one stays put
    (and a server runs one query encoder per core anyway)."""
    import torch

    times: dict[str, list[float]] = {name: [] for name in encoders}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for encode in encoders.values():
            encode(list(texts[:1]))
        for text in texts:
            for name, encode in encoders.items():
                start = time.perf_counter()
                encode([text])
                times[name].append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    return {name: 1000 * float(np.median(t)) for name, t in times.items()}


def run_distillation(run: RunConfig, address: str | None = None, show_progress: bool = True,
                     held_out: Sequence[str] = ()) -> RunResult:
    """Run ``run`` on the connected (or an embedded local) Ray cluster and write its folder;
    a label-free run trains on none of the ``held_out`` texts (see :func:`prepare_examples`)."""
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    run.run_dir.mkdir(parents=True, exist_ok=True)
    (run.run_dir / "config.json").write_text(run.model_dump_json(indent=2))
    commit = code_commit()  # the code the run starts with (the tree may change while it trains)
    dataset = load_beir(run.data.dataset)  # data errors before Ray starts
    init_ray(address)
    client = connect_teacher(run.teacher)
    info = client.describe()
    check_teacher_fits(run, info)
    check_losses_fit(run, info)
    timings["setup_s"] = time.perf_counter() - t0

    doc_index = None
    if has_document_index(info):
        t = time.perf_counter()
        doc_index = teacher_doc_embeddings(client, dataset, show_progress=show_progress)
        timings["teacher_index_s"] = time.perf_counter() - t

    t = time.perf_counter()
    examples, num_examples = prepare_examples(run, dataset, client, doc_index, held_out)
    train_queries = training_queries(examples)
    extra = run_extra_queries(run, dataset, train_queries, show_progress)
    timings["examples_s"] = time.perf_counter() - t

    query_length = resolve_query_length(run.student.model, run.student.max_query_length, info["max_query_length"],
                                        train_queries + extra,
                                        [dataset.query_text[q] for q in eval_queries(run, dataset)[1]])
    run = run.model_copy(update={"student": run.student.model_copy(update={"max_query_length": query_length.limit})})
    if query_length.eval_truncated:
        print(f"queries cut at {query_length.limit} tokens (the teacher reads {query_length.teacher_limit}): "
              f"{query_length.eval_truncated} of {query_length.eval_queries} evaluation queries are longer")

    t = time.perf_counter()
    described = describe_ensemble(run, client, dataset, show_progress)
    t_warm = time.perf_counter()
    if warm_candidate_scorers(run, client, dataset, described, show_progress):
        timings["candidate_scorers_s"] = time.perf_counter() - t_warm
    projection = fitted_projection(run, info, client, train_queries + extra)
    hooks = {"ensemble": described, "refresh_ref": refresh_inputs(run, examples, dataset),
             "corpus_ref": candidate_corpus(run, dataset),
             "agreement_ref": agreement_inputs(run, dataset, client),
             "projection_ref": ray.put({k: projection[k] for k in ("w", "b")}) if projection else None}
    if any(hooks.values()):
        timings["hooks_s"] = time.perf_counter() - t

    t = time.perf_counter()
    checkpoint, history = train_student(run, info, examples, num_examples, doc_index, extra, show_progress, hooks)
    timings["train_s"] = time.perf_counter() - t

    student = build_student(run, info)
    state = load_checkpoint(checkpoint, student)
    history = history or state.get("history", [])
    student_dir = export_sentence_transformers(student, run.run_dir / "student", {
        "teacher": {"name": info["name"], "kind": info["kind"], "checkpoint": info["checkpoint"]},
        "teacher_info": info, "doc_index": str(doc_index.path) if doc_index is not None and doc_index.path else None,
        "run": run.name,
    })

    t = time.perf_counter()
    exported = ExportedStudent(student_dir)
    if run.data.eval_split is None:  # no judged queries: nothing to score here (adapt measures held-out pseudo-queries)
        evaluation = RunEvaluation({}, {}, None, {"mode": None, "split": None, "queries": 0})
    else:
        evaluation = evaluate_run_models(run, dataset, client, info, doc_index, student, exported, show_progress)
    reports, query_emb = evaluation.reports, evaluation.query_embeddings
    agreement = None
    if "teacher" in query_emb:
        own = evaluation.student_index
        agreement = run_agreement(run, info["similarity"], query_emb["teacher"],
                                  doc_index.emb if own is None else doc_index.lookup(own.ids), query_emb["student"],
                                  None if own is None else own.emb)
    timings["eval_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t0

    metrics = build_metrics(run, info, reports, student, timings, state)
    metrics["signals"] = signal_provenance(run, described, info, student.asymmetric)
    metrics["eval"] = evaluation.description
    metrics["commit"] = commit
    if agreement is not None:
        metrics["agreement"] = agreement.aggregate
        (run.run_dir / "agreement.json").write_text(json.dumps(_finite(agreement.per_query)))
    metrics["query_latency_ms"] = query_latencies(info, exported, dataset, run, fallback=train_queries)
    metrics["extra_queries"] = {"source": run.data.extra_queries, "pool": len(extra)}
    metrics["query_length"] = query_length.as_dict()
    if projection:
        metrics["projection_fit"] = {k: v for k, v in projection.items() if k not in ("w", "b")}
    (run.run_dir / "metrics.json").write_text(json.dumps(_finite(metrics), indent=2))
    (run.run_dir / "history.json").write_text(json.dumps(_finite(history), indent=2))
    if "teacher" in query_emb:
        (run.run_dir / "query_cosine.json").write_text(json.dumps(cosines(query_emb["teacher"], query_emb["student"])))
    write_report(run.run_dir)
    return RunResult(run.run_dir, student_dir, metrics, history)


def build_metrics(run: RunConfig, info: dict[str, Any], reports: dict[str, MetricReport], student: DualEncoderStudent,
                  timings: dict[str, float], state: dict[str, Any]) -> dict[str, Any]:
    counts = student.parameter_counts()
    out: dict[str, Any] = {
        "run": run.name, "dataset": run.data.dataset, "split": run.data.eval_split,
        "teacher": {"name": info["name"], "kind": info["kind"], "checkpoint": info["checkpoint"]},
        "metrics": {name: r.aggregate for name, r in reports.items()},
        "num_eval_queries": next(iter(reports.values())).num_queries if reports else 0,
        "parameters": {"teacher": info.get("parameters"), "student": counts["query_encoder"] + counts["projection"]},
        "student_parameters": counts,
        "steps": state.get("global_step"),
        "timings": timings,
    }
    if "teacher" in reports:
        teacher = reports["teacher"].aggregate
        out["retained"] = {m: (v / teacher[m] if teacher[m] else None) for m, v in reports["student"].aggregate.items()}
    return out


def _finite(value: Any) -> Any:
    """``value`` with NaN floats as None (JSON has no NaN; Kendall tau is undefined for constant scores)."""
    if isinstance(value, float):
        return None if value != value else value
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def main(argv: list[str] | None = None) -> int:
    """``python -m student_trainer.run --config FILE`` (the ``ray job submit`` entry point)."""
    ap = argparse.ArgumentParser(description="Run a tightdistill distillation job from a config file.")
    ap.add_argument("--config", type=Path, required=True)
    ap.add_argument("--address", default=None, help="Ray cluster address (default: the job's cluster, else a local Ray)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    run = load_run_config(args.config)
    result = run_distillation(run, address=args.address or _job_address(), show_progress=not args.no_progress)
    print(json.dumps(result.metrics, indent=2))
    return 0


def _job_address() -> str | None:
    import os

    # Inside `ray job submit`, RAY_ADDRESS points at the cluster the job belongs to.
    return os.environ.get("RAY_ADDRESS")


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["RunResult", "connect_teacher", "run_distillation"]
