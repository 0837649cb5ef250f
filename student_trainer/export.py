"""Export a trained student as a sentence-transformers model directory, and load it back.

Layout (the classic one ``SentenceTransformer(path)`` loads): the HF encoder and tokenizer at the
root, ``1_Pooling/``, ``2_Normalize/`` when the encoder normalises, ``3_Dense/`` for the learned
projection (identity activation). ``tightdistill_student.json`` records what sentence-transformers
does not: whether the student is asymmetric and which teacher's document index it queries.
With the ``onnx`` extra, :func:`export_onnx` adds ``model.onnx``: the query encoder (token ids and
attention mask in, the projected, pooled, normalised query embedding out), checked against torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from common.onnx_runtime import OnnxUnavailable, export_graph, make_session, quantize_int8, require_onnxruntime, row_cosines
from common.text_encoder import TextEncoder
from student_trainer.students import DualEncoderStudent

METADATA = "tightdistill_student.json"


def export_sentence_transformers(student: DualEncoderStudent, path: str | Path, metadata: dict[str, Any]) -> Path:
    """Write ``student`` to ``path``; ``metadata`` (teacher, run) goes into ``tightdistill_student.json``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    enc = student.query_encoder
    enc.model.save_pretrained(path)
    enc.tokenizer.save_pretrained(path)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}]
    pooling_dir = path / "1_Pooling"
    pooling_dir.mkdir(exist_ok=True)
    (pooling_dir / "config.json").write_text(json.dumps({
        "word_embedding_dimension": enc.dim,
        "pooling_mode_cls_token": enc.pooling == "cls",
        "pooling_mode_mean_tokens": enc.pooling == "mean",
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
    }, indent=2))
    modules.append({"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"})
    if enc.normalize:
        (path / "2_Normalize").mkdir(exist_ok=True)
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    if isinstance(student.projection, nn.Linear):
        dense_dir = path / "3_Dense"
        dense_dir.mkdir(exist_ok=True)
        lin = student.projection
        (dense_dir / "config.json").write_text(json.dumps({
            "in_features": lin.in_features, "out_features": lin.out_features, "bias": lin.bias is not None,
            "activation_function": "torch.nn.modules.linear.Identity",
        }, indent=2))
        save_file({f"linear.{k}": v.detach().contiguous() for k, v in lin.state_dict().items()}, dense_dir / "model.safetensors")
        modules.append({"idx": len(modules), "name": str(len(modules)), "path": "3_Dense", "type": "sentence_transformers.models.Dense"})
    (path / "modules.json").write_text(json.dumps(modules, indent=2))
    (path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": student.query_length, "do_lower_case": False}))
    (path / "config_sentence_transformers.json").write_text(json.dumps({
        "model_type": "SentenceTransformer", "prompts": {}, "default_prompt_name": None,
        "similarity_fn_name": "cosine" if student.config.similarity == "cosine" else "dot",
    }, indent=2))
    meta = {"asymmetric": student.asymmetric, "student": student.config.model_dump(mode="json"),
            "parameters": student.parameter_counts(), **metadata}
    (path / METADATA).write_text(json.dumps(meta, indent=2, default=str))
    return path


class ExportedStudent:
    """An exported student loaded for inference (no sentence-transformers needed)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        meta_file = self.path / METADATA
        self.metadata: dict[str, Any] = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
        self.encoder = TextEncoder.from_pretrained(self.path).eval()
        self.projection: nn.Module = nn.Identity()
        dense = self.path / "3_Dense"
        if dense.is_dir():
            cfg = json.loads((dense / "config.json").read_text())
            lin = nn.Linear(cfg["in_features"], cfg["out_features"], bias=cfg.get("bias", True))
            lin.load_state_dict({k.removeprefix("linear."): v for k, v in load_file(dense / "model.safetensors").items()})
            self.projection = lin.eval()

    @property
    def asymmetric(self) -> bool:
        return bool(self.metadata.get("asymmetric"))

    @torch.inference_mode()
    def encode_queries(self, texts: list[str]) -> np.ndarray:
        return self.projection(torch.from_numpy(self.encoder.encode(texts))).numpy()

    @torch.inference_mode()
    def encode_documents(self, texts: list[str], show_progress: bool = False) -> np.ndarray:
        """Documents through the student's own encoder (symmetric students)."""
        max_length = self.metadata.get("student", {}).get("max_document_length")
        emb = self.encoder.encode(texts, max_length=max_length, show_progress=show_progress, desc="student: encoding corpus")
        return self.projection(torch.from_numpy(emb)).numpy()


ONNX_FILE = "model.onnx"
ONNX_INT8_FILE = "model_int8.onnx"
# The exported graph must give the torch student's embeddings: below this cosine on any check text the export fails.
ONNX_MIN_COSINE = 0.9999


class QueryEncoderGraph(nn.Module):
    """What an exported student computes for a query, as one module of token tensors: the encoder,
    its pooling and normalisation (``TextEncoder.forward``) and the projection into the teacher's space."""

    def __init__(self, student: ExportedStudent) -> None:
        super().__init__()
        self.encoder = student.encoder
        self.projection = student.projection

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.projection(self.encoder(input_ids, attention_mask))


def export_onnx(student_dir: str | Path, check_texts: list[str], path: str | Path | None = None) -> dict[str, Any]:
    """Export the student's query encoder (token ids -> projected embedding) to ``model.onnx`` in
    ``student_dir`` and check it against torch on ``check_texts``: every text's cosine must be at
    least :data:`ONNX_MIN_COSINE`, else :class:`OnnxUnavailable`. Returns the path and the check."""
    require_onnxruntime()  # checked before the (slow) export
    student = ExportedStudent(student_dir)
    graph = QueryEncoderGraph(student).eval()
    path = Path(path) if path is not None else student.path / ONNX_FILE
    enc = student.encoder
    max_length = int(json.loads((student.path / "sentence_bert_config.json").read_text())["max_seq_length"])
    example = enc.collate(enc.tokenize(check_texts[:2], max_length))
    export_graph(graph, {"input_ids": example["input_ids"], "attention_mask": example["attention_mask"]}, path, ["query_embedding"])
    onnx_student = OnnxStudent(student.path, path)
    with torch.inference_mode():
        ours = np.concatenate([graph(**enc.collate(enc.tokenize([t], max_length))).numpy() for t in check_texts])
    theirs = np.concatenate([onnx_student.encode_queries([t]) for t in check_texts])
    cos = row_cosines(ours, theirs)
    check = {"path": str(path), "texts": len(check_texts), "min_cosine": float(cos.min()), "max_abs_diff": float(np.abs(ours - theirs).max())}
    if check["min_cosine"] < ONNX_MIN_COSINE:
        path.unlink(missing_ok=True)  # an export that does not match is no export
        raise OnnxUnavailable(f"the ONNX graph does not reproduce the torch student (min cosine {check['min_cosine']:.6f} "
                              f"< {ONNX_MIN_COSINE}); not exported")
    return check


def quantize_onnx_int8(student_dir: str | Path, check_texts: list[str]) -> dict[str, Any]:
    """Dynamic int8 quantisation (ONNX Runtime: int8 weights with a scale per output column,
    activations quantised per batch at run time) of the exported ``model.onnx`` into
    ``model_int8.onnx``, with its cosine to the fp32
    graph on ``check_texts``. Unlike the fp32 export this is not gated on a cosine: int8 changes the
    numbers by design, and what matters is whether the ranking holds (``tightdistill eval --backend
    onnx-int8`` measures that); the cosine is reported so a broken quantisation shows."""
    student_dir = Path(student_dir)
    source = student_dir / ONNX_FILE
    if not source.is_file():
        raise OnnxUnavailable(f"{source} does not exist: export the fp32 graph first (tightdistill export --format onnx)")
    target = student_dir / ONNX_INT8_FILE
    quantize_int8(source, target)
    cos = row_cosines(OnnxStudent(student_dir, source).encode_queries(check_texts),
                      OnnxStudent(student_dir, target).encode_queries(check_texts))
    return {"path": str(target), "texts": len(check_texts), "min_cosine_to_fp32": float(cos.min()),
            "mean_cosine_to_fp32": float(cos.mean()), "bytes": target.stat().st_size, "fp32_bytes": source.stat().st_size}


class OnnxStudent:
    """An exported student's query encoder run by ONNX Runtime (tokenizer from the student directory)."""

    def __init__(self, student_dir: str | Path, onnx_path: str | Path | None = None, threads: int | None = None) -> None:
        from transformers import AutoTokenizer

        self.path = Path(student_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        self.max_length = int(json.loads((self.path / "sentence_bert_config.json").read_text())["max_seq_length"])
        self.session = make_session(onnx_path or self.path / ONNX_FILE, threads)

    def encode_queries(self, texts: list[str]) -> np.ndarray:
        batch = self.tokenizer(list(texts), truncation=True, max_length=self.max_length, padding=True, return_tensors="np")
        feed = {"input_ids": batch["input_ids"].astype(np.int64), "attention_mask": batch["attention_mask"].astype(np.int64)}
        return self.session.run(["query_embedding"], feed)[0]
