"""Configuration of a distillation run, loaded from YAML (``deploy/*.yaml``).

Split as Tevatron does: which teacher, which student, which data, how to train, how to evaluate.
Every field has a help string; unknown keys are errors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from common.config import ConfigError, StrictModel, load_config, parse_config
from student_trainer.students import StudentConfig

DEFAULT_LOSSES: dict[str, dict[str, Any]] = {
    "in_batch_kl": {"weight": 1.0, "tau": 0.25, "gamma": 0.1},
    "query_embedding": {"weight": 1.0},
}


class TeacherRef(StrictModel):
    """Where the teacher service is, and how to start it if it is not running."""

    teacher: str = Field("minilm", description="Teacher name in the service.")
    app_name: str = Field("tightdistill", description="Serve application name.")
    serve_config: Path | None = Field(Path("deploy/teachers.yaml"), description="Serve config to deploy when the app is not running (None: require a running app).")
    url: str | None = Field(None, description="Use this HTTP endpoint instead of Ray handles (a teacher service outside this cluster).")
    timeout_s: float = Field(300.0, gt=0, description="A teacher unreachable for longer than this fails the run (after retries with backoff).")


class DataConfig(StrictModel):
    """Training and evaluation data."""

    dataset: str = Field("scifact", description="Bundled dataset name or BEIR-layout directory.")
    train_split: str | None = Field("train", description="Qrels split with training queries; None for label-free distillation.")
    eval_split: str = Field("test", description="Qrels split to evaluate on.")
    dev_queries: int = Field(0, ge=0, description="Training queries held out (seeded) as a dev split for model selection.")
    num_negatives: int = Field(1, ge=0, description="Hard negatives per query in each batch.")
    negatives: Literal["mined", "random"] = Field("mined", description="'mined': from the teacher's top-k (once, before training); 'random': uniform from the corpus.")
    mine_top_k: int = Field(30, ge=2, description="Depth of the teacher ranking negatives are drawn from.")
    mine_skip_top: int = Field(2, ge=0, description="Skip the teacher's top ranks (likely unlabelled positives).")
    extra_queries: Literal["none", "corpus"] = Field("none", description="Unlabelled extra queries for embedding matching (EmbedDistill §4.3): 'corpus' draws pseudo-queries from the corpus.")
    extra_query_ratio: float = Field(0.0, ge=0, description="Extra queries per labelled query in each batch.")
    extra_query_pool: int = Field(20000, ge=1, description="Most pseudo-queries drawn from the corpus.")
    pseudo_queries: int = Field(4000, ge=8, description="Label-free runs (train_split: null): pseudo-queries drawn from the corpus and labelled by the teacher.")
    max_train_queries: int | None = Field(None, ge=1, description="Cap on training queries (quick runs and tests).")
    max_eval_queries: int | None = Field(None, ge=1, description="Cap on evaluation queries (quick runs and tests).")


class TrainConfig(StrictModel):
    """Optimisation, Ray Train scaling, checkpoints and reporting."""

    epochs: int = Field(3, ge=1)
    batch_size: int = Field(32, ge=2, description="Queries per batch per worker.")
    lr: float = Field(1e-4, gt=0, description="Peak learning rate (AdamW), linear warm-up and decay.")
    projection_lr: float | None = Field(None, gt=0, description="Learning rate of the projection (default: lr).")
    warmup_ratio: float = Field(0.1, ge=0, le=1)
    weight_decay: float = Field(0.01, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    seed: int = Field(13)
    losses: dict[str, dict[str, Any]] = Field(default_factory=lambda: {k: dict(v) for k, v in DEFAULT_LOSSES.items()},
                                              description="Loss terms by name with their weight and options.")
    num_workers: int = Field(1, ge=1, description="Ray Train workers (DDP).")
    cpus_per_worker: float = Field(0.5, gt=0, description="Logical CPUs per worker (fractional on small machines).")
    use_gpu: bool = Field(False)
    torch_threads: int = Field(1, ge=1, description="Intra-op threads per worker.")
    prefetch: bool = Field(True, description="Request the next batch's teacher signals before computing the current step.")
    report_every: int = Field(10, ge=1, description="Steps between metric reports (a report costs seconds; not every step).")
    checkpoint_every: int = Field(50, ge=1, description="Steps between checkpoints.")
    keep_checkpoints: int = Field(2, ge=1)
    max_failures: int = Field(2, ge=0, description="Worker failures Ray Train recovers from (resuming from the last checkpoint).")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many steps (quick runs and tests).")


class EvalConfig(StrictModel):
    k_values: list[int] = Field(default_factory=lambda: [5, 20, 100, 1000])
    evaluate_teacher: bool = Field(True, description="Also evaluate the teacher, for the retained fraction.")
    evaluate_untrained: bool = Field(False, description="Also evaluate the (asymmetric) student before training.")


class RunConfig(StrictModel):
    """A whole distillation run."""

    name: str = Field("default", pattern=r"^[A-Za-z0-9_.-]+$", description="Run name: outputs go to <output_dir>/<name>/.")
    output_dir: Path = Field(Path("runs"), validate_default=True, description="Where run folders are written (made absolute: Ray Train needs an absolute storage path).")
    teacher: TeacherRef = Field(default_factory=TeacherRef)
    student: StudentConfig = Field(default_factory=StudentConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)

    @field_validator("output_dir")
    @classmethod
    def _absolute(cls, v: Path) -> Path:
        return v.expanduser().resolve()

    @property
    def run_dir(self) -> Path:
        return self.output_dir / self.name


def load_run_config(path: str | Path, overrides: dict[str, Any] | None = None) -> RunConfig:
    config = load_config(RunConfig, path)
    if overrides:
        data = config.model_dump()
        for dotted, value in overrides.items():
            node = data
            *parents, leaf = dotted.split(".")
            for key in parents:
                if not isinstance(node.get(key), dict):
                    raise ConfigError(f"--set {dotted}: '{key}' is not a config section")
                node = node[key]
            node[leaf] = value
        config = parse_config(RunConfig, data, source=f"{path} (with --set)")
    return config
