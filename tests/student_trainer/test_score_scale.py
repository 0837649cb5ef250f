"""Score scales: losses that match values compare the student's similarity with the teacher's
score in the same units, and the softmax losses' student scale is tied to the teacher's temperature."""

from __future__ import annotations

import pytest
import torch

from student_trainer.config import RunConfig
from student_trainer.losses import DistillBatch, InBatchKLLoss, MarginMSELoss, ScoreMSELoss

SCALE = 4.0


def cosine_batch(student_cos: torch.Tensor, teacher_cos: torch.Tensor, k: int = 2) -> DistillBatch:
    """A batch as the train loop builds it: student scores carry the student's scale."""
    return DistillBatch(student_scores=SCALE * student_cos, teacher_scores=teacher_cos,
                        labels=DistillBatch.layout_labels(student_cos.shape[0], k), num_negatives=k,
                        score_scale=SCALE)


@pytest.fixture
def teacher_cos() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.rand(4, 12) * 2 - 1  # cosines of 4 queries x 4 * (1 + 2) documents


@pytest.mark.parametrize("loss_fn", [MarginMSELoss(), ScoreMSELoss(), ScoreMSELoss(scope="triplet")])
def test_a_student_that_copies_the_teacher_has_zero_value_loss(teacher_cos, loss_fn):
    # Before the fix the student's 4x scaled scores met the raw cosines: (4t - t)^2 = 9 t^2 > 0.
    assert float(loss_fn(cosine_batch(teacher_cos.clone(), teacher_cos))) == pytest.approx(0.0, abs=1e-10)


def test_margin_mse_measures_margins_in_the_teachers_units(teacher_cos):
    """A student whose margins are twice the teacher's is off by exactly one margin per pair."""
    loss = float(MarginMSELoss()(cosine_batch(2 * teacher_cos, teacher_cos)))
    groups = cosine_batch(teacher_cos, teacher_cos).group_scores(teacher_cos)
    margins = groups[:, :1] - groups[:, 1:]
    assert loss == pytest.approx(float((margins ** 2).mean()), rel=1e-5)


@pytest.mark.parametrize("tau", [0.05, 0.25, 1.0])
def test_in_batch_kl_is_zero_at_the_teacher_with_the_tied_scale(teacher_cos, tau):
    run = RunConfig.model_validate({"train": {"losses": {"in_batch_kl": {"tau": tau, "gamma": 0.0}}}})
    scale = run.student.score_scale
    assert scale == pytest.approx(1 / tau)
    batch = DistillBatch(student_scores=scale * teacher_cos, teacher_scores=teacher_cos,
                         labels=DistillBatch.layout_labels(4, 2), num_negatives=2, score_scale=scale)
    assert float(InBatchKLLoss(tau=tau, gamma=0.0)(batch)) == pytest.approx(0.0, abs=1e-6)
    if tau != 0.25:  # the old fixed scale 4 left the KL above zero at the teacher
        old = DistillBatch(student_scores=4.0 * teacher_cos, teacher_scores=teacher_cos,
                           labels=DistillBatch.layout_labels(4, 2), num_negatives=2, score_scale=4.0)
        assert float(InBatchKLLoss(tau=tau, gamma=0.0)(old)) > 1e-3


def test_the_scale_follows_the_runs_tempered_loss_unless_set():
    def scale(student: dict, losses: dict) -> float:
        return RunConfig.model_validate({"student": student, "train": {"losses": losses}}).student.score_scale

    assert scale({}, {"in_batch_kl": {}}) == pytest.approx(4.0)  # InBatchKLLoss's default tau 0.25
    assert scale({}, {"score_bce": {"tau": 0.5}}) == pytest.approx(2.0)
    assert scale({}, {"in_batch_kl": {"tau": 0.1}, "score_bce": {"tau": 0.5}}) == pytest.approx(10.0)
    assert scale({}, {"onehot": {}}) == pytest.approx(4.0)
    assert scale({"score_scale": 20.0}, {"in_batch_kl": {"tau": 1.0}}) == pytest.approx(20.0)  # explicit wins
    # A recorded config reads back to the same resolved scale (experiment reuse compares them).
    run = RunConfig.model_validate({"train": {"losses": {"in_batch_kl": {"tau": 0.5}}}})
    assert RunConfig.model_validate_json(run.model_dump_json()).student.score_scale == pytest.approx(2.0)


def test_a_bad_scale_is_refused():
    with pytest.raises(ValueError, match="score_scale"):
        DistillBatch(student_scores=torch.zeros(2, 4), labels=DistillBatch.layout_labels(2, 1), score_scale=0.0)
