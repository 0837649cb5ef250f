"""Distillation losses: one loss concept per file, each an ``nn.Module`` called as
``loss(batch: DistillBatch) -> scalar``.

Config name -> class (what it needs from the batch besides student scores and labels):

* ``onehot`` -> ``OneHotCrossEntropyLoss`` (nothing else)
* ``in_batch_kl`` -> ``InBatchKLLoss`` (teacher scores)
* ``margin_mse`` -> ``MarginMSELoss`` (teacher scores, ``num_negatives >= 1``)
* ``score_mse`` -> ``ScoreMSELoss`` (teacher scores)
* ``score_bce`` -> ``ScoreBCELoss`` (teacher scores)
* ``query_embedding`` -> ``QueryEmbeddingMatchingLoss`` (student and teacher query embeddings)
* ``document_embedding`` -> ``DocumentEmbeddingMatchingLoss`` (student and teacher document
  embeddings; symmetric students only)
* ``joint_embedding`` -> ``JointEmbeddingMatchingLoss`` (a [CLS]-pooled cross-encoder's joint
  embedding of each query with its positive, and the student's; symmetric students only)

``build_loss({"in_batch_kl": {"weight": 1.0}, "query_embedding": {"weight": 1.0}})`` combines them.
The maths of each loss is a plain tensor function (``in_batch_kl``, ``margin_mse``, ...), exported too.
"""

from student_trainer.losses.batch import SCOPES, DistillBatch, Scope
from student_trainer.losses.candidate_kl import CandidateKLLoss, candidate_kl
from student_trainer.losses.combined import LOSSES, TEACHER_SCORE_LOSSES, CombinedLoss, build_loss
from student_trainer.losses.embedding_matching import (
    DocumentEmbeddingMatchingLoss,
    JointEmbeddingMatchingLoss,
    QueryEmbeddingMatchingLoss,
    embedding_distance,
)
from student_trainer.losses.in_batch_kl import InBatchKLLoss, in_batch_kl, kl_teacher_student
from student_trainer.losses.margin_mse import MarginMSELoss, margin_mse
from student_trainer.losses.onehot_ce import OneHotCrossEntropyLoss, onehot_cross_entropy
from student_trainer.losses.score_regression import ScoreBCELoss, ScoreMSELoss, score_bce, score_mse

__all__ = [
    "LOSSES",
    "SCOPES",
    "TEACHER_SCORE_LOSSES",
    "CandidateKLLoss",
    "CombinedLoss",
    "DistillBatch",
    "DocumentEmbeddingMatchingLoss",
    "InBatchKLLoss",
    "JointEmbeddingMatchingLoss",
    "MarginMSELoss",
    "OneHotCrossEntropyLoss",
    "QueryEmbeddingMatchingLoss",
    "Scope",
    "ScoreBCELoss",
    "ScoreMSELoss",
    "build_loss",
    "candidate_kl",
    "embedding_distance",
    "in_batch_kl",
    "kl_teacher_student",
    "margin_mse",
    "onehot_cross_entropy",
    "score_bce",
    "score_mse",
]
