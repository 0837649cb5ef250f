"""Zero-shot ColBERT (MaxSim over all-MiniLM-L6-v2's token embeddings) re-ranking the dual-encoder
teacher's top-100 on scifact test: nDCG@10 / MRR@10 before and after re-ranking.

Both teachers run in-process (the same kinds the service hosts). The DE document index comes from
tightdistill's cache when a run has built it. Writes bench/results/colbert_rerank.json.

    python bench/colbert_rerank.py [--depth 100] [--max-queries N]
"""

from __future__ import annotations

import argparse

import torch
from tqdm.auto import tqdm

from benchlib import print_table, write_result
from common.datasets import load_beir
from common.metrics import evaluate_run
from student_trainer.teacher_index import teacher_doc_embeddings
from teacher_service.client import TeacherClient
from teacher_service.kinds import Encoded, build_teacher
from teacher_service.spec import TeacherSpec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="scifact")
    ap.add_argument("--split", default="test")
    ap.add_argument("--depth", type=int, default=100)
    ap.add_argument("--max-queries", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    ds = load_beir(args.dataset)
    qids = ds.split_query_ids(args.split)[: args.max_queries]
    queries = [ds.query_text[q] for q in qids]
    de = build_teacher(TeacherSpec(name="minilm", kind="dual_encoder", checkpoint="minilm-l6", options={"similarity": "dot"}))
    index = teacher_doc_embeddings(TeacherClient.in_process(de), ds)
    q_emb = de.encode(queries, "query").pooled
    scores, ranked = index.index.search(q_emb, args.depth)
    de_run = {q: dict(zip(docs, row.tolist())) for q, docs, row in zip(qids, ranked, scores)}

    colbert = build_teacher(TeacherSpec(name="colbert-zs", kind="colbert", checkpoint="minilm-l6", options={"zero_shot": True}))
    candidates = sorted({d for docs in ranked for d in docs})
    row_of = {d: i for i, d in enumerate(candidates)}
    texts = [ds.doc_texts[ds.doc_index[d]] for d in candidates]
    parts = [colbert.encode(texts[i : i + 128], "document", with_tokens=True)
             for i in tqdm(range(0, len(texts), 128), desc="ColBERT: encoding candidate documents", unit="chunk")]
    docs_enc = Encoded.concat(parts)
    q_enc = colbert.encode(queries, "query", with_tokens=True)
    colbert_run = {}
    for i, (q, docs) in enumerate(tqdm(list(zip(qids, ranked)), desc="ColBERT: MaxSim re-ranking", unit="query")):
        s = colbert.score_encoded(q_enc.select([i]), docs_enc.select([row_of[d] for d in docs]), "matrix")[0]
        colbert_run[q] = dict(zip(docs, s.tolist()))

    qrels = ds.qrels(args.split)
    qrels = {q: qrels[q] for q in qids}
    rows = []
    for name, run in (("DE teacher (all-MiniLM-L6-v2), full retrieval", de_run),
                      (f"zero-shot ColBERT re-ranking DE top-{args.depth}", colbert_run)):
        agg = evaluate_run(qrels, run, (5, 20, 100)).aggregate
        rows.append({"system": name, **{k: agg[k] for k in ("nDCG@10", "MRR@10", "R@20", "R@100")}})
    print(f"\n{args.dataset} {args.split}, {len(qids)} queries")
    print_table(rows, ["system", "nDCG@10", "MRR@10", "R@20", "R@100"])
    print(f"wrote {write_result('colbert_rerank', {'args': vars(args), 'rows': rows})}")


if __name__ == "__main__":
    main()
