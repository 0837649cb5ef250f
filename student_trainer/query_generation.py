"""EmbedDistill's query generator (§4.3, App. E): noisy re-generations of the training queries.

Embedding matching needs no labels, so extra queries near the task's query distribution align the
student with the teacher where training queries are sparse. The paper feeds each training query
through BART-base with **10% of its tokens masked** and **zero-mean Gaussian noise
(sigma 0.1 or 0.2) added to the encoder output** before decoding, keeping 2 generations per query:

    h = Encoder(mask_10%(q));   q' = Decoder(h + eps),   eps ~ N(0, sigma^2 I)

Any Hugging Face seq2seq checkpoint directory works (BART, T5, ...): the tokenizer needs a mask
token (T5-style sentinels are used when it has none). No seq2seq weights ship with tightdistill;
with an untrained or tiny model the generations are noise, which is why the mechanics are tested
on a tiny BART and quality claims are left to users with BART-base.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer
from transformers.modeling_outputs import BaseModelOutput


class QueryGenerator:
    """Masked, noised re-generation of queries with a seq2seq model."""

    def __init__(self, checkpoint: str | Path, mask_ratio: float = 0.1, noise_sigma: float = 0.1, per_query: int = 2,
                 max_length: int = 64, batch_size: int = 32, seed: int = 0, device: str = "cpu") -> None:
        if not 0 <= mask_ratio < 1:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        if noise_sigma < 0 or per_query < 1:
            raise ValueError(f"noise_sigma must be >= 0 and per_query >= 1, got {noise_sigma} and {per_query}")
        path = Path(checkpoint)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"query generator: {checkpoint} is not a Hugging Face seq2seq checkpoint directory "
                                    "(no config.json); point it at e.g. a saved facebook/bart-base")
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForSeq2SeqLM.from_pretrained(path).to(device).eval()
        self.mask_id = self.tokenizer.mask_token_id
        if self.mask_id is None:
            sentinel = self.tokenizer.convert_tokens_to_ids("<extra_id_0>")  # T5's span-corruption token
            if sentinel is None or sentinel == self.tokenizer.unk_token_id:
                raise ValueError(f"query generator: the tokenizer of {checkpoint} has no mask token to corrupt queries with")
            self.mask_id = sentinel
        self.mask_ratio, self.noise_sigma, self.per_query = mask_ratio, noise_sigma, per_query
        self.max_length, self.batch_size = max_length, batch_size
        self.rng = np.random.default_rng(seed)
        self.torch_rng = torch.Generator(device=device).manual_seed(seed)
        self.device = torch.device(device)

    def mask(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Replace ``mask_ratio`` of each query's non-special tokens (at least one when any) by the mask token."""
        out = input_ids.clone()
        special = set(self.tokenizer.all_special_ids)
        for row in range(out.shape[0]):
            positions = [i for i in range(int(attention_mask[row].sum())) if int(out[row, i]) not in special]
            if not positions or self.mask_ratio == 0:
                continue
            k = max(1, int(round(self.mask_ratio * len(positions))))
            out[row, self.rng.choice(positions, size=k, replace=False)] = self.mask_id
        return out

    @torch.inference_mode()
    def generate_batch(self, queries: Sequence[str]) -> list[list[str]]:
        """``per_query`` generations for each query (one noise draw per generation)."""
        batch = self.tokenizer(list(queries), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt").to(self.device)
        encoder = self.model.get_encoder()
        outputs: list[list[str]] = [[] for _ in queries]
        for _ in range(self.per_query):
            masked = self.mask(batch["input_ids"], batch["attention_mask"])
            hidden = encoder(input_ids=masked, attention_mask=batch["attention_mask"]).last_hidden_state
            noise = torch.randn(hidden.shape, generator=self.torch_rng, device=hidden.device, dtype=hidden.dtype)
            generated = self.model.generate(encoder_outputs=BaseModelOutput(last_hidden_state=hidden + self.noise_sigma * noise),
                                            attention_mask=batch["attention_mask"], max_new_tokens=self.max_length, do_sample=False)
            for i, text in enumerate(self.tokenizer.batch_decode(generated, skip_special_tokens=True)):
                outputs[i].append(" ".join(text.split()))
        return outputs

    def generate(self, queries: Sequence[str], show_progress: bool = False) -> list[str]:
        """Distinct, non-empty generations for all ``queries`` that differ from every training query."""
        seen = set(queries)
        out: list[str] = []
        starts = range(0, len(queries), self.batch_size)
        for start in tqdm(starts, desc="generating extra queries", unit="batch", disable=not show_progress):
            for generations in self.generate_batch(queries[start : start + self.batch_size]):
                for text in generations:
                    if text and text not in seen:
                        seen.add(text)
                        out.append(text)
        return out
