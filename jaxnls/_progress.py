"""A live progress line for long solves, built on the per-iteration callback."""

from __future__ import annotations

import sys
import time
from typing import TextIO

import numpy as np

from ._callback import IterationInfo


class ProgressLine:
    r"""``callback=ProgressLine()``: one line on a terminal, rewritten in place as the solve runs::

        iter 12   cost 1.234567e+04   rel. decrease 3.2e-03   4.1 s

    (a batch adds how many problems are still running and sums their costs; the relative decrease is the
    cost's since the last redraw; the seconds count from the first iteration, after compilation). The line
    is redrawn at most every ``interval`` seconds, not before ``delay`` seconds (a quick solve draws
    nothing), and only when ``stream`` is a terminal or a notebook's output (Jupyter honours the carriage
    return): in a log file, a pipe or CI output it writes nothing.
    Call :meth:`close` after the solve to end the line. It never asks the solve to stop.

    Args:
        stream: where to draw (default ``sys.stderr``).
        interval: least time between redraws, in seconds.
        delay: seconds of solving before the first redraw.
        label: printed before the figures (e.g. the file being solved).
    """

    def __init__(self, stream: TextIO | None = None, interval: float = 0.2, delay: float = 0.0, label: str = ""):
        for name, value in (("interval", interval), ("delay", delay)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
                raise ValueError(f"ProgressLine({name}=...) must be a finite number of seconds >= 0, got {value!r}")
        self.stream = sys.stderr if stream is None else stream
        self.interval = float(interval)
        self.delay = float(delay)
        self.label = label
        self._start: float | None = None
        self._drawn_at = -np.inf
        self._previous_cost: float | None = None
        self._width = 0

    @property
    def live(self) -> bool:
        """Whether the stream is a terminal or a Jupyter output stream (which redraws on a carriage return);
        otherwise nothing is drawn."""
        isatty = getattr(self.stream, "isatty", None)
        return bool(isatty and isatty()) or type(self.stream).__module__.startswith("ipykernel")

    def __call__(self, info: IterationInfo) -> None:
        now = time.perf_counter()
        if self._start is None or int(np.min(info.iteration)) == 0:
            self._start, self._previous_cost = now, None
        if not self.live:
            return None
        cost = float(np.sum(info.cost[np.isfinite(info.cost)]))
        running = int(np.sum(info.status == 0))
        if now - self._start < self.delay or (now - self._drawn_at < self.interval and running > 0):
            return None
        decrease = (
            ""
            if self._previous_cost in (None, 0.0)
            else f"   rel. decrease {(self._previous_cost - cost) / self._previous_cost:.1e}"
        )
        batch = f"   running {running}/{info.problem.size}" if info.problem.size > 1 else ""
        text = (
            f"{self.label}iter {int(np.max(info.iteration))}{batch}   cost {cost:.6e}{decrease}   "
            f"{now - self._start:.1f} s"
        )
        self.stream.write("\r" + text.ljust(self._width))
        self.stream.flush()
        self._width = len(text)
        self._drawn_at, self._previous_cost = now, cost
        return None

    def close(self) -> None:
        """End the line (a newline after the last redraw), so what follows starts on its own line."""
        if self._width and self.live:
            self.stream.write("\n")
            self.stream.flush()
        self._width = 0
        self._start = None
