"""Shared helpers: timing, machine description, compile-event accounting, table printing."""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

import jaxnls

# --------------------------------------------------------------------------------------------------
# Timing


@dataclasses.dataclass
class Timing:
    first: float  # wall time of the first (cold) call: tracing + compilation + one run
    times: list[float]  # steady-state wall times of the following calls

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def overhead(self) -> float:
        """First-call time minus the steady median: what compilation (and tracing) cost the user."""
        return self.first - self.median

    def as_dict(self) -> dict:
        return {
            "first_call_s": self.first,
            "steady_median_s": self.median,
            "overhead_s": self.overhead,
            "steady_times_s": self.times,
        }


def time_calls(call: Callable[[], Any], repeats: int) -> tuple[Timing, Any]:
    """Time ``call()`` once cold (this call is also the warm-up) and then ``repeats`` times warm.

    Every output is passed through ``jax.block_until_ready`` before the clock stops (a no-op for
    NumPy results). Returns the timing and the last output.
    """
    t0 = time.perf_counter()
    out = jax.block_until_ready(call())
    first = time.perf_counter() - t0
    times = []
    # a bar on a terminal for rows slow enough to wait for (drawn between the timed calls); a plain loop
    # where an earlier jaxnls without it is measured (benchmarks/before_after.sh)
    repeat = getattr(jaxnls, "Progress", lambda items, **_: items)
    for _ in repeat(range(repeats), label="timing", delay=2.0):
        t0 = time.perf_counter()
        out = jax.block_until_ready(call())
        times.append(time.perf_counter() - t0)
    return Timing(first, times), out


def load_bal(path: str, note: str = ""):
    """``(BALProblem, FactorGraph)`` of a BAL file, after printing its size (and ``note``) on one line."""
    from jaxnls.graph import bal_graph_problem
    from jaxnls.io import read_bal

    problem = read_bal(path)
    print(
        f"{path}: {problem.num_cameras} cameras, {problem.num_points} points, "
        f"{problem.num_observations} observations{note}"
    )
    return problem, bal_graph_problem(problem)


def aot_compile_time(fn: Callable, *args) -> dict:
    """``jax.jit(fn).lower(*args)`` and ``.compile()`` timed separately, on a fresh ``jax.jit`` object.

    Pass a freshly created closure as ``fn`` so that no trace cache is shared with earlier calls.
    """
    jitted = jax.jit(fn)
    t0 = time.perf_counter()
    lowered = jitted.lower(*args)
    t1 = time.perf_counter()
    lowered.compile()
    t2 = time.perf_counter()
    return {"lower_s": t1 - t0, "compile_s": t2 - t1, "lower_compile_s": t2 - t0}


# --------------------------------------------------------------------------------------------------
# XLA compile accounting (jax.monitoring events)


class CompileMeter:
    """Sums JAX's own compile-duration events while active (XLA backend compiles and jaxpr traces)."""

    _EVENTS: ClassVar[dict[str, str]] = {
        "/jax/core/compile/backend_compile_duration": "backend",
        "/jax/core/compile/jaxpr_trace_duration": "trace",
        "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower",
    }

    def __init__(self):
        self.active = False
        self.seconds = {v: 0.0 for v in self._EVENTS.values()}
        self.count = {v: 0 for v in self._EVENTS.values()}
        jax.monitoring.register_event_duration_secs_listener(self._listen)

    def _listen(self, event, duration, **kwargs):
        key = self._EVENTS.get(event)
        if self.active and key is not None:
            self.seconds[key] += duration
            self.count[key] += 1

    def __enter__(self):
        self.seconds = {k: 0.0 for k in self.seconds}
        self.count = {k: 0 for k in self.count}
        self.active = True
        return self

    def __exit__(self, *exc):
        self.active = False


_METER: CompileMeter | None = None


def compile_meter() -> CompileMeter:
    global _METER
    if _METER is None:
        _METER = CompileMeter()
    return _METER


# --------------------------------------------------------------------------------------------------
# Machine description


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _git_revision() -> str:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return rev + (" (+ uncommitted changes)" if dirty else "") if rev else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _source_digest() -> str:
    """Short hash of the jaxnls sources imported by this process (the tree may change between runs)."""
    import hashlib

    import jaxnls

    root = os.path.dirname(jaxnls.__file__)
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            if name.endswith(".py"):
                path = os.path.join(dirpath, name)
                h.update(os.path.relpath(path, root).encode())
                with open(path, "rb") as f:
                    h.update(f.read())
    return h.hexdigest()[:12]


def machine_info() -> dict:
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    try:
        load = os.getloadavg()
    except OSError:
        load = (float("nan"),) * 3
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": affinity,
        "load_average_1_5_15": [round(x, 2) for x in load],
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": _version("jaxlib"),
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "x64": bool(jax.config.jax_enable_x64),
        "jaxnls": _version("jaxnls") + " @ git " + _git_revision() + ", source sha256 " + _source_digest(),
        "optimistix": _version("optimistix"),
        "jaxopt": _version("jaxopt"),
        "equinox": _version("equinox"),
        "lineax": _version("lineax"),
        "scipy": _version("scipy"),
        "numpy": np.__version__,
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", ""),
    }


def print_header(info: dict) -> None:
    print("=" * 100)
    print("jaxnls benchmark suite")
    print("=" * 100)
    print(f"date        {info['date']}")
    print(f"CPU         {info['cpu_model']}  ({info['cpu_count']} cores, {info['cpus_usable']} usable)")
    la = info["load_average_1_5_15"]
    print(
        f"load avg    {la[0]:.2f} {la[1]:.2f} {la[2]:.2f} (1/5/15 min) at start  "
        f"{'<- machine busy: timings unreliable' if la[0] > 0.5 * info['cpus_usable'] else ''}"
    )
    print(
        f"python      {info['python']}   jax {info['jax']} (jaxlib {info['jaxlib']})   "
        f"backend {info['backend']}: {', '.join(info['devices'])}   x64={info['x64']}"
    )
    print(f"jaxnls      {info['jaxnls']}")
    print(
        f"peers       optimistix {info['optimistix']} (lineax {info['lineax']}, equinox {info['equinox']}), "
        f"jaxopt {info['jaxopt']}, scipy {info['scipy']}, numpy {info['numpy']}"
    )
    if info["XLA_FLAGS"]:
        print(f"XLA_FLAGS   {info['XLA_FLAGS']}")
    print()


def warm_up_jax() -> None:
    """Pay JAX's one-time process start-up costs (backend, LAPACK kernels) before anything is timed."""
    x = jnp.eye(4) * 2.0
    jax.block_until_ready(jax.jit(lambda a: jnp.linalg.cholesky(a) + jnp.linalg.qr(a)[1] + jnp.exp(a))(x))


# --------------------------------------------------------------------------------------------------
# Tables


def format_table(headers: list[str], rows: list[list[str]], align: str | None = None) -> str:
    """Plain-text table; ``align`` is one character per column, ``l`` or ``r`` (default: first left)."""
    align = align or "l" + "r" * (len(headers) - 1)
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells):
        return "  ".join(str(c).ljust(w) if a == "l" else str(c).rjust(w) for c, w, a in zip(cells, widths, align))

    out = [line(headers), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in rows]
    return "\n".join(out)


def fmt_s(x: float | None) -> str:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "-"
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 1:
        return f"{x:.2f}"
    if abs(x) >= 0.01:
        return f"{x:.3f}"
    return f"{x:.2e}"
