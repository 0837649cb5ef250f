"""Configuration of a distillation run, loaded from YAML (``deploy/*.yaml``).

Split as Tevatron does: which teacher, which student, which data, how to train, how to evaluate.
Every field has a help string; unknown keys are errors.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from common.config import ConfigError, LayerSelection, StrictModel, load_config, parse_config
from student_trainer.score_calibration import Calibration

# A student built outside a run (where the limit is resolved from the data) reads queries this long.
DEFAULT_QUERY_LENGTH = 64
# 1 / 0.25, TCT-ColBERT's teacher temperature: the scale of a student without a tempered loss to tie it to.
DEFAULT_SCORE_SCALE = 4.0


class StudentConfig(StrictModel):
    """What the student is and how it scores."""

    model: str = Field("minilm-l6", description="Encoder to start from: registry name, local directory or hub id.")
    num_layers: int | None = Field(2, ge=1, description="Keep k of the encoder's transformer layers (None: all).")
    layer_selection: LayerSelection = Field("first", description=(
        "Which k layers: 'first' (layers 0..k-1, as the papers' students) or 'spread' (evenly spaced, first to last; "
        "one layer: the last). 'spread' keeps the layer that shapes the teacher's output space, which a student "
        "copying the teacher's embeddings without labels needs (deploy/label-free.yaml)."))
    pooling: Literal["cls", "mean"] | None = Field(None, description="Pooling; default: the checkpoint's.")
    normalize: bool | None = Field(None, description="L2-normalise embeddings; default: the checkpoint's.")
    asymmetric: bool = Field(True, description="Inherit the teacher's document embeddings; train only a query encoder.")
    projection: Literal["auto", "always", "none"] = Field(
        "auto", description="Linear map to the teacher's dimension: 'auto' adds one when the dimensions differ.")
    projection_init: Literal["least_squares", "random"] = Field("least_squares", description=(
        "Start of a projection between different widths: 'least_squares' fits it before training (ridge "
        "regression of the teacher's query embeddings on the student's, student_trainer/projection_fit.py); "
        "'random' leaves torch's initialisation. A projection between equal widths starts as the identity."))
    projection_fit_queries: int = Field(4096, ge=2, description="Training and extra queries (at most) the fit uses.")
    similarity: Literal["dot", "cosine"] = Field("dot", description="Student score function (match the teacher's).")
    score_scale: float | None = Field(None, gt=0, description=(
        "Multiplier on the student's similarity to make the logits of the softmax/sigmoid losses (one-hot, in-batch "
        "KL, score BCE); Margin-MSE and score MSE match the unscaled similarity. Normalised embeddings give "
        "similarities in [-1, 1], too flat a softmax without a scale. Default (None): tied to the run's teacher "
        "temperature, 1/tau of train.losses.in_batch_kl (else of score_bce), so that the in-batch KL is zero exactly "
        "when the student's similarity equals the teacher's score; 4.0 (TCT's 1/0.25) in a run with neither."))
    freeze_embeddings: bool = Field(False, description=(
        "Keep the (teacher-initialised) token embeddings frozen: they hold most of a small student's "
        "parameters, and their dense gradient and optimizer update dominate a 2-layer step's cost."))
    max_query_length: int | None = Field(None, ge=4, description=(
        "Query truncation, in tokens. Default (None): from the data, the longest training or evaluation query, at "
        "most what the teacher reads (student_trainer/query_length.py); a student built outside a run reads "
        f"{DEFAULT_QUERY_LENGTH}."))
    max_document_length: int = Field(256, ge=4, description="Document truncation (symmetric students).")


DEFAULT_LOSSES: dict[str, dict[str, Any]] = {
    "in_batch_kl": {"weight": 1.0, "tau": 0.25, "gamma": 0.1},
    "query_embedding": {"weight": 1.0},
}


def tied_score_scale(losses: dict[str, dict[str, Any]]) -> float:
    """``1 / tau`` of the run's tempered loss (``in_batch_kl``, else ``score_bce``), with each loss's
    own default tau when the config leaves it out; ``DEFAULT_SCORE_SCALE`` with neither."""
    from student_trainer.losses import LOSSES

    for name in ("in_batch_kl", "score_bce"):
        if name in losses:
            tau = losses[name].get("tau", inspect.signature(LOSSES[name]).parameters["tau"].default)
            return 1.0 / float(tau)
    return DEFAULT_SCORE_SCALE


class EnsembleMember(StrictModel):
    """One teacher of an ensemble (``teacher.teachers``) and how its scores enter the target."""

    name: str = Field(description="Teacher name in the service.")
    weight: float = Field(1.0, ge=0, description="Weight in the ensemble target (weights are normalised to sum 1; 0 keeps the teacher as a monitor: asked and logged, not learned from).")
    calibration: Calibration | None = Field(None, description="Per-query score calibration of this teacher (none | temperature | minmax | zscore); default: teacher.calibration.")
    temperature: float | None = Field(None, gt=0, description="Divisor of this teacher's scores for calibration 'temperature'; default: teacher.temperature.")


class TeacherRef(StrictModel):
    """Where the teacher service is, and how to start it if it is not running.

    One teacher (``teacher: minilm``) or an ensemble (``teachers: [{name, weight, calibration}, ...]``).
    In an ensemble the first teacher is the primary one: its document index is the one an
    asymmetric student inherits and evaluation searches, and its query (and document) embeddings
    are the targets of embedding matching; every teacher's calibrated scores are averaged, with
    the weights, into the score target of the score losses (see ``student_trainer.score_calibration``).
    """

    teacher: str = Field("minilm", description="Teacher name in the service (with teachers: the first one's name, filled in).")
    teachers: list[EnsembleMember] | None = Field(None, min_length=1, description="Teacher ensemble, primary first (None: the single teacher named by 'teacher').")
    calibration: Calibration = Field("none", description="Per-query score calibration before the score losses: none | temperature (s / temperature) | minmax | zscore; ensemble members may override it.")
    temperature: float = Field(1.0, gt=0, description="Divisor of teacher scores for calibration 'temperature'.")
    app_name: str = Field("tightdistill", description="Serve application name.")
    serve_config: Path | None = Field(Path("deploy/teachers.yaml"), description="Serve config to deploy when the app is not running (None: require a running app).")
    url: str | None = Field(None, description="Use this HTTP endpoint instead of Ray handles (a teacher service outside this cluster).")
    timeout_s: float = Field(300.0, gt=0, description="A teacher unreachable for longer than this fails the run (after retries with backoff).")

    @model_validator(mode="before")
    @classmethod
    def _primary_name(cls, data: Any) -> Any:
        # With an ensemble, `teacher` names its primary (first) member: filled in when left out,
        # an error when it names another teacher (which of the two would be meant?).
        if isinstance(data, dict) and data.get("teachers"):
            members = [{"name": m} if isinstance(m, str) else m for m in data["teachers"]]
            first = members[0].get("name") if isinstance(members[0], dict) else None
            if data.get("teacher") not in (None, first):
                raise ValueError(f"teacher '{data['teacher']}' is not the first of teachers ('{first}'); "
                                 "leave 'teacher' out or put that teacher first")
            data = {**data, "teachers": members, "teacher": first}
        return data

    @model_validator(mode="after")
    def _distinct_members(self) -> TeacherRef:
        if self.teachers:
            names = [m.name for m in self.teachers]
            if len(set(names)) != len(names):
                raise ValueError(f"teachers lists a teacher twice: {names}")
            if not sum(m.weight for m in self.teachers) > 0:
                raise ValueError("teachers: at least one weight must be > 0")
        return self

    def members(self) -> list[EnsembleMember]:
        """The ensemble with every setting resolved (a single teacher is an ensemble of one, weight 1)."""
        listed = self.teachers or [EnsembleMember(name=self.teacher)]
        return [EnsembleMember(name=m.name, weight=m.weight, calibration=m.calibration or self.calibration,
                               temperature=m.temperature or self.temperature) for m in listed]


class NegativeRefreshConfig(StrictModel):
    """Hard negatives mined by the student itself during training and re-scored by the live teacher
    (ANCE-style refresh, without an offline re-scoring pass). Off unless ``every`` is set."""

    every: int | None = Field(None, ge=1, description="Steps between refreshes (None: off; the negatives mined before training are kept).")
    top_k: int = Field(20, ge=1, description="Depth of the student's own ranking the fresh negatives are drawn from.")
    queries: int | None = Field(256, ge=1, description="Training queries refreshed at each refresh, taken in turn from a seeded order of all of them (None: all).")
    false_negative_margin: float | None = Field(0.0, description=(
        "False-negative guard: drop a candidate the teacher scores above the query's weakest positive by more than "
        "this (in calibrated ensemble score units; negative values are stricter); None: keep every candidate."))
    corpus_sample: int = Field(2000, ge=1, description="Symmetric students: documents (seeded sample) the student re-encodes at each refresh and retrieves from; asymmetric students search the teacher's whole index.")


class DataConfig(StrictModel):
    """Training and evaluation data."""

    dataset: str = Field("scifact", description="Bundled dataset name or BEIR-layout directory.")
    train_split: str | None = Field("train", description="Qrels split with training queries; None for label-free distillation.")
    query_log: str | None = Field(None, description=(
        "Label-free runs: a split whose query texts (a query log, its qrels ignored) join the corpus pseudo-queries; "
        "the teacher labels them like the rest."))
    eval_split: str | None = Field("test", description="Qrels split to evaluate on; 'dev': the dev_queries held out of "
                                   "train_split (for choosing a recipe without looking at test); None: a corpus "
                                   "without judged queries, the run trains and exports but measures no retrieval "
                                   "metrics (`tightdistill adapt` measures the student on held-out pseudo-queries).")
    dev_queries: int = Field(0, ge=0, description="Training queries held out (seeded) as a dev split for model selection.")
    num_negatives: int = Field(1, ge=0, description="Hard negatives per query in each batch.")
    negatives: Literal["mined", "bm25", "random"] = Field("mined", description=(
        "'mined': from the (dual-encoder) teacher's own top-k, once, before training; 'bm25': from BM25's top-k "
        "(any teacher: what cross-encoder and ColBERT teachers use, they have no single-vector index); "
        "'random': uniform from the corpus."))
    mine_top_k: int = Field(30, ge=2, description="Depth of the ranking (teacher's or BM25's) negatives are drawn from.")
    mine_skip_top: int = Field(2, ge=0, description="Skip the teacher's top ranks (likely unlabelled positives).")
    extra_queries: Literal["none", "corpus", "perturbed", "generated"] = Field("none", description=(
        "Unlabelled extra queries for embedding matching (EmbedDistill §4.3): 'corpus' draws pseudo-queries from the "
        "corpus, 'perturbed' edits the training queries (word dropout, swaps, crops), 'generated' re-generates them "
        "with the seq2seq model at 'generator' (masking + Gaussian noise)."))
    generator: str | None = Field(None, description="Hugging Face seq2seq checkpoint directory (e.g. a saved BART-base) for extra_queries: generated.")
    generator_noise: float = Field(0.1, ge=0, description="Sigma of the Gaussian noise added between the generator's encoder and decoder (paper: 0.1 or 0.2).")
    generated_per_query: int = Field(2, ge=1, description="Extra queries generated (or perturbed) per training query.")
    extra_query_ratio: float = Field(0.0, ge=0, description="Extra queries per labelled query in each batch.")
    extra_query_pool: int = Field(20000, ge=1, description="Most pseudo-queries drawn from the corpus.")
    pseudo_queries: int = Field(4000, ge=8, description="Label-free runs (train_split: null): pseudo-queries drawn from the corpus and labelled by the teacher.")
    pseudo_queries_per_document: int = Field(1, ge=1, description="Sentence and span draws per document for corpus pseudo-queries (label-free training queries and extra_queries: corpus); more draws give a small corpus more distinct texts.")
    pseudo_question_share: float = Field(0.0, ge=0.0, le=1.0, description="Share of the corpus pseudo-queries phrased as questions (a question word before a sentence or span, a question mark after): the student meets question forms no document text has.")
    max_train_queries: int | None = Field(None, ge=1, description="Cap on training queries (quick runs and tests).")
    max_eval_queries: int | None = Field(None, ge=1, description="Cap on evaluation queries (quick runs and tests).")
    refresh: NegativeRefreshConfig = Field(default_factory=NegativeRefreshConfig, description="Student-mined negatives refreshed during training (off by default).")

    @model_validator(mode="after")
    def _query_log_is_label_free(self) -> DataConfig:
        if self.query_log is not None and self.train_split is not None:
            raise ValueError("data.query_log adds unlabelled query texts to a label-free run: set data.train_split: null "
                             "(with a train_split the queries come with their labels)")
        if self.query_log is not None and self.query_log == self.eval_split:
            raise ValueError(f"data.query_log '{self.query_log}' is the evaluation split: the student would train on the "
                             "very queries it is judged on")
        return self

    @model_validator(mode="after")
    def _dev_needs_held_out_queries(self) -> DataConfig:
        if self.eval_split == "dev" and (self.train_split is None or self.dev_queries == 0):
            raise ValueError("eval_split 'dev' evaluates the dev_queries held out of train_split: set data.dev_queries > 0 "
                             "and a train_split")
        return self


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
    precision: Literal["fp32", "bf16", "auto"] = Field(
        "fp32", description="Student forward/backward precision: 'bf16' autocasts it to bfloat16 (weights, optimizer "
        "and losses stay float32); 'auto' is bf16 where the device runs it natively (CPUs with AVX512-BF16/AMX, "
        "GPUs with bf16), else fp32.")
    prefetch: bool = Field(True, description="Request the next batch's teacher signals before computing the current step.")
    report_every: int = Field(10, ge=1, description="Steps between metric reports (a report costs seconds; not every step).")
    checkpoint_every: int = Field(50, ge=1, description="Steps between checkpoints.")
    keep_checkpoints: int = Field(2, ge=1)
    max_failures: int = Field(2, ge=0, description="Worker failures Ray Train recovers from (resuming from the last checkpoint).")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many steps (quick runs and tests).")
    max_minutes: float | None = Field(None, gt=0, description=(
        "Training time budget in minutes (the training loop's wall time, carried across resumes; not the teacher's "
        "corpus encoding or the evaluation): training stops at the first step that ends past it, and the linear "
        "warm-up and decay run over the budget (over whichever of steps and time is further along), so the "
        "learning rate reaches 0 as the budget is spent. max_steps and epochs still cap. None: no time budget."))


class EvalConfig(StrictModel):
    k_values: list[int] = Field(default_factory=lambda: [5, 20, 100, 1000])
    mode: Literal["auto", "retrieval", "rerank"] = Field("auto", description=(
        "'retrieval': full retrieval over the corpus (FAISS); 'rerank': teacher and student re-rank the same "
        "candidate lists (the dataset's candidates.<split>.tsv, else BM25's top rerank_depth); 'auto': retrieval "
        "for dual-encoder teachers, rerank for cross-encoder and ColBERT teachers (which score pairs, and have "
        "no single-vector index to retrieve from). A symmetric student is always also scored by full retrieval."))
    rerank_depth: int = Field(100, ge=1, description="Candidates per query when they come from BM25 (datasets without candidates.<split>.tsv).")
    evaluate_teacher: bool = Field(True, description="Also evaluate the teacher, for the retained fraction.")
    evaluate_untrained: bool = Field(False, description="Also evaluate the (asymmetric) student before training.")
    ignore_identical_ids: bool = Field(False, description=(
        "Drop a retrieved document whose id is the query's id (BEIR's ignore_identical_ids), for collections where "
        "every query is also a document (ArguAna, Quora); off by default, since in others (cranfield, vaswani) query "
        "and document ids overlap by accident."))
    agreement_k: int = Field(10, ge=1, description="Depth of the teacher and student top-k lists compared by the agreement metrics (overlap@k, RBO, Kendall tau).")
    rbo_p: float = Field(0.9, gt=0, lt=1, description="RBO persistence (Webber et al. 2010): rank d weighs p^(d-1); p=0.9 puts 86% of the weight on the top 10.")
    agreement_every: int | None = Field(None, ge=1, description="Steps between teacher-student agreement measurements on held-out queries during training (None: only at the end).")
    agreement_queries: int = Field(64, ge=2, description="Held-out queries measured during training: dev queries when data.dev_queries > 0, else the eval split's (a log only, never used for selection).")


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

    @model_validator(mode="after")
    def _tie_score_scale(self) -> RunConfig:
        # The student's logits are score_scale * similarity and the teacher's targets s_t / tau: with
        # score_scale = 1 / tau the in-batch KL's optimum is the teacher's own scores (see InBatchKLLoss).
        if self.student.score_scale is None:
            self.student.score_scale = tied_score_scale(self.train.losses)
        return self

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
