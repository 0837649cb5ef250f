"""A trainable ColBERT teacher (TCT-ColBERT §2 Eq. 3-4, ColBERTv2's conventions).

Token states of a BERT encoder go through a bias-free linear projection to ``dim`` (128) and are
L2-normalised. Queries are ``[CLS] [Q] q... [SEP]`` padded with [MASK] to ``query_maxlen`` (the
[MASK] positions are not attended to, yet take part in MaxSim); documents are ``[CLS] [D] d...
[SEP]`` truncated to ``doc_maxlen``, with punctuation dropped from MaxSim after encoding;
``MaxSim(q, d) = sum_i max_j <q_i, d_j>`` (:func:`common.scoring.maxsim_matrix`). This is the
tokenisation :class:`teacher_service.kinds.colbert.ColBERTTeacher` applies to a trained checkpoint.

Loss: softmax cross-entropy of each query's positive over every document of the batch, i.e. its
own positive and hard negative(s) plus every other query's documents as in-batch negatives
(EmbedDistill App. A Eq. 9; TCT-ColBERT Eq. 6, first term)::

    L = -(1/B) sum_i log [exp(MaxSim(q_i, d_i^+)) / sum_{d in D_B} exp(MaxSim(q_i, d))]

Saved as a ColBERTv2 ``HF_ColBERT`` directory: the encoder under ``bert.`` plus ``linear.weight``
``[dim, hidden]`` in ``model.safetensors``, the tokenizer, and ``artifact.metadata``.
"""

from __future__ import annotations

import copy
import json
import string
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import Tensor, nn
from transformers import AutoModel

from common.scoring import maxsim_matrix
from common.text_encoder import pad_token_ids
from student_trainer.losses.onehot_ce import onehot_cross_entropy
from teacher_service.kinds.colbert import LINEAR_KEY, METADATA_FILE
from teacher_trainer.config import TeacherModelConfig
from teacher_trainer.data import TrainingGroup
from teacher_trainer.trainee import LossOutput, Trainee

QUERY_MARKER = "[unused0]"  # ColBERTv2's [Q] and [D] markers in a BERT vocabulary
DOC_MARKER = "[unused1]"
SCORE_CHUNK = 64  # candidate documents encoded per forward pass when scoring


class ColBERTTrainee(Trainee):
    """A ColBERT under training (see the module docstring)."""

    service_kind = "colbert"

    def __init__(self, config: TeacherModelConfig) -> None:
        super().__init__(config)
        self.encoder = AutoModel.from_pretrained(self.model_dir)
        self.linear = nn.Linear(int(self.encoder.config.hidden_size), config.dim, bias=False)
        self.query_maxlen, self.doc_maxlen = config.query_maxlen, config.doc_maxlen
        if self.tokenizer.mask_token_id is None:
            raise ValueError(f"{config.base_model}: ColBERT's query augmentation needs a [MASK] token; the tokenizer has none")
        self.markers = {"query": self._token_id(QUERY_MARKER), "document": self._token_id(DOC_MARKER)}
        # ColBERTv2's skiplist: the ids of string.punctuation characters as single tokens.
        punctuation = {ids[0] for ids in (self.tokenizer.encode(p, add_special_tokens=False) for p in string.punctuation) if ids}
        self.register_buffer("punctuation_ids", torch.tensor(sorted(punctuation)), persistent=False)

    def _token_id(self, token: str) -> int:
        token_id = self.tokenizer.convert_tokens_to_ids(token)
        if token_id is None or token_id == self.tokenizer.unk_token_id:
            raise ValueError(f"{self.config.base_model}: marker token {token} is not in the tokenizer's vocabulary")
        return int(token_id)

    def tokenize(self, texts: list[str], role: str) -> tuple[Tensor, Tensor, Tensor]:
        """``input_ids``, ``attention`` (what the encoder attends to) and ``keep`` (what MaxSim uses), all ``[n, l]``."""
        max_length = self.query_maxlen if role == "query" else self.doc_maxlen
        ids = self.tokenizer(texts, add_special_tokens=True, truncation=True, max_length=max_length - 1)["input_ids"]
        ids = [seq[:1] + [self.markers[role]] + seq[1:] for seq in ids]
        attended = torch.tensor([len(seq) for seq in ids], device=self.device)
        if role == "query":  # query augmentation: [MASK] padding, counted by MaxSim, not attended to
            ids = [seq + [self.tokenizer.mask_token_id] * (max_length - len(seq)) for seq in ids]
        batch = pad_token_ids(ids, self.tokenizer.pad_token_id or 0, self.device)
        input_ids, present = batch["input_ids"], batch["attention_mask"].bool()
        attention = (torch.arange(input_ids.shape[1], device=self.device)[None, :] < attended[:, None]).long()
        keep = present if role == "query" else present & ~torch.isin(input_ids, self.punctuation_ids)
        return input_ids, attention, keep

    def embed(self, texts: list[str], role: str) -> tuple[Tensor, Tensor]:
        """Normalised token embeddings ``[n, l, dim]`` and the MaxSim mask ``[n, l]``."""
        input_ids, attention, keep = self.tokenize(texts, role)
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention).last_hidden_state
        return nn.functional.normalize(self.linear(hidden), dim=-1), keep

    def loss(self, groups: list[TrainingGroup]) -> LossOutput:
        per_group = len(groups[0].documents)
        q_tok, q_keep = self.embed([g.query for g in groups], "query")
        d_tok, d_keep = self.embed([d for g in groups for d in g.documents], "document")
        scores = maxsim_matrix(q_tok, q_keep, d_tok, d_keep)  # [B, B * per_group]
        labels = torch.arange(len(groups), device=scores.device) * per_group  # each query's own positive
        loss = onehot_cross_entropy(scores, labels)
        return LossOutput(loss, {"rank": loss.item()})

    @torch.no_grad()
    def score(self, query: str, documents: list[str]) -> np.ndarray:
        q_tok, q_keep = self.embed([query], "query")
        out = []
        for i in range(0, len(documents), SCORE_CHUNK):
            d_tok, d_keep = self.embed(documents[i : i + SCORE_CHUNK], "document")
            out.append(maxsim_matrix(q_tok, q_keep, d_tok, d_keep)[0].float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0, np.float32)

    def save(self, out: Path) -> None:
        out.mkdir(parents=True, exist_ok=True)
        state = {f"bert.{k}": v.detach().cpu().contiguous() for k, v in self.encoder.state_dict().items()}
        state[LINEAR_KEY] = self.linear.weight.detach().cpu().contiguous()
        save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
        config = copy.deepcopy(self.encoder.config)
        config.architectures = ["HF_ColBERT"]
        config.save_pretrained(out)
        self.tokenizer.save_pretrained(out)
        (out / METADATA_FILE).write_text(json.dumps({
            "query_maxlen": self.query_maxlen, "doc_maxlen": self.doc_maxlen, "dim": self.config.dim,
            "similarity": "cosine", "attend_to_mask_tokens": False, "mask_punctuation": True,
            "query_token_id": QUERY_MARKER, "doc_token_id": DOC_MARKER, "checkpoint": self.config.base_model,
        }, indent=2) + "\n")
