"""Student options that change what trains."""

from __future__ import annotations

import torch

from student_trainer.config import RunConfig
from student_trainer.students import DualEncoderStudent, StudentConfig
from student_trainer.train_loop import build_optimizer, build_student


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


def test_joint_head_maps_each_query_with_its_positive(tiny_bert_dir):
    """Naive joint matching: the joint embedding of query i is W [q_i; d_(i * N/B)], the layout's positive."""
    config = StudentConfig(model=str(tiny_bert_dir), num_layers=1, asymmetric=False)
    student = DualEncoderStudent(config, teacher_dim=None, joint_dim=7).eval()
    docs = ["glaciers hold caves", "stocks fell", "vaccines train immunity", "penguins swim"]
    out = student(["a query about glaciers", "vaccines"], 2, documents=docs)
    assert out.joint_embeddings.shape == (2, 7)
    q, d = out.query_embeddings, out.document_embeddings
    for i, positive in enumerate((0, 2)):
        expected = student.joint_head.weight @ torch.cat([q[i], d[positive]]) + student.joint_head.bias
        torch.testing.assert_close(out.joint_embeddings[i], expected)
    assert DualEncoderStudent(config, teacher_dim=None).joint_head is None  # only when the loss asks for it


def test_optimizer_covers_every_trainable_parameter_joint_head_included(tiny_bert_dir):
    run = RunConfig.model_validate({
        "student": {"model": str(tiny_bert_dir), "num_layers": 1, "asymmetric": False},
        "train": {"losses": {"in_batch_kl": {}, "joint_embedding": {}}},
    })
    student = build_student(run, {"dim": None, "joint_dim": 7})
    optimizer, _ = build_optimizer(student, run, total_steps=10)
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert student.joint_head is not None and all(id(p) in optimized for p in student.joint_head.parameters())
    assert optimized == {id(p) for p in student.parameters() if p.requires_grad}
