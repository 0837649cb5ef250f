"""A stronger teacher's re-ranking figure (issue #21): the pair scorer re-orders exactly the
dual-encoder's top documents, and the experiment table prints it beside the DE. Real tiny
checkpoints in their on-disk layouts (a BERT dual-encoder, a ColBERTv2 directory), real FAISS."""

from __future__ import annotations

import numpy as np

from common.datasets import load_beir
from student_trainer.experiment import ExperimentConfig, render_markdown
from student_trainer.teacher_reranking import TeacherEvaluation, measure_reranking
from teacher_service.client import TeacherClient
from teacher_service.kinds import build_teacher
from teacher_service.spec import TeacherSpec


def test_the_pair_scorer_reorders_exactly_the_first_stages_top_documents(tiny_bert_dir, pair_checkpoints, mini_beir):
    client = TeacherClient.in_process(
        build_teacher(TeacherSpec(name="de", kind="dual_encoder", checkpoint=str(tiny_bert_dir))),
        build_teacher(TeacherSpec(name="colbert", kind="colbert", checkpoint=str(pair_checkpoints["colbert"]))))
    dataset = load_beir(mini_beir)
    qids = dataset.split_query_ids("test")[:6]
    ev = measure_reranking(client, dataset, "test", qids, TeacherEvaluation(teacher="colbert", depth=10), "de",
                           [5, 10, 100], show_progress=False)

    # Independently: the DE's top 10 by dot product over its document embeddings, then ColBERT's scores.
    docs = client.encode(dataset.doc_texts, role="document", teacher="de")
    queries = client.encode([dataset.query_text[q] for q in qids], role="query", teacher="de")
    for q, row in zip(qids, queries @ docs.T):
        top = [dataset.doc_ids[i] for i in np.argsort(-row)[:10]]
        scores = client.score([dataset.query_text[q]] * 10, [dataset.doc_texts[dataset.doc_index[d]] for d in top],
                              teacher="colbert")
        expected = [top[i] for i in np.argsort(-scores, kind="stable")]
        got = sorted(ev.run[q], key=ev.run[q].__getitem__, reverse=True)
        assert set(got) == set(top)
        assert got == expected
    assert ev.mode == "rerank" and 0.0 <= ev.report.aggregate["nDCG@10"] <= 1.0


def test_the_table_prints_the_rerankers_beside_the_de(tmp_path):
    experiment = ExperimentConfig.model_validate({
        "name": "t", "base": "deploy/label-free.yaml", "rows": [{"name": "de"}],
        "teacher_evaluations": [{"teacher": "colbert-minilm"}]})
    figures = {"nDCG@10": 0.5, "MRR@10": 0.4, "R@100": 0.9}
    table = {"scifact": {"teachers": {"minilm": figures}, "split": "test", "rows": [],
                         "rerankers": {"colbert-minilm re-ranking minilm's top 100": {**figures, "nDCG@10": 0.55}}}}
    text = render_markdown(experiment, table, {"command": "c", "commit": "x", "date": "d", "machine": "m"})
    assert "| teacher colbert-minilm re-ranking minilm's top 100 | 0.550 | 0.400 | 0.900 | 1.100 |" in text
