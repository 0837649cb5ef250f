"""A stronger teacher's re-ranking figure (issue #21): the pair scorer re-orders exactly the
dual-encoder's top documents, and the experiment table prints it beside the DE. Real tiny
checkpoints in their on-disk layouts (a BERT dual-encoder, a ColBERTv2 directory), real FAISS."""

from __future__ import annotations

import numpy as np

from common.datasets import load_beir
from student_trainer.experiment import ExperimentConfig, add_settings, render_markdown
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


def test_the_table_prints_the_rerankers_beside_the_de_and_what_each_student_learned_from():
    experiment = ExperimentConfig.model_validate({
        "name": "t", "base": "deploy/label-free.yaml", "datasets": ["scifact"], "teacher_evaluations": [{"teacher": "colbert-minilm"}],
        "rows": [{"name": "de"},
                 {"name": "colbert", "set": {"teacher.teachers": [{"name": "minilm", "weight": 0.0}, "colbert-minilm"],
                                             "student.num_layers": 1}},
                 {"name": "labelled", "set": {"data.train_split": "train", "teacher.teacher": "mpnet"}}]})
    figures = {"nDCG@10": 0.5, "MRR@10": 0.4, "R@100": 0.9}
    stat = {"mean": 0.5, "std": 0.0, "n": 1}
    rows = [{"row": r, "description": "", "nDCG@10": stat, "MRR@10": stat, "R@100": stat, "retained": stat,
             "steps": 10, "train_s": stat, "seeds": [13, 14]} for r in ("de", "colbert", "labelled")]
    # Two teachers in the table: the re-ranker is compared with the first stage it re-ranks (minilm), not the first listed.
    table = {"scifact": {"teachers": {"other": {**figures, "nDCG@10": 0.25}, "minilm": figures}, "split": "test", "rows": rows,
                         "rerankers": {"colbert-minilm re-ranking minilm's top 100": {**figures, "nDCG@10": 0.55, "first_stage": "minilm"}}}}
    add_settings(table, experiment.runs())
    text = render_markdown(experiment, table, {"command": "c", "commit": "x", "date": "d", "machine": "m"})
    assert "| teacher colbert-minilm re-ranking minilm's top 100 | - | 0.550 | 0.400 | 0.900 | 1.100 | - | - | - | - |" in text
    assert "| de | - | 0.500 | 0.500 | 0.500 | 0.500 | no labels; 2 layers; teacher scores: minilm | 13, 14 | 10 | 0 |" in text
    assert "| colbert | - | 0.500 | 0.500 | 0.500 | 0.500 | no labels; 1 layer; teacher scores: colbert-minilm |" in text
    assert "| labelled | - | 0.500 | 0.500 | 0.500 | 0.500 | labels; 2 layers; teacher scores: mpnet |" in text
