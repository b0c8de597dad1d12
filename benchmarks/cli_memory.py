"""Where a ``jaxnls solve FILE`` process's memory goes, stage by stage (issue 17, benchmarks/README.md (aj)).

Runs the command line's ``main`` in this process (as the ``jaxnls`` console script does, Flax marked absent), samples
the resident set every 2 ms, and marks the stages: the imports, reading the file, building the graph, JAX's backend,
CHOLMOD's BLAS bindings and assembly plan, the compiler-option probe, the stored program and the executables taken
from JAX's persistent cache (JAX's own monitoring events), the end of the solve. For each stage it prints the
resident set at its end and the most it reached within it, and where the growth between some stages lies (the
heap, anonymous mappings, or the pages of a library), from ``/proc/self/smaps``. The last line is the process's
peak (``ru_maxrss``), the figure GNU time reports.

    python benchmarks/cli_memory.py /tmp/data/parking-garage.g2o
    python benchmarks/cli_memory.py /tmp/data/parking-garage.g2o --trim-after-plan   # malloc_trim(0) there

The stage wrappers replace a few of the package's internal functions for the run (instrumentation only).
"""

from __future__ import annotations

import argparse
import ctypes
import itertools
import resource
import sys
import threading
import time

sys.modules.setdefault("flax", None)  # pyright: ignore[reportArgumentType]  # as the console script does

START = time.perf_counter()
samples: list[tuple[float, int]] = []
marks: list[tuple[float, str, int]] = []
snapshots: dict[str, dict[str, int]] = {}


def resident_mb() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) // 1024
    return 0


def mappings_kb() -> dict[str, int]:
    """Resident kB by mapping name (``[heap]``, ``[anon]``, a library's path)."""
    resident: dict[str, int] = {}
    name = "[anon]"
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            fields = line.split()
            if "-" in fields[0] and not fields[0].endswith(":"):
                name = fields[5] if len(fields) > 5 else "[anon]"
            elif fields[0] == "Rss:":
                resident[name] = resident.get(name, 0) + int(fields[1])
    return resident


def mark(label: str, snapshot: bool = False) -> None:
    marks.append((time.perf_counter() - START, label, resident_mb()))
    if snapshot:
        snapshots[f"{len(marks):03d} {label}"] = mappings_kb()


def sample(stop: threading.Event) -> None:
    while not stop.is_set():
        samples.append((time.perf_counter() - START, resident_mb()))
        time.sleep(0.002)


def wrap(owner, name: str, snapshot: bool = False, after=None) -> None:
    function = getattr(owner, name)

    def wrapped(*args, **kwargs):
        mark(f"> {name}", snapshot)
        result = function(*args, **kwargs)
        mark(f"< {name}", snapshot)
        if after is not None:
            after()
        return result

    setattr(owner, name, wrapped)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file")
    parser.add_argument("--trim-after-plan", action="store_true", help="malloc_trim(0) after CHOLMOD's plan")
    options = parser.parse_args()

    stop = threading.Event()
    threading.Thread(target=sample, args=(stop,), daemon=True).start()
    mark("start")
    import jax
    import jax.monitoring

    mark("import jax")
    import jaxnls.__main__ as command_line
    import jaxnls.graph
    import jaxnls.io

    mark("import jaxnls", snapshot=True)
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, duration, **_: mark(f"{event} {duration:.3f} s", "cache_retrieval" in event)
    )
    # instrumentation: the stages of a graph solve (internal names of this version)
    import jaxnls._driver as driver
    import jaxnls._programs as programs
    import jaxnls.graph._blas as blas
    import jaxnls.graph._solve as graph_solve

    wrap(jaxnls.io, "read_g2o")
    wrap(jaxnls.io, "read_toro")
    wrap(jaxnls.graph, "pose_graph_problem")
    wrap(jaxnls.graph, "solve", snapshot=True)
    wrap(blas, "_scipy_functions")
    trim = (lambda: ctypes.CDLL("libc.so.6").malloc_trim(0)) if options.trim_after_plan else None
    wrap(graph_solve, "assembly_for", snapshot=True, after=trim)
    wrap(driver, "_knows_compiler_options")
    wrap(programs.ProgramStore, "_read")
    command_line._one_malloc_arena()  # as the console process does before main
    try:
        command_line.main(["solve", options.file])
    except SystemExit:
        pass
    mark("end", snapshot=True)
    stop.set()

    previous = 0.0
    for at, label, resident in marks:
        window = [mb for t, mb in samples if previous <= t <= at]
        print(f"{at:7.3f} s  {resident:5d} MB  (most since the last mark {max(window, default=resident):5d})  {label}")
        previous = at
    names = list(snapshots)
    for before, after in itertools.pairwise(names):
        growth = {
            key: (snapshots[after].get(key, 0) - snapshots[before].get(key, 0)) // 1024
            for key in set(snapshots[before]) | set(snapshots[after])
        }
        largest = sorted(((mb, key) for key, mb in growth.items() if mb), reverse=True)[:4]
        print(f"{before[4:]} -> {after[4:]}: " + ", ".join(f"{mb:+d} MB {key}" for mb, key in largest))
    print(f"peak resident set (ru_maxrss): {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MB")


if __name__ == "__main__":
    main()
