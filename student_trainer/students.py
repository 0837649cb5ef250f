"""Dual-encoder students: symmetric, or asymmetric with the teacher's frozen document embeddings.

* **Symmetric** (EmbedDistill §4.1): one small encoder for queries and documents.
* **Asymmetric** ("inherit doc embeddings", EmbedDistill Table 1 and 3): a small trainable query
  encoder; documents keep the teacher's embeddings, computed once through the teacher service.
  Serving then costs only the small query encoder.

A learned linear projection maps student embeddings into the teacher's space when the dimensions
differ (EmbedDistill Eq. 7-8's ``proj``); it starts as the identity when they match, so a student
cut from the teacher starts where the teacher is.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from common.batching import training_token_budget
from common.scoring import similarity_fns
from common.text_encoder import TextEncoder
from student_trainer.config import DEFAULT_QUERY_LENGTH, DEFAULT_SCORE_SCALE, StudentConfig


@dataclass
class StudentOutput:
    """Projected embeddings (in the teacher's space) and scaled in-batch scores."""

    query_embeddings: torch.Tensor  # [Bq, teacher_dim]
    document_embeddings: torch.Tensor | None  # [N, teacher_dim]; None when not computed
    scores: torch.Tensor | None  # [B, N] = score_scale * sim(q[:B], d)
    joint_embeddings: torch.Tensor | None = None  # [B, joint_dim]: joint head over (query, its positive)


class DualEncoderStudent(nn.Module):
    """A small dual-encoder whose outputs live in the teacher's embedding space."""

    def __init__(self, config: StudentConfig, teacher_dim: int | None, joint_dim: int | None = None) -> None:
        """``teacher_dim`` is the teacher's embedding size; None for a teacher without query and
        document embeddings (a [CLS]-pooled cross-encoder), in which case the student keeps its own.
        ``joint_dim`` adds a training-only joint head for naive joint embedding matching
        (``JointEmbeddingMatchingLoss``): a linear map of a (query, document) pair's two embeddings
        into the cross-encoder's joint [CLS] space. It is never exported."""
        super().__init__()
        self.config = config
        self.query_encoder = TextEncoder.from_pretrained(
            config.model, pooling=config.pooling, normalize=config.normalize,
            max_length=config.max_document_length, num_layers=config.num_layers,
            layer_selection=config.layer_selection,
        )
        # HF's pooler head (BERT's tanh [CLS] layer) is not part of our pooling; frozen, it stays
        # out of DDP's gradient reduction, which otherwise fails on parameters without gradients.
        for name, param in self.query_encoder.model.named_parameters():
            if name.startswith("pooler.") or (config.freeze_embeddings and name.startswith("embeddings.")):
                param.requires_grad_(False)
        # Symmetric students share one encoder; asymmetric ones never encode documents.
        student_dim = self.query_encoder.dim
        teacher_dim = student_dim if teacher_dim is None else teacher_dim
        self.teacher_dim = teacher_dim
        if config.projection == "always" or (config.projection == "auto" and student_dim != teacher_dim):
            self.projection: nn.Module = nn.Linear(student_dim, teacher_dim)
            if student_dim == teacher_dim:
                nn.init.eye_(self.projection.weight)
                nn.init.zeros_(self.projection.bias)
        else:
            if student_dim != teacher_dim:
                raise ValueError(f"student dim {student_dim} != teacher dim {teacher_dim}: set projection to 'auto' or 'always'")
            self.projection = nn.Identity()
        self.joint_head = nn.Linear(2 * teacher_dim, joint_dim) if joint_dim else None
        self._matrix, _ = similarity_fns(config.similarity)

    @property
    def asymmetric(self) -> bool:
        return self.config.asymmetric

    @property
    def query_length(self) -> int:
        """Query truncation in tokens (``StudentConfig.max_query_length``; a run resolves the default)."""
        return self.config.max_query_length or DEFAULT_QUERY_LENGTH

    def _embed(self, texts: list[str], max_length: int) -> torch.Tensor:
        """Projected embeddings (differentiable), in length-sorted passes within the device's training budget."""
        enc = self.query_encoder
        ids = enc.tokenize(texts, max_length)
        return self.projection(enc.embed_ids(ids, training_token_budget(enc.device.type)))

    def embed_queries(self, texts: list[str]) -> torch.Tensor:
        """Projected query embeddings ``[n, teacher_dim]`` (differentiable)."""
        return self._embed(texts, self.query_length)

    def embed_documents(self, texts: list[str]) -> torch.Tensor:
        """Projected document embeddings ``[n, teacher_dim]`` (symmetric students only)."""
        if self.asymmetric:
            raise RuntimeError("an asymmetric student does not encode documents: it uses the teacher's document index")
        return self._embed(texts, self.config.max_document_length)

    @property
    def score_scale(self) -> float:
        """The factor on the similarity (``StudentConfig.score_scale``; a run resolves the default)."""
        return self.config.score_scale if self.config.score_scale is not None else DEFAULT_SCORE_SCALE

    def score(self, queries: torch.Tensor, documents: torch.Tensor) -> torch.Tensor:
        """Scaled in-batch scores ``[nq, nd]`` from projected embeddings (logits of the softmax losses)."""
        return self.score_scale * self._matrix(queries, documents)

    def forward(self, queries: list[str], num_scored: int, documents: list[str] | None = None,
                document_embeddings: torch.Tensor | None = None) -> StudentOutput:
        """Embed ``queries`` (the first ``num_scored`` take part in scoring, the rest are extra
        queries for embedding matching only) and score them against the in-batch documents,
        given as texts (symmetric) or as the teacher's embeddings (asymmetric)."""
        q = self.embed_queries(queries)
        if documents is not None and not self.asymmetric:
            d = self.embed_documents(documents)
        else:
            d = document_embeddings
        scores = None if d is None else self.score(q[:num_scored], d)
        joint = None
        if self.joint_head is not None and d is not None and not self.asymmetric:
            # Each query's positive heads its group of N // B documents (DistillBatch's layout).
            positives = d.reshape(num_scored, -1, d.shape[-1])[:, 0]  # fails loudly if N is not a multiple of B
            joint = self.joint_head(torch.cat([q[:num_scored], positives], dim=-1))
        return StudentOutput(q, None if self.asymmetric else d, scores, joint)

    @torch.inference_mode()
    def encode_queries(self, texts: list[str], batch_size: int = 256) -> "torch.Tensor":
        """Inference: projected query embeddings as a float32 tensor, in input order."""
        was_training = self.training
        self.eval()
        out = torch.cat([self.embed_queries(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)])
        self.train(was_training)
        return out.float()

    def parameter_counts(self) -> dict[str, int]:
        enc = sum(p.numel() for p in self.query_encoder.parameters())
        non_embedding = enc - sum(p.numel() for p in self.query_encoder.model.embeddings.parameters())
        proj = sum(p.numel() for p in self.projection.parameters())
        return {"query_encoder": enc, "query_encoder_non_embedding": non_embedding, "projection": proj}
