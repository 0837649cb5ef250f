"""Train the teachers tightdistill serves: cross-encoders ([CLS] or EmbedDistill's dual pooling) and
ColBERT, from an encoder checkpoint, on a dataset's training pairs with mined hard negatives.

``tightdistill train-teacher`` (:mod:`teacher_trainer.cli`) writes checkpoints in the layouts
:mod:`teacher_service.kinds` loads: a sentence-transformers CrossEncoder directory with
``tightdistill_ce.json``, or a ColBERTv2 ``HF_ColBERT`` directory with ``artifact.metadata``.
"""
