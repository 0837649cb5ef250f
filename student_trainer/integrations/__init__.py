"""Drop-in sentence-transformers losses that ask a live teacher for every batch.

For trainers not written with tightdistill: an ordinary ``SentenceTransformerTrainer`` script
switches from precomputed teacher scores (a label column) to the served teacher by changing its
loss line::

    from student_trainer.integrations import OnlineMarginMSELoss

    loss = OnlineMarginMSELoss(model, "http://127.0.0.1:8000", teacher="minilm")  # was: losses.MarginMSELoss(model)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=triples, loss=loss)

The teacher needs the batch's texts, which sentence-transformers' collator drops: the loss keeps
them through the student's ``preprocess`` (so build it before the trainer), or the trainer takes
``data_collator=TeacherTextCollator(model.preprocess)`` with ``keep_texts=False``; see
:mod:`student_trainer.integrations.texts` for both and why not decoding. For a token, other
timeouts or Ray handles, pass a :class:`TeacherClient` instead of the URL.

Losses (one per module; each also has ``compute_loss_from_embeddings``, ``get_config_dict`` and
``citation`` like the sentence-transformers losses):

* :class:`OnlineMarginMSELoss` (Hofstätter et al. 2020): ``(query, positive, negative...)`` columns
* :class:`OnlineInBatchKLLoss` (TCT-ColBERT, Lin et al. 2021): ``(query, positive[, negatives])``
* :class:`OnlineEmbeddingMSELoss` (Reimers & Gurevych 2020; EmbedDistill Eq. 7/8): any columns
"""

from student_trainer.integrations.embedding_mse import OnlineEmbeddingMSELoss
from student_trainer.integrations.in_batch_kl import OnlineInBatchKLLoss
from student_trainer.integrations.margin_mse import OnlineMarginMSELoss
from student_trainer.integrations.online import OnlineTeacherLoss
from student_trainer.integrations.texts import RAW_TEXT_KEY, TeacherTextCollator, keep_raw_texts

__all__ = [
    "RAW_TEXT_KEY",
    "OnlineEmbeddingMSELoss",
    "OnlineInBatchKLLoss",
    "OnlineMarginMSELoss",
    "OnlineTeacherLoss",
    "TeacherTextCollator",
    "keep_raw_texts",
]
