"""Student options that change what trains."""

from __future__ import annotations

import numpy as np
import torch

from common.datasets import load_beir
from common.text_encoder import TextEncoder
from tiny_checkpoints import save_tiny_bert
from student_trainer.config import RunConfig
from student_trainer.losses import DistillBatch, build_loss, kl_teacher_student
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


def test_length_sorted_training_passes_give_the_one_pass_embeddings_and_gradients(tiny_bert_dir, monkeypatch):
    """A training step's queries go through in length-sorted passes within a token budget; the
    embeddings come back in input order, equal to one padded pass, and so do the gradients."""
    import common.batching as batching

    texts = ["short", "a much longer query about glaciers and the caves inside them " * 3, "vaccines",
             "stocks fell sharply on tuesday after the report", "penguins", "ice " * 20]

    def loss_and_grads(budget: int):
        monkeypatch.setitem(batching.TRAINING_TOKEN_BUDGET, "cpu", budget)
        torch.manual_seed(0)
        student = DualEncoderStudent(StudentConfig(model=str(tiny_bert_dir), num_layers=1, asymmetric=False), teacher_dim=32)
        emb = student.embed_queries(texts)
        (emb * torch.arange(emb.numel(), dtype=emb.dtype).reshape(emb.shape)).sum().backward()  # order-sensitive
        return emb.detach(), {n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None}

    ids = DualEncoderStudent(StudentConfig(model=str(tiny_bert_dir), num_layers=1), teacher_dim=32).query_encoder.tokenize(texts, 64)
    longest = max(len(x) for x in ids)
    assert len(batching.plan_batches([len(x) for x in ids], longest + 1, len(ids))) > 2  # the small budget splits
    one_emb, one_grads = loss_and_grads(10**6)
    split_emb, split_grads = loss_and_grads(longest + 1)
    torch.testing.assert_close(split_emb, one_emb, rtol=1e-5, atol=1e-6)
    assert one_grads.keys() == split_grads.keys()
    # Summation order differs between the passes: equal up to float rounding. Relative to each
    # gradient's norm, with a floor for those that are zero in exact arithmetic (a key bias's).
    floor = 1e-6 * max(float(g.norm()) for g in one_grads.values())
    for name, grad in one_grads.items():
        assert float((split_grads[name] - grad).norm()) <= 1e-4 * float(grad.norm()) + floor, name


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


def test_the_fused_optimizer_makes_the_loop_implementations_update(tiny_bert_dir):
    """build_optimizer uses AdamW's fused kernel on a CPU; its steps equal the per-tensor loop's."""
    run = RunConfig.model_validate({"student": {"model": str(tiny_bert_dir), "num_layers": 1}, "train": {"weight_decay": 0.01}})
    students, optimizers = [], []
    for fused in (True, False):
        torch.manual_seed(0)
        student = build_student(run, {"dim": 32})
        optimizer, _ = build_optimizer(student, run, total_steps=10)
        if not fused:  # the reference: the same groups and settings, torch's per-tensor loop
            groups = [{"params": g["params"], "lr": g["lr"]} for g in optimizer.param_groups]
            optimizer = torch.optim.AdamW(groups, weight_decay=0.01, fused=False, foreach=False)
            assert all(not g["fused"] and not g["foreach"] for g in optimizer.param_groups)
        students.append(student)
        optimizers.append(optimizer)
    assert optimizers[0].defaults["fused"] is True
    for step in range(3):
        for student, optimizer in zip(students, optimizers):
            torch.manual_seed(step)
            optimizer.zero_grad()
            student(["a query about glaciers", "vaccines"], 2, document_embeddings=torch.randn(2, 32)).scores.logsumexp(-1).mean().backward()
            optimizer.step()
    for (name, fused), (_, loop) in zip(students[0].named_parameters(), students[1].named_parameters()):
        torch.testing.assert_close(fused, loop, rtol=1e-5, atol=1e-6, msg=name)
    fresh = DualEncoderStudent(run.student, teacher_dim=32)
    with torch.no_grad():  # they did move
        assert any(float((p - q).abs().max()) > 0 for p, q in zip(students[0].parameters(), fresh.parameters()))


def test_a_few_distillation_steps_bring_the_student_closer_to_its_teacher(tiny_bert_dir, minilm_dir, mini_beir, tmp_path):
    """The project's student and losses, in process, on a tiny real task: scifact queries with their
    relevant document and a random one, a teacher that is another random tiny BERT (seed 1, so
    not the student's own weights). 20 AdamW steps of in-batch KL + query embedding matching
    must move the student towards the teacher on held-out queries it never trained on."""
    teacher = TextEncoder.from_pretrained(save_tiny_bert(tmp_path / "teacher", minilm_dir, seed=1)).eval()
    dataset = load_beir(mini_beir)
    rng = np.random.default_rng(0)

    def task(split: str, n: int) -> tuple[list[str], torch.Tensor, torch.Tensor]:
        """n queries, the teacher's embeddings of them and of each one's (relevant, random) documents."""
        qids, qrels, docs = dataset.split_query_ids(split)[:n], dataset.qrels(split), []
        for q in qids:
            relevant = sorted(d for d, g in qrels[q].items() if g > 0)[0]
            docs += [relevant, dataset.doc_ids[int(rng.integers(len(dataset.doc_ids)))]]
        queries = [dataset.query_text[q] for q in qids]
        doc_texts = [dataset.doc_texts[dataset.doc_index[d]] for d in docs]
        return queries, torch.from_numpy(teacher.encode(queries)), torch.from_numpy(teacher.encode(doc_texts))

    train_q, train_tq, train_td = task("train", 48)
    held_q, held_tq, held_td = task("test", 16)  # never trained on
    torch.manual_seed(0)
    student = DualEncoderStudent(StudentConfig(model=str(tiny_bert_dir), num_layers=1, score_scale=4.0), teacher_dim=32)
    loss_fn = build_loss({"in_batch_kl": {"tau": 0.25}, "query_embedding": {}})

    def agreement() -> tuple[float, float]:
        """Held-out KL(teacher || student) over in-batch documents, and mean query cosine to the teacher."""
        with torch.no_grad():
            out = student.eval()(held_q, len(held_q), document_embeddings=held_td)
            student.train()
            kl = float(kl_teacher_student(out.scores, held_tq @ held_td.T, 0.25))
            return kl, float(torch.nn.functional.cosine_similarity(out.query_embeddings, held_tq).mean())

    kl_before, cos_before = agreement()
    optimizer = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=1e-3)
    b = 8
    for step in range(20):
        i = (step * b) % len(train_q)
        docs = train_td[2 * i : 2 * (i + b)]  # each query's relevant then random document: the DistillBatch layout
        out = student(train_q[i : i + b], b, document_embeddings=docs)
        loss = loss_fn(DistillBatch(student_scores=out.scores, teacher_scores=train_tq[i : i + b] @ docs.T,
                                    labels=DistillBatch.layout_labels(b, 1), num_negatives=1,
                                    student_query_emb=out.query_embeddings, teacher_query_emb=train_tq[i : i + b]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    kl_after, cos_after = agreement()
    # Measured: KL 0.53 -> 0.05, cosine 0.18 -> 0.97; with lr=0 both stay where they start.
    assert kl_after < 0.5 * kl_before, f"held-out KL to the teacher {kl_before:.3f} -> {kl_after:.3f}"
    assert cos_after > cos_before + 0.3, f"held-out query cosine to the teacher {cos_before:.3f} -> {cos_after:.3f}"
