"""``tightdistill train | eval | index | adapt | export``: distil a student, evaluate any encoder, build a teacher
index, adapt a student to a user's documents, export a student for deployment."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import yaml

from common.config import ConfigError

DEFAULT_RUN_CONFIG = Path("deploy/default.yaml")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="distil a student from a live teacher (the main job)",
        description="Run a distillation job: start (or join) Ray, find or deploy the teacher service, encode the "
        "teacher's document index (cached), train the student on Ray Train with online teacher signals, export it "
        "as a sentence-transformers model and evaluate teacher and student. Outputs go to <output_dir>/<name>/.",
    )
    p.add_argument("--config", type=Path, default=DEFAULT_RUN_CONFIG, help="run config YAML (default: %(default)s)")
    p.add_argument("--address", default=None, help="Ray cluster to join ('auto' or host:port); default: embedded local Ray")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=1 (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(handler=train_command)

    e = sub.add_parser(
        "eval", help="evaluate a student or teacher encoder on a BEIR dataset",
        description="Full retrieval with an exact FAISS index (or re-ranking of the dataset's candidate lists with "
        "--rerank), scored with MRR@10, nDCG@10 and Recall@k. --model is an exported tightdistill student "
        "(asymmetric students search their teacher's document index) or any encoder: a registry name "
        "(minilm-l6, mpnet-base) or a model directory.",
    )
    e.add_argument("--model", required=True, help="student directory, registry name or model directory")
    e.add_argument("--data", default="scifact", help="bundled dataset name or BEIR directory (default: %(default)s)")
    e.add_argument("--split", default="test", help="qrels split (default: %(default)s)")
    e.add_argument("--rerank", action="store_true", help="re-rank candidates.<split>.tsv instead of full retrieval")
    e.add_argument("--hybrid", action="store_true",
                   help="also run BM25 and fuse it with the dense top-1000 (TCT-ColBERT Eq. 7: alpha * bm25 + dense); "
                   "prints dense, BM25 and hybrid rows")
    e.add_argument("--alpha", type=float, default=None,
                   help="with --hybrid: weight of the BM25 score (default: tuned on the dataset's train queries)")
    e.add_argument("--doc-index", type=Path, default=None, help="teacher document embeddings parquet (asymmetric students)")
    e.add_argument("--max-queries", type=int, default=None, help="evaluate only the first N queries")
    e.add_argument("--backend", choices=["torch", "onnx", "onnx-int8"], default="torch",
                   help="exported students: run the query encoder in torch or through its ONNX graph (tightdistill export)")
    e.add_argument("--ignore-identical-ids", action="store_true",
                   help="drop a retrieved document whose id is the query's (corpora whose queries are documents)")
    e.add_argument("--output", type=Path, default=None, help="JSON file for the report (default: runs/eval/...)")
    e.set_defaults(handler=eval_command)

    i = sub.add_parser(
        "index", help="encode a corpus with a served teacher (cached parquet of document embeddings)",
        description="Encode every document of a dataset through the teacher service and cache the embeddings as "
        "parquet (the index asymmetric students inherit). Deploys the teachers from --serve-config if needed.",
    )
    i.add_argument("--teacher", default="minilm", help="teacher name in the service (default: %(default)s)")
    i.add_argument("--data", default="scifact", help="dataset (default: %(default)s)")
    i.add_argument("--serve-config", type=Path, default=Path("deploy/teachers.yaml"))
    i.add_argument("--address", default=None)
    i.set_defaults(handler=index_command)

    a = sub.add_parser(
        "adapt", help="a fast query encoder for your own documents, in one command (no queries or labels needed)",
        description="Read PATH (a BEIR folder, a corpus.jsonl, a parquet or CSV file with id and text columns, or a "
        "folder of .txt/.md files, one document each), encode it with the served teacher (chunked, resumable, "
        "cached), train the label-free default recipe (deploy/label-free.yaml) on pseudo-queries, export the student "
        "(sentence-transformers directory and ONNX) and write OUT/report.md and report.json: how much of the teacher "
        "the student keeps on held-out pseudo-queries (and on the corpus's test queries if it has them), how much "
        "faster it is, and where the model is.",
    )
    a.add_argument("path", type=Path, help="the documents: BEIR folder, .jsonl, .parquet, .csv or folder of .txt/.md")
    a.add_argument("--teacher", default=None, help="teacher name in the service (default: the recipe's, minilm)")
    a.add_argument("--layers", type=int, default=2, help="transformer layers of the student (default: %(default)s)")
    a.add_argument("--minutes", type=float, default=None,
                   help="training time budget in minutes (training only; the recipe's 1,000 steps still cap it)")
    a.add_argument("--out", type=Path, default=None, help="output folder (default: runs/adapt-<corpus name>)")
    a.add_argument("--on-bad-input", choices=("error", "skip"), default="error",
                   help="a malformed line or an empty document: stop with an error naming file:line (default), or "
                   "skip it and count it in the report")
    a.add_argument("--max-steps", type=int, default=None, help=argparse.SUPPRESS)  # quick runs and tests
    a.add_argument("--address", default=None, help="Ray cluster to join ('auto' or host:port); default: embedded local Ray")
    a.add_argument("--no-progress", action="store_true", help="no progress bars")
    a.set_defaults(handler=adapt_command)

    x = sub.add_parser(
        "export", help="export a trained student for deployment (ONNX, optionally int8)",
        description="Write the student's query encoder (encoder, pooling, normalisation, projection) as model.onnx in "
        "the student directory, checked against torch (cosine >= 0.9999); with --quantize int8 also model_int8.onnx "
        "(ONNX Runtime dynamic quantisation). Check the ranking with `tightdistill eval --backend onnx|onnx-int8`.",
    )
    x.add_argument("--student", type=Path, required=True, help="exported student directory (a run's student/ folder)")
    x.add_argument("--format", choices=["onnx"], default="onnx", help="export format (default: %(default)s)")
    x.add_argument("--quantize", choices=["int8"], default=None, help="also write a dynamically quantised int8 graph")
    x.set_defaults(handler=export_command)

    r = sub.add_parser("report", help="(re)write a run's report.md and plots",
                       description="Write report.md and PNG plots (loss curves, teacher vs student metrics, "
                       "query-embedding agreement) from a finished run folder's JSON files.")
    r.add_argument("--run", type=Path, default=Path("runs/default"), help="run folder (default: %(default)s)")
    r.set_defaults(handler=report_command)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects KEY=VALUE, got '{item}'")
        key, value = item.split("=", 1)
        out[key] = yaml.safe_load(value)
    return out


def train_command(args: argparse.Namespace) -> int:
    from student_trainer.config import load_run_config

    run = load_run_config(args.config, parse_overrides(args.overrides))  # a bad config fails before the heavy imports
    from student_trainer.run import run_distillation

    result = run_distillation(run, address=args.address, show_progress=not args.no_progress)
    print_summary(result.metrics)
    print(f"run folder: {result.run_dir}")
    return 0


def print_summary(metrics: dict[str, Any]) -> None:
    from common.metrics import MetricReport, format_table

    reports = {name: MetricReport(aggregate=agg, per_query={}) for name, agg in metrics["metrics"].items()}
    print(format_table(reports))
    if "retained" in metrics:
        kept = metrics["retained"]["nDCG@10"]
        print(f"student retains {'n/a' if kept is None else f'{kept:.1%}'} of the teacher's nDCG@10")


def eval_command(args: argparse.Namespace) -> int:
    from common.datasets import load_beir
    from common.evaluation import evaluate_encoder
    from common.metrics import format_table
    from common.retrieval import DenseIndex, load_embeddings

    if args.hybrid and args.rerank:
        raise ConfigError("--hybrid fuses full-retrieval lists with BM25; it cannot be combined with --rerank")
    if args.hybrid and args.ignore_identical_ids:
        raise ConfigError("--ignore-identical-ids filters the dense ranking only; it cannot be combined with --hybrid")
    if args.alpha is not None and not args.hybrid:
        raise ConfigError("--alpha is the BM25 weight of --hybrid; add --hybrid")
    if args.alpha is not None and args.alpha < 0:
        raise ConfigError(f"--alpha must be >= 0, got {args.alpha}")
    dataset = load_beir(args.data)
    encode_queries, doc_index_path, encode_docs, name = _load_encoder(args)
    if doc_index_path is not None:
        ids, emb = load_embeddings(doc_index_path)
        if set(ids) != set(dataset.doc_ids):
            raise ConfigError(f"{doc_index_path} does not index the corpus of {dataset.name}")
    else:
        emb, ids = encode_docs(dataset.doc_texts), dataset.doc_ids
    index = DenseIndex.from_embeddings(ids, emb)
    candidates = dataset.candidates(args.split) if args.rerank else None
    ev = evaluate_encoder(encode_queries, index, dataset, args.split, max_queries=args.max_queries, candidates=candidates,
                          ignore_identical_ids=args.ignore_identical_ids)
    if args.hybrid:
        return _hybrid_eval(args, dataset, encode_queries, index, ev.run, name)
    print(format_table({name: ev.report}))
    backend = "" if args.backend == "torch" else f"-{args.backend}"
    out = args.output or Path("runs/eval") / f"{Path(name).name}{backend}-{dataset.name}-{args.split}{'-rerank' if args.rerank else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": name, "backend": args.backend, "dataset": dataset.name, "split": args.split, "mode": ev.mode,
                               **ev.report.to_dict()}, indent=2))
    print(f"wrote {out}")
    return 0


def _hybrid_eval(args: argparse.Namespace, dataset, encode_queries, index, dense_run, name: str) -> int:
    """``eval --hybrid``: the dense run fused with BM25 (alpha given or tuned on train queries)."""
    from common.hybrid_retrieval import evaluate_hybrid
    from common.metrics import format_table

    hy = evaluate_hybrid(encode_queries, index, dataset, args.split, alpha=args.alpha, max_queries=args.max_queries,
                         dense_run=dense_run, log=print)
    if hy.search is not None:
        grid = ", ".join(f"{a:g}: {v:.3f}" for a, v in hy.search.scores.items())
        print(f"alpha tuned on train queries ({hy.search.metric}): {hy.alpha:g}  [{grid}]")
    labels = {"dense": name, "bm25": "BM25", "hybrid": f"hybrid (alpha {hy.alpha:g})"}
    print(format_table({labels[k]: report for k, report in hy.reports.items()}))
    out = args.output or Path("runs/eval") / f"{Path(name).name}-{dataset.name}-{args.split}-hybrid.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "model": name, "dataset": dataset.name, "split": args.split, "mode": "hybrid", "alpha": hy.alpha,
        "alpha_grid": None if hy.search is None else {str(a): v for a, v in hy.search.scores.items()},
        **hy.reports["hybrid"].to_dict(),
        "components": {k: r.aggregate for k, r in hy.reports.items()},
    }, indent=2))
    print(f"wrote {out}")
    return 0


def _load_encoder(args: argparse.Namespace):
    """(query encoder, document index path or None, document encoder, display name)."""
    from student_trainer.export import METADATA, ExportedStudent

    model = Path(args.model)
    if (model / METADATA).is_file():
        student = ExportedStudent(model)
        encode_queries = student.encode_queries
        if args.backend != "torch":
            if not student.asymmetric:
                raise ConfigError("--backend onnx runs the query encoder only: it needs an asymmetric student")
            from student_trainer.export import ONNX_FILE, ONNX_INT8_FILE, OnnxStudent

            graph = model / (ONNX_INT8_FILE if args.backend == "onnx-int8" else ONNX_FILE)
            if not graph.is_file():
                raise ConfigError(f"{graph} does not exist: run `tightdistill export --student {model}"
                                  f"{' --quantize int8' if args.backend == 'onnx-int8' else ''}` first")
            encode_queries = OnnxStudent(model, graph).encode_queries
        if student.asymmetric:
            path = args.doc_index or (Path(student.metadata["doc_index"]) if student.metadata.get("doc_index") else None)
            if path is None or not path.is_file():
                raise ConfigError(f"{model} is an asymmetric student: it searches its teacher's document index; pass "
                                  "--doc-index (see `tightdistill index`)")
            return encode_queries, path, None, str(model)
        return student.encode_queries, None, lambda texts: student.encode_documents(texts, show_progress=True), str(model)

    from common.text_encoder import TextEncoder

    if args.backend != "torch":
        raise ConfigError(f"--backend {args.backend} is for exported tightdistill students; {args.model} is not one")
    encoder = TextEncoder.from_pretrained(args.model).eval()
    return (encoder.encode, args.doc_index,
            lambda texts: encoder.encode(texts, show_progress=True, desc=f"{args.model}: encoding corpus"), args.model)


def index_command(args: argparse.Namespace) -> int:
    from common.datasets import load_beir
    from common.ray_runtime import init_ray
    from student_trainer.config import TeacherRef
    from student_trainer.run import connect_teacher
    from student_trainer.teacher_index import teacher_doc_embeddings

    dataset = load_beir(args.data)
    init_ray(args.address)
    client = connect_teacher(TeacherRef(teacher=args.teacher, serve_config=args.serve_config))
    index = teacher_doc_embeddings(client, dataset)
    print(f"{len(index.ids)} documents of {dataset.name}, dim {index.emb.shape[1]}: {index.path}")
    return 0


# Query-like texts the export checks its graphs on (the encoder's outputs, not a quality figure).
EXPORT_CHECK_TEXTS = [
    "what causes the seasons on earth", "effect of vitamin d on bone density in older adults",
    "how are glacier caves formed?", "a", "transformers attend to every token of the input sequence at once",
    "0.5 mg/kg dose response in mice", "Which enzymes repair double-strand DNA breaks?", "ranking with dense retrieval",
]


def export_command(args: argparse.Namespace) -> int:
    from student_trainer.export import METADATA, OnnxUnavailable, export_onnx, quantize_onnx_int8

    if not (args.student / METADATA).is_file():
        raise ConfigError(f"{args.student} is not an exported tightdistill student (no {METADATA}); "
                          "pass a run's student/ folder")
    try:
        check = export_onnx(args.student, EXPORT_CHECK_TEXTS)
        print(f"wrote {check['path']} (min cosine to torch {check['min_cosine']:.6f} on {check['texts']} texts)")
        if args.quantize == "int8":
            q = quantize_onnx_int8(args.student, EXPORT_CHECK_TEXTS)
            print(f"wrote {q['path']} ({q['bytes'] / 2**20:.1f} MiB, fp32 {q['fp32_bytes'] / 2**20:.1f} MiB; "
                  f"cosine to the fp32 graph: min {q['min_cosine_to_fp32']:.4f}, mean {q['mean_cosine_to_fp32']:.4f})")
    except OnnxUnavailable as exc:
        raise ConfigError(str(exc)) from None
    return 0


def adapt_command(args: argparse.Namespace) -> int:
    from student_trainer.adapt import adapt

    if args.layers < 1:
        raise ConfigError(f"--layers must be at least 1, got {args.layers}")
    if args.minutes is not None and not args.minutes > 0:
        raise ConfigError(f"--minutes must be positive, got {args.minutes}")
    result = adapt(args.path, teacher=args.teacher, layers=args.layers, minutes=args.minutes, out=args.out,
                   on_bad_input=args.on_bad_input, address=args.address, show_progress=not args.no_progress,
                   max_steps=args.max_steps)
    print(result.markdown)
    print(f"wrote {result.out_dir / 'report.md'} and report.json")
    return 0


def report_command(args: argparse.Namespace) -> int:
    from student_trainer.report import write_report

    print(f"wrote {write_report(args.run)}")
    return 0
