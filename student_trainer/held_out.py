"""Pseudo-queries kept out of training, to say how good a student is on a corpus without queries.

A label-free run trains on pseudo-queries drawn from the corpus (titles, sentences, word spans).
To measure the student on texts it never saw, another seeded draw of the same kinds of text is
held out, and every training pseudo-query that repeats one of them, or contains one, or is
contained in one (a span inside a held-out sentence), is dropped from training. The student is
then judged against the teacher on them: overlap of the two top-10 lists, and nDCG@10 taking the
teacher's top 10 as the relevant documents (the teacher scores 1 on it by construction, so the
student's figure is the share of the teacher's ranking it keeps).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from common.agreement import agreement_metrics
from common.datasets import BeirDataset
from common.metrics import evaluate_run
from common.retrieval import DenseIndex
from student_trainer.extra_queries import corpus_pseudo_queries

# Offset from the run's seed for the held-out draw: another sequence of picks from the same texts.
HELD_OUT_SEED_OFFSET = 7919


def normalised(text: str) -> str:
    """Lower case, punctuation as spaces, single spaces: how two texts are compared for repeats."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def held_out_pseudo_queries(dataset: BeirDataset, n: int, seed: int, per_document: int = 1) -> list[str]:
    """``n`` (at most) distinct pseudo-queries drawn from the corpus with a seed training does not use."""
    return corpus_pseudo_queries(dataset, n, seed + HELD_OUT_SEED_OFFSET, per_document=per_document)


def without_held_out(queries: Sequence[str], held_out: Sequence[str]) -> list[str]:
    """``queries`` less those that equal, contain or lie inside a held-out text (after normalising)."""
    kept_back = [normalised(h) for h in held_out]
    kept_back = [h for h in kept_back if h]
    out = []
    for query in queries:
        q = normalised(query)
        if not any(h in q or q in h for h in kept_back):
            out.append(query)
    return out


def teacher_agreement(teacher_q: np.ndarray, student_q: np.ndarray, doc_emb: np.ndarray, doc_ids: Sequence[str],
                      k: int = 10) -> dict[str, float]:
    """The student's ``overlap@k`` with the teacher's top ``k`` and its ``nDCG@k`` taking that
    top ``k`` as relevant (grade 1), over the teacher's document embeddings (an asymmetric student
    searches those), with RBO and the query-embedding cosine beside them."""
    agreement = agreement_metrics(teacher_q, doc_emb, student_q, k=k).aggregate
    index = DenseIndex.from_embeddings(list(doc_ids), np.asarray(doc_emb, dtype=np.float32), use_gpu=False)
    t_scores, t_top = index.search(np.asarray(teacher_q, dtype=np.float32), k)
    s_scores, s_top = index.search(np.asarray(student_q, dtype=np.float32), max(k, 100))
    qrels = {str(i): {d: 1 for d in top} for i, top in enumerate(t_top)}
    run = {str(i): {d: float(s) for d, s in zip(top, scores)} for i, (top, scores) in enumerate(zip(s_top, s_scores))}
    ndcg = evaluate_run(qrels, run, k_values=[k]).aggregate[f"nDCG@{k}"]
    return {f"overlap@{k}": agreement[f"overlap@{k}"], f"nDCG@{k}_teacher_top{k}": ndcg, f"RBO@{k}": agreement[f"RBO@{k}"],
            "query_cosine_mean": agreement["query_cosine_mean"], "queries": len(teacher_q)}


__all__ = ["held_out_pseudo_queries", "normalised", "teacher_agreement", "without_held_out"]
