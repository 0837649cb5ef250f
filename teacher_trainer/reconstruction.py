"""EmbedDistill's token-reconstruction loss for dual-pooled cross-encoders (§4.2).

Paper: EmbedDistill (Kim et al., 2023), §4.2: "we also utilize a reconstruction loss during the CE
training, which measures the likelihood of predicting each token of the original input from the
final token embeddings. This loss encourages reconstruction of query and document tokens based on
the final token embeddings and prevents the degeneration of the token embeddings during training."
Trained only for its score, a CE's final token states collapse towards what the relevance logit
needs and lose the semantic structure the dual-pooled proxy embeddings are pooled from.

Formula, over the content tokens ``T`` of the (unmasked) input pairs (query and document tokens,
not [CLS]/[SEP]/padding), with final token states ``h_t`` and input token ids ``x_t``::

    L_rec = -(1/|T|) sum_{t in T} log softmax(W . g(h_t) + b)[x_t]

``g`` is BERT's MLM transform (dense, GELU, LayerNorm) and ``W`` the encoder's input word
embeddings (tied, as in BERT's MLM head), so the head adds ``hidden^2`` parameters and predicts in
the vocabulary the encoder already embeds. The paper's appendix with the head's exact form is not
in our copy of the text; these choices are ours. ``T`` is a uniform random sample of at most
``max_tokens`` positions per step: an unbiased estimate of the same mean that keeps the
``[|T|, vocab]`` softmax affordable on a CPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def token_reconstruction_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """``-(1/|T|) sum_t log softmax(logits[t])[targets[t]]``.

    Args:
        logits: ``[T, vocab]`` reconstruction logits of ``T`` token positions.
        targets: ``[T]`` long, the input token id at each position.

    Returns:
        A scalar tensor (the mean negative log-likelihood, in nats).
    """
    if logits.dim() != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(f"logits must be [T, vocab] and targets [T], got {tuple(logits.shape)} and {tuple(targets.shape)}")
    if not len(targets):
        raise ValueError("no token positions to reconstruct")
    return F.cross_entropy(logits.float(), targets)


def sample_positions(mask: Tensor, max_tokens: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Row and column indices of at most ``max_tokens`` positions drawn uniformly, without
    replacement, from those set in ``mask`` ``[n, l]`` (all of them when there are fewer)."""
    rows, cols = mask.nonzero(as_tuple=True)
    if len(rows) > max_tokens:
        keep = torch.randperm(len(rows), generator=generator, device=rows.device)[:max_tokens]
        rows, cols = rows[keep], cols[keep]
    return rows, cols


class TokenReconstructionHead(nn.Module):
    """``h -> W . LayerNorm(GELU(dense(h))) + b`` with ``W`` tied to the encoder's word embeddings."""

    def __init__(self, word_embeddings: nn.Embedding, hidden_size: int, layer_norm_eps: float = 1e-12) -> None:
        super().__init__()
        if word_embeddings.embedding_dim != hidden_size:
            raise ValueError(f"tied reconstruction needs word embeddings of the hidden size {hidden_size}, "
                             f"got {word_embeddings.embedding_dim}")
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.norm = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.word_embeddings = word_embeddings  # shared with the encoder, not a copy
        self.bias = nn.Parameter(torch.zeros(word_embeddings.num_embeddings))

    def forward(self, states: Tensor) -> Tensor:
        """Logits ``[T, vocab]`` from token states ``[T, hidden]``."""
        return self.norm(F.gelu(self.dense(states))) @ self.word_embeddings.weight.T + self.bias

    def loss(self, hidden: Tensor, input_ids: Tensor, content: Tensor, max_tokens: int,
             generator: torch.Generator | None = None) -> Tensor:
        """:func:`token_reconstruction_loss` on a sample of the content positions of ``hidden`` ``[n, l, dim]``."""
        rows, cols = sample_positions(content, max_tokens, generator)
        return token_reconstruction_loss(self(hidden[rows, cols]), input_ids[rows, cols])
