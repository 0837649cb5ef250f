"""Tiny checkpoints (random weights, MiniLM's tokenizer) in the on-disk layouts users have: a
sentence-transformers BERT (``save_tiny_bert``), a ColBERTv2 ``HF_ColBERT`` directory, a sentence-transformers ``CrossEncoder`` directory, and a
dual-pooled CE directory as ``tightdistill train-teacher --kind ce`` writes it (``tightdistill_ce.json``
beside the weights). Shared by the service tests and the trainer tests."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification, BertModel

COLBERT_META = {"query_maxlen": 12, "doc_maxlen": 40, "dim": 16, "similarity": "cosine", "mask_punctuation": True,
                "attend_to_mask_tokens": False, "query_token_id": "[unused0]", "doc_token_id": "[unused1]"}
DUAL_META = {"pooling": "special_token", "score_scale": 0.25}


def tiny_config(**extra) -> BertConfig:
    return BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=512, **extra)


def save_colbert_checkpoint(path: Path, minilm_dir: Path, dim: int = 16, seed: int = 1) -> Path:
    """A ColBERTv2 ``HF_ColBERT`` directory: encoder under ``bert.``, ``linear.weight`` beside it."""
    torch.manual_seed(seed)
    config = tiny_config()
    state = {f"bert.{k}": v.contiguous() for k, v in BertModel(config).state_dict().items()}
    state["linear.weight"] = torch.randn(dim, config.hidden_size) / config.hidden_size**0.5
    path.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    config.architectures = ["HF_ColBERT"]
    config.save_pretrained(path)
    AutoTokenizer.from_pretrained(minilm_dir).save_pretrained(path)
    (path / "artifact.metadata").write_text(json.dumps({**COLBERT_META, "dim": dim}))
    return path


def save_cross_encoder(path: Path, minilm_dir: Path, seed: int = 2, ce_meta: dict | None = None) -> Path:
    """A sentence-transformers ``CrossEncoder`` directory (optionally with tightdistill_ce.json)."""
    torch.manual_seed(seed)
    BertForSequenceClassification(tiny_config(num_labels=1)).save_pretrained(path)
    AutoTokenizer.from_pretrained(minilm_dir).save_pretrained(path)
    config = json.loads((path / "config.json").read_text())
    config["sentence_transformers"] = {"activation_fn": "torch.nn.modules.activation.Sigmoid", "version": "4.1.0"}
    (path / "config.json").write_text(json.dumps(config))
    if ce_meta is not None:
        (path / "tightdistill_ce.json").write_text(json.dumps(ce_meta))
    return path


def save_tiny_bert(path: Path, minilm_dir: Path, seed: int = 0, hidden: int = 32, layers: int = 2,
                   pooling: str = "mean") -> Path:
    """A random 2-layer BERT with MiniLM's tokenizer, in the sentence-transformers layout."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=30522, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=2 * hidden, max_position_embeddings=512)
    BertModel(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(minilm_dir).save_pretrained(path)
    (path / "1_Pooling").mkdir(exist_ok=True)
    (path / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": hidden,
        "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean",
    }))
    (path / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]))
    (path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 128, "do_lower_case": False}))
    return path
