"""ColBERT teacher: late interaction over L2-normalised token embeddings, scored with MaxSim.

TCT-ColBERT §2 (Eq. 3-4), following ColBERTv2's implementation: token embeddings of a BERT encoder
are projected by a bias-free linear layer (``dim`` 128) and L2-normalised; queries get a [Q] marker
after [CLS] and are padded with [MASK] to a fixed ``query_maxlen`` ("query augmentation": the
[MASK] positions are not attended to by default, yet their embeddings take part in MaxSim);
documents get a [D] marker and their punctuation tokens are dropped after encoding;
``MaxSim(q, d) = sum_i max_j <q_i, d_j>``.

Checkpoints are read as users have them: a ColBERTv2 directory (``HF_ColBERT``: BERT weights under
a ``bert.`` prefix plus ``linear.weight`` ``[dim, hidden]`` in one safetensors file, tokenizer
files, optional ``artifact.metadata`` JSON). Without ``linear.weight`` (any plain BERT encoder,
e.g. ``minilm-l6``) the kind runs *zero-shot*: MaxSim over the encoder's raw, normalised token
states, by default without markers or [MASK] augmentation, which such encoders were never trained
with.
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import Field
from safetensors import safe_open
from transformers import AutoConfig, AutoTokenizer, PreTrainedModel
from transformers.models.auto.modeling_auto import MODEL_MAPPING

from common.batching import plan_batches
from common.config import StrictModel
from common.model_registry import resolve_model
from common.scoring import maxsim_matrix, maxsim_pairs
from common.text_encoder import DTYPES, pad_token_ids
from teacher_service.kinds.backend import Backend
from teacher_service.kinds.base import Encoded, RepresentationTeacher, TeacherInfo
from teacher_service.schemas import Role

LINEAR_KEY = "linear.weight"
METADATA_FILE = "artifact.metadata"
# ColBERTv2.0's published artifact.metadata: query_maxlen 32, doc_maxlen 180.
DEFAULT_QUERY_MAXLEN = 32
DEFAULT_DOC_MAXLEN = 180
# Bound on the [nq, nd, lq, ld] similarity tensor MaxSim materialises at once (~256 MB of float32).
MAXSIM_CHUNK_ELEMENTS = 1 << 26


class ColBERTOptions(StrictModel):
    """Options of a ColBERT teacher; ``None`` means "what the checkpoint's artifact.metadata says"."""

    zero_shot: bool | None = Field(None, description="MaxSim over raw encoder token states, no projection; default: true when the checkpoint has no linear.weight.")
    query_maxlen: int | None = Field(None, ge=3, description="Query length in tokens (markers included); default: artifact.metadata, else 32.")
    doc_maxlen: int | None = Field(None, ge=3, description="Document truncation in tokens (markers included); default: artifact.metadata, else 180.")
    markers: bool | None = Field(None, description="Insert the [Q]/[D] marker tokens after [CLS]; default: on for a trained ColBERT, off zero-shot.")
    query_augmentation: bool | None = Field(None, description="Pad queries with [MASK] to query_maxlen; default: on for a trained ColBERT, off zero-shot.")
    attend_to_mask_tokens: bool | None = Field(None, description="Let the encoder attend to the [MASK] padding; default: artifact.metadata, else false (ColBERTv2).")
    mask_punctuation: bool | None = Field(None, description="Drop document punctuation tokens from MaxSim; default: artifact.metadata, else true.")
    query_token: str | None = Field(None, description="The [Q] marker token; default: artifact.metadata's query_token_id, else [unused0].")
    document_token: str | None = Field(None, description="The [D] marker token; default: artifact.metadata's doc_token_id, else [unused1].")


@dataclass(frozen=True)
class RoleSettings:
    """How one role (query or document) is tokenised."""

    max_length: int
    marker_id: int | None  # inserted after [CLS]
    augment: bool  # pad with [MASK] up to max_length (queries only)


def read_metadata(model_dir: Path) -> dict:
    """ColBERTv2's ``artifact.metadata`` (a flat JSON object), or ``{}`` when the directory has none."""
    path = model_dir / METADATA_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def read_checkpoint_tensor(model_dir: Path, key: str) -> torch.Tensor | None:
    """One tensor of a checkpoint (single or sharded safetensors, or ``pytorch_model.bin``), or ``None``.

    Only the named tensor is read: the projection is tiny next to the encoder weights.
    """
    file = model_dir / "model.safetensors"
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():  # sharded: the index names the shard holding the tensor
        shard = json.loads(index.read_text())["weight_map"].get(key)
        if shard is None:
            return None
        file = model_dir / shard
    if file.is_file():
        with safe_open(str(file), framework="pt") as fh:
            return fh.get_tensor(key) if key in fh.keys() else None
    legacy = model_dir / "pytorch_model.bin"
    if legacy.is_file():
        return torch.load(legacy, map_location="cpu", weights_only=True, mmap=True).get(key)
    return None


def load_base_model(model_dir: Path, dtype: str, unused: tuple[str, ...]) -> PreTrainedModel:
    """The checkpoint's base encoder (``BertModel`` for HF_ColBERT or a BERT CrossEncoder).

    ``from_pretrained`` already strips the ``bert.`` prefix a model with heads stores its encoder
    under. The keys matching the ``unused`` regexes (heads this kind reads itself or never needs)
    are declared expected-unused, as HF_ColBERT does for its own extras, so the load report only
    speaks up about real mismatches such as missing encoder weights.
    """
    config = AutoConfig.from_pretrained(model_dir)
    base = MODEL_MAPPING[type(config)]
    loader = type(base.__name__, (base,), {"_keys_to_ignore_on_load_unexpected": list(unused)})
    return loader.from_pretrained(model_dir, dtype=DTYPES[dtype])


def pad_ragged(tokens: np.ndarray, lengths: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat ``[sum(lengths), dim]`` token embeddings -> padded ``[n, max_len, dim]`` plus mask ``[n, max_len]``."""
    n, longest = len(lengths), int(lengths.max(initial=0))
    padded = torch.zeros(n, longest, tokens.shape[1], dtype=torch.float32)
    mask = torch.arange(longest)[None, :] < torch.as_tensor(lengths)[:, None]
    padded[mask] = torch.from_numpy(np.ascontiguousarray(tokens, dtype=np.float32))
    return padded, mask


class ColBERTTeacher(RepresentationTeacher):
    """A frozen ColBERT (or zero-shot late-interaction) teacher.

    ``Encoded`` layout: ``pooled`` ``[n, dim]`` is the mean of a text's kept token embeddings (for
    embedding matching); ``tokens`` ``[sum(lengths), dim]`` holds only the kept positions, so
    ``lengths`` are the true counts MaxSim uses: every one of a query's ``query_maxlen`` positions
    (with augmentation), a document's non-punctuation, non-padding tokens.
    """

    kind = "colbert"
    signals_offered = ("scores", "pooled_embeddings", "token_embeddings")
    Options = ColBERTOptions

    def __init__(self, name: str, checkpoint: str, options: ColBERTOptions, device: str = "cpu",
                 dtype: str = "float32", token_budget: int | None = None, backend: Backend | None = None) -> None:
        super().__init__(name, checkpoint, options, device, token_budget, dtype, backend)
        model_dir = resolve_model(checkpoint)
        meta = read_metadata(model_dir)
        if meta.get("similarity", "cosine") != "cosine":
            raise ValueError(f"teacher '{name}': {model_dir / METADATA_FILE} declares similarity "
                             f"'{meta['similarity']}'; only ColBERT's default 'cosine' MaxSim is supported")
        # The projection and MaxSim stay in torch; only the encoder's pass moves to the backend.
        self.encoder = self.on_backend(load_base_model(model_dir, dtype, unused=(rf"^{LINEAR_KEY}$",)).to(self.device).eval())
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)

        linear = read_checkpoint_tensor(model_dir, LINEAR_KEY)
        self.zero_shot = linear is None if options.zero_shot is None else options.zero_shot
        if not self.zero_shot and linear is None:
            raise ValueError(f"teacher '{name}': zero_shot is false but {model_dir} has no '{LINEAR_KEY}' projection")
        # [dim, hidden], applied as tokens @ W.T exactly like ColBERT's nn.Linear(bias=False).
        self.linear = None if self.zero_shot else linear.to(self.device, DTYPES[dtype])
        self.token_dim = int(self.encoder.config.hidden_size if self.linear is None else self.linear.shape[0])
        if not self.zero_shot and meta.get("dim", self.token_dim) != self.token_dim:
            raise ValueError(f"teacher '{name}': artifact.metadata says dim {meta['dim']} but {LINEAR_KEY} projects to {self.token_dim}")

        trained = not self.zero_shot
        markers = trained if options.markers is None else options.markers
        augment = trained if options.query_augmentation is None else options.query_augmentation
        self.attend_to_mask_tokens = _pick(options.attend_to_mask_tokens, meta.get("attend_to_mask_tokens"), False)
        self.mask_punctuation = _pick(options.mask_punctuation, meta.get("mask_punctuation"), True)
        self.query_maxlen = int(_pick(options.query_maxlen, meta.get("query_maxlen"), DEFAULT_QUERY_MAXLEN))
        self.doc_maxlen = int(_pick(options.doc_maxlen, meta.get("doc_maxlen"), DEFAULT_DOC_MAXLEN))
        if augment and self.tokenizer.mask_token_id is None:
            raise ValueError(f"teacher '{name}': query_augmentation needs a [MASK] token, and this tokenizer has none")
        self.roles = {
            "query": RoleSettings(self.query_maxlen, self._marker(markers, options.query_token, meta.get("query_token_id"), "[unused0]"), augment),
            "document": RoleSettings(self.doc_maxlen, self._marker(markers, options.document_token, meta.get("doc_token_id"), "[unused1]"), False),
        }
        # ColBERTv2's skiplist: the ids of string.punctuation characters as single tokens.
        self.punctuation_ids = torch.tensor(sorted({
            ids[0] for ids in (self.tokenizer.encode(p, add_special_tokens=False) for p in string.punctuation) if ids
        }), device=self.device)

    def _marker(self, enabled: bool, option: str | None, meta_token: str | None, default: str) -> int | None:
        if not enabled:
            return None
        token = option or meta_token or default
        token_id = self.tokenizer.convert_tokens_to_ids(token)
        if token_id is None or token_id == self.tokenizer.unk_token_id:
            raise ValueError(f"teacher '{self.name}': marker token '{token}' is not in the tokenizer's vocabulary; "
                             "set options.query_token / document_token, or markers: false")
        return int(token_id)

    def _info(self) -> TeacherInfo:
        return TeacherInfo(
            name=self.name, kind=self.kind, checkpoint=self.checkpoint, dim=self.token_dim, token_dim=self.token_dim,
            similarity="maxsim", signals=list(self.signals_offered),
            max_query_length=self.query_maxlen, max_document_length=self.doc_maxlen,
            matrix_cost="one encoder pass per query and per document, then MaxSim over all B x N pairs "
                        "(B x N x query tokens x document tokens dot products)",
        )

    def needs_tokens_to_score(self) -> bool:
        return True

    # --- encoding ------------------------------------------------------------------------------
    def tokenize(self, texts: list[str], role: Role) -> tuple[list[list[int]], list[int]]:
        """ColBERT inputs: token ids per text and how many leading positions the encoder attends to.

        ``[CLS] (marker) text... [SEP]`` truncated to the role's max length (the marker counts, as
        in ColBERTv2); an augmented query is then padded with [MASK] to exactly ``query_maxlen``,
        and its [MASK] positions are attended to only with ``attend_to_mask_tokens``.
        """
        settings = self.roles[role]
        room = settings.max_length - (settings.marker_id is not None)
        ids = self.tokenizer(texts, add_special_tokens=True, truncation=True, max_length=room)["input_ids"]
        if settings.marker_id is not None:
            ids = [seq[:1] + [settings.marker_id] + seq[1:] for seq in ids]
        attended = [len(seq) for seq in ids]
        if settings.augment:
            ids = [seq + [self.tokenizer.mask_token_id] * (settings.max_length - len(seq)) for seq in ids]
            if self.attend_to_mask_tokens:
                attended = [len(seq) for seq in ids]
        return ids, attended

    @torch.inference_mode()
    def encode(self, texts: list[str], role: Role, with_tokens: bool = False) -> Encoded:
        """Pooled ``[n, token_dim]`` and (``with_tokens``) flat kept token embeddings ``[sum(lengths), token_dim]``."""
        ids, attended = self.tokenize(texts, role)
        pooled = np.empty((len(texts), self.token_dim), dtype=np.float32)
        kept_tokens: list[np.ndarray | None] = [None] * len(texts)
        for index in plan_batches([len(x) for x in ids], self.token_budget, max_batch_size=max(1, len(ids))):
            batch = pad_token_ids([ids[i] for i in index], self.tokenizer.pad_token_id or 0, self.device)
            positions = torch.arange(batch["input_ids"].shape[1], device=self.device)
            attention = (positions[None, :] < torch.tensor([attended[i] for i in index], device=self.device)[:, None]).long()
            tokens, keep = self._forward(batch["input_ids"], attention, batch["attention_mask"].bool(), role)
            keep_f = keep.unsqueeze(-1).to(tokens.dtype)
            pooled[index] = ((tokens * keep_f).sum(1) / keep_f.sum(1).clamp(min=1)).float().cpu().numpy()
            if with_tokens:
                for row, i in enumerate(index):
                    kept_tokens[i] = tokens[row][keep[row]].float().cpu().numpy()
        if not with_tokens:
            return Encoded(pooled)
        lengths = np.array([len(t) for t in kept_tokens], dtype=np.int64)
        flat = np.concatenate(kept_tokens) if kept_tokens else np.zeros((0, self.token_dim), np.float32)
        return Encoded(pooled, flat, lengths)

    def _forward(self, input_ids: torch.Tensor, attention: torch.Tensor, present: torch.Tensor,
                 role: Role) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised token embeddings ``[n, l, token_dim]`` and the mask ``[n, l]`` of those MaxSim keeps.

        ``present`` marks non-padding positions (the [MASK] augmentation counts as present even
        when it is not attended to); documents additionally lose punctuation, which ColBERT masks
        after encoding, so the encoder still saw it as context.
        """
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention).last_hidden_state
        if self.linear is not None:
            hidden = hidden @ self.linear.T
        tokens = torch.nn.functional.normalize(hidden, dim=-1)
        keep = present
        if role == "document" and self.mask_punctuation:
            keep = keep & ~torch.isin(input_ids, self.punctuation_ids)
        return tokens, keep

    # --- scoring -------------------------------------------------------------------------------
    def score_encoded(self, q: Encoded, d: Encoded, mode: str) -> np.ndarray:
        """MaxSim from token encodings: ``[n]`` for mode 'pairs', ``[nq, nd]`` for 'matrix'.

        Documents are padded to the longest once; the matrix is computed in query chunks so the
        ``[nq, nd, lq, ld]`` similarity tensor stays bounded.
        """
        q_tok, q_mask = pad_ragged(q.tokens, q.lengths)
        d_tok, d_mask = pad_ragged(d.tokens, d.lengths)
        if mode != "matrix":
            return maxsim_pairs(q_tok, q_mask, d_tok, d_mask).numpy()
        per_query = max(1, d_tok.shape[0] * d_tok.shape[1] * q_tok.shape[1])
        step = max(1, MAXSIM_CHUNK_ELEMENTS // per_query)
        parts = [maxsim_matrix(q_tok[i : i + step], q_mask[i : i + step], d_tok, d_mask) for i in range(0, len(q_tok), step)]
        return torch.cat(parts).numpy()


def _pick(option: Any, metadata: Any, default: Any) -> Any:
    """First of (explicit option, checkpoint metadata, built-in default) that is set."""
    if option is not None:
        return option
    return default if metadata is None else metadata
