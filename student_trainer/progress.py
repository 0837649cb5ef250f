"""Training progress shown in the driver: rank 0 posts its step to a small actor, the driver
polls it into a progress bar (worker output is not a good place for a live bar)."""

from __future__ import annotations

import threading
from typing import Any

import ray
from tqdm.auto import tqdm


@ray.remote(num_cpus=0)
class ProgressBoard:
    def __init__(self) -> None:
        self.step = 0
        self.metrics: dict[str, Any] = {}

    def post(self, step: int, metrics: dict[str, Any]) -> None:
        self.step = step
        self.metrics = metrics

    def read(self) -> tuple[int, dict[str, Any]]:
        return self.step, self.metrics


class ProgressBar:
    """Context manager: a tqdm bar fed by a :class:`ProgressBoard` while training runs."""

    def __init__(self, total: int, desc: str = "training", enabled: bool = True) -> None:
        self.board = ProgressBoard.remote()
        self.total = total
        self.desc = desc
        self.enabled = enabled
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _poll(self) -> None:
        with tqdm(total=self.total, desc=self.desc, unit="step") as bar:
            while True:
                stopped = self._stop.wait(1.0)
                step, metrics = ray.get(self.board.read.remote())
                if step != bar.n:  # redraw only on progress: logs stay readable
                    if "loss" in metrics:
                        bar.set_postfix(loss=f"{metrics['loss']:.4f}", refresh=False)
                    bar.update(step - bar.n)
                if stopped:
                    return

    def __enter__(self) -> ProgressBar:
        if self.enabled:
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        ray.kill(self.board)
