"""A Hugging Face encoder with pooling: the building block of dual-encoder teachers and students.

``TextEncoder`` reads sentence-transformers metadata (pooling mode, normalisation, max length) when
the checkpoint has it, so ``TextEncoder.from_pretrained("minilm-l6")`` reproduces
``SentenceTransformer("all-MiniLM-L6-v2").encode`` without depending on sentence-transformers.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from common.batching import default_token_budget, plan_batches
from common.config import LayerSelection
from common.model_registry import resolve_model
from common.pooling import get_pooler

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_dtype(dtype: str, device: str = "cpu") -> str:
    """The weights dtype to load: ``dtype`` itself, or for ``"auto"`` the fastest one ``device``
    runs natively.

    CPUs with bf16 instructions (AVX512-BF16, AMX) run a BERT forward pass 2-3x faster in
    bfloat16 than in float32 (measured here: 21.6 -> 61.6 scifact documents/s with
    all-MiniLM-L6-v2 at 256 tokens, embeddings within cosine 0.9999 of float32); CPUs without
    them emulate bf16 and are slower, so they keep float32. GPUs take bfloat16 where supported,
    else float16.
    """
    if dtype != "auto":
        return dtype
    if device.startswith("cuda"):
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    cpu = getattr(torch, "cpu", None)
    native_bf16 = any(getattr(cpu, probe, lambda: False)() for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    return "bfloat16" if native_bf16 else "float32"


def training_autocast(precision: str, device: torch.device) -> torch.autocast:
    """A training forward pass's autocast context: bfloat16 for ``bf16`` (and for ``auto`` where
    the device runs it natively), disabled for ``fp32``. Weights and optimizer state stay float32,
    and bfloat16 keeps float32's exponent range, so no loss scaling is needed (unlike float16)."""
    wanted = {"fp32": "float32", "bf16": "bfloat16", "auto": "auto"}[precision]
    enabled = resolve_dtype(wanted, device.type) == "bfloat16"
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


@dataclass(frozen=True)
class SentenceTransformersMeta:
    """Settings a sentence-transformers directory declares about itself."""

    pooling: str | None = None
    normalize: bool = False
    max_length: int | None = None


def read_st_meta(model_dir: Path) -> SentenceTransformersMeta:
    """Read pooling / normalisation / max length from a sentence-transformers directory, if it is one."""
    modules_file = model_dir / "modules.json"
    if not modules_file.is_file():
        return SentenceTransformersMeta()
    modules = json.loads(modules_file.read_text())
    pooling = None
    normalize = False
    for module in modules:
        kind = module.get("type", "")
        if kind.endswith("Pooling"):
            cfg = json.loads((model_dir / module["path"] / "config.json").read_text())
            if cfg.get("pooling_mode_cls_token"):
                pooling = "cls"
            elif cfg.get("pooling_mode_mean_tokens"):
                pooling = "mean"
        elif kind.endswith("Normalize"):
            normalize = True
    max_length = None
    st_cfg = model_dir / "sentence_bert_config.json"
    if st_cfg.is_file():
        max_length = json.loads(st_cfg.read_text()).get("max_seq_length")
    return SentenceTransformersMeta(pooling=pooling, normalize=normalize, max_length=max_length)


def kept_layer_indices(total: int, num_layers: int, selection: LayerSelection = "first") -> list[int]:
    """Which of ``total`` transformer layers a ``num_layers``-layer cut keeps.

    ``first``: layers ``0 .. k-1``, as the papers' small students do. ``spread``: evenly spaced
    from the first to the last layer (DistilBERT-style initialisation from every n-th layer);
    keeping the teacher's last layer starts the student near the teacher's output space, which a
    student that must copy the teacher's embeddings needs (issue #24: on scifact's dev queries a
    2-layer student from layers 0 and 5 copied the teacher far better than one from layers 0 and 1).
    A single layer from ``spread`` is the last one.
    """
    if not 1 <= num_layers <= total:
        raise ValueError(f"num_layers={num_layers} but the model has {total} layers")
    if selection == "first":
        return list(range(num_layers))
    if selection != "spread":
        raise ValueError(f"layer selection must be 'first' or 'spread', got {selection!r}")
    if num_layers == 1:
        return [total - 1]
    return sorted({round(i * (total - 1) / (num_layers - 1)) for i in range(num_layers)})


def truncate_layers(model: PreTrainedModel, num_layers: int, selection: LayerSelection = "first") -> PreTrainedModel:
    """Keep ``num_layers`` transformer layers, chosen by ``selection`` (see :func:`kept_layer_indices`)."""
    layers = getattr(getattr(model, "encoder", None), "layer", None)
    if layers is None:
        raise ValueError(f"cannot truncate {type(model).__name__}: it has no encoder.layer list")
    keep = kept_layer_indices(len(layers), num_layers, selection)
    model.encoder.layer = nn.ModuleList([layers[i] for i in keep])
    model.config.num_hidden_layers = num_layers
    return model


class TextEncoder(nn.Module):
    """Encoder + pooling (+ optional L2 normalisation) over tokenised text.

    ``forward`` is differentiable (students train through it); ``encode`` is the batched,
    length-sorted inference path that returns float32 numpy.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        pooling: str = "mean",
        normalize: bool = False,
        max_length: int = 256,
    ) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.pool = get_pooler(pooling)
        self.normalize = normalize
        self.max_length = max_length

    @classmethod
    def from_pretrained(
        cls,
        reference: str | Path,
        pooling: str | None = None,
        normalize: bool | None = None,
        max_length: int | None = None,
        num_layers: int | None = None,
        device: str = "cpu",
        dtype: str = "float32",
        layer_selection: LayerSelection = "first",
    ) -> TextEncoder:
        """Load from a registry name, directory or hub id; unset options come from the checkpoint."""
        model_dir = resolve_model(reference)
        meta = read_st_meta(model_dir)
        model = AutoModel.from_pretrained(model_dir, dtype=DTYPES[dtype])
        if num_layers is not None:
            truncate_layers(model, num_layers, layer_selection)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        encoder = cls(
            model,
            tokenizer,
            pooling=pooling or meta.pooling or "mean",
            normalize=meta.normalize if normalize is None else normalize,
            max_length=max_length or meta.max_length or 256,
        )
        return encoder.to(device)

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def tokenize(self, texts: Sequence[str], max_length: int | None = None) -> list[list[int]]:
        """Token ids per text, truncated to ``max_length`` (default: the encoder's), unpadded."""
        limit = max_length or self.max_length
        out = self.tokenizer(list(texts), truncation=True, max_length=limit, padding=False)
        return out["input_ids"]

    def collate(self, ids: Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
        """Right-pad token id lists into ``input_ids`` / ``attention_mask`` tensors on the device."""
        return pad_token_ids(ids, self.tokenizer.pad_token_id or 0, self.device)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Pooled (and optionally normalised) embeddings ``[n, dim]``."""
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        pooled = self.pool(hidden, attention_mask)
        return nn.functional.normalize(pooled, dim=-1) if self.normalize else pooled

    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """Differentiable embeddings of a (small) list of texts in one forward pass."""
        return self(**self.collate(self.tokenize(texts)))

    def embed_ids(self, ids: Sequence[Sequence[int]], token_budget: int | None = None) -> torch.Tensor:
        """Differentiable embeddings ``[len(ids), dim]`` of tokenised texts, in input order.

        With a ``token_budget`` the texts go through in length-sorted passes of at most that many
        padded tokens (the embeddings are the same up to float rounding: padding is masked), so a
        training step does not pay forward and backward for padding up to the batch's longest text."""
        if token_budget is None or len(ids) < 2:
            return self(**self.collate(ids))
        passes = plan_batches([len(x) for x in ids], token_budget, len(ids))
        if len(passes) == 1:
            return self(**self.collate(ids))
        parts = [self(**self.collate([ids[i] for i in index])) for index in passes]
        inverse = torch.from_numpy(np.argsort(np.concatenate(passes))).to(self.device)
        return torch.cat(parts)[inverse]

    def iter_batches(
        self,
        ids: Sequence[Sequence[int]],
        token_budget: int,
        max_batch_size: int,
        sort: bool = True,
    ) -> Iterator[tuple[np.ndarray, dict[str, torch.Tensor]]]:
        """Yield ``(indices, padded batch)`` pairs planned by token budget."""
        for index in plan_batches([len(x) for x in ids], token_budget, max_batch_size, sort=sort):
            yield index, self.collate([ids[i] for i in index])

    @torch.inference_mode()
    def encode(
        self,
        texts: Sequence[str],
        token_budget: int | None = None,
        max_batch_size: int = 256,
        sort: bool = True,
        show_progress: bool = False,
        desc: str = "encoding",
        max_length: int | None = None,
    ) -> np.ndarray:
        """Embeddings ``[len(texts), dim]`` as float32 numpy, in input order; ``token_budget``
        caps each forward pass's padded tokens (default: the device's, see :mod:`common.batching`)."""
        ids = self.tokenize(texts, max_length)
        token_budget = token_budget or default_token_budget(self.device.type)
        out = np.empty((len(ids), self.dim), dtype=np.float32)
        with tqdm(total=len(ids), disable=not show_progress, desc=desc, unit="text") as bar:
            for index, batch in self.iter_batches(ids, token_budget, max_batch_size, sort=sort):
                out[index] = self(**batch).float().cpu().numpy()
                bar.update(len(index))
        return out


def pad_token_ids(ids: Sequence[Sequence[int]], pad_id: int, device: torch.device | str) -> dict[str, torch.Tensor]:
    """Right-pad lists of token ids to the longest one."""
    longest = max((len(x) for x in ids), default=0)
    input_ids = np.full((len(ids), longest), pad_id, dtype=np.int64)
    mask = np.zeros((len(ids), longest), dtype=np.int64)
    for row, seq in enumerate(ids):
        input_ids[row, : len(seq)] = seq
        mask[row, : len(seq)] = 1
    return {
        "input_ids": torch.from_numpy(input_ids).to(device),
        "attention_mask": torch.from_numpy(mask).to(device),
    }
