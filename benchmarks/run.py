"""jaxnls vs optimistix / jaxopt / scipy, side by side in one process.

    python benchmarks/run.py                      # default full run (~10 min on 2 cores): B = 1,024, all 27 NIST problems
    python benchmarks/run.py --only meta          # meta-gradients, mixed vs reverse mode (jaxnls.meta)
    python benchmarks/run.py --only linalg        # matrix-function gradients: error vs eigen-gap, speed
    python benchmarks/run.py --only optim         # gradient-flow integrators at an equal gradient budget
    python benchmarks/run.py --only swat          # SWAT-NN latent search vs dense networks on the 10 tasks
    python benchmarks/run.py --sizes 1024,16384   # adds B = 16,384 (about an hour on a 2-core CPU, see README)
    python benchmarks/run.py --quick              # smoke run (< 60 s): B = 128, 1 NIST problem
    python benchmarks/run.py --sizes 1024,16384 --only curvefit --json results.json

See benchmarks/README.md for what is measured and how.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# Import everything up front: the jaxnls sources this process runs are fixed from here on (the header
# records their digest), even if the working tree changes while the benchmark runs.
import adjoints  # noqa: E402
import curvefit  # noqa: E402
import linalg  # noqa: E402
import meta  # noqa: E402
import nist  # noqa: E402
import numpy as np  # noqa: E402
import optim  # noqa: E402
import swat  # noqa: E402
from _common import machine_info, print_header, warm_up_jax  # noqa: E402


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    return obj


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: B=128 and 1 NIST problem (< 60 s)")
    parser.add_argument(
        "--sizes",
        default=None,
        help="comma-separated batch sizes (default 1024; quick: 128); 1024,16384 for both sizes of the README",
    )
    parser.add_argument(
        "--only",
        choices=("curvefit", "nist", "adjoints", "meta", "linalg", "optim", "swat"),
        default=None,
        help="run one part only",
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed calls after the warm-up call (default 5)")
    parser.add_argument("--json", default=None, metavar="PATH", help="also save every number as JSON")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    sizes = [int(s.replace("_", "")) for s in (args.sizes or ("128" if args.quick else "1024")).split(",")]

    start = time.perf_counter()
    info = machine_info()
    print_header(info)
    warm_up_jax()
    out = {"machine": info, "args": vars(args), "sizes": sizes}
    printed = []

    if args.only in (None, "curvefit"):
        out["curvefit"] = {}
        for batch in sizes:
            print(f"[curvefit] B = {batch:,}: running ...", flush=True)
            result = curvefit.run_size(batch, args.repeats)
            text, numbers = curvefit.summarize(result)
            out["curvefit"][str(batch)] = numbers
            printed.append(text)
    # the other parts: (name, progress line, how to run it, its summary)
    parts = [
        (
            "adjoints",
            "B = 1,024 (quick: 128)",
            lambda: adjoints.run(128 if args.quick else 1024, args.repeats),
            adjoints.summarize,
        ),
        (
            "meta",
            "MLP 64-256-256-1, mixed vs reverse mode",
            lambda: meta.run(quick=args.quick, repeats=args.repeats),
            meta.summarize,
        ),
        (
            "linalg",
            "matrix-function gradients vs the eigh composition",
            lambda: linalg.run(repeats=args.repeats),
            linalg.summarize,
        ),
        ("optim", "gradient-flow integrators at an equal gradient budget", optim.run, optim.summarize),
        (
            "swat",
            "SWAT-NN latent search on the 10-task suite",
            lambda: swat.run(tasks=["matyas"] if args.quick else None),
            swat.summarize,
        ),
        ("nist", "fitting", lambda: nist.run(quick=args.quick), nist.summarize),
    ]
    for name, what, run_part, summarize in parts:
        if args.only in (None, name):
            print(f"[{name}] {what} ...", flush=True)
            out[name] = run_part()
            printed.append(summarize(out[name]))

    elapsed = time.perf_counter() - start
    try:
        load_end = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load_end = None
    out["total_wall_s"] = elapsed
    out["load_average_at_end"] = load_end

    print()
    print("=" * 100)
    print("RESULTS")
    print("=" * 100)
    for text in printed:
        print(text)
        print()
    if args.only in (None, "curvefit"):
        print(curvefit.NOTES)
        print()
    print(
        f"total benchmark wall time {elapsed:.0f} s; load average at start "
        f"{' '.join(map(str, info['load_average_1_5_15']))}, at end {' '.join(map(str, load_end or []))} "
        f"on {info['cpus_usable']} usable cores"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(_jsonable(out), f, indent=1)
        print(f"saved {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
