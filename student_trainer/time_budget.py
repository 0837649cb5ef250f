"""A training time budget (``train.max_minutes``): when to stop, and how far the LR schedule is.

Why the schedule follows the elapsed fraction of the budget rather than a step count calibrated
from a few measured steps: a step's time is not constant here. The teacher shares the cores with
the student, another job may load the machine, the first steps warm caches, and a run resumed on
other hardware steps at another pace. A step count fitted to the first steps would either end
training before the budget or, worse, leave the learning rate high when the budget cuts it off.
Scheduling on ``max(steps done / step cap, time spent / budget)`` decays the learning rate to 0
exactly when whichever limit binds first is reached, however the pace changes on the way.

Under DDP every worker must take the same decision at the same step (``ray.train.report`` and the
gradient all-reduce are collective: a worker that stopped alone would leave the others waiting
forever) and use the same learning rate (else the replicas drift apart). So rank 0's clock is the
clock: :meth:`TrainingClock.sync` broadcasts its elapsed time to every worker once per step, a
single float over the process group. The elapsed time is kept in the checkpoint state, so a run
resumed from a checkpoint (a restarted worker, or a rerun of the same run folder) spends only what
is left of its budget.
"""

from __future__ import annotations

import time

import torch
import torch.distributed as dist


class TrainingClock:
    """Training time spent, in seconds, against an optional budget; the same on every DDP worker."""

    def __init__(self, budget_s: float | None, device: torch.device | str = "cpu") -> None:
        self.budget_s = budget_s
        self.device = torch.device(device)
        self.carried_s = 0.0
        self.elapsed_s = 0.0
        self._start = time.monotonic()

    def start(self, carried_s: float = 0.0) -> None:
        """Start counting now, on top of ``carried_s`` spent before a resume."""
        self.carried_s = float(carried_s)
        self.elapsed_s = self.carried_s
        self._start = time.monotonic()

    def sync(self) -> float:
        """Update :attr:`elapsed_s`: this worker's own time without a budget; with one, rank 0's,
        broadcast to every worker (a collective call: every worker calls it at every step)."""
        local = self.carried_s + time.monotonic() - self._start
        if self.budget_s is not None and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            shared = torch.tensor([local], dtype=torch.float64, device=self.device)
            dist.broadcast(shared, src=0)
            local = float(shared.item())
        self.elapsed_s = local
        return local

    @property
    def fraction(self) -> float:
        """Share of the budget spent at the last :meth:`sync` (0 without a budget)."""
        return self.elapsed_s / self.budget_s if self.budget_s else 0.0

    @property
    def spent(self) -> bool:
        return self.budget_s is not None and self.elapsed_s >= self.budget_s


def budget_schedule(step: int, total_steps: int, warmup_ratio: float, clock: TrainingClock) -> float:
    """LR factor at ``step``: linear warm-up over the first ``warmup_ratio`` of the run, then
    linear decay to 0, where the run's progress is the further along of its steps (out of the step
    cap ``total_steps``) and of its time (out of the clock's budget)."""
    time_done = clock.fraction
    if warmup_ratio > 0:
        # (step + 1): the first step trains with a small positive rate, as the step schedule's does.
        warm = max((step + 1) / total_steps, time_done)
        if warm < warmup_ratio:
            return warm / warmup_ratio
    progress = max(step / total_steps, time_done)
    return max(0.0, (1.0 - progress) / max(1e-9, 1.0 - warmup_ratio))


__all__ = ["TrainingClock", "budget_schedule"]
