"""The batch's raw texts for online losses: a data collator that keeps them, and their extraction.

A live teacher needs the texts of each batch, but sentence-transformers hands a loss only the
student's tokenized features (``input_ids``, ``attention_mask``, ...). The ways to get them back:

* decode ``input_ids`` with the student's tokenizer (what sentence-transformers' GISTEmbedLoss
  does for a guide model with another tokenizer): lossy. Uncased vocabularies lower-case, unknown
  characters become ``[UNK]``, accents and spacing change, the text is already truncated to the
  *student's* ``max_seq_length`` and carries the student's prompt. The teacher would score
  different texts than the dataset holds;
* read texts the trainer keeps: sentence-transformers 6 keeps none. Its collator
  (``BaseDataCollator.__call__``) tokenizes each column and drops the strings;
* keep them on the way through the collator: **the choice here**, two ways to the same batch.
  The stock collator calls ``model.preprocess(texts, prompt=..., task=...)`` per text column and
  puts every key it returns in the batch as ``{column}_{key}``; the trainer's ``collect_features``
  groups every ``{column}_*`` key back into that column's feature dict. So the strings reach the
  loss as ``features[i]["raw_text"]`` if either

  - the student's ``preprocess`` also returns them: :func:`keep_raw_texts`, which every online
    loss calls on its student when it is built (``keep_texts=True``, the default). The trainer,
    built after the loss, captures that ``preprocess`` in its default collator, so the user's
    script changes only its loss line. The student's forward pass ignores the extra key
    (``encode`` and ``forward`` give the same embeddings), and the loss takes it out of the
    features before the student's forward pass anyway; or
  - the trainer gets :class:`TeacherTextCollator` as its ``data_collator`` (the stock collator
    plus the strings), for scripts that build the loss after the trainer, pass
    ``keep_texts=False``, or would rather not have the student's ``preprocess`` wrapped.

The teacher sees the dataset's strings exactly: no student prompt, no student truncation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sentence_transformers.sentence_transformer.data_collator import SentenceTransformerDataCollator
from torch import Tensor

# The key a text column's strings travel under, in the batch as ``{column}_raw_text`` and in the
# column's feature dict (after the trainer strips the ``{column}_`` prefix) as ``raw_text``.
RAW_TEXT_KEY = "raw_text"


class RawTextPreprocess:
    """A student's ``preprocess`` that also returns the raw strings it was given, under
    :data:`RAW_TEXT_KEY` (a plain class, not a closure, so DataLoader workers can pickle it)."""

    def __init__(self, preprocess: Callable[..., dict[str, Any]]) -> None:
        self.preprocess = preprocess

    def __call__(self, inputs: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        out = self.preprocess(inputs, *args, **kwargs)
        if isinstance(inputs, (list, tuple)) and all(isinstance(text, str) for text in inputs):
            out[RAW_TEXT_KEY] = list(inputs)
        return out


def keep_raw_texts(model: Any) -> None:
    """Wrap ``model.preprocess`` (once) so that what it returns also holds the raw strings.

    The trainer's default collator, made from ``model.preprocess`` when the trainer is built, then
    hands an online loss each column's texts with no ``data_collator=`` argument.
    """
    if not callable(getattr(model, "preprocess", None)):
        raise ValueError(f"{type(model).__name__} has no preprocess method to keep the batch's texts through; "
                         "pass keep_texts=False and data_collator=TeacherTextCollator(...) to the trainer")
    if not isinstance(model.preprocess, RawTextPreprocess):
        model.preprocess = RawTextPreprocess(model.preprocess)


@dataclass
class TeacherTextCollator(SentenceTransformerDataCollator):
    """``SentenceTransformerDataCollator`` that also keeps each text column's raw strings: the
    stock collator over :class:`RawTextPreprocess` (the same wrap an online loss puts on the
    student, here confined to the trainer's collator).

    Use it as the trainer's ``data_collator`` with any loss of
    :mod:`student_trainer.integrations` built with ``keep_texts=False``; it takes the same
    arguments as the stock collator::

        trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=train, loss=loss,
                                             data_collator=TeacherTextCollator(model.preprocess))

    A trainer built without ``data_collator`` passes ``args.prompts`` and ``args.router_mapping``
    to its own collator; with this one, pass them here too
    (``TeacherTextCollator(model.preprocess, prompts=args.prompts)``) if you use them.
    """

    def __post_init__(self) -> None:
        if not isinstance(self.preprocess_fn, RawTextPreprocess):
            self.preprocess_fn = RawTextPreprocess(self.preprocess_fn)


def split_texts(sentence_features: Iterable[dict[str, Any]], owner: str) -> tuple[list[dict[str, Tensor]], list[list[str]]]:
    """``(features, texts)``: each column's feature dict without its raw texts, and the texts.

    The feature dicts are copies, so the trainer's batch is left as it came; the student never sees
    the strings (a non-tensor key that differs between columns would also stop
    sentence-transformers from merging the columns into one forward pass).

    Raises:
        ValueError: a column has no raw texts (the trainer was built without
            :class:`TeacherTextCollator`).
    """
    features: list[dict[str, Tensor]] = []
    texts: list[list[str]] = []
    for column, feature in enumerate(sentence_features):
        if RAW_TEXT_KEY not in feature:
            raise ValueError(f"{owner} needs the batch's texts for the teacher, but input column {column} has none: "
                             "build the loss before the trainer (it keeps the texts through the student's preprocess "
                             "unless keep_texts=False), or build the trainer with "
                             "data_collator=TeacherTextCollator(model.preprocess) (from student_trainer.integrations)")
        features.append({key: value for key, value in feature.items() if key != RAW_TEXT_KEY})
        texts.append(list(feature[RAW_TEXT_KEY]))
    return features, texts


def interleave(columns: Sequence[Sequence[str]]) -> list[str]:
    """Column-major text columns to the row-major layout: ``[c0[0], c1[0], ..., c0[1], c1[1], ...]``.

    This is tightdistill's in-batch document layout (``DistillBatch``): query ``i``'s positive, then
    its negatives, then query ``i + 1``'s group.
    """
    return [column[row] for row in range(len(columns[0])) for column in columns]
