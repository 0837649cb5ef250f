"""Dev probe for the label-free recipe: the student's training alone, in-process, no Ray.

What chose ``deploy/label-free.yaml``'s learning rate, layer cut and losses (issue #24). The full
run spends minutes on Ray Train start-up, the teacher service and evaluation; a recipe question
("does keeping layer 5 help?", "which learning rate?") needs only the student's steps. This runs
them on the same pseudo-queries (``corpus_pseudo_queries``, as a label-free run draws them), with
the teacher's query embeddings computed once and cached under ``--cache``, and the teacher's cached
document index, and measures every ``steps / evals`` steps on a **dev** split: a dataset's training
queries with their qrels (never the test split; a label-free run never sees these queries).

Losses as the run computes them: ``query_embedding`` (``embedding_distance(normalize=True)``,
``--loss l2``; ``--loss cos`` is ``1 - cos``, what the first probes used) plus ``--candidate-kl W``
times ``candidate_kl`` over the teacher's top ``--top-k`` documents. Linear warm-up (10%) and decay,
AdamW, frozen token embeddings (unless `--train-embeddings`), gradient clipping at 1, batches of ``--batch-size`` in a seeded
order. The teacher's embeddings are computed in bf16 where the CPU has it (a probe, not a figure
to report: the run's own teacher labels the real thing).

    .venv/bin/python bench/label_free_recipe_probe.py --lr 1e-3 --layers 2 --layer-selection spread --candidate-kl 1
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from common.datasets import load_beir
from common.metrics import evaluate_run
from common.model_registry import cache_dir
from common.retrieval import DenseIndex, load_embeddings, retrieve
from common.text_encoder import TextEncoder
from student_trainer.extra_queries import corpus_pseudo_queries
from student_trainer.losses import candidate_kl, embedding_distance
from student_trainer.students import DualEncoderStudent, StudentConfig
from teacher_service.kinds import Encoded, build_teacher
from teacher_service.spec import TeacherSpec


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="scifact")
    p.add_argument("--dev-split", default="train", help="qrels split used as dev (default: %(default)s; never test)")
    p.add_argument("--doc-index", type=Path, default=None,
                   help="teacher document embeddings parquet (default: the run's cache entry for the dataset)")
    p.add_argument("--pseudo-queries", type=int, default=16000)
    p.add_argument("--per-document", type=int, default=2)
    p.add_argument("--questions", type=float, default=0.0, help="share of pseudo-queries phrased as questions (data.pseudo_question_share)")
    p.add_argument("--train-embeddings", action="store_true", help="train the token embeddings too (student.freeze_embeddings: false)")
    p.add_argument("--max-words", type=int, default=24, help="longest sentence or span drawn as a pseudo-query")
    p.add_argument("--layers", type=int, default=2, help="student layers (default: %(default)s)")
    p.add_argument("--layer-selection", choices=["first", "spread"], default="spread",
                   help="which of the teacher's layers the student keeps (student.layer_selection)")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--loss", choices=["l2", "cos"], default="l2")
    p.add_argument("--embedding-weight", type=float, default=1.0, help="weight of query embedding matching")
    p.add_argument("--candidate-kl", type=float, default=0.0, help="weight of candidate_kl (0: off)")
    p.add_argument("--top-k", type=int, default=64)
    p.add_argument("--tau", type=float, default=0.05)
    p.add_argument("--score-teacher", choices=["de", "colbert", "ensemble"], default="de",
                   help="whose scores rank the candidates for candidate_kl: the DE's own (default), the zero-shot "
                        "ColBERT's over the DE's top-K, or both z-scored and averaged (issue #21)")
    p.add_argument("--target-tau", type=float, default=0.5,
                   help="temperature on the z-scored ColBERT/ensemble target (default: %(default)s)")
    p.add_argument("--max-query-length", type=int, default=64)
    p.add_argument("--evals", type=int, default=4)
    p.add_argument("--seed", type=int, default=13)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cache", type=Path, default=Path("/tmp/tightdistill-probe"))
    return p.parse_args()


def find_doc_index(dataset: str) -> Path:
    found = sorted((cache_dir() / "doc-embeddings").glob(f"{dataset}-*.parquet"))
    if not found:
        raise SystemExit(f"no cached teacher index for {dataset}: run `tightdistill index --data {dataset}` first")
    return found[-1]


def teacher_embeddings(texts: list[str], path: Path) -> np.ndarray:
    if path.is_file():
        return np.load(path)
    teacher = TextEncoder.from_pretrained("minilm-l6").eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        emb = teacher.encode(texts, show_progress=True, desc="teacher")
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, emb)
    return emb


def colbert_candidate_scores(ds, queries: list[str], top: list[list[str]], path: Path) -> np.ndarray:
    """``[n, K]`` zero-shot ColBERT (MaxSim over all-MiniLM-L6-v2's token states) scores of each
    query's candidates, computed once in-process (bf16 where native) and cached under ``path``."""
    if path.is_file():
        return np.load(path)
    colbert = build_teacher(TeacherSpec(name="colbert-zs", kind="colbert", checkpoint="minilm-l6", dtype="auto",
                                        options={"zero_shot": True}))
    docs = Encoded.concat([colbert.encode(ds.doc_texts[i : i + 128], "document", with_tokens=True)
                           for i in tqdm(range(0, len(ds.doc_texts), 128), desc="ColBERT: documents", unit="chunk")])
    out = np.zeros((len(queries), len(top[0])), dtype=np.float32)
    for start in tqdm(range(0, len(queries), 256), desc="ColBERT: candidates", unit="chunk"):
        enc = colbert.encode(queries[start : start + 256], "query", with_tokens=True)
        for j in range(len(enc.pooled)):
            rows = [ds.doc_index[d] for d in top[start + j]]
            out[start + j] = colbert.score_encoded(enc.select([j]), docs.select(rows), "matrix")[0]
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, out)
    return out


def zscore(x: torch.Tensor) -> torch.Tensor:
    return (x - x.mean(-1, keepdim=True)) / x.std(-1, keepdim=True).clamp_min(1e-6)


def main() -> None:
    a = parse_args()
    torch.manual_seed(a.seed)
    torch.set_num_threads(a.threads)
    ds = load_beir(a.dataset)
    doc_ids, doc_emb = load_embeddings(a.doc_index or find_doc_index(a.dataset))
    index = DenseIndex.from_embeddings(doc_ids, doc_emb)
    queries = corpus_pseudo_queries(ds, a.pseudo_queries, a.seed, max_words=a.max_words, per_document=a.per_document,
                                    question_share=a.questions)
    dev_ids = ds.split_query_ids(a.dev_split)
    dev_texts = [ds.query_text[q] for q in dev_ids]
    qrels = ds.qrels(a.dev_split)
    key = f"{a.dataset}-{a.pseudo_queries}-{a.per_document}-{a.max_words}-q{a.questions}-{a.seed}"
    targets = teacher_embeddings(queries, a.cache / f"{key}.npy")
    dev_teacher = teacher_embeddings(dev_texts, a.cache / f"{a.dataset}-{a.dev_split}.npy")

    def ndcg10(emb: np.ndarray) -> float:
        return evaluate_run(qrels, retrieve(index, dev_ids, emb, 100)).aggregate["nDCG@10"]

    teacher_ndcg = ndcg10(dev_teacher)
    print(json.dumps({"teacher_dev_ndcg10": round(teacher_ndcg, 4)}), flush=True)

    student = DualEncoderStudent(StudentConfig(num_layers=a.layers, layer_selection=a.layer_selection, freeze_embeddings=not a.train_embeddings,
                                               max_query_length=a.max_query_length), teacher_dim=doc_emb.shape[1])
    layers = f"{a.layers} ({a.layer_selection})"
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.01)
    warm = max(1, a.steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else max(0.0, (a.steps - s) / max(1, a.steps - warm)))
    tokens = student.query_encoder.tokenize(queries, a.max_query_length)
    target = torch.from_numpy(targets)
    docs = torch.from_numpy(doc_emb)
    if a.candidate_kl:
        _, top = index.search(targets, a.top_k)
        row = {d: i for i, d in enumerate(doc_ids)}
        top_rows = torch.tensor([[row[d] for d in r] for r in top])
        if a.score_teacher != "de":
            cb = torch.from_numpy(colbert_candidate_scores(ds, queries, top, a.cache / f"{key}-colbert-top{a.top_k}.npy"))
            de = torch.einsum("bd,bkd->bk", torch.nn.functional.normalize(target, dim=-1), docs[top_rows])
            z = zscore(cb) if a.score_teacher == "colbert" else (zscore(cb) + zscore(de)) / 2
            target_logits = z / a.target_tau
    rng = np.random.default_rng(a.seed)
    order: list[int] = []
    marks = {int(a.steps * (i + 1) / a.evals) for i in range(a.evals)}
    train_s = 0.0
    student.train()
    for step in range(1, a.steps + 1):
        if len(order) < a.batch_size:  # a fresh seeded order per epoch
            order = list(rng.permutation(len(queries)))
        batch, order = order[: a.batch_size], order[a.batch_size :]
        t0 = time.perf_counter()
        enc = student.query_encoder
        q = student.projection(enc(**enc.collate([tokens[i] for i in batch])))
        t = target[batch]
        if a.loss == "cos":
            loss = (1 - torch.nn.functional.cosine_similarity(q, t)).mean()
        else:
            loss = embedding_distance(q, t, normalize=True)
        loss = a.embedding_weight * loss
        if a.candidate_kl and a.score_teacher == "de":
            loss = loss + a.candidate_kl * candidate_kl(q, t, docs[top_rows[batch]], a.tau)
        elif a.candidate_kl:
            s_logits = torch.einsum("bd,bkd->bk", torch.nn.functional.normalize(q, dim=-1), docs[top_rows[batch]]) / a.tau
            loss = loss + a.candidate_kl * torch.nn.functional.kl_div(
                torch.log_softmax(s_logits, -1), torch.log_softmax(target_logits[batch], -1), reduction="batchmean", log_target=True)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        train_s += time.perf_counter() - t0
        if step in marks:
            dev = student.encode_queries(dev_texts).numpy()
            cos = float(np.mean(np.sum(dev * dev_teacher, 1) / np.linalg.norm(dev, axis=1) / np.linalg.norm(dev_teacher, axis=1)))
            score = ndcg10(dev)
            print(json.dumps({"step": step, "dev_ndcg10": round(score, 4), "kept": round(score / teacher_ndcg, 4),
                              "dev_query_cosine": round(cos, 4), "s_per_step": round(train_s / step, 3),
                              "layers": layers, "lr": a.lr, "loss": a.loss, "candidate_kl": a.candidate_kl,
                              "score_teacher": a.score_teacher, "target_tau": a.target_tau,
                              "embedding_weight": a.embedding_weight, "questions": a.questions,
                              "train_embeddings": a.train_embeddings}), flush=True)


if __name__ == "__main__":
    main()
