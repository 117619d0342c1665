"""Where the time goes: per-primitive forward/backward time, and the engine's own overhead.

    with tinygrad_cnn.profile() as prof:
        loss = F.cross_entropy(model(x), y); loss.backward(); opt.step()
    print(prof.table())

or set ``TINYGRAD_CNN_PROFILE=1`` to profile a whole process and print the table at exit.
Each op's forward and VJP are timed where the engine calls them; ``wall`` is the time of the
``with`` block, so ``wall - ops - waits`` is everything else: graph bookkeeping, the
optimizer and the caller's own Python. Off, it costs one attribute check per op. Ops
running on several threads at once (``tinygrad_cnn.parallel``) are all recorded, so their
times add up to more than the wall time.

Shards of one batch (``tinygrad_cnn.parallel``, or MPI ranks with ``sync_batch_norm``) wait
for each other where they exchange BatchNorm statistics and at the end of their pass. That
idle time is not the op's: it is taken out of the op it happened in and shown on a row of
its own, ``(shard wait)``, so a synchronised BatchNorm reads as its kernel's time and the
imbalance between the shards as what it is.

A VJP is Tensor code: it runs primitives of its own (max-pool's VJP a scatter, matmul's two
more matmuls). Their time is part of that VJP's and is counted there only: an op's
``backward`` is everything its VJP did, its ``forward`` and ``calls`` are the calls made
outside any VJP, so no second is counted twice.
"""
from __future__ import annotations

import atexit
import os
import threading
import time
from collections import defaultdict, deque

_RECENT = 4096  # forward calls remembered per thread: more than any one VJP runs


class Profile:
    def __init__(self):
        self.forward = defaultdict(float)
        self.backward = defaultdict(float)
        self.calls = defaultdict(int)
        self.wall = 0.0
        self.wait = 0.0  # seconds the shards spent waiting for each other (all threads)
        self.waits = 0
        self._t0 = None
        self._lock = threading.Lock()
        self._threads = threading.local()  # .recent, .waits: this thread's since its last VJP

    def _mine(self):
        """This thread's (recent forward calls, recent waits)."""
        mine = self._threads
        if not hasattr(mine, "recent"):
            mine.recent, mine.waits = deque(maxlen=_RECENT), deque(maxlen=_RECENT)
        return mine.recent, mine.waits

    def record_wait(self, seconds):
        """Called by a shard group after this thread waited ``seconds`` for the other shards."""
        end = time.perf_counter()
        _, waits = self._mine()
        waits.append((end, seconds))
        with self._lock:
            self.wait += seconds
            self.waits += 1

    def record(self, name, phase, seconds):
        """Called by the engine after each forward (``phase="forward"``) and each VJP."""
        end = time.perf_counter()
        recent, waits = self._mine()
        start = end - seconds
        for t, w in reversed(waits):  # idle time inside this op is the wait row's, not the op's
            if t <= start:
                break
            seconds -= w
        with self._lock:  # ops may run on several threads
            if phase == "forward":
                self.forward[name] += seconds
                self.calls[name] += 1
                recent.append((end, name, seconds))
                return
            # the forward calls that ended inside this VJP were its own: move them into it
            while recent and recent[-1][0] > start:
                _, inner, dt = recent.pop()
                self.forward[inner] -= dt
                self.calls[inner] -= 1
            recent.clear()  # VJPs on one thread do not overlap: none of these is in a later one
            waits.clear()
            self.backward[name] += seconds

    def ops_time(self):
        return sum(r[4] for r in self.rows())

    def rows(self):
        """(op, calls, forward s, backward s, total s), most expensive first."""
        names = {n for n in self.forward if self.calls[n]} | set(self.backward)
        rows = []
        for n in names:
            f = max(self.forward[n], 0.0) if self.calls[n] else 0.0  # (moved time leaves rounding dust)
            rows.append((n, self.calls[n], f, self.backward[n], f + self.backward[n]))
        return sorted(rows, key=lambda r: (-r[4], r[0]))

    def table(self):
        total = self.wall or self.ops_time()
        lines = [f"{'op':<14}{'calls':>8}{'forward ms':>13}{'backward ms':>13}{'total ms':>11}{'share':>8}"]
        for name, calls, f, b, t in self.rows():
            lines.append(f"{name:<14}{calls:>8}{1e3 * f:>13.1f}{1e3 * b:>13.1f}{1e3 * t:>11.1f}{t / total:>8.1%}")
        if self.waits:
            lines.append(f"{'(shard wait)':<14}{self.waits:>8}{'':>13}{'':>13}{1e3 * self.wait:>11.1f}"
                         f"{self.wait / total:>8.1%}")
        if self.wall:
            other = self.wall - self.ops_time() - self.wait
            lines.append(f"{'(not in ops)':<14}{'':>8}{'':>13}{'':>13}{1e3 * other:>11.1f}{other / total:>8.1%}")
            lines.append(f"{'wall':<14}{'':>8}{'':>13}{'':>13}{1e3 * self.wall:>11.1f}{1:>8.1%}")
        return "\n".join(lines)

    def __enter__(self):
        from . import tensor, threads

        self._prev = tensor._profiler, threads.wait_listener
        tensor._profiler, threads.wait_listener = self, self.record_wait
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        from . import tensor, threads

        self.wall += time.perf_counter() - self._t0
        tensor._profiler, threads.wait_listener = self._prev
        return False


def profile() -> Profile:
    """A context manager that times every op run inside it (see the module docstring)."""
    return Profile()


def _profile_process():
    prof = Profile().__enter__()

    def report():
        prof.__exit__(None, None, None)
        print("\ntinygrad_cnn profile (TINYGRAD_CNN_PROFILE=1)\n" + prof.table())

    atexit.register(report)


if os.environ.get("TINYGRAD_CNN_PROFILE", "") not in ("", "0"):
    _profile_process()
