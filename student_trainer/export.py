"""Export a trained student as a sentence-transformers model directory, and load it back.

Layout (the classic one ``SentenceTransformer(path)`` loads): the HF encoder and tokenizer at the
root, ``1_Pooling/``, ``2_Normalize/`` when the encoder normalises, ``3_Dense/`` for the learned
projection (identity activation). ``tightdistill_student.json`` records what sentence-transformers
does not: whether the student is asymmetric and which teacher's document index it queries.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

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
