"""Live progress on a terminal or in a notebook, silent in logs: a line for long solves (built on the
per-iteration callback) and a bar for training loops and benchmark runs."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Generic, TextIO, TypeVar

import numpy as np

from ._callback import IterationInfo

Item = TypeVar("Item")

#: Characters of the bar drawn by :class:`Progress`.
_BAR_WIDTH = 24


def _check_seconds(owner: str, **options: float) -> None:
    for name, value in options.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
            raise ValueError(f"{owner}({name}=...) must be a finite number of seconds >= 0, got {value!r}")


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
        _check_seconds("ProgressLine", interval=interval, delay=delay)
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
        """Whether anything is drawn: :func:`is_live` of the stream."""
        return is_live(self.stream)

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


def is_live(stream: object) -> bool:
    """Whether ``stream`` redraws a line on a carriage return: a terminal, or a Jupyter kernel's output
    stream. Logs, pipes and CI output are not.

    Args:
        stream: a text stream (``sys.stderr``, a file, ...).

    Returns:
        True where a progress display should be drawn.
    """
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) or type(stream).__module__.startswith("ipykernel")


class Progress(Generic[Item]):
    r"""A progress bar over an iterable, for training loops and benchmark runs::

        bar = jaxnls.Progress(range(60), label="training")
        for step in bar:
            params, state, loss = train_step(params, state)
            bar.note(loss=loss)          # figures shown after the bar

    draws ``training  37/60 ━━━━━━━━━━━━━━━━━━──────  loss 0.01234  2.1 s, ~1.3 s left`` on one line, redrawn
    at most every ``interval`` seconds, and a final line when the iteration ends (nothing at all if it ends
    within ``delay`` seconds). Like :class:`ProgressLine` it draws only on a terminal or in a notebook
    (:func:`is_live`): in a log file, a pipe or CI output it writes nothing and reads no figure.

    Args:
        iterable: what to iterate over.
        total: the number of items, where ``len(iterable)`` does not say (without it: no bar, a count).
        label: printed before the bar.
        stream: where to draw (default ``sys.stderr``).
        interval: least time between redraws, in seconds.
        delay: seconds before the first redraw.
    """

    def __init__(
        self,
        iterable: Iterable[Item],
        *,
        total: int | None = None,
        label: str = "",
        stream: TextIO | None = None,
        interval: float = 0.1,
        delay: float = 0.0,
    ):
        _check_seconds("Progress", interval=interval, delay=delay)
        if total is None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        if total is not None and (isinstance(total, bool) or not isinstance(total, int) or total < 0):
            raise ValueError(f"Progress(total=...) must be an int >= 0, got {total!r}")
        self.iterable = iterable
        self.total = total
        self.label = label
        self.stream = sys.stderr if stream is None else stream
        self.interval = float(interval)
        self.delay = float(delay)
        self.count = 0
        self.figures: dict[str, float] = {}
        self._width = 0

    def note(self, **figures: float) -> None:
        """Show these figures (e.g. ``loss=...``) after the bar from the next redraw on; a JAX scalar is
        read only when the line is drawn, so on a log or pipe nothing waits for the device."""
        self.figures.update(figures)

    def __iter__(self) -> Iterator[Item]:
        live = is_live(self.stream)
        start = time.perf_counter()
        drawn_at = -np.inf
        for item in self.iterable:
            yield item
            self.count += 1
            if live:
                now = time.perf_counter()
                if now - start >= self.delay and now - drawn_at >= self.interval:
                    self._draw(now - start)
                    drawn_at = now
        if live and self._width:
            self._draw(time.perf_counter() - start)
            self.stream.write("\n")
            self.stream.flush()

    def _draw(self, elapsed: float) -> None:
        figures = "".join(f"  {name} {float(value):.4g}" for name, value in self.figures.items())
        if self.total:
            done = min(self.count / self.total, 1.0)
            filled = round(done * _BAR_WIDTH)
            bar = f"{self.count}/{self.total} {'━' * filled}{'─' * (_BAR_WIDTH - filled)}"
            left = f", ~{elapsed / done - elapsed:.1f} s left" if 0 < done < 1 else ""
        else:
            bar, left = f"{self.count}", ""
        text = f"{self.label + '  ' if self.label else ''}{bar}{figures}  {elapsed:.1f} s{left}"
        self.stream.write("\r" + text.ljust(self._width))
        self.stream.flush()
        self._width = len(text)
