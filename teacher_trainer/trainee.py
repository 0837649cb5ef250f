"""The interface every trainable teacher implements for :mod:`teacher_trainer.trainer`.

A trainee computes its training loss on a batch of :class:`~teacher_trainer.data.TrainingGroup`,
scores candidate lists for the dev evaluation, and saves itself in the on-disk layout its
teacher-service kind loads.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn
from transformers import AutoTokenizer

from common.model_registry import resolve_model
from teacher_trainer.config import TeacherModelConfig, TeacherOptimConfig
from teacher_trainer.data import TrainingGroup


@dataclass
class LossOutput:
    """The loss to back-propagate and its named terms (floats, for the loss curve)."""

    loss: Tensor
    parts: dict[str, float] = field(default_factory=dict)


class Trainee(nn.Module, ABC):
    """A teacher being trained from ``config.base_model`` (its directory and tokenizer are loaded here).

    ``service_kind`` is the teacher-service kind its checkpoint loads as.
    """

    service_kind: ClassVar[str]

    def __init__(self, config: TeacherModelConfig) -> None:
        super().__init__()
        self.config = config
        self.model_dir = resolve_model(config.base_model)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)

    @abstractmethod
    def loss(self, groups: list[TrainingGroup]) -> LossOutput:
        """Training loss of a batch (the module is in train mode)."""

    @abstractmethod
    def score(self, query: str, documents: list[str]) -> np.ndarray:
        """Scores ``[len(documents)]`` of one query's candidates, as the served teacher gives them."""

    @abstractmethod
    def save(self, out: Path) -> None:
        """Write the checkpoint directory the teacher-service kind loads."""

    def special_parameters(self, optim: TeacherOptimConfig) -> list[dict[str, Any]]:
        """Parameter groups with their own settings (e.g. a learned score scale); default none."""
        return []

    def param_groups(self, optim: TeacherOptimConfig) -> list[dict[str, Any]]:
        """AdamW groups: weight decay on matrices only (not on biases and LayerNorm gains), plus
        :meth:`special_parameters`."""
        special = self.special_parameters(optim)
        taken = {id(p) for g in special for p in g["params"]}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in taken]
        groups = [
            {"params": [p for p in rest if p.dim() >= 2], "lr": optim.lr, "weight_decay": optim.weight_decay},
            {"params": [p for p in rest if p.dim() < 2], "lr": optim.lr, "weight_decay": 0.0},
            *special,
        ]
        return [g for g in groups if g["params"]]

    def get_config_dict(self) -> dict[str, Any]:
        return {"kind": self.config.kind, "service_kind": self.service_kind, **self.config.model_dump(mode="json")}

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device
