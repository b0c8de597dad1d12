"""Synthetic bundle adjustment side by side: GTSAM's Levenberg-Marquardt and jaxnls.graph, one process.

    python benchmarks/bundle.py                          # 40 cameras, 10,000 points, each seen by 4 cameras
    python benchmarks/bundle.py --cameras 20 --points 2000

Cameras on a ring ~10 units from a cloud of points (BAL camera model: Rodrigues rotation, translation,
f, k1, k2), pixel noise 0.5, the start perturbed; all values float32-representable and written to a BAL
file, which both read (GTSAM's reader is single precision). Both hold camera 0 and point 0 (GTSAM with
1e-8-sigma priors), so they solve the same problem. jaxnls: compile time = first call minus the median
of the next --repeats calls.
"""

from __future__ import annotations

import argparse
import os
import tempfile

import jax

jax.config.update("jax_enable_x64", True)

import gtsam  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from _common import time_calls  # noqa: E402

import jaxnls  # noqa: E402
from jaxnls import graph as jg  # noqa: E402
from jaxnls.graph import bal_graph_problem, bal_reprojection  # noqa: E402
from jaxnls.io import BALProblem, read_bal, write_bal  # noqa: E402


def synthetic(num_cameras: int, num_points: int, views: int, seed: int = 0) -> BALProblem:
    rng = np.random.default_rng(seed)
    angles = np.linspace(0, 2 * np.pi, num_cameras, endpoint=False)
    cameras = []
    for a in angles:  # looking at the origin from a ring of radius 10 (BAL: the camera looks down -z)
        rotation = gtsam.Rot3.Ry(np.pi / 2 - a).matrix().T
        center = np.array([10 * np.cos(a), 0.0, 10 * np.sin(a)])
        omega = gtsam.Rot3.Logmap(gtsam.Rot3(rotation))
        cameras.append(np.concatenate([omega, -rotation @ center, [500.0, 0.0, 0.0]]))
    cameras = np.array(cameras)
    points = rng.normal(scale=2.0, size=(num_points, 3))
    pairs = [(c, p) for p in range(num_points) for c in rng.choice(num_cameras, views, replace=False)]
    camera_index, point_index = (np.array(v) for v in zip(*pairs))
    project = jax.jit(jax.vmap(bal_reprojection))
    clean = np.asarray(
        project(jnp.asarray(cameras[camera_index]), jnp.asarray(points[point_index]), jnp.zeros((len(pairs), 2)))
    )
    as_float32 = lambda a: np.asarray(a, np.float32).astype(np.float64)
    start = cameras + np.concatenate([rng.normal(scale=0.01, size=(num_cameras, 6)), np.zeros((num_cameras, 3))], 1)
    return BALProblem(
        cameras=as_float32(start),
        points=as_float32(points + rng.normal(scale=0.05, size=points.shape)),
        camera_index=camera_index,
        point_index=point_index,
        observations=as_float32(clean + rng.normal(scale=0.5, size=clean.shape)),
    )


def run_gtsam(path, repeats):
    sfm = gtsam.SfmData.FromBalFile(path)
    factors = sfm.sfmFactorGraph()
    values = gtsam.Values()
    for i in range(sfm.numberCameras()):
        values.insert(i, sfm.camera(i))
    for j in range(sfm.numberTracks()):
        values.insert(gtsam.symbol("p", j), sfm.track(j).point3())
    factors.add(gtsam.PriorFactorPinholeCameraCal3Bundler(0, sfm.camera(0), gtsam.noiseModel.Isotropic.Sigma(9, 1e-8)))
    factors.add(
        gtsam.PriorFactorPoint3(gtsam.symbol("p", 0), sfm.track(0).point3(), gtsam.noiseModel.Isotropic.Sigma(3, 1e-8))
    )

    def optimize():
        optimizer = gtsam.LevenbergMarquardtOptimizer(factors, values, gtsam.LevenbergMarquardtParams())
        return optimizer, optimizer.optimize()

    timing, (optimizer, result) = time_calls(optimize, repeats)
    return factors.error(values), factors.error(result), optimizer.iterations(), None, timing.median, ""


def run_jaxnls(problem, solver, repeats, max_steps):
    unanchored = bal_graph_problem(problem)
    graph = jg.FactorGraph(unanchored.variables, unanchored.costs, fixed={"camera": [0], "point": [0]})
    timing, sol = time_calls(lambda: jg.solve(graph, solver=solver, max_steps=max_steps), repeats)
    return (
        float(sol.initial_cost),
        float(sol.cost),
        int(sol.num_steps),
        timing.overhead,
        timing.median,
        jaxnls.Status(int(sol.status)).name,
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cameras", type=int, default=40)
    parser.add_argument("--points", type=int, default=10_000)
    parser.add_argument("--views", type=int, default=4, help="cameras that see each point")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-steps", type=int, default=100)
    parser.add_argument("--only", default=None, help="comma-separated row names to run")
    args = parser.parse_args()
    problem = synthetic(args.cameras, args.points, args.views)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "synthetic.bal")
        write_bal(path, problem)
        problem = read_bal(path)
        print(
            f"synthetic BA: {args.cameras} cameras, {args.points} points, {problem.observations.shape[0]} "
            f"observations ({9 * args.cameras + 3 * args.points} unknowns); devices: {jax.devices()}"
        )
        rows = {
            "gtsam LM (default params)": lambda: run_gtsam(path, args.repeats),
            "jaxnls Dogleg + SchurPCG": lambda: run_jaxnls(
                problem, jaxnls.Dogleg(linear_solver=jg.SchurPCG()), args.repeats, args.max_steps
            ),
            "jaxnls Dogleg + SchurDirect": lambda: run_jaxnls(
                problem, jaxnls.Dogleg(linear_solver=jg.SchurDirect()), args.repeats, args.max_steps
            ),
            "jaxnls Dogleg + SparseDirect": lambda: run_jaxnls(
                problem, jaxnls.Dogleg(linear_solver=jg.SparseDirect()), args.repeats, args.max_steps
            ),
        }
        print(
            f"{'method':<32}{'initial cost':>16}{'final cost':>16}{'iters':>7}{'compile s':>11}{'solve s':>10}  status"
        )
        only = None if args.only is None else {name.strip() for name in args.only.split(",")}
        for name, run in rows.items():
            if only is not None and name not in only:
                continue
            initial, final, iterations, compile_s, solve_s, status = run()
            compile_text = "" if compile_s is None else f"{compile_s:.2f}"
            print(
                f"{name:<32}{initial:>16.6f}{final:>16.6f}{iterations:>7}{compile_text:>11}{solve_s:>10.3f}  {status}",
                flush=True,
            )


if __name__ == "__main__":
    main()
