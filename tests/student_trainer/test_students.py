"""Student options that change what trains."""

from __future__ import annotations

import torch

from student_trainer.students import DualEncoderStudent, StudentConfig


def test_frozen_embeddings_get_no_gradient_and_layers_still_train(tiny_bert_dir):
    student = DualEncoderStudent(StudentConfig(model=str(tiny_bert_dir), num_layers=1, freeze_embeddings=True), teacher_dim=32)
    out = student(["a query about glaciers", "vaccines"], 2, document_embeddings=torch.randn(2, 32))
    out.scores.logsumexp(-1).mean().backward()
    named = dict(student.query_encoder.model.named_parameters())
    assert all(not p.requires_grad and p.grad is None for n, p in named.items() if n.startswith("embeddings."))
    layer = [p for n, p in named.items() if n.startswith("encoder.layer.0.")]
    assert layer and all(p.grad is not None and p.grad.abs().sum() > 0 for p in layer)
    trainable = DualEncoderStudent(StudentConfig(model=str(tiny_bert_dir), num_layers=1), teacher_dim=32)
    assert trainable.query_encoder.model.embeddings.word_embeddings.weight.requires_grad
