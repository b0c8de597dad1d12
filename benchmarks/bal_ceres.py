"""A real BAL problem side by side with Ceres: Ceres' own ``bundle_adjuster`` example (Debian's libceres-dev,
built by benchmarks/ceres/build.sh) and jaxnls.graph on the same file, one process run.

    bash benchmarks/ceres/build.sh /tmp/ceres-bench
    python benchmarks/bal_ceres.py --ceres /tmp/ceres-bench/bundle_adjuster \\
        --file /tmp/ceres-bench/ceres-solver-2.1.0/data/problem-16-22106-pre.txt

Both minimise ½Σ‖reprojection error‖² over the file's cameras and points in the file's own coordinates
(Ceres with ``--normalize=false``), nothing held fixed, from the file's start. Ceres runs with its example's
defaults (Levenberg-Marquardt, SPARSE_SCHUR on SuiteSparse, its tolerances) and ``--num_iterations=100`` so
that its tolerances, not the example's cap of 5 iterations, end the solve; its time is the "Total" of its own
summary (solve only, no file reading), median of ``--repeats`` runs, with 1 and with 2 threads. jaxnls's
time is the median of ``--repeats`` warm calls (compilation reported separately).
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess

import jax

jax.config.update("jax_enable_x64", True)

from _common import load_bal, time_calls  # noqa: E402

import jaxnls  # noqa: E402
from jaxnls import graph as jg  # noqa: E402


def run_ceres(binary: str, path: str, threads: int, repeats: int) -> dict:
    totals, final, iterations = [], None, None
    for _ in range(repeats):
        out = subprocess.run(
            [binary, f"--input={path}", "--normalize=false", "--num_iterations=100", f"--num_threads={threads}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        totals.append(float(re.search(r"^Total\s+([0-9.eE+-]+)", out, re.M).group(1)))
        final = float(re.search(r"^Final\s+([0-9.eE+-]+)", out, re.M).group(1))
        iterations = int(re.search(r"^Successful steps\s+(\d+)", out, re.M).group(1)) + int(
            re.search(r"^Unsuccessful steps\s+(\d+)", out, re.M).group(1)
        )
    return {"cost": final, "iterations": iterations, "seconds": statistics.median(totals)}


ROWS = {
    "LM + SparseDirect": lambda: jaxnls.LevenbergMarquardt(linear_solver=jg.SparseDirect()),
    "Dogleg + SparseDirect": lambda: jaxnls.Dogleg(linear_solver=jg.SparseDirect()),
    "LM + SchurDirect": lambda: jaxnls.LevenbergMarquardt(linear_solver=jg.SchurDirect()),
    "Dogleg + SchurDirect": lambda: jaxnls.Dogleg(linear_solver=jg.SchurDirect()),
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ceres", required=True, help="the bundle_adjuster built by benchmarks/ceres/build.sh")
    parser.add_argument("--file", required=True, help="a BAL file (e.g. Ceres' data/problem-16-22106-pre.txt)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-steps", type=int, default=100)
    parser.add_argument("--only", default=None, help="comma-separated jaxnls row names")
    args = parser.parse_args(argv)

    _, graph = load_bal(args.file)
    rows = []
    for threads in (1, 2):
        result = run_ceres(args.ceres, args.file, threads, args.repeats)
        rows.append((f"Ceres LM + SPARSE_SCHUR, {threads} thread{'s' * (threads > 1)}", result, None))
    reference = rows[0][1]["seconds"]
    for name, make in ROWS.items():
        if args.only and name not in args.only.split(","):
            continue
        solver = make()
        timing, sol = time_calls(
            lambda solver=solver: jg.solve(graph, solver=solver, max_steps=args.max_steps), args.repeats
        )
        result = {"cost": float(sol.cost), "iterations": int(sol.num_steps), "seconds": timing.median}
        rows.append(
            (
                f"jaxnls {name}",
                result,
                f"{max(timing.overhead, 0.0):.1f} s compile, {jaxnls.Status(int(sol.status)).name}",
            )
        )
    best = min(r[1]["cost"] for r in rows)
    print(
        f"{'':40s} {'final cost':>16s} {'rel. above best':>16s} {'iters':>6s} {'solve s':>9s} {'vs Ceres 1 thr':>15s}"
    )
    for name, result, note in rows:
        print(
            f"{name:40s} {result['cost']:16.8e} {(result['cost'] - best) / best:16.1e} {result['iterations']:6d} "
            f"{result['seconds']:9.3f} {result['seconds'] / reference:14.2f}x" + (f"   ({note})" if note else "")
        )


if __name__ == "__main__":
    main()
