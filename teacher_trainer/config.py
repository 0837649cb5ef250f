"""Configuration of a teacher-training job, split as Tevatron does: model, data, training.

Every field has a help string and unknown keys are errors (:class:`common.config.StrictModel`);
``tightdistill train-teacher`` fills these from its flags.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from common.config import StrictModel

TeacherKind = Literal["ce", "colbert"]
CEPooling = Literal["cls", "special_token", "segment_mean"]

# Hard negatives per query when none is given: a cross-encoder only sees its own query's
# candidates, so it gets several; ColBERT also sees every other query's documents in the batch.
DEFAULT_NEGATIVES = {"ce": 3, "colbert": 1}
# Weight of the token-reconstruction loss for dual-pooled CEs when none is given (our choice: the
# paper's appendix with its setting is not part of our copy of the text).
DEFAULT_RECONSTRUCTION_WEIGHT = 0.1


class TeacherModelConfig(StrictModel):
    """Which teacher to build, from which encoder checkpoint."""

    kind: TeacherKind = Field(description="'ce' (cross-encoder) or 'colbert' (late interaction).")
    base_model: str = Field("minilm-l6", description="Encoder to start from: registry name, model directory or hub id.")
    pooling: CEPooling = Field("segment_mean", description="CE only: 'cls' (classifier on [CLS]) or EmbedDistill's dual pooling "
                               "('special_token': [CLS] and first [SEP]; 'segment_mean': query/document segment means).")
    max_length: int = Field(256, ge=16, le=512, description="CE only: (query, document) pair length in tokens, longest-first truncation.")
    reconstruction_weight: float | None = Field(None, ge=0, description="CE only: weight of the token-reconstruction loss "
                                                "(EmbedDistill §4.2); default 0.1 with dual pooling, 0 with cls.")
    reconstruction_tokens: int = Field(512, ge=1, description="CE only: token positions per step the reconstruction loss is "
                                       "estimated on (a uniform sample; the vocabulary softmax over every token is costly on CPU).")
    dim: int = Field(128, ge=8, description="ColBERT only: token embedding dimension after the linear projection.")
    query_maxlen: int = Field(32, ge=4, description="ColBERT only: query length in tokens ([MASK]-padded).")
    doc_maxlen: int = Field(180, ge=4, description="ColBERT only: document length in tokens.")

    @property
    def dual(self) -> bool:
        return self.kind == "ce" and self.pooling != "cls"

    def resolved_reconstruction_weight(self) -> float:
        if self.kind != "ce":
            return 0.0
        if self.reconstruction_weight is not None:
            return self.reconstruction_weight
        return DEFAULT_RECONSTRUCTION_WEIGHT if self.dual else 0.0


class TeacherDataConfig(StrictModel):
    """Training pairs, their mined hard negatives, and the dev split carved from them."""

    dataset: str = Field("scifact", description="Bundled dataset name or BEIR-layout directory.")
    split: str = Field("train", description="Qrels split the training (and dev) queries come from.")
    dev_queries: int = Field(50, ge=0, description="Training queries held out (seeded) for dev re-ranking nDCG@10.")
    dev_depth: int = Field(20, ge=2, description="Candidates per dev query (the miner's top-k) that the teacher re-ranks.")
    negatives: int | None = Field(None, ge=1, description="Hard negatives per query and step; default 3 for ce, 1 for colbert.")
    miner: Literal["dense", "bm25"] = Field("dense", description="Ranking negatives are mined from: 'dense' (miner_model "
                                            "over the corpus, cached) or 'bm25'.")
    miner_model: str = Field("minilm-l6", description="Dual-encoder of the dense miner.")
    mine_depth: int = Field(30, ge=2, description="Depth of the miner's ranking negatives are drawn from.")
    mine_skip_top: int = Field(0, ge=0, description="Skip the miner's top ranks (raise it when judgments miss many relevant documents).")


class TeacherOptimConfig(StrictModel):
    """Optimisation."""

    epochs: int = Field(1, ge=1, description="Passes over the training (query, positive) pairs.")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many steps (caps epochs).")
    batch_size: int = Field(8, ge=1, description="Queries per step (each with its positive and hard negatives).")
    lr: float = Field(3e-5, gt=0, description="Peak learning rate (AdamW), linear warm-up then linear decay.")
    scale_lr: float = Field(1e-2, gt=0, description="Dual-pooled CE: learning rate of the log score scale.")
    warmup_ratio: float = Field(0.1, ge=0, le=1)
    weight_decay: float = Field(0.01, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    seed: int = Field(13, description="Seed of the dev split, negative sampling, dropout and new layers.")
    threads: int | None = Field(None, ge=1, description="torch intra-op threads (default: torch's).")
    precision: Literal["fp32", "bf16", "auto"] = Field("fp32", description="Training forward pass precision: 'bf16' "
                                                       "autocasts it (weights stay float32); 'auto': bf16 where the device runs it natively.")
    eval_every: int | None = Field(None, ge=1, description="Steps between dev evaluations (default: before and after training only).")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$",
                        description="Where the teacher trains: 'cpu', 'cuda', 'cuda:N', or 'auto' (the first GPU if "
                        "torch sees one, else the CPU).")


class TeacherJob(StrictModel):
    """One ``train-teacher`` job."""

    model: TeacherModelConfig
    data: TeacherDataConfig = Field(default_factory=TeacherDataConfig)
    train: TeacherOptimConfig = Field(default_factory=TeacherOptimConfig)
    out: Path = Field(description="Output directory: the checkpoint plus metrics.json.")

    @model_validator(mode="after")
    def _mining_window(self) -> TeacherJob:
        if self.data.mine_skip_top >= self.data.mine_depth:
            raise ValueError(f"mine_skip_top ({self.data.mine_skip_top}) must be below mine_depth ({self.data.mine_depth})")
        return self

    @property
    def negatives(self) -> int:
        return self.data.negatives or DEFAULT_NEGATIVES[self.model.kind]

    def summary(self) -> dict[str, Any]:
        """The settings as JSON (``metrics.json`` keeps them beside the checkpoint)."""
        out = self.model_dump(mode="json")
        out["data"]["negatives"] = self.negatives
        out["model"]["reconstruction_weight"] = self.model.resolved_reconstruction_weight()
        return out
