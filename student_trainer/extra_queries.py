"""Extra queries for embedding matching (EmbedDistill §4.3): from the corpus, or from the training queries.

Embedding matching needs no labels, so any query-like text aligns the student with the teacher
where training queries are sparse. This model-free generator takes titles, single sentences and
short word spans from the documents — always available, unlike a BART query generator.
"""

from __future__ import annotations

import re

import numpy as np

from common.config import ConfigError
from common.datasets import BeirDataset

_SENTENCE = re.compile(r"(?<=[.!?])\s+")


# Question openings for pseudo-queries phrased as questions: users ask search boxes questions, and
# no sentence or span of a document reads like one.
QUESTION_WORDS = ("what", "how", "why", "when", "who", "where", "which", "what is", "how does", "how many")


def as_questions(texts: list[str], share: float, seed: int) -> list[str]:
    """``texts`` with a seeded ``share`` of them phrased as questions: a question opening, the text
    (first letter lower-cased), a question mark ("how a glacier cave is formed within the ice?").

    Not grammar, and it need not be: the teacher labels whatever text the student sees, so these
    only put question forms (wh-words, "?") into the input distribution the student learns the
    teacher's query space on, where a query log of questions would."""
    if share <= 0:
        return list(texts)
    rng = np.random.default_rng(seed)
    out = []
    for text in texts:
        if rng.random() < share:
            opening = QUESTION_WORDS[int(rng.integers(len(QUESTION_WORDS)))]
            text = f"{opening} {text[:1].lower()}{text[1:].rstrip(' .!?')}?"
        out.append(text)
    return out


def corpus_pseudo_queries(dataset: BeirDataset, max_queries: int, seed: int, min_words: int = 4,
                          max_words: int = 24, per_document: int = 1, question_share: float = 0.0) -> list[str]:
    """Up to ``max_queries`` distinct pseudo-queries: titles, sentences and word spans of documents.

    Each document gives its title and ``per_document`` draws of a sentence and of a word span
    (duplicates dropped): one draw each leaves a small corpus (cranfield's 1,400 abstracts) with
    few distinct texts to learn the teacher's query space from; more draws multiply them.
    ``question_share`` of them are then phrased as questions (:func:`as_questions`); the draws
    themselves do not depend on it."""
    rng = np.random.default_rng(seed)
    titles = dataset.corpus.column("title").to_pylist()
    texts = dataset.corpus.column("text").to_pylist()
    candidates: list[str] = []
    for title, text in zip(titles, texts):
        if title and len(title.split()) >= min_words:
            candidates.append(title.strip())
        sentences = [s for s in _SENTENCE.split(text) if min_words <= len(s.split()) <= max_words]
        words = text.split()
        for _ in range(per_document):  # one draw: the very sequence of draws of earlier versions
            if sentences:
                candidates.append(sentences[int(rng.integers(len(sentences)))].strip())
            if len(words) >= 2 * min_words:
                length = int(rng.integers(min_words, min(max_words, len(words)) + 1))
                start = int(rng.integers(0, len(words) - length + 1))
                candidates.append(" ".join(words[start : start + length]))
    unique = list(dict.fromkeys(c for c in candidates if c))
    order = rng.permutation(len(unique))[:max_queries]
    return as_questions([unique[i] for i in order], question_share, seed + 1)


def perturbed_queries(queries: list[str], per_query: int, seed: int, drop: float = 0.15, min_words: int = 3) -> list[str]:
    """Model-free variants of the training queries: word dropout, one adjacent swap or a crop.

    The query generator's idea (EmbedDistill §4.3: noisy re-generations near the task's query
    distribution) without a seq2seq model. Variants equal to a training query are dropped.
    """
    rng = np.random.default_rng(seed)
    seen = set(queries)
    out: list[str] = []
    for query in queries:
        words = query.split()
        if len(words) < min_words:
            continue
        for _ in range(per_query):
            how = int(rng.integers(3))
            if how == 0:  # word dropout, never below min_words
                kept = [w for w in words if rng.random() >= drop]
                variant = kept if len(kept) >= min_words else words[:min_words]
            elif how == 1:  # swap one adjacent pair
                i = int(rng.integers(len(words) - 1))
                variant = words[:i] + [words[i + 1], words[i]] + words[i + 2 :]
            else:  # a contiguous crop of at least ~60% of the words
                length = int(rng.integers(max(min_words, int(0.6 * len(words))), len(words) + 1))
                start = int(rng.integers(0, len(words) - length + 1))
                variant = words[start : start + length]
            text = " ".join(variant)
            if text not in seen:
                seen.add(text)
                out.append(text)
    return out


def build_extra_queries(kind: str, dataset: BeirDataset, train_queries: list[str], pool: int, per_query: int, seed: int,
                        generator: str | None = None, noise: float = 0.1, show_progress: bool = False,
                        per_document: int = 1, question_share: float = 0.0) -> list[str]:
    """The run's extra-query pool for ``data.extra_queries`` = ``kind`` (at most ``pool`` of them;
    ``per_document`` and ``question_share`` as in :func:`corpus_pseudo_queries`)."""
    if kind == "corpus":
        return corpus_pseudo_queries(dataset, pool, seed, per_document=per_document, question_share=question_share)
    if kind == "perturbed":
        out = perturbed_queries(train_queries, per_query, seed)
    elif kind == "generated":
        if generator is None:
            raise ConfigError("data.extra_queries: generated needs data.generator, a seq2seq checkpoint directory")
        from student_trainer.query_generation import QueryGenerator

        out = QueryGenerator(generator, noise_sigma=noise, per_query=per_query, seed=seed).generate(train_queries, show_progress)
    else:
        return []
    order = np.random.default_rng(seed).permutation(len(out))[:pool]
    return [out[i] for i in order]
