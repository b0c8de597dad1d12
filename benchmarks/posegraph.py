"""Pose-graph optimisation side by side: GTSAM's Levenberg-Marquardt and jaxnls.graph, one process.

    python benchmarks/posegraph.py                      # w10000.graph (10,000 SE2 poses, 64,311 edges)
    python benchmarks/posegraph.py --file w100.graph --repeats 5
    python benchmarks/posegraph.py --file pose3example.txt

Both problems get the same strong prior on pose 0 (sigma 1e-6) to fix the gauge, and start from the
file's initial values. GTSAM runs with its default LevenbergMarquardtParams ("default") and with
tolerances tightened to 1e-14 / 200 iterations ("tight"). For jaxnls the first call's time minus the
median of the following calls is reported as compile time; times are medians over --repeats calls
after that warm-up. Needs gtsam and jaxlie (pip install gtsam jaxlie).
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax

jax.config.update("jax_enable_x64", True)

import gtsam  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jaxlie  # noqa: E402
import numpy as np  # noqa: E402

import jaxnls  # noqa: E402
from jaxnls import graph as jg  # noqa: E402

PRIOR_SIGMA = 1e-6


def load(name: str):
    """GTSAM's example file as (gtsam graph with prior, gtsam initial, our FactorGraph)."""
    is3d = not name.endswith(".graph")
    path = gtsam.findExampleDataFile(name)
    factors, initial = gtsam.readG2o(path, True) if is3d else gtsam.load2D(path)
    if is3d:
        def row(p):
            return np.asarray(jaxlie.SE3.from_matrix(jnp.asarray(p.matrix())).wxyz_xyz)
        group, at, d = jaxlie.SE3, initial.atPose3, 6
    else:
        def row(p):
            return [np.cos(p.theta()), np.sin(p.theta()), p.x(), p.y()]
        group, at, d = jaxlie.SE2, initial.atPose2, 3
    edges, measured, sqrt_info = [], [], []
    for i in range(factors.size()):
        factor = factors.at(i)
        edges.append(list(factor.keys()))
        measured.append(row(factor.measured()))
        sqrt_info.append(factor.noiseModel().R())
    sqrt_info = np.stack(sqrt_info)
    if is3d:
        sqrt_info = np.asarray(jg.from_gtsam_pose3(sqrt_info))
    keys = sorted(initial.keys())
    poses = group(jnp.asarray(np.array([row(at(k)) for k in keys])))
    factors = gtsam.NonlinearFactorGraph(factors)
    prior = gtsam.PriorFactorPose3 if is3d else gtsam.PriorFactorPose2
    factors.add(prior(0, at(0), gtsam.noiseModel.Diagonal.Sigmas(np.full(d, PRIOR_SIGMA))))
    graph = jg.FactorGraph({"pose": poses}, [
        jg.CostGroup(jg.between, ("pose", "pose"), np.array(edges), group(jnp.asarray(np.array(measured))), sqrt_info),
        jg.CostGroup(jg.prior, ("pose",), [[0]], jax.tree_util.tree_map(lambda leaf: leaf[:1], poses),
                     jnp.eye(d)[None] / PRIOR_SIGMA),
    ])
    return factors, initial, graph


def run_gtsam(factors, initial, tight: bool, repeats: int):
    params = gtsam.LevenbergMarquardtParams()
    if tight:
        params.setRelativeErrorTol(1e-14)
        params.setAbsoluteErrorTol(1e-14)
        params.setMaxIterations(200)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        optimizer = gtsam.LevenbergMarquardtOptimizer(factors, initial, params)
        result = optimizer.optimize()
        times.append(time.perf_counter() - start)
    return factors.error(result), optimizer.iterations(), None, statistics.median(times)


def run_jaxnls(graph, solver, max_steps: int, repeats: int):
    start = time.perf_counter()
    sol = jg.solve(graph, solver=solver, max_steps=max_steps)
    sol.cost.block_until_ready()
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        sol = jg.solve(graph, solver=solver, max_steps=max_steps)
        sol.cost.block_until_ready()
        times.append(time.perf_counter() - start)
    solve_time = statistics.median(times)
    status = jaxnls.Status(int(sol.status)).name
    return float(sol.cost), int(sol.num_steps), max(first - solve_time, 0.0), solve_time, status


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file", default="w10000.graph", help="a GTSAM example file (TORO .graph / g2o .txt)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-steps", type=int, default=100)
    parser.add_argument("--only", default=None, help="comma-separated row names to run (PCG rows on w10000 take "
                        "minutes: block-Jacobi CG needs its 500-iteration cap per step there)")
    args = parser.parse_args(argv)

    factors, initial, graph = load(args.file)
    print(f"{args.file}: {len(graph.variables['pose'].parameters())} poses, {graph.costs[0].num_terms} edges, "
          f"initial cost {factors.error(initial):.6e} (GTSAM) ; CPU devices: {jax.device_count()}")
    rows = {
        "gtsam LM (default params)": lambda: run_gtsam(factors, initial, False, args.repeats),
        "gtsam LM (tight tolerances)": lambda: run_gtsam(factors, initial, True, 1),
        "jaxnls Dogleg + SparseDirect": lambda: run_jaxnls(
            graph, jaxnls.Dogleg(linear_solver=jg.SparseDirect()), args.max_steps, args.repeats),
        "jaxnls Dogleg + PCG": lambda: run_jaxnls(
            graph, jaxnls.Dogleg(linear_solver=jg.PCG()), args.max_steps, args.repeats),
        "jaxnls GaussNewton + SparseDirect": lambda: run_jaxnls(
            graph, jaxnls.GaussNewton(linear_solver=jg.SparseDirect()), args.max_steps, args.repeats),
        "jaxnls GaussNewton + PCG": lambda: run_jaxnls(
            graph, jaxnls.GaussNewton(linear_solver=jg.PCG()), args.max_steps, args.repeats),
        "jaxnls LM + SparseDirect": lambda: run_jaxnls(
            graph, jaxnls.LevenbergMarquardt(linear_solver=jg.SparseDirect()), args.max_steps, args.repeats),
        "jaxnls LM + PCG": lambda: run_jaxnls(
            graph, jaxnls.LevenbergMarquardt(linear_solver=jg.PCG()), args.max_steps, args.repeats),
    }
    only = None if args.only is None else {name.strip() for name in args.only.split(",")}
    print(f"{'method':<36}{'final cost':>16}{'iters':>7}{'compile s':>11}{'solve s':>10}  status")
    for name, run in rows.items():
        if only is not None and name not in only:
            continue
        cost, iterations, compile_time, solve_time, *status = run()
        compile_text = "" if compile_time is None else f"{compile_time:.2f}"
        print(f"{name:<36}{cost:>16.6f}{iterations:>7}{compile_text:>11}{solve_time:>10.3f}  {status[0] if status else ''}",
              flush=True)


if __name__ == "__main__":
    main()
