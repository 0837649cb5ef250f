"""A trainable cross-encoder teacher: [CLS]-pooled, or dual-pooled with token reconstruction.

* ``pooling='cls'`` (EmbedDistill §2.1): ``s(q, d) = <w, pool(Enc([CLS] q [SEP] d [SEP]))>``, the
  logit of a ``*ForSequenceClassification`` head with one label.
* dual pooling (EmbedDistill §4.2, App. B): ``s(q, d) = scale * <emb_q<-(q,d), emb_d<-(q,d)>`` with
  the proxies pooled from the same joint encoding, by special tokens ([CLS] for the query, the
  first [SEP] for the document) or by segment means (query tokens, document tokens), exactly as
  :class:`teacher_service.kinds.cross_encoder.CrossEncoderTeacher` pools them. ``scale`` is
  learned (as a log) and saved as ``score_scale``. Training adds ``reconstruction_weight *
  L_rec`` (:mod:`teacher_trainer.reconstruction`) to keep the token states semantic.

Ranking loss: for each query, softmax cross-entropy of its positive over its own candidates
(positive and mined hard negatives), EmbedDistill App. A Eq. 9 restricted to the query's group:
``L = -(1/B) sum_i log softmax(s(q_i, d_i^+), s(q_i, d_i1^-), ...)[0]``. A CE scores each pair
with its own forward pass, so other queries' documents are not added as in-batch negatives.

Saved as a sentence-transformers CrossEncoder directory (HF sequence-classification weights with
``num_labels=1``, tokenizer with ``model_max_length`` = the training length) plus
``tightdistill_ce.json`` (``pooling``, ``score_scale``). For a dual-pooled checkpoint the
classifier head is untrained and unused: only tightdistill's ``cross_encoder`` kind, which reads
``tightdistill_ce.json``, scores it as trained.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from transformers import AutoConfig, PreTrainedModel
from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING

from student_trainer.losses.onehot_ce import onehot_cross_entropy
from teacher_service.kinds.cross_encoder import CE_META_FILE, masked_mean, segment_masks
from teacher_trainer.config import TeacherModelConfig, TeacherOptimConfig
from teacher_trainer.data import TrainingGroup
from teacher_trainer.reconstruction import TokenReconstructionHead
from teacher_trainer.trainee import LossOutput, Trainee

# sentence-transformers CrossEncoder: apply no activation, so its predict() returns the logit the
# ranking loss trained (a softmax over candidates leaves logits uncalibrated for a sigmoid).
ST_ACTIVATION = "torch.nn.modules.linear.Identity"
SCORE_CHUNK = 32  # pairs per forward pass when scoring candidates


def dual_pool(hidden: Tensor, input_ids: Tensor, attention_mask: Tensor, special: Tensor, sep_id: int,
              pooling: str) -> tuple[Tensor, Tensor]:
    """Query and document proxies ``[n, dim]`` from final token states ``[n, l, dim]``.

    ``special_token``: the states of [CLS] and of the first [SEP]; ``segment_mean``: the means over
    the query segment and the document segment (:func:`segment_masks`).
    """
    if pooling == "special_token":
        first_sep = (input_ids == sep_id).long().argmax(dim=1)  # argmax returns the first maximum
        return hidden[:, 0], hidden[torch.arange(len(input_ids), device=hidden.device), first_sep]
    q_mask, d_mask = segment_masks(input_ids, attention_mask, special, sep_id)
    return masked_mean(hidden, q_mask), masked_mean(hidden, d_mask)


def load_scoring_model(model_dir: Path) -> PreTrainedModel:
    """The encoder with a one-label sequence-classification head (the CrossEncoder layout).

    Starting from a plain encoder the classifier is new; it is declared expected-missing (as
    :func:`teacher_service.kinds.colbert.load_base_model` declares unused keys), so the load report
    only speaks up about real mismatches such as missing encoder weights.
    """
    config = AutoConfig.from_pretrained(model_dir, num_labels=1)
    base = MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING[type(config)]
    loader = type(base.__name__, (base,), {"_keys_to_ignore_on_load_missing": [r"^classifier\."]})
    return loader.from_pretrained(model_dir, config=config)


class CrossEncoderTrainee(Trainee):
    """A cross-encoder under training (see the module docstring)."""

    service_kind = "cross_encoder"

    def __init__(self, config: TeacherModelConfig) -> None:
        super().__init__(config)
        if self.tokenizer.sep_token_id is None:
            raise ValueError(f"{config.base_model}: the tokenizer has no [SEP] token to split query and document on")
        self.model = load_scoring_model(self.model_dir)
        hidden = int(self.model.config.hidden_size)
        self.pooling = config.pooling
        self.max_length = config.max_length
        # The proxies are un-normalised final token states; their dot products are O(1-10) for
        # MiniLM (about 5, positives a few units above negatives), so the learned scale starts at
        # 1: a smaller start (1/sqrt(hidden)) left the softmax over candidates flat for many steps.
        self.log_scale = nn.Parameter(torch.zeros(())) if config.dual else None
        self.reconstruction_weight = config.resolved_reconstruction_weight()
        self.reconstruction = (TokenReconstructionHead(self.model.get_input_embeddings(), hidden,
                                                       getattr(self.model.config, "layer_norm_eps", 1e-12))
                               if self.reconstruction_weight > 0 else None)

    @property
    def score_scale(self) -> float:
        return self.log_scale.exp().item() if self.log_scale is not None else 1.0

    def special_parameters(self, optim: TeacherOptimConfig) -> list[dict[str, Any]]:
        if self.log_scale is None:
            return []
        return [{"params": [self.log_scale], "lr": optim.scale_lr, "weight_decay": 0.0}]

    def tokenize_pairs(self, queries: list[str], documents: list[str]) -> dict[str, Tensor]:
        """Padded ``[n, l]`` tensors of ``[CLS] q [SEP] d [SEP]``, truncated longest-first (as the kind)."""
        enc = self.tokenizer(queries, documents, truncation="longest_first", max_length=self.max_length, padding=True,
                             return_special_tokens_mask=True, return_tensors="pt")
        return {k: v.to(self.device) for k, v in enc.items()}

    def forward(self, batch: dict[str, Tensor], with_states: bool = False) -> tuple[Tensor, Tensor | None, Tensor]:
        """Scores ``[n]``, the final token states ``[n, l, dim]`` (dual pooling or ``with_states``),
        and the content-token mask ``[n, l]`` (not special, not padding)."""
        batch = dict(batch)
        special = batch.pop("special_tokens_mask")
        content = batch["attention_mask"].bool() & ~special.bool()
        if self.log_scale is None:
            out = self.model(**batch, output_hidden_states=with_states)
            return out.logits[:, 0], (out.hidden_states[-1] if with_states else None), content
        hidden = self.model.base_model(**batch).last_hidden_state
        emb_q, emb_d = dual_pool(hidden, batch["input_ids"], batch["attention_mask"], special,
                                 self.tokenizer.sep_token_id, self.pooling)
        return self.log_scale.exp() * (emb_q * emb_d).sum(-1), hidden, content

    def loss(self, groups: list[TrainingGroup]) -> LossOutput:
        per_group = len(groups[0].documents)
        queries = [g.query for g in groups for _ in g.documents]
        batch = self.tokenize_pairs(queries, [d for g in groups for d in g.documents])
        scores, hidden, content = self(batch, with_states=self.reconstruction is not None)
        labels = torch.zeros(len(groups), dtype=torch.long, device=scores.device)  # the positive comes first
        rank = onehot_cross_entropy(scores.view(len(groups), per_group), labels)
        parts = {"rank": rank.item()}
        total = rank
        if self.reconstruction is not None:
            rec = self.reconstruction.loss(hidden, batch["input_ids"], content, self.config.reconstruction_tokens)
            total = total + self.reconstruction_weight * rec
            parts["reconstruction"] = rec.item()
        if self.log_scale is not None:
            parts["score_scale"] = self.score_scale
        return LossOutput(total, parts)

    @torch.no_grad()
    def score(self, query: str, documents: list[str]) -> np.ndarray:
        out = []
        for i in range(0, len(documents), SCORE_CHUNK):
            chunk = documents[i : i + SCORE_CHUNK]
            out.append(self(self.tokenize_pairs([query] * len(chunk), chunk))[0].float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0, np.float32)

    def save(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(out)
        # The kind (and sentence-transformers) truncate pairs at the tokenizer's model_max_length:
        # serve at the length the teacher was trained at.
        self.tokenizer.model_max_length = self.max_length
        self.tokenizer.save_pretrained(out)
        config_file = out / "config.json"
        config = json.loads(config_file.read_text())
        config["sentence_transformers"] = {"activation_fn": ST_ACTIVATION}
        config_file.write_text(json.dumps(config, indent=2) + "\n")
        meta = {"pooling": self.pooling, "score_scale": self.score_scale, "max_length": self.max_length,
                "base_model": self.config.base_model, "reconstruction_weight": self.reconstruction_weight}
        (out / CE_META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
