"""Lookahead: an exponential moving average of a model's weights, written back into the model
every few optimizer steps (airbench's "LookaheadState"; Zhang et al., "Lookahead Optimizer",
2019, with an EMA for the slow weights).

    la = Lookahead(model, every=5, decay=lambda step: 0.95**5 * (step / total) ** 3)
    for x, y in loader:
        ...; opt.step()
        la.step()                  # every 5th call: ema = lerp(ema, w, 1 - decay); w = ema
    la.finish()                    # the model takes the average itself

Every floating parameter and floating buffer (BatchNorm's running statistics, as a
``state_dict`` holds them) is averaged; integer buffers (batch counters) and frozen
parameters follow along untouched in effect (an average of a constant is that constant).
The model's arrays are written in place through ``tensor.writing``, so the optimizer's
state, keyed by the parameter, stays attached, and a graph recorded before the write refuses
a later backward instead of using the new values. ``state_dict`` / ``load_state_dict`` hold
the averages and the step count, for checkpoints.
"""
from __future__ import annotations

import numbers

import numpy as np

from .tensor import writing
from .xp import array_module, is_floating

__all__ = ["Lookahead"]


class Lookahead:
    """The slow weights of ``module``, updated every ``every`` steps with weight
    ``1 - decay(step)`` on the current weights, which are then reset to them.

    ``decay`` is a number in [0, 1] or a function of the step count (1, 2, ...) returning one:
    0 makes the average the current weights (no effect), 1 freezes it (the weights jump
    back to it). ``update(decay)`` runs one update now, whatever the step count."""

    def __init__(self, module, every: int = 5, decay=0.0):
        if isinstance(every, bool) or not isinstance(every, numbers.Integral) or every < 1:
            raise ValueError(f"Lookahead: every must be a positive integer; got {every!r}")
        if not callable(decay):
            self._check_decay(decay)
        self.module, self.every, self.decay = module, int(every), decay
        self.steps = 0
        self.average = {name: array_module(a).array(a, copy=True) for name, a in self._arrays()}

    def _arrays(self):
        """(name, the model's live array) for every floating parameter and buffer, in
        ``state_dict`` order."""
        for mname, m in self.module.named_modules():
            for name, p in m._parameters.items():
                if p is not None and is_floating(p.dtype):
                    yield (f"{mname}.{name}" if mname else name), p.data
            for name, b in m._buffers.items():
                if is_floating(b.dtype):
                    yield (f"{mname}.{name}" if mname else name), b

    @staticmethod
    def _check_decay(decay):
        if isinstance(decay, bool) or not isinstance(decay, numbers.Real) or not 0.0 <= float(decay) <= 1.0:
            raise ValueError(f"Lookahead: decay must be a number in [0, 1]; got {decay!r}")
        return float(decay)

    def step(self):
        """Count one optimizer step; on every ``every``-th, update. Returns whether it updated."""
        self.steps += 1
        if self.steps % self.every:
            return False
        self.update(self.decay(self.steps) if callable(self.decay) else self.decay)
        return True

    def update(self, decay):
        """``average = decay * average + (1 - decay) * weights``, then ``weights = average``."""
        decay = self._check_decay(decay)
        for name, live in self._arrays():
            avg = self.average.get(name)
            if avg is None or avg.shape != live.shape:
                raise RuntimeError(f"Lookahead: the model's {name!r} is not the array it was built with "
                                   f"(shape {None if avg is None else avg.shape} -> {live.shape}); build the "
                                   f"Lookahead after the model's final shape")
            xp = array_module(live)
            # avg = lerp(avg, live, 1 - decay), with torch's two-sided formula (as lerp_), in
            # the arrays' own dtype
            weight = 1.0 - decay
            diff = xp.subtract(live, avg)
            if weight < 0.5:
                diff *= avg.dtype.type(weight)
                avg += diff
            else:
                diff *= avg.dtype.type(1.0 - weight)
                xp.subtract(live, diff, out=avg)
            with writing(live, "Lookahead.update") as w:
                w[...] = avg

    def finish(self):
        """Set the model to the average (an update with decay 1)."""
        self.update(1.0)

    def state_dict(self):
        """{"steps": int, "average": {name: array copy}}."""
        return {"steps": self.steps, "average": {k: np.array(v, copy=True) for k, v in self.average.items()}}

    def load_state_dict(self, state):
        if not isinstance(state, dict) or "average" not in state or "steps" not in state:
            raise ValueError(f"Lookahead.load_state_dict: expected a dict with 'steps' and 'average'; got "
                             f"{type(state).__name__}")
        saved = state["average"]
        missing = sorted(set(self.average) - set(saved))
        unexpected = sorted(set(saved) - set(self.average))
        wrong = [f"{k}: {np.shape(saved[k])} for {self.average[k].shape}" for k in self.average
                 if k in saved and np.shape(saved[k]) != self.average[k].shape]
        if missing or unexpected or wrong:
            raise ValueError(f"Lookahead.load_state_dict: missing {missing}, unexpected {unexpected}, wrong "
                             f"shapes {wrong}")
        self.steps = int(np.asarray(state["steps"]))
        for k, avg in self.average.items():
            avg[...] = np.asarray(saved[k], dtype=avg.dtype)

    def __repr__(self):
        return f"Lookahead(every={self.every}, steps={self.steps}, arrays={len(self.average)})"
