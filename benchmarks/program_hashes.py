"""Digests of the programs that plain solves lower to, for telling whether a change altered them (benchmarks/README.md
(ap)): the StableHLO text (debug information off) of ``jaxnls.solve`` under ``jax.jit`` with each dense strategy on a
20-point exponential fit, of ``jaxnls.graph.solve`` on w100 under Levenberg-Marquardt and Dogleg, and of Dogleg with
``SchurDirect(eliminate="point")`` on dubrovnik-3-7. Equal digests mean the same compiled programs, hence the same
speed. Run it here and against another revision's package:

    python benchmarks/program_hashes.py
    git worktree add --detach /tmp/before REV && PYTHONPATH=/tmp/before python benchmarks/program_hashes.py

(run it as a script, not ``python -c``, so that the working directory's own ``jaxnls`` does not shadow
``PYTHONPATH``; the first line printed says which package was imported).
"""

from __future__ import annotations

import hashlib
import os

import jax
import jax.numpy as jnp

jax.config.update("jax_enable_x64", True)

import jaxnls  # noqa: E402
from jaxnls import graph  # noqa: E402
from jaxnls.io import read_bal, read_pose_graph  # noqa: E402

DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "data", "graphs")


def digest(lowered) -> str:
    return hashlib.sha256(lowered.as_text(debug_info=False).encode()).hexdigest()[:16]


def main():
    print(f"jaxnls imported from {os.path.dirname(jaxnls.__file__)}")
    t = jnp.linspace(0.0, 1.0, 20)
    y = 2.0 * jnp.exp(-1.5 * t)

    def exponential(p, data):
        return p[0] * jnp.exp(-p[1] * t) - data

    for strategy in (jaxnls.LevenbergMarquardt, jaxnls.Dogleg, jaxnls.GaussNewton):
        lowered = jax.jit(lambda p, s=strategy: jaxnls.solve(exponential, p, y, solver=s()).params).lower(
            jnp.array([1.0, 1.0])
        )
        print(f"{'solve, ' + strategy.__name__:<45} {digest(lowered)}")
    poses = graph.pose_graph_problem(read_pose_graph(os.path.join(DATA, "w100.graph")))
    for strategy in (jaxnls.LevenbergMarquardt, jaxnls.Dogleg):
        lowered = jax.jit(lambda g, s=strategy: graph.solve(g, solver=s()).cost).lower(poses)
        print(f"{'graph.solve w100, ' + strategy.__name__:<45} {digest(lowered)}")
    bal = graph.bal_graph_problem(read_bal(os.path.join(DATA, "dubrovnik-3-7-pre.txt")))
    schur = jaxnls.Dogleg(linear_solver=graph.SchurDirect(eliminate="point"))
    lowered = jax.jit(lambda g: graph.solve(g, solver=schur).cost).lower(bal)
    print(f"{'graph.solve dubrovnik-3-7, Dogleg + SchurDirect':<45} {digest(lowered)}")


if __name__ == "__main__":
    main()
