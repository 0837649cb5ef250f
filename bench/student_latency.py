"""The student users deploy: batch-1 query latency per format against the teacher's torch path.

For each exported student directory given, this writes its ONNX graphs if missing (``model.onnx``,
checked against torch, and the dynamically quantised ``model_int8.onnx``), then times, on one
thread each and taking turns on every query (so a burst of load from another process slows all of
them alike), tokenise + encode at batch 1 for: the teacher's query encoder in torch (the baseline),
the student in torch, in ONNX Runtime fp32 and int8. It prints the median ms over the queries and
each format's speed-up over the teacher, and writes ``bench/results/student_latency.json``.
Ranking quality per format is ``tightdistill eval --model DIR --backend torch|onnx|onnx-int8``.

    .venv/bin/python bench/student_latency.py runs/label-free/student [more student dirs] \\
        [--data scifact --split test --queries 300]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchlib import cpu_bf16, print_table, write_result

from common.datasets import load_beir
from student_trainer.adapt import latencies
from student_trainer.cli import EXPORT_CHECK_TEXTS
from student_trainer.export import ONNX_FILE, ONNX_INT8_FILE, export_onnx, quantize_onnx_int8


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("students", nargs="+", type=Path, help="exported student directories")
    p.add_argument("--data", default="scifact")
    p.add_argument("--split", default="test")
    p.add_argument("--queries", type=int, default=300, help="queries timed (>= 200 for the issue's median)")
    p.add_argument("--output", type=Path, default=None)
    a = p.parse_args()
    dataset = load_beir(a.data)
    texts = [dataset.query_text[q] for q in dataset.split_query_ids(a.split)][: a.queries]
    rows, results = [], []
    for student_dir in a.students:
        if not (student_dir / ONNX_FILE).is_file():
            export_onnx(student_dir, EXPORT_CHECK_TEXTS)
        if not (student_dir / ONNX_INT8_FILE).is_file():
            quantize_onnx_int8(student_dir, EXPORT_CHECK_TEXTS)
        meta = json.loads((student_dir / "tightdistill_student.json").read_text())
        info = {"kind": meta["teacher"]["kind"], "checkpoint": meta["teacher"]["checkpoint"],
                "max_query_length": meta["teacher"].get("max_query_length")}
        ms = latencies(info, student_dir, True, texts)
        layers = meta["student"].get("num_layers")
        results.append({"student": str(student_dir), "layers": layers, "median_ms": ms,
                        "speedup_vs_teacher_torch": {k: ms["teacher"] / v for k, v in ms.items() if k != "teacher"}})
        for name, value in ms.items():
            rows.append({"student": f"{student_dir} ({layers} layers)", "format": name, "median ms": round(value, 2),
                         "x teacher": round(ms["teacher"] / value, 2)})
    print_table(rows, ["student", "format", "median ms", "x teacher"])
    path = write_result("student_latency", {"cpu_bf16": cpu_bf16(), "data": a.data, "split": a.split,
                                            "queries": len(texts), "threads": 1, "batch_size": 1, "results": results},
                        a.output)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
