"""A wall-clock budget for a training run: training *and* its evaluations end within it.

``train.cifar10 --budget SECONDS`` asks, before every training step, whether that step and
the evaluation after it still fit (:meth:`Budget.room_for_step`), and runs the learning-rate
schedule on the share of the training time used (:meth:`Budget.progress`). Both rest on
estimates kept here: the longest recent step, and the longest evaluation so far times 1.5
(before the first evaluation: the test set at the median recent training speed, about three
times what a forward pass needs; the median, because on a shared machine one slow step would
otherwise reserve far too much and end a run whose first epoch is longer than its budget
early). A safety margin of 0.5% of the budget (at least 0.2 s) absorbs the noise
of a shared machine, so a 300 s run reports at most 300 s, as the report checks.
"""
from __future__ import annotations

import statistics
import time
from collections import deque

EVAL_FACTOR = 1.5     # the evaluation reserve: the longest evaluation seen, times this
MARGIN = 0.005        # of the budget, kept free for noise
MIN_MARGIN = 0.2      # seconds
RECENT_STEPS = 20     # the step estimate is the longest of these


class Budget:
    """``seconds`` of wall time on ``clock`` (a ``time.perf_counter``-like function), of which
    ``spent`` were used before (a resumed run)."""

    def __init__(self, seconds: float, spent: float = 0.0, clock=None, eval_time: float | None = None):
        self.seconds = float(seconds)
        self.clock = clock or time.perf_counter
        self.started = self.clock() - spent
        self.margin = max(MARGIN * self.seconds, MIN_MARGIN)
        self.steps = deque(maxlen=RECENT_STEPS)
        self.rates = deque(maxlen=RECENT_STEPS)  # seconds per training image of the recent steps
        self.eval_time = eval_time        # the longest evaluation so far (None: none yet)
        self.eval_guess = 0.0             # before any: the test set at the training speed

    def spent(self) -> float:
        """Seconds used so far, by this process and the runs it resumes."""
        return self.clock() - self.started

    def note_step(self, seconds: float, images: int = 0, test_images: int = 0) -> None:
        """Record a training step's duration (and, to estimate the first evaluation, how many
        images it trained on and how many the evaluation will see)."""
        self.steps.append(seconds)
        if images and seconds > 0:
            self.rates.append(seconds / images)
            self.eval_guess = test_images * statistics.median(self.rates)

    def note_eval(self, seconds: float) -> None:
        self.eval_time = seconds if self.eval_time is None else max(self.eval_time, seconds)

    def eval_reserve(self) -> float:
        """Seconds kept for the evaluation that ends an epoch."""
        return EVAL_FACTOR * (self.eval_time if self.eval_time is not None else self.eval_guess)

    def training_time(self) -> float:
        """The part of the budget that training steps may use."""
        return self.seconds - self.eval_reserve() - self.margin

    def room_for_step(self) -> bool:
        """Whether one more step (as long as the longest recent one) and then the evaluation fit."""
        step = max(self.steps, default=0.0)
        return self.spent() + step <= self.training_time()

    def progress(self) -> float:
        """The share of the training time used, in [0, 1] (1 once none is left)."""
        available = self.training_time()
        return 1.0 if available <= 0 else min(max(self.spent() / available, 0.0), 1.0)
