"""A BAL problem side by side with jaxls (github.com/brentyi/jaxls), one process run.

    pip install --no-deps <a source snapshot of jaxls>      # plus jax_dataclasses loguru termcolor tqdm rich
    python benchmarks/bal_jaxls.py --file /tmp/ceres-bench/ceres-solver-2.1.0/data/problem-16-22106-pre.txt

Both minimise ½Σ‖reprojection error‖² (the BAL camera model) over the file's cameras and points from the
file's start, nothing held fixed. jaxls runs with its defaults (Levenberg-Marquardt, its automatic Schur
elimination of the points, its default linear solver for the reduced system, its tolerances) and with its
"dense_cholesky" reduced-system solver; jaxnls with ``graph.solve``'s defaults. Every final cost is recomputed
here with jaxnls' ``bal_reprojection`` from the returned variables, so the column compares like with like.
Times are medians of ``--repeats`` warm calls; compile time is the first call minus that median.
"""

from __future__ import annotations

import argparse

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from _common import load_bal, time_calls  # noqa: E402

from jaxnls import graph as jg  # noqa: E402
from jaxnls.graph import bal_reprojection  # noqa: E402


def half_squared_error(problem, cameras, points) -> float:
    residuals = jax.vmap(bal_reprojection)(
        jnp.asarray(cameras)[problem.camera_index], jnp.asarray(points)[problem.point_index], problem.observations
    )
    return 0.5 * float(jnp.sum(residuals**2))


def jaxls_rows(problem, repeats: int) -> list[tuple[str, float, int, float, float]]:
    import jaxls

    class Camera(jaxls.Var[jax.Array], default_factory=lambda: jnp.zeros(9)):
        """A BAL camera (Rodrigues rotation, translation, f, k1, k2)."""

    class Point(jaxls.Var[jax.Array], default_factory=lambda: jnp.zeros(3)):
        """A world point."""

    def reprojection(values, camera, point, observed):
        return bal_reprojection(values[camera], values[point], observed)

    cameras, points = Camera(jnp.arange(problem.num_cameras)), Point(jnp.arange(problem.num_points))
    analyzed = jaxls.LeastSquaresProblem(
        costs=[
            jaxls.Cost(
                reprojection,
                (
                    Camera(jnp.asarray(problem.camera_index)),
                    Point(jnp.asarray(problem.point_index)),
                    jnp.asarray(problem.observations),
                ),
            )
        ],
        variables=[cameras, points],
    ).analyze()
    start = jaxls.VarValues.make(
        [cameras.with_value(jnp.asarray(problem.cameras)), points.with_value(jnp.asarray(problem.points))]
    )
    rows = []
    for label, options in (("defaults", {}), ('linear_solver="dense_cholesky"', {"linear_solver": "dense_cholesky"})):

        def solve(options=options):
            return analyzed.solve(start, verbose=False, return_summary=True, **options)

        timing, (solution, summary) = time_calls(lambda solve=solve: jax.block_until_ready(solve()), repeats)
        cost = half_squared_error(problem, solution[cameras], solution[points])
        iterations = int(np.asarray(summary.iterations))
        rows.append((f"jaxls LM, {label}", cost, iterations, timing.median, max(timing.overhead, 0.0)))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--file", required=True, help="a BAL file")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    problem, graph = load_bal(args.file)
    print(f"initial ½Σ‖r‖² {half_squared_error(problem, problem.cameras, problem.points):.8e}")
    timing, sol = time_calls(lambda: jg.solve(graph), args.repeats)
    rows = [
        (
            f"jaxnls graph.solve defaults ({sol.method})",
            float(sol.cost),
            int(sol.num_steps),
            timing.median,
            max(timing.overhead, 0.0),
        )
    ]
    rows += jaxls_rows(problem, args.repeats)
    reference = rows[0][3]
    print(f"{'row':52s} {'final ½Σ‖r‖²':>16s} {'iters':>6s} {'solve s':>9s} {'compile s':>10s} {'vs jaxnls':>10s}")
    for name, cost, iterations, seconds, compile_seconds in rows:
        print(
            f"{name:52s} {cost:16.8e} {iterations:6d} {seconds:9.3f} {compile_seconds:10.1f} "
            f"{seconds / reference:9.2f}x"
        )


if __name__ == "__main__":
    main()
