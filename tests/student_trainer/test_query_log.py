"""Label-free runs with a query log: a split's query texts join the pseudo-queries, their labels never."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from common.datasets import load_beir
from student_trainer.config import RunConfig
from student_trainer.run import prepare_examples
from student_trainer.teacher_index import teacher_doc_embeddings
from teacher_service.client import TeacherClient
from teacher_service.kinds import build_teacher
from teacher_service.spec import TeacherSpec


def label_free(tmp_path, mini_beir, **data) -> RunConfig:
    return RunConfig.model_validate({"name": "log", "output_dir": str(tmp_path),
                                     "data": {"dataset": str(mini_beir), "train_split": None, "pseudo_queries": 30, **data}})


def test_the_logs_texts_are_trained_on_and_labelled_by_the_teacher(tiny_bert_dir, mini_beir, tmp_path):
    run = label_free(tmp_path, mini_beir, query_log="train")
    client = TeacherClient.in_process(build_teacher(TeacherSpec(name="t", kind="dual_encoder", checkpoint=str(tiny_bert_dir))))
    dataset = load_beir(mini_beir)
    index = teacher_doc_embeddings(client, dataset, cache=tmp_path / "cache", show_progress=False)
    path, rows = prepare_examples(run, dataset, client, index)
    table = pq.read_table(path)
    queries = table.column("query").to_pylist()
    logged = {dataset.query_text[q] for q in dataset.split_query_ids("train")}
    assert logged <= set(queries) and rows == len(set(queries)) == len(logged) + 30
    assert not {dataset.query_text[q] for q in dataset.split_query_ids("test")} & set(queries)
    # Every positive is the teacher's own top-1, never a qrels label.
    first = queries.index(next(iter(logged)))
    top1 = index.index.search(client.encode([queries[first]], role="query"), 1)[1][0][0]
    assert table.column("positive_id").to_pylist()[first] == top1


@pytest.mark.parametrize("data, problem", [({"query_log": "test"}, "is the evaluation split"),
                                           ({"query_log": "train", "train_split": "train"}, "train_split: null")])
def test_a_query_log_that_would_leak_labels_or_the_test_queries_is_refused(tmp_path, mini_beir, data, problem):
    with pytest.raises(ValueError, match=problem):
        label_free(tmp_path, mini_beir, **data)
