"""EmbedDistill's token-reconstruction loss: the maths on seeded tensors, the sampling, the tied head."""

from __future__ import annotations

import math

import pytest
import torch

from teacher_trainer.reconstruction import TokenReconstructionHead, sample_positions, token_reconstruction_loss


def test_loss_is_the_mean_token_negative_log_likelihood():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 7, generator=g)
    targets = torch.tensor([0, 3, 6, 3, 1])
    rows = logits.tolist()
    by_hand = -sum(math.log(math.exp(rows[t][c]) / sum(math.exp(v) for v in rows[t])) for t, c in enumerate(targets.tolist())) / 5
    assert token_reconstruction_loss(logits, targets).item() == pytest.approx(float(by_hand), rel=1e-5)
    # Logits that put the mass on the right tokens reconstruct better than the same logits shuffled.
    sharp = torch.full((5, 7), -5.0)
    sharp[torch.arange(5), targets] = 5.0
    assert token_reconstruction_loss(sharp, targets) < token_reconstruction_loss(sharp[[1, 2, 3, 4, 0]], targets)
    with pytest.raises(ValueError, match=r"\[T, vocab\]"):
        token_reconstruction_loss(logits, targets[:3])


def test_positions_are_sampled_from_the_mask_only():
    mask = torch.zeros(3, 6, dtype=torch.bool)
    mask[0, 1:4] = mask[2, 2:6] = True  # 7 content positions
    rows, cols = sample_positions(mask, max_tokens=100)
    assert len(rows) == 7 and mask[rows, cols].all()
    rows, cols = sample_positions(mask, max_tokens=4, generator=torch.Generator().manual_seed(1))
    assert len(rows) == 4 and mask[rows, cols].all() and len(set(zip(rows.tolist(), cols.tolist()))) == 4


def test_head_is_tied_to_the_word_embeddings():
    torch.manual_seed(0)
    embeddings = torch.nn.Embedding(11, 8)
    head = TokenReconstructionHead(embeddings, hidden_size=8)
    assert head.word_embeddings.weight is embeddings.weight
    hidden = torch.randn(2, 5, 8, requires_grad=True)
    ids = torch.randint(0, 11, (2, 5))
    loss = head.loss(hidden, ids, torch.ones(2, 5, dtype=torch.bool), max_tokens=10)
    loss.backward()
    assert embeddings.weight.grad is not None and hidden.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="hidden size"):
        TokenReconstructionHead(embeddings, hidden_size=16)
