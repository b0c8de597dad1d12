"""Where the test suite's time goes: a pytest plugin that records, per test, its wall time and JAX's compilation
events (tracing, lowering, XLA's backend compile; with each program's name), and a report over the recorded files.

    PYTHONPATH=benchmarks python -m pytest -p no:cacheprovider -q -p suite_compiles   # writes build/suite_compiles/
    python benchmarks/suite_compiles.py [build/suite_compiles]                       # per file, per program kind

(benchmarks/README.md (al) holds one run's figures.)
"""

from __future__ import annotations

import collections
import glob
import json
import os
import sys
import time
from pathlib import Path

OUT = Path(os.environ.get("SUITE_COMPILES_DIR", "build/suite_compiles"))
_EVENTS = {
    "/jax/core/compile/jaxpr_trace_duration": "trace",
    "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower",
    "/jax/core/compile/backend_compile_duration": "backend",
}
#: a program whose backend compile takes less than this is counted as "small" (an eager operation, mostly)
SMALL_SECONDS = 0.06
_current: dict = {"events": [], "start": 0.0}


def _listener(event, duration, **kwargs):
    if event in _EVENTS:
        name = str(kwargs.get("fun_name", "?"))
        _current["events"].append((_EVENTS[event], name.removeprefix("jit(").removesuffix(")"), round(duration, 4)))


def pytest_configure(config):
    import jax

    jax.monitoring.register_event_duration_secs_listener(_listener)


def pytest_runtest_protocol(item, nextitem):
    _current["events"], _current["start"] = [], time.time()


def pytest_runtest_logfinish(nodeid, location):
    if not _current["start"]:  # (pytest-xdist's controller: the tests ran in its workers)
        return
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    OUT.mkdir(parents=True, exist_ok=True)
    record = {"id": nodeid, "seconds": time.time() - _current["start"], "events": _current["events"]}
    with open(OUT / f"{worker or 'main'}.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
    _current["events"] = []


def report(folder: Path) -> None:
    rows = [json.loads(line) for name in glob.glob(str(folder / "*.jsonl")) for line in open(name, encoding="utf-8")]
    per_file: dict = collections.defaultdict(lambda: collections.Counter())
    totals = collections.Counter()
    for row in rows:
        counts = per_file[row["id"].split("::")[0]]
        counts["tests"] += 1
        counts["seconds"] += row["seconds"]
        for stage, name, seconds in row["events"]:
            kind = "solve" if name.startswith("_solve") else "other"
            counts[f"{kind} {stage}"] += seconds
            totals[f"{kind} {stage}"] += seconds
            if stage == "backend":
                counts[f"{kind} programs"] += 1
                if seconds < SMALL_SECONDS and kind == "other":
                    counts["small programs"] += 1
                    counts["small backend"] += seconds
    print(f"{'file':42s} {'tests':>5s} {'time':>7s} {'solve: n':>9s} {'compile':>8s} {'other: n':>9s} {'compile':>8s}")
    for name, c in sorted(per_file.items(), key=lambda item: -item[1]["seconds"]):
        solve = c["solve trace"] + c["solve lower"] + c["solve backend"]
        other = c["other trace"] + c["other lower"] + c["other backend"]
        print(
            f"{name:42s} {c['tests']:5d} {c['seconds']:7.1f} {c['solve programs']:9d} {solve:8.1f} "
            f"{c['other programs']:9d} {other:8.1f}"
        )
    seconds = sum(c["seconds"] for c in per_file.values())
    print(f"\n{len(rows)} tests, {seconds:.1f} s of test time; compiling (trace / lower / backend):")
    for kind in ("solve", "other"):
        print(
            f"  {kind:6s} {totals[f'{kind} trace']:7.1f} {totals[f'{kind} lower']:7.1f} {totals[f'{kind} backend']:7.1f} s"
        )
    small = sum(c["small programs"] for c in per_file.values())
    small_seconds = sum(c["small backend"] for c in per_file.values())
    print(
        f"  programs compiled in under {SMALL_SECONDS * 1000:.0f} ms: {small}, {small_seconds:.1f} s of backend compile"
    )


if __name__ == "__main__":
    report(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT)
