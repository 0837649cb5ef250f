"""Cross-encoder (CE) teachers: one joint forward pass per (query, document) pair.

* **[CLS]-pooled CE** (EmbedDistill §2.1): ``s(q, d) = <w, Enc([CLS] q [SEP] d [SEP])[CLS]>``, i.e.
  the logit of a sentence-transformers ``CrossEncoder`` / HF ``AutoModelForSequenceClassification``
  checkpoint with ``num_labels=1``. Besides scores it gives the pair's joint embedding, the final
  [CLS] state the scoring head reads: what EmbedDistill's "naive joint matching" (§4.2, Table 5)
  matches a dual-encoder student against.
* **Dual-pooled CE** (EmbedDistill §4.2, App. B): two vectors are pooled from the same joint
  encoding, a query proxy ``emb_q<-(q,d)`` and a document proxy ``emb_d<-(q,d)``, and the score is
  ``score_scale * <emb_q, emb_d>``. Special-token pooling takes the final states of [CLS] (query)
  and of the first [SEP] (document); segment pooling averages the query segment's and the document
  segment's token states. The proxies are what CE->DE embedding matching needs (the joint [CLS]
  embedding does not work for that, §4.2).

Scoring an in-batch matrix costs ``B x N`` forward passes, so matrix requests are capped at
``max_matrix_pairs``.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from common.batching import plan_batches
from common.config import StrictModel
from common.model_registry import resolve_model
from common.text_encoder import DTYPES
from teacher_service.errors import RequestTooLarge
from teacher_service.kinds.backend import Backend
from teacher_service.kinds.base import Arrays, PairOutput, Primitives, Teacher, TeacherInfo
from teacher_service.kinds.colbert import load_base_model
from teacher_service.schemas import EncodeRequest, ScoreRequest, SignalsRequest

Pooling = Literal["cls", "special_token", "segment_mean"]
DUAL_POOLINGS = ("special_token", "segment_mean")
# Written by `tightdistill train-teacher --kind ce` beside the weights: {"pooling", "score_scale"}.
CE_META_FILE = "tightdistill_ce.json"
DEFAULT_MAX_LENGTH = 512
# Heads a dual-pooled CE checkpoint may carry that scoring does not use: the classifier, and an MLM-style
# token-reconstruction head from training (EmbedDistill §4.2).
UNUSED_HEADS = (r"^classifier\.", r"^cls\.", r"^lm_head\.")


class CrossEncoderOptions(StrictModel):
    """Options of a cross-encoder teacher; unset values come from the checkpoint's tightdistill_ce.json."""

    pooling: Pooling | None = Field(None, description="'cls' (classifier logit) or a dual pooling ('special_token', 'segment_mean'); default: tightdistill_ce.json, else cls.")
    score_scale: float | None = Field(None, description="Dual pooling: factor on <emb_q, emb_d>; default: tightdistill_ce.json, else 1.0.")
    max_length: int | None = Field(None, ge=8, description="Pair truncation in tokens (longest first, as sentence-transformers); default: the tokenizer's model_max_length, at most 512.")
    max_matrix_pairs: int = Field(4096, ge=1, description="Most query x document pairs in one mode='matrix' request (each pair is one forward pass).")


def read_ce_meta(model_dir: Path) -> dict:
    """The dual-pooling settings ``train-teacher`` stores, or ``{}`` for a plain CrossEncoder directory."""
    path = model_dir / CE_META_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def segment_masks(input_ids: torch.Tensor, attention_mask: torch.Tensor, special: torch.Tensor,
                  sep_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Query- and document-segment masks ``[n, l]`` of tokenised pairs.

    The query segment is everything before the first [SEP], the document segment everything after
    it; special tokens and padding belong to neither. Splitting on the first [SEP] rather than on
    ``token_type_ids`` also works for tokenizers without segment ids (RoBERTa's ``</s></s>``).
    """
    seps_seen = torch.cumsum((input_ids == sep_id).long(), dim=1)
    content = attention_mask.bool() & ~special.bool()
    return content & (seps_seen == 0), content & (seps_seen >= 1)


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden`` ``[n, l, dim]`` over positions where ``mask`` ``[n, l]`` is set -> ``[n, dim]``."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1)


def matrix_groups(num_queries: int, num_documents: int) -> tuple[np.ndarray, np.ndarray]:
    """tightdistill's batch layout: which documents belong to which query in a signals matrix.

    Documents form ``B`` contiguous groups; query ``i``'s group starts at ``i * N // B`` (its
    positive, followed by its negatives). Returns ``starts`` ``[B]`` and ``owner`` ``[N]`` (the
    query whose group holds document ``j``; with ``N % B == 0`` that is ``j // (N // B)``).
    """
    starts = np.arange(num_queries) * num_documents // num_queries
    owner = np.searchsorted(starts, np.arange(num_documents), side="right") - 1
    return starts, owner


class CrossEncoderTeacher(Teacher):
    """A frozen cross-encoder teacher, [CLS]-pooled or dual-pooled."""

    kind = "cross_encoder"
    Options = CrossEncoderOptions

    def __init__(self, name: str, checkpoint: str, options: CrossEncoderOptions, device: str = "cpu",
                 dtype: str = "float32", token_budget: int | None = None, backend: Backend | None = None) -> None:
        super().__init__(name, checkpoint, options, device, token_budget, dtype, backend)
        model_dir = resolve_model(checkpoint)
        meta = read_ce_meta(model_dir)
        self.pooling: Pooling = options.pooling or meta.get("pooling", "cls")
        if self.pooling not in ("cls", *DUAL_POOLINGS):
            raise ValueError(f"teacher '{name}': {model_dir / CE_META_FILE} names pooling '{self.pooling}'; "
                             f"expected one of cls, {', '.join(DUAL_POOLINGS)}")
        self.score_scale = float(options.score_scale if options.score_scale is not None else meta.get("score_scale", 1.0))
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        token_types = "token_type_ids" in self.tokenizer.model_input_names
        if self.dual:
            # Dual pooling scores from the final token states only: the base encoder is all it needs,
            # and a *ForSequenceClassification checkpoint's head (or a training-time token
            # reconstruction head) is dropped.
            self.model = self.on_backend(load_base_model(model_dir, dtype, unused=UNUSED_HEADS), token_types=token_types)
        else:
            model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=DTYPES[dtype])
            if model.config.num_labels != 1:
                raise ValueError(f"teacher '{name}': a [CLS]-pooled cross-encoder needs num_labels=1 (one relevance "
                                 f"logit), {model_dir} has {model.config.num_labels}")
            # The joint embedding is the encoder's final [CLS] state, the one the scoring head reads;
            # in torch a hook keeps that one view (output_hidden_states would keep every layer's
            # states); an ONNX graph returns it beside the logits.
            self._cls_state = threading.local()
            model.base_model.register_forward_hook(self._keep_cls_state)
            self.model = self.on_backend(model, outputs="classifier", token_types=token_types)
        self.model.to(self.device).eval()
        limit = self.tokenizer.model_max_length
        self.max_length = options.max_length or (limit if limit and limit <= DEFAULT_MAX_LENGTH else DEFAULT_MAX_LENGTH)
        self.dim = int(self.model.config.hidden_size) if self.dual else None
        self.joint_dim = None if self.dual else int(self.model.config.hidden_size)

    @property
    def dual(self) -> bool:
        return self.pooling in DUAL_POOLINGS

    @property
    def signals_offered(self) -> tuple[str, ...]:  # type: ignore[override]
        return ("scores", "proxy_embeddings") if self.dual else ("scores", "joint_embeddings")

    def _info(self) -> TeacherInfo:
        return TeacherInfo(
            name=self.name, kind=self.kind, checkpoint=self.checkpoint, dim=self.dim, joint_dim=self.joint_dim,
            similarity="cross-attention", signals=list(self.signals_offered),
            max_query_length=self.max_length, max_document_length=self.max_length,
            matrix_cost="B x N forward passes over (query, document) pairs",
            max_matrix_pairs=self.options.max_matrix_pairs,
        )

    # --- primitive -----------------------------------------------------------------------------
    @torch.inference_mode()
    def forward_pairs(self, queries: list[str], documents: list[str], with_embeddings: bool = False) -> PairOutput:
        """Scores ``[n]`` of aligned pairs and, ``with_embeddings``, the proxies ``[n, dim]``
        (dual-pooled) or the joint [CLS] embeddings ``[n, hidden]`` ([CLS]-pooled); scoring alone
        (re-ranking, ``/v1/score``) copies no embeddings out of the model.

        Pairs are tokenised once, then run in length-sorted batches capped by padded tokens.
        """
        enc = self.tokenizer(queries, documents, truncation="longest_first", max_length=self.max_length,
                             return_special_tokens_mask=self.pooling == "segment_mean")
        n = len(queries)
        scores = np.empty(n, dtype=np.float32)
        q_proxy = np.empty((n, self.dim), dtype=np.float32) if self.dual and with_embeddings else None
        d_proxy = np.empty((n, self.dim), dtype=np.float32) if self.dual and with_embeddings else None
        joint = np.empty((n, self.joint_dim), dtype=np.float32) if not self.dual and with_embeddings else None
        for index in plan_batches([len(x) for x in enc["input_ids"]], self.token_budget, max_batch_size=max(1, n)):
            batch = self.tokenizer.pad({key: [enc[key][i] for i in index] for key in enc.keys()}, return_tensors="pt")
            batch = {key: value.to(self.device) for key, value in batch.items()}
            if not self.dual:
                out = self.model(**batch)
                scores[index] = out.logits[:, 0].float().cpu().numpy()
                if joint is not None:
                    state = getattr(out, "cls_state", None)  # the ONNX graph's output, else the torch hook's
                    joint[index] = (self._cls_state.value if state is None else state).float().cpu().numpy()
                continue
            emb_q, emb_d = self._dual_pool(batch)
            scores[index] = (self.score_scale * (emb_q * emb_d).sum(-1)).float().cpu().numpy()
            if q_proxy is not None:
                q_proxy[index] = emb_q.float().cpu().numpy()
                d_proxy[index] = emb_d.float().cpu().numpy()
        return PairOutput(scores, q_proxy, d_proxy, joint)

    def calibration_outputs(self, texts: list[str]) -> np.ndarray:
        """Each text paired with another: the pairs' proxies (dual-pooled) or joint [CLS] states,
        with the score as a last column (what ``backend: auto`` compares backends on)."""
        out = self.forward_pairs(texts, texts[::-1], with_embeddings=True)
        parts = [out.query_proxy, out.document_proxy] if self.dual else [out.joint]
        return np.concatenate([*parts, out.scores[:, None]], axis=1)

    def _keep_cls_state(self, module: torch.nn.Module, args: tuple, output: tuple) -> None:
        self._cls_state.value = output[0][:, 0]  # per thread: a batch's own forward pass sets it

    def _dual_pool(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Query and document proxies ``[n, dim]`` from one joint encoding (EmbedDistill App. B)."""
        special = batch.pop("special_tokens_mask", None)
        hidden = self.model(**batch).last_hidden_state  # [n, l, dim]
        ids = batch["input_ids"]
        sep_id = self.tokenizer.sep_token_id
        if self.pooling == "special_token":
            first_sep = (ids == sep_id).long().argmax(dim=1)  # argmax returns the first maximum
            rows = torch.arange(len(ids), device=ids.device)
            return hidden[:, 0], hidden[rows, first_sep]
        q_mask, d_mask = segment_masks(ids, batch["attention_mask"], special, sep_id)
        return masked_mean(hidden, q_mask), masked_mean(hidden, d_mask)

    # --- operations ----------------------------------------------------------------------------
    def op_encode(self, req: EncodeRequest, prims: Primitives) -> Arrays:
        # Refused here, before the request reaches a batcher: a CE never embeds a text on its own.
        raise self.unsupported("embeddings of single texts (encode): a cross-encoder only encodes (query, document) pairs")

    def _pair_output(self, req: ScoreRequest | SignalsRequest, prims: Primitives, with_embeddings: bool = False) -> PairOutput:
        """Pairs mode: one pass per aligned pair. Matrix mode: every query with every document,
        flattened query-major (pair ``i * N + j`` is query ``i``, document ``j``)."""
        if req.mode == "pairs":
            return prims.forward_pairs(req.queries, req.documents, with_embeddings)
        nq, nd = len(req.queries), len(req.documents)
        limit = self.options.max_matrix_pairs
        if nq * nd > limit:
            raise RequestTooLarge(
                f"a matrix of {nq} queries x {nd} documents is {nq * nd} cross-encoder forward passes, more than "
                f"the max_matrix_pairs limit of {limit} (teacher '{self.name}'); send fewer queries/documents per "
                "request or use mode 'pairs'"
            )
        return prims.forward_pairs([q for q in req.queries for _ in range(nd)], list(req.documents) * nq, with_embeddings)

    def _scores(self, out: PairOutput, req: ScoreRequest | SignalsRequest) -> np.ndarray:
        return out.scores.reshape(len(req.queries), len(req.documents)) if req.mode == "matrix" else out.scores

    def op_score(self, req: ScoreRequest, prims: Primitives) -> Arrays:
        return {"scores": self._scores(self._pair_output(req, prims), req)}

    def op_signals(self, req: SignalsRequest, prims: Primitives) -> Arrays:
        """Scores, plus the dual-pooled proxies as ``query_embeddings`` / ``document_embeddings``.

        A [CLS]-pooled CE returns ``joint_embeddings`` instead, taken from the same pairs as the
        query proxies: the final [CLS] state of pair ``i`` (mode 'pairs'), or of (query ``i``, its
        positive) (mode 'matrix').

        A proxy depends on the pair it was pooled from, so each text's embedding is taken from one
        designated pair, at no extra cost:

        * mode 'pairs': ``query_embeddings[i]`` and ``document_embeddings[i]`` come from pair ``i``;
        * mode 'matrix' (tightdistill's batch layout, documents grouped per query with the positive
          first, see :func:`matrix_groups`): ``query_embeddings[i]`` is the query proxy of
          (query ``i``, document ``i * N // B``), i.e. from the pair with its positive, and
          ``document_embeddings[j]`` the document proxy of (the query owning document ``j``,
          document ``j``), i.e. from the pair with its own query.
        """
        if req.tokens:
            raise self.unsupported("token embeddings")
        out = self._pair_output(req, prims, with_embeddings=req.embeddings)
        result = {"scores": self._scores(out, req)}
        if not req.embeddings:
            return result
        nd = len(req.documents)
        if req.mode == "pairs":
            query_rows = document_rows = np.arange(nd)
        else:
            starts, owner = matrix_groups(len(req.queries), nd)
            query_rows = np.arange(len(req.queries)) * nd + starts
            document_rows = owner * nd + np.arange(nd)
        if not self.dual:
            result["joint_embeddings"] = out.joint[query_rows]
            return result
        result["query_embeddings"] = out.query_proxy[query_rows]
        result["document_embeddings"] = out.document_proxy[document_rows]
        return result
