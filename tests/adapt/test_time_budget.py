"""``train.max_minutes`` on two real DDP workers: they stop together when the budget is spent, the
learning rate has decayed to 0 by then, and a resumed run spends only what is left of its budget."""

from __future__ import annotations

import pytest

from student_trainer.run import train_student
from student_trainer.students import DualEncoderStudent
from student_trainer.time_budget import TrainingClock, budget_schedule
from student_trainer.train_loop import load_checkpoint
from shared_runs import resumable_copy


def test_the_schedule_follows_whichever_of_steps_and_time_is_further_along():
    clock = TrainingClock(budget_s=100.0)
    assert budget_schedule(0, 1000, 0.1, clock) == pytest.approx(1 / 100)  # step 1 of a 100-step warm-up
    clock.elapsed_s = 5.0  # 5% of the budget: time leads the steps
    assert budget_schedule(0, 1000, 0.1, clock) == pytest.approx(0.5)
    clock.elapsed_s = 55.0  # halfway through the decay
    assert budget_schedule(20, 1000, 0.1, clock) == pytest.approx(0.5)
    assert budget_schedule(955, 1000, 0.1, clock) == pytest.approx(0.05)  # the step cap is nearer: steps lead
    clock.elapsed_s = 100.0
    assert budget_schedule(20, 1000, 0.1, clock) == 0.0 and clock.spent


@pytest.mark.timeout(240)  # a worker that stopped alone would leave the other waiting for ever
def test_ddp_workers_stop_together_at_the_budget_and_a_resume_spends_what_is_left(ddp_trained, tmp_path):
    """The session's run on two DDP workers (``ddp_trained``: 4 steps, 10-minute budget), then a
    resume of a copy of it with a budget 4 s past the time it spent."""
    run, info = ddp_trained["run"], ddp_trained["info"]
    assert run.train.num_workers == 2 and run.train.max_steps == 4 and run.train.max_minutes == 10.0
    student = DualEncoderStudent(run.student, teacher_dim=info["dim"])
    first = load_checkpoint(ddp_trained["checkpoint"], student)
    assert first["global_step"] == 4 and first["train_elapsed_s"] > 0  # the step cap ended it, well within 10 min
    assert ddp_trained["history"][-1]["lr"] == pytest.approx(0.0, abs=1e-12)  # ... with the rate decayed over the steps

    # Same run folder (a copy of it), no step cap to speak of, a budget 4 s past the time already
    # spent: the resumed run must stop about 4 s of training later, not 4 s plus what the first run took.
    budget_s = first["train_elapsed_s"] + 4.0
    resumed = resumable_copy(ddp_trained, tmp_path, max_steps=100000, max_minutes=budget_s / 60)
    checkpoint, history = train_student(resumed, info, ddp_trained["examples"], ddp_trained["n"], ddp_trained["index"],
                                        [], False)
    state = load_checkpoint(checkpoint, student)
    assert 4 < state["global_step"] < 100000
    assert budget_s <= state["train_elapsed_s"] < budget_s + 3.0, state["train_elapsed_s"]
    new = [h for h in history if h["step"] > 4 and "lr" in h]
    assert new[0]["train_elapsed_s"] > first["train_elapsed_s"]  # the clock went on from the checkpoint's time
    assert new[-1]["lr"] == pytest.approx(0.0, abs=1e-12) and new[-1]["step"] == state["global_step"]
    rates = [h["lr"] for h in new if h["train_elapsed_s"] / budget_s > resumed.train.warmup_ratio]
    assert rates == sorted(rates, reverse=True) and rates[0] > 0  # decaying over the budget, not already at 0
