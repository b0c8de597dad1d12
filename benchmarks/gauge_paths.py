"""Step counts of a gauge-free bundle adjustment under each step strategy and graph linear solver, with the
iteration log and the history on and off (benchmarks/README.md (ap)).

dubrovnik-3-7 (tests/data/graphs; 3 cameras, 7 points, an exact fit) has a 7-dimensional gauge freedom (a
similarity transform of the scene): JᵀJ is singular, and the Gauss-Newton step's component along the gauge is
set by rounding. Levenberg-Marquardt's damping removes it; Dogleg and Gauss-Newton take it, and their paths then
follow the rounding, which differs between programs that XLA compiles differently (with the iteration log's
callbacks, with the history's buffers).

    python benchmarks/gauge_paths.py
"""

from __future__ import annotations

import contextlib
import io
import os

import jax

jax.config.update("jax_enable_x64", True)

import jaxnls  # noqa: E402
from jaxnls import graph  # noqa: E402
from jaxnls.io import read_bal  # noqa: E402

DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "data", "graphs")
VARIANTS = {"plain": {}, "verbose=True": {"verbose": True}, "history=8": {"history": 8}}


def main():
    problem = graph.bal_graph_problem(read_bal(os.path.join(DATA, "dubrovnik-3-7-pre.txt")))
    print(f"default linear solver: {graph.default_linear_solver(problem)}")
    linear_solvers = {
        "SparseDirect": graph.SparseDirect(),
        "SchurDirect(point)": graph.SchurDirect(eliminate="point"),
        "SchurDirect(camera)": graph.SchurDirect(eliminate="camera"),
    }
    print(f"{'strategy':<20} {'linear solver':<21} " + " ".join(f"{v:>13}" for v in VARIANTS) + "   final costs")
    for strategy in (jaxnls.Dogleg, jaxnls.GaussNewton, jaxnls.LevenbergMarquardt):
        for name, linear_solver in linear_solvers.items():
            steps, costs = [], []
            for options in VARIANTS.values():
                with contextlib.redirect_stdout(io.StringIO()):  # the iteration log, not wanted here
                    sol = graph.solve(problem, solver=strategy(linear_solver=linear_solver), **options)
                steps.append(f"{int(sol.num_steps)} {jaxnls.Status(int(sol.status)).name.split('_')[-1][:5]}")
                costs.append(f"{float(sol.cost):.0e}")
            print(
                f"{strategy.__name__:<20} {name:<21} " + " ".join(f"{s:>13}" for s in steps) + "   " + " ".join(costs)
            )


if __name__ == "__main__":
    main()
