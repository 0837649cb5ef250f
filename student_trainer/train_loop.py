"""The per-worker training loop run by Ray Train's ``TorchTrainer`` (DDP across workers).

Each worker takes its shard of the examples (:func:`shard_rows`), asks the teacher service for each batch's
signals online, and sends the request for batch ``t+1`` before it computes step ``t``, so teacher
and student work at the same time. Checkpoints (student, projection, optimizer, scheduler, step)
every ``checkpoint_every`` steps; metrics reported every ``report_every`` steps. A restarted
worker resumes from the last checkpoint and skips exactly the batches already trained on.

Optional hooks, off by default: student-mined negatives refreshed every ``data.refresh.every``
steps (:mod:`student_trainer.negative_refresh`), teacher-student agreement on held-out queries
every ``eval.agreement_every`` steps (:mod:`student_trainer.agreement_monitor`, rank 0), and, for
teacher ensembles, each member's KL to the student (``teacher_kl/<name>``) in the history.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import ray
import ray.train
import torch
from ray.train import Checkpoint

from common.text_encoder import training_autocast
from student_trainer.agreement_monitor import AgreementMonitor, kl_temperature
from student_trainer.candidates import CandidateBuilder
from student_trainer.config import RunConfig
from student_trainer.errors import CheckpointError
from student_trainer.examples import epoch_batches
from student_trainer.losses import DistillBatch, build_loss, kl_teacher_student
from student_trainer.negative_refresh import NegativeRefresher, TrainingQueries
from student_trainer.projection_fit import apply_projection
from student_trainer.students import DualEncoderStudent
from student_trainer.teacher_index import DocEmbeddings
from student_trainer.teacher_signals import Pending, TeacherMember, TeacherSignals, TeacherSignalSource, TrainBatch, as_tensor
from student_trainer.time_budget import TrainingClock, budget_schedule
from teacher_service.client import TeacherClient

CHECKPOINT_FILES = ("student.pt", "optimizer.pt", "scheduler.pt", "state.json")


def to_train_batch(rows: dict[str, np.ndarray], num_negatives: int, extra: list[str]) -> TrainBatch:
    doc_ids, documents = [], []
    for pos_id, pos, neg_ids, negs in zip(rows["positive_id"], rows["positive"], rows["negative_ids"], rows["negatives"]):
        doc_ids += [str(pos_id), *map(str, neg_ids[:num_negatives])]
        documents += [str(pos), *map(str, negs[:num_negatives])]
    return TrainBatch([str(q) for q in rows["query"]], extra, doc_ids, documents, num_negatives)


def shard_rows(table: pa.Table, rank: int, world_size: int) -> dict[str, np.ndarray]:
    """Worker ``rank``'s examples as columns: every ``world_size``-th row from ``rank`` on, of the
    first ``(n // world_size) * world_size`` rows, so shards are equal and disjoint. The split is
    a function of the table alone: a worker restarted from a checkpoint gets the same rows back,
    which :func:`student_trainer.examples.epoch_batches` needs to skip exactly the batches already
    trained on. The table holds one row per training query (or pseudo-query), small next to the
    models, so each worker reads it from the object store once; Ray Data's streaming split cost a
    coordinator actor and read tasks per run for it (2.5-3 s of each run's start on 2 cores)."""
    usable = (table.num_rows // world_size) * world_size
    part = table.slice(0, usable).take(np.arange(rank, usable, world_size))
    return {name: part.column(name).to_numpy(zero_copy_only=False) for name in part.column_names}


def _f32(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.float()


def build_student(run: RunConfig, teacher_info: dict[str, Any]) -> DualEncoderStudent:
    """The student as trained (and as its checkpoints hold it): with the training-only joint head
    when the run matches a cross-encoder's joint embeddings."""
    joint_dim = teacher_info.get("joint_dim") if "joint_embedding" in run.train.losses else None
    return DualEncoderStudent(run.student, teacher_dim=teacher_info["dim"], joint_dim=joint_dim)


def build_optimizer(student: DualEncoderStudent, run: RunConfig, total_steps: int, clock: TrainingClock | None = None):
    """AdamW and its linear warm-up/decay schedule over ``total_steps``; with a clock that has a
    budget (``train.max_minutes``), over the budget too (:func:`student_trainer.time_budget.budget_schedule`)."""
    cfg = run.train
    groups = [
        {"params": [p for p in student.query_encoder.parameters() if p.requires_grad], "lr": cfg.lr},
        {"params": list(student.projection.parameters()), "lr": cfg.projection_lr or cfg.lr},
        # The joint head (naive joint matching) is a new linear map, like the projection.
        {"params": list(student.joint_head.parameters()) if student.joint_head is not None else [],
         "lr": cfg.projection_lr or cfg.lr},
    ]
    groups = [g for g in groups if g["params"]]
    # The fused kernel (CPU and CUDA) is the same AdamW update in one pass over all parameters; on a
    # CPU torch's default loops over the tensors: 52 against 8 ms per step for a 2-layer student's
    # 15.6M parameters on this project's 2-core CPU, a tenth of a default-run step.
    fused = all(p.device.type in ("cpu", "cuda") for g in groups for p in g["params"])
    optimizer = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay, fused=fused)
    warmup = max(1, int(cfg.warmup_ratio * total_steps))

    def schedule(step: int) -> float:  # linear warm-up, then linear decay to 0
        if clock is not None and clock.budget_s is not None:
            return budget_schedule(step, total_steps, cfg.warmup_ratio, clock)
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def save_checkpoint(path: Path, student: DualEncoderStudent, optimizer, scheduler, state: dict[str, Any]) -> None:
    torch.save(student.state_dict(), path / "student.pt")
    torch.save(optimizer.state_dict(), path / "optimizer.pt")
    torch.save(scheduler.state_dict(), path / "scheduler.pt")
    (path / "state.json").write_text(json.dumps(state))


def load_checkpoint(checkpoint: Checkpoint, student: DualEncoderStudent, optimizer=None, scheduler=None) -> dict[str, Any]:
    """Restore a checkpoint in place; a missing or corrupt file is a :class:`CheckpointError`."""
    with checkpoint.as_directory() as d:
        path = Path(d)
        needed = CHECKPOINT_FILES if optimizer is not None else ("student.pt", "state.json")
        missing = [f for f in needed if not (path / f).is_file()]
        if missing:
            raise CheckpointError(f"checkpoint {checkpoint.path} is incomplete: missing {', '.join(missing)}")
        try:
            student.load_state_dict(torch.load(path / "student.pt", map_location="cpu"))
            if optimizer is not None:
                optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu"))
                scheduler.load_state_dict(torch.load(path / "scheduler.pt", map_location="cpu"))
            return json.loads((path / "state.json").read_text())
        except Exception as exc:  # noqa: BLE001 - a damaged file fails in many ways (unpickling, shapes, JSON)
            raise CheckpointError(f"checkpoint {checkpoint.path} is corrupt ({type(exc).__name__}: {str(exc)[:200]}); "
                                  "delete it to start over, or point the run at an intact one") from None


def with_prefetch(batches: Iterator[TrainBatch], source: TeacherSignalSource, prefetch: bool) -> Iterator[Pending]:
    """Yield batches with their teacher request already sent; with ``prefetch`` the *next*
    batch's request goes out before the current one is handed to the step."""
    if not prefetch:
        for batch in batches:
            yield source.submit(batch)
        return
    pending: Pending | None = None
    for batch in batches:
        upcoming = source.submit(batch)
        if pending is not None:
            yield pending
        pending = upcoming
    if pending is not None:
        yield pending


def train_loop_per_worker(loop_config: dict[str, Any]) -> dict[str, Any]:
    run = RunConfig.model_validate(loop_config["run"])
    cfg = run.train
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    torch.set_num_threads(cfg.torch_threads)
    torch.manual_seed(cfg.seed)  # same initial projection on every worker (DDP also broadcasts)

    teacher_info = loop_config["teacher_info"]
    student = build_student(run, teacher_info)
    if loop_config.get("projection_ref") is not None:  # fitted by the driver; a checkpoint restored below overrides it
        apply_projection(student, ray.get(loop_config["projection_ref"]))
    student.train()
    model = ray.train.torch.prepare_model(student)  # DDP wrapper; `student` stays the plain module
    total_steps = loop_config["total_steps"]
    clock = TrainingClock(cfg.max_minutes * 60 if cfg.max_minutes else None, ray.train.torch.get_device())
    optimizer, scheduler = build_optimizer(student, run, total_steps, clock)
    loss_fn = build_loss(cfg.losses)
    autocast = training_autocast(cfg.precision, ray.train.torch.get_device())

    state = {"global_step": 0, "epoch": 0, "step_in_epoch": 0, "history": []}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        state = load_checkpoint(checkpoint, student, optimizer, scheduler)

    ids, emb = ray.get(loop_config["doc_index_ref"]) if loop_config.get("doc_index_ref") is not None else (None, None)
    doc_index = DocEmbeddings(ids, emb) if ids is not None else None
    extra_pool: list[str] = ray.get(loop_config["extra_queries_ref"]) if loop_config.get("extra_queries_ref") is not None else []
    n_extra = int(round(run.data.extra_query_ratio * cfg.batch_size)) if extra_pool else 0

    client = TeacherClient.from_url(run.teacher.url) if run.teacher.url else TeacherClient.from_serve(run.teacher.app_name)
    source = TeacherSignalSource(client, run.teacher.teacher, teacher_info, doc_index,
                                 want_query_embeddings=bool({"query_embedding", "candidate_kl"} & set(cfg.losses)),
                                 timeout_s=run.teacher.timeout_s,
                                 want_joint_embeddings="joint_embedding" in cfg.losses,
                                 want_document_embeddings="document_embedding" in cfg.losses,
                                 ensemble=ensemble_members(run, teacher_info, loop_config.get("ensemble")))
    refresher = monitor = candidate_builder = None
    if "candidate_kl" in loss_fn.losses:
        c = loss_fn.losses["candidate_kl"]
        corpus = ray.get(loop_config["corpus_ref"]) if loop_config.get("corpus_ref") is not None else None
        candidate_builder = CandidateBuilder(doc_index, source, c.top_k, c.student_candidates,
                                             dict(zip(*corpus)) if corpus is not None else None)
    if run.data.refresh.every is not None:
        refresher = NegativeRefresher(run.data.refresh, TrainingQueries(**ray.get(loop_config["refresh_ref"])), source,
                                      doc_index, cfg.seed, rank, ctx.get_world_size())
    if run.eval.agreement_every is not None and rank == 0:  # DDP replicas are identical: one measures
        queries, teacher_q, texts = ray.get(loop_config["agreement_ref"])
        monitor = AgreementMonitor(run, teacher_info, queries, teacher_q, doc_index, texts)
    kl_tau = kl_temperature(run)
    k = run.data.num_negatives
    labels = DistillBatch.layout_labels(cfg.batch_size, k)
    history: list[dict[str, Any]] = state["history"]
    board = loop_config.get("progress_board")
    window: dict[str, list[float]] = {}

    examples = shard_rows(ray.get(loop_config["examples_ref"]), rank, ctx.get_world_size())

    def batches(epoch: int, skip: int, budget: int) -> Iterator[TrainBatch]:
        """This epoch's batches after the first ``skip``, at most ``budget`` of them (so the
        prefetcher never asks the teacher about a batch that will not be trained on)."""
        for i, rows in enumerate(epoch_batches(examples, cfg.batch_size, cfg.seed, epoch, rank)):
            if i < skip:
                continue  # already trained on before the restart
            if i - skip >= budget:
                return
            rng = np.random.default_rng([cfg.seed, rank, epoch, i])
            extra = [extra_pool[j] for j in rng.choice(len(extra_pool), n_extra, replace=False)] if n_extra else []
            if refresher is not None:  # its own stream: the extra-query draws stay as without refresh
                rows, fresh = refresher.substitute(rows, k, np.random.default_rng([cfg.seed, rank, epoch, i, 1]))
                window.setdefault("refresh/fresh_rows", []).append(fresh / max(1, len(rows["query"])))
            yield to_train_batch(rows, k, extra)

    step = state["global_step"]
    if refresher is not None and step > 0:  # pools are not checkpointed: mine again from the restored student
        window.update({n: [v] for n, v in refresher.refresh(student, step).items()})
    if monitor is not None and step == 0:  # the starting point of the agreement curves
        history.append({"step": 0, "epoch": 0, **monitor.measure(student)})
    latest_agreement: dict[str, float] = {}
    clock.start(state.get("train_elapsed_s", 0.0))  # a resumed run spends only what is left of its budget
    for epoch in range(state["epoch"], cfg.epochs):
        skip = state["step_in_epoch"] if epoch == state["epoch"] else 0
        for i, pending in enumerate(with_prefetch(batches(epoch, skip, total_steps - step), source, cfg.prefetch), start=skip):
            t0 = time.perf_counter()
            signals = source.collect(pending)
            t_teacher = time.perf_counter() - t0
            tb = pending.batch
            doc_emb_t = as_tensor(signals.document_embeddings) if signals.document_embeddings is not None else None
            with autocast:
                out = model(tb.all_queries, len(tb.queries), documents=tb.documents,
                            document_embeddings=doc_emb_t if student.asymmetric else None)
            q_t = signals.query_embeddings
            # The teacher's own top documents for each scored query (found on the worker in the
            # index it already holds), with the student's current picks; ranked by the ensemble.
            candidates = None
            if candidate_builder is not None:
                t_c = time.perf_counter()
                candidates = candidate_builder.build(tb.queries, q_t, out.query_embeddings)
                window.setdefault("candidates/wait_s", []).append(time.perf_counter() - t_c)
                window.setdefault("candidates/student_share", []).append(candidates.student_share)
            batch = DistillBatch(  # losses in float32 whatever precision the forward pass ran in
                student_scores=out.scores.float(), labels=labels,
                teacher_scores=as_tensor(signals.scores),
                student_query_emb=_f32(out.query_embeddings) if q_t is not None else None,
                teacher_query_emb=as_tensor(q_t) if q_t is not None else None,
                student_doc_emb=_f32(out.document_embeddings) if doc_emb_t is not None else None,
                teacher_doc_emb=doc_emb_t if out.document_embeddings is not None else None,
                student_joint_emb=_f32(out.joint_embeddings),
                teacher_joint_emb=as_tensor(signals.joint_embeddings) if signals.joint_embeddings is not None else None,
                candidate_doc_emb=candidates.doc_emb if candidates is not None else None,
                candidate_teacher_scores=candidates.teacher_scores if candidates is not None else None, num_negatives=k, score_scale=student.score_scale,
            )
            loss = loss_fn(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(student.parameters(), cfg.max_grad_norm)
            optimizer.step()
            clock.sync()  # before the scheduler: the next rate follows the time spent (rank 0's, on every worker)
            scheduler.step()
            step += 1
            for name, value in {"loss": loss.item(), **loss_fn.last_terms, "teacher_wait_s": t_teacher,
                                "step_s": time.perf_counter() - t0, **member_kls(signals, batch.student_scores, kl_tau)}.items():
                window.setdefault(name, []).append(float(value))
            if refresher is not None and refresher.due(step) and step < total_steps:  # none left to train on
                for name, value in refresher.refresh(student, step).items():
                    window.setdefault(name, []).append(value)
            if monitor is not None and monitor.due(step):
                latest_agreement = monitor.measure(student)
            state = {"global_step": step, "epoch": epoch, "step_in_epoch": i + 1, "history": history,
                     "train_elapsed_s": clock.elapsed_s}
            if board is not None and rank == 0:
                board.post.remote(step, {"loss": loss.item()})
            final = step >= total_steps or clock.spent  # the same on every worker: the clock is rank 0's
            if step % cfg.report_every == 0 or step % cfg.checkpoint_every == 0 or final:
                metrics = {name: float(np.mean(v)) for name, v in window.items()}
                metrics.update(step=step, epoch=epoch, lr=scheduler.get_last_lr()[0], teacher_requests=source.requests_sent,
                               train_elapsed_s=clock.elapsed_s)
                if source.is_ensemble:
                    metrics.update({f"teacher_requests/{n}": c for n, c in source.requests_by_teacher.items()})
                metrics.update(latest_agreement)
                latest_agreement = {}
                history.append(metrics)
                window = {}
                _report(metrics, state, student, optimizer, scheduler, rank,
                        with_checkpoint=step % cfg.checkpoint_every == 0 or final)
            if latest_agreement:  # measured at a step without a report: an entry of its own, at its step
                history.append({"step": step, "epoch": epoch, **latest_agreement})
                latest_agreement = {}
            if clock.spent:
                break
        if step >= total_steps or clock.spent:
            break
        state["step_in_epoch"] = 0
    return {"global_step": step, "history": history, "teacher_requests": source.requests_sent}


def ensemble_members(run: RunConfig, primary_info: dict[str, Any], described: list[dict[str, Any]] | None) -> list[TeacherMember]:
    """The run's teachers as :class:`TeacherMember` s: ``described`` (from the driver) holds each
    member's service description and, for dual-encoders, a reference to its document index."""
    infos = {d["name"]: d for d in described or []}
    members = []
    for m in run.teacher.members():
        entry = infos.get(m.name, {})
        ref = entry.get("index_ref")
        index = DocEmbeddings(*ray.get(ref)) if ref is not None else None
        members.append(TeacherMember(m.name, entry.get("info", primary_info), m.weight, m.calibration or "none",
                                     m.temperature or 1.0, index))
    return members


def member_kls(signals: TeacherSignals, student_scores: torch.Tensor, tau: float) -> dict[str, float]:
    """For an ensemble, ``KL(P_teacher_i || P_student)`` per member on this batch (a log, no gradient)."""
    if not signals.per_teacher:
        return {}
    s = student_scores.detach()
    return {f"teacher_kl/{name}": float(kl_teacher_student(s, as_tensor(np.asarray(t, dtype=np.float32)).to(s.device), tau))
            for name, t in signals.per_teacher.items()}


def _report(metrics: dict[str, Any], state: dict[str, Any], student, optimizer, scheduler, rank: int,
            with_checkpoint: bool) -> None:
    if not with_checkpoint:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as tmp:
        if rank == 0:  # DDP keeps replicas identical: one copy is enough
            save_checkpoint(Path(tmp), student, optimizer, scheduler, state)
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp) if rank == 0 else None)


def steps_per_epoch(num_examples: int, batch_size: int, num_workers: int) -> int:
    return (num_examples // num_workers) // batch_size


def total_training_steps(run: RunConfig, num_examples: int) -> int:
    per_epoch = steps_per_epoch(num_examples, run.train.batch_size, run.train.num_workers)
    if per_epoch < 1:
        raise ValueError(f"{num_examples} examples are too few for batch_size {run.train.batch_size} x "
                         f"{run.train.num_workers} workers")
    total = per_epoch * run.train.epochs
    return min(total, run.train.max_steps) if run.train.max_steps else total


