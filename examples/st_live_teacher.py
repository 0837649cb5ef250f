"""An ordinary sentence-transformers training script whose teacher is the live tightdistill service.

The student is the packaged all-MiniLM-L6-v2 cut to its first 2 layers; the data are a few hundred
(query, positive, random negative) triples from the bundled scifact train split; the teacher's
scores (or embeddings) for every batch come from the teacher service at ``--url``. Compared with
precomputed teacher labels, the line marked "live teacher" is the whole difference: the loss. The
trainer is built as for any sentence-transformers loss (the online loss keeps each batch's texts for
the teacher through the student's ``preprocess``; build it before the trainer). A service that needs
a bearer token gets it from ``$TIGHTDISTILL_TOKEN``.

Start the service first, then run the script::

    tightdistill serve --config deploy/teachers.yaml &        # teacher "minilm" on 127.0.0.1:8000
    python examples/st_live_teacher.py --max-steps 20
    python examples/st_live_teacher.py --loss in_batch_kl --output runs/st-live-teacher

It prints the training loss as it goes and, before and after training, the student's pairwise
accuracy on held-out triples (how often it scores the positive above the negative).
"""

from __future__ import annotations

import argparse
import random
import sys

LOSSES = ("margin_mse", "in_batch_kl", "embedding_mse")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:8000", help="teacher service URL")
    p.add_argument("--teacher", default="minilm", help="teacher name on the service (GET /v1/teachers)")
    p.add_argument("--loss", choices=LOSSES, default="margin_mse", help="distillation loss")
    p.add_argument("--dataset", default="scifact", help="bundled dataset name or BEIR directory (train split)")
    p.add_argument("--examples", type=int, default=300, help="training triples")
    p.add_argument("--eval-examples", type=int, default=100, help="held-out triples for the pairwise accuracy check (0: skip)")
    p.add_argument("--layers", type=int, default=2, help="student transformer layers kept from all-MiniLM-L6-v2")
    p.add_argument("--batch-size", type=int, default=16, help="triples per batch")
    p.add_argument("--epochs", type=float, default=1.0, help="passes over the training triples")
    p.add_argument("--max-steps", type=int, default=-1, help="stop after this many steps (-1: run the epochs)")
    p.add_argument("--lr", type=float, default=1e-4, help="learning rate")
    p.add_argument("--seed", type=int, default=0, help="seed for data sampling and training")
    p.add_argument("--output", default=None, help="save the trained student (sentence-transformers folder) here")
    return p.parse_args(argv)


def scifact_triples(dataset: str, n_train: int, n_eval: int, seed: int) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """(query, positive, negative) columns: a relevant document and a random other one per query."""
    from common.datasets import load_beir

    ds = load_beir(dataset)
    rng = random.Random(seed)
    qrels = ds.qrels("train")
    rows: dict[str, list[str]] = {"query": [], "positive": [], "negative": []}
    query_ids = ds.split_query_ids("train")
    rng.shuffle(query_ids)
    for qid in query_ids[: n_train + n_eval]:
        relevant = [d for d, grade in qrels[qid].items() if grade > 0]
        negative = rng.choice(ds.doc_ids)
        while negative in qrels[qid]:
            negative = rng.choice(ds.doc_ids)
        rows["query"].append(ds.query_text[qid])
        rows["positive"].append(ds.doc_texts[ds.doc_index[rng.choice(relevant)]])
        rows["negative"].append(ds.doc_texts[ds.doc_index[negative]])
    train = {k: v[:n_train] for k, v in rows.items()}
    held_out = {k: v[n_train:] for k, v in rows.items()}
    return train, held_out


def pairwise_accuracy(model, rows: dict[str, list[str]]) -> float:
    """Share of triples where the student scores the positive above the negative."""
    if not rows["query"]:
        return float("nan")
    q, pos, neg = (model.encode(rows[c], convert_to_tensor=True, batch_size=32) for c in ("query", "positive", "negative"))
    return float(((q * pos).sum(-1) > (q * neg).sum(-1)).float().mean())


def build_loss(name: str, model, url: str, teacher: str):
    """The live-teacher loss; with precomputed teacher scores in a label column this would be
    ``losses.MarginMSELoss(model)`` (or ``DistillKLDivLoss`` / ``MSELoss``)."""
    from student_trainer.integrations import OnlineEmbeddingMSELoss, OnlineInBatchKLLoss, OnlineMarginMSELoss

    if name == "margin_mse":
        return OnlineMarginMSELoss(model, url, teacher)
    if name == "in_batch_kl":
        return OnlineInBatchKLLoss(model, url, teacher, tau=0.25, gamma=0.1)
    return OnlineEmbeddingMSELoss(model, url, teacher)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Imported after argparse so --help answers at once.
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments

    from common.model_registry import resolve_model
    from common.text_encoder import truncate_layers
    from teacher_service.errors import TeacherServiceError

    student = SentenceTransformer(str(resolve_model("minilm-l6")), device="cpu")
    truncate_layers(student[0].auto_model, args.layers)
    train_rows, held_out = scifact_triples(args.dataset, args.examples, args.eval_examples, args.seed)
    print(f"student: all-MiniLM-L6-v2 cut to {args.layers} layers; {len(train_rows['query'])} training triples "
          f"from {args.dataset}; teacher '{args.teacher}' at {args.url}")
    before = pairwise_accuracy(student, held_out)

    try:
        loss = build_loss(args.loss, student, args.url, args.teacher)  # live teacher
    except TeacherServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    training_args = SentenceTransformerTrainingArguments(
        output_dir=args.output or "runs/st-live-teacher", num_train_epochs=args.epochs, max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size, learning_rate=args.lr, warmup_steps=0.1, seed=args.seed,
        logging_steps=5, save_strategy="no", report_to="none", use_cpu=True,
    )
    trainer = SentenceTransformerTrainer(
        model=student, args=training_args, train_dataset=Dataset.from_dict(train_rows), loss=loss,
    )
    try:
        result = trainer.train()
    except TeacherServiceError as exc:
        print(f"error: the teacher service failed during training: {exc}", file=sys.stderr)
        return 2
    after = pairwise_accuracy(student, held_out)
    print(f"trained {result.global_step} steps, mean loss {result.training_loss:.4f}, {result.metrics['train_runtime']:.1f}s")
    print(f"held-out pairwise accuracy ({len(held_out['query'])} triples): {before:.3f} before, {after:.3f} after")
    if args.output:
        student.save(args.output)
        print(f"student saved to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
