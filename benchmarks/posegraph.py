"""Pose-graph optimisation side by side: GTSAM's Levenberg-Marquardt and jaxnls.graph, one process.

    python benchmarks/posegraph.py                      # w10000.graph (10,000 SE2 poses, 64,311 edges)
    python benchmarks/posegraph.py --file w100.graph --repeats 5
    python benchmarks/posegraph.py --file pose3example.txt
    python benchmarks/posegraph.py --file sphere2500.txt   # 2,500 SE3 poses; edges only: odometry-chained start
    python benchmarks/posegraph.py --file w100.graph --batch 64   # 64 graphs in one batched solve
    python benchmarks/posegraph.py --file w10000.graph --first-poses 1000 --batch 64

With ``--batch N`` the file's graph is solved N times from N starts (the file's values, each pose moved
by Exp of a tangent draw with sigma 0.1, seed 0): jaxnls solves them as one batch
(``batched=True``), GTSAM one after another; the table reports the total time of all N.

Both problems get the same strong prior on pose 0 (sigma 1e-6) to fix the gauge, and start from the
file's initial values. GTSAM runs with its default LevenbergMarquardtParams ("default") and with
tolerances tightened to 1e-14 / 200 iterations ("tight", one timed call). Every row is timed the same
way (benchmarks/_common.time_calls): one warm-up call, then the median of --repeats calls; for jaxnls the
warm-up's time minus that median is reported as compile time. Needs gtsam and jaxlie (pip install gtsam
jaxlie).
"""

from __future__ import annotations

import argparse
import os

import jax

jax.config.update("jax_enable_x64", True)

import gtsam  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jaxlie  # noqa: E402
import numpy as np  # noqa: E402
from _common import time_calls  # noqa: E402

import jaxnls  # noqa: E402
from jaxnls import graph as jg  # noqa: E402

PRIOR_SIGMA = 1e-6


def load(name: str, first_poses: int | None = None):
    """GTSAM's example file as (gtsam graph with prior, gtsam initial, our FactorGraph); with
    ``first_poses`` only the poses with keys below it and the edges among them."""
    path = name if os.path.exists(name) else gtsam.findExampleDataFile(name)
    with open(path) as file:
        text = file.read()
    is3d = any(tag in text for tag in ("SE3", "EDGE3", "VERTEX3"))
    factors, initial = gtsam.readG2o(path, is3d) if is3d or "EDGE_SE2" in text else gtsam.load2D(path)
    if initial.size() == 0:  # an edges-only file (sphere2500.txt): start from the chained odometry
        initial = chained_odometry(factors, is3d)
    if first_poses is not None:
        kept = gtsam.NonlinearFactorGraph()
        for i in range(factors.size()):
            if max(factors.at(i).keys()) < first_poses:
                kept.add(factors.at(i))
        values = gtsam.Values()
        for key in initial.keys():
            if key < first_poses:
                values.insert(key, initial.atPose3(key) if is3d else initial.atPose2(key))
        factors, initial = kept, values
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
    graph = jg.FactorGraph(
        {"pose": poses},
        [
            jg.CostGroup(
                jg.between, ("pose", "pose"), np.array(edges), group(jnp.asarray(np.array(measured))), sqrt_info
            ),
            jg.CostGroup(
                jg.prior,
                ("pose",),
                [[0]],
                jax.tree_util.tree_map(lambda leaf: leaf[:1], poses),
                jnp.eye(d)[None] / PRIOR_SIGMA,
            ),
        ],
    )
    return factors, initial, graph


def perturbed_starts(graph, batch: int, sigma: float = 0.1, seed: int = 0):
    """``batch`` copies of the graph's variables, each pose moved by Exp(ξ), ξ ~ N(0, sigma²) per tangent
    coordinate (pose 0, the anchor, stays)."""
    poses = graph.variables["pose"]
    group = type(poses)
    count = poses.parameters().shape[0]
    noise = sigma * np.random.default_rng(seed).standard_normal((batch, count, group.tangent_dim))
    noise[:, 0] = 0.0
    moved = jax.vmap(lambda xi: jax.vmap(lambda p, x: p @ group.exp(x))(poses, xi))(jnp.asarray(noise))
    return moved


def gtsam_values(poses):
    """gtsam.Values holding the jaxlie poses (keys 0..N-1)."""
    values = gtsam.Values()
    for key, row in enumerate(np.asarray(poses.parameters())):
        if isinstance(poses, jaxlie.SE2):
            values.insert(key, gtsam.Pose2(row[2], row[3], np.arctan2(row[1], row[0])))
        else:
            values.insert(key, gtsam.Pose3(np.asarray(jaxlie.SE3(jnp.asarray(row)).as_matrix())))
    return values


def batch_of(graph, starts):
    """The graph with a leading batch axis on its variables and cost data (shared indices)."""
    batch = starts.parameters().shape[0]
    tile = lambda leaf: jnp.broadcast_to(leaf, (batch,) + leaf.shape)
    costs = [
        jg.CostGroup(
            c.residual_fn,
            c.kinds,
            c.indices.array,
            jax.tree_util.tree_map(tile, c.data),
            None if c.sqrt_information is None else tile(c.sqrt_information),
            c.loss,
        )
        for c in graph.costs
    ]
    return jg.FactorGraph({"pose": starts}, costs)


def run_gtsam_batch(factors, starts, repeats: int):
    initials = [
        gtsam_values(jax.tree_util.tree_map(lambda leaf, b=b: leaf[b], starts))
        for b in range(starts.parameters().shape[0])
    ]
    timing, results = time_calls(
        lambda: [
            gtsam.LevenbergMarquardtOptimizer(factors, initial, gtsam.LevenbergMarquardtParams()).optimize()
            for initial in initials
        ],
        repeats,
    )
    return np.array([factors.error(r) for r in results]), timing.median


def run_jaxnls_batch(graph, solver, max_steps: int, repeats: int):
    timing, sol = time_calls(lambda: jg.solve(graph, solver=solver, max_steps=max_steps, batched=True), repeats)
    return np.asarray(sol.cost), np.asarray(sol.num_steps), max(timing.overhead, 0.0), timing.median


def main_batch(args, factors, graph):
    starts = perturbed_starts(graph, args.batch)
    batched = batch_of(graph, starts)
    print(
        f"batch of {args.batch} graphs ({args.file}, {len(graph.variables['pose'].parameters())} poses, "
        f"{graph.costs[0].num_terms} edges, perturbed starts); devices: {jax.devices()}; CHOLMOD's BLAS: {os.environ.get('JAXNLS_BLAS') or 'scipy (default)'}"
    )
    print(
        f"{'method':<52}{'max final cost':>16}{'max iters':>10}{'compile s':>11}{'total s':>10}"
        f"{'max |cost - GTSAM| / GTSAM':>28}"
    )
    reference, gtsam_time = run_gtsam_batch(factors, starts, args.repeats)
    print(f"{'gtsam LM (default, one by one)':<36}{reference.max():>16.6f}{'':>10}{'':>11}{gtsam_time:>10.3f}")
    rows = {
        "jaxnls Dogleg + SparseDirect": jaxnls.Dogleg(linear_solver=jg.SparseDirect()),
        "jaxnls Dogleg + PCG": jaxnls.Dogleg(linear_solver=jg.PCG()),
        "jaxnls LM + PCG": jaxnls.LevenbergMarquardt(linear_solver=jg.PCG()),
    }
    only = None if args.only is None else {name.strip() for name in args.only.split(",")}
    for name, solver in rows.items():
        if only is not None and name not in only:
            continue
        costs, steps, compile_time, solve_time = run_jaxnls_batch(batched, solver, args.max_steps, args.repeats)
        gap = np.max(np.abs(costs - reference) / reference)
        print(
            f"{name:<52}{costs.max():>16.6f}{steps.max():>10}{compile_time:>11.2f}{solve_time:>10.3f}{gap:>28.2e}",
            flush=True,
        )


def chained_odometry(factors, is3d: bool):
    """Initial values x_0 = identity, x_{i+1} = x_i · z_{i,i+1} from the edges between consecutive poses."""
    odometry = {}
    for i in range(factors.size()):
        factor = factors.at(i)
        a, b = factor.keys()
        if b == a + 1:
            odometry[a] = factor.measured()
    values = gtsam.Values()
    pose = gtsam.Pose3() if is3d else gtsam.Pose2()
    values.insert(0, pose)
    for key in range(len(odometry)):
        pose = pose.compose(odometry[key])
        values.insert(key + 1, pose)
    return values


def run_gtsam(factors, initial, tight: bool, repeats: int):
    params = gtsam.LevenbergMarquardtParams()
    if tight:
        params.setRelativeErrorTol(1e-14)
        params.setAbsoluteErrorTol(1e-14)
        params.setMaxIterations(200)

    def optimize():
        optimizer = gtsam.LevenbergMarquardtOptimizer(factors, initial, params)
        return optimizer, optimizer.optimize()

    timing, (optimizer, result) = time_calls(optimize, repeats)
    return factors.error(result), optimizer.iterations(), None, timing.median


def gtsam_chordal_start(factors, is3d: bool):
    """GTSAM's own chordal start: InitializePose3 (3-D, the chordal relaxation) or LAGO (2-D)."""
    return gtsam.InitializePose3.initialize(factors) if is3d else gtsam.lago.initialize(factors)


def run_gtsam_chordal(factors, is3d: bool, repeats: int):
    """GTSAM's LM with its defaults from its chordal start, the initialisation timed with the solve (NaN where
    GTSAM's initialisation refuses the graph: LAGO takes diagonal noise models only)."""
    params = gtsam.LevenbergMarquardtParams()
    try:
        gtsam_chordal_start(factors, is3d)
    except ValueError as err:
        print(f"gtsam's chordal start: {err}")
        return float("nan"), 0, None, float("nan")

    def optimize():
        optimizer = gtsam.LevenbergMarquardtOptimizer(factors, gtsam_chordal_start(factors, is3d), params)
        return optimizer, optimizer.optimize()

    timing, (optimizer, result) = time_calls(optimize, repeats)
    return factors.error(result), optimizer.iterations(), None, timing.median


def started(graph, chordal: bool):
    """``graph``, or (timed with the solve that follows) ``graph`` from its :func:`jaxnls.graph.chordal_initialization`."""
    return jg.chordal_initialization(graph) if chordal else graph


def run_jaxnls(graph, solver, max_steps: int, repeats: int, chordal: bool = False):
    """One jaxnls row; with ``chordal`` the solve starts from the chordal initialisation, timed with it."""

    def once():
        return jg.solve(started(graph, chordal), solver=solver, max_steps=max_steps)

    timing, sol = time_calls(once, repeats)
    status = jaxnls.Status(int(sol.status)).name
    return float(sol.cost), int(sol.num_steps), max(timing.overhead, 0.0), timing.median, status


def steps_to_reach(graph, solver, max_steps: int, target: float) -> int | None:
    """The first iteration after which the solve's cost is at most ``target`` (None if it never is)."""
    sol = jg.solve(graph, solver=solver, max_steps=max_steps, history=max_steps + 1)
    costs, iterations = np.asarray(sol.history.cost), np.asarray(sol.history.iteration)
    reached = np.flatnonzero(np.isfinite(costs) & (costs <= target))
    return None if reached.size == 0 else int(iterations[reached[0]])


def time_to_reach(
    graph, solver, max_steps: int, target: float, repeats: int, chordal: bool = False
) -> tuple[int | None, float | None]:
    """Iterations and median solve seconds of the same solve stopped at the first iteration whose cost is at
    most ``target`` (GTSAM's final error, 1e-6 relative above it): what the issue's time target measures. With
    ``chordal`` from the chordal initialisation, whose time counts."""
    steps = steps_to_reach(started(graph, chordal), solver, max_steps, target)
    if steps is None:
        return None, None

    def once():
        return jg.solve(started(graph, chordal), solver=solver, max_steps=steps)

    timing, _ = time_calls(once, repeats)
    return steps, timing.median


#: the jaxnls rows: every strategy with every graph linear solver
STRATEGIES = {"Dogleg": jaxnls.Dogleg, "GaussNewton": jaxnls.GaussNewton, "LM": jaxnls.LevenbergMarquardt}
LINEAR_SOLVERS = {"SparseDirect": jg.SparseDirect, "PCG": jg.PCG}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--file", default="w10000.graph", help="a GTSAM example file (TORO .graph / g2o .txt) or a path"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-steps", type=int, default=100)
    parser.add_argument(
        "--only",
        default=None,
        help="comma-separated row names to run (PCG rows on w10000 take "
        "minutes: block-Jacobi CG needs its 500-iteration cap per step there)",
    )
    parser.add_argument("--batch", type=int, default=0, help="solve this many perturbed copies as one batch")
    parser.add_argument(
        "--first-poses",
        type=int,
        default=None,
        help="keep only the poses with keys below this and the edges among them",
    )
    args = parser.parse_args(argv)

    factors, initial, graph = load(args.file, args.first_poses)
    is3d = isinstance(graph.variables["pose"], jaxlie.SE3)
    if args.batch:
        return main_batch(args, factors, graph)
    print(
        f"{args.file}: {len(graph.variables['pose'].parameters())} poses, {graph.costs[0].num_terms} edges, "
        f"initial cost {factors.error(initial):.6e} (GTSAM) ; devices: {jax.devices()}; CHOLMOD's BLAS: {os.environ.get('JAXNLS_BLAS') or 'scipy (default)'}"
    )
    rows = {
        "gtsam LM (default params)": lambda: run_gtsam(factors, initial, False, args.repeats),
        "gtsam LM (tight tolerances)": lambda: run_gtsam(factors, initial, True, 1),
        **{
            f"jaxnls {strategy} + {linear}": lambda s=STRATEGIES[strategy], l=LINEAR_SOLVERS[linear]: run_jaxnls(
                graph, s(linear_solver=l()), args.max_steps, args.repeats
            )
            for strategy in STRATEGIES
            for linear in LINEAR_SOLVERS
        },
        # the same solvers from a chordal start (rotations from the linear relaxation, then positions), its
        # time counted in the solve's; GTSAM's chordal start is InitializePose3 (3-D) or LAGO (2-D)
        "gtsam LM (chordal start)": lambda: run_gtsam_chordal(factors, is3d, args.repeats),
        **{
            f"jaxnls {strategy} + {linear} (chordal start)": lambda s=STRATEGIES[strategy], l=LINEAR_SOLVERS[linear]: (
                run_jaxnls(graph, s(linear_solver=l()), args.max_steps, args.repeats, chordal=True)
            )
            for strategy in STRATEGIES
            for linear in LINEAR_SOLVERS
        },
    }
    only = None if args.only is None else {name.strip() for name in args.only.split(",")}
    print(
        f"{'method':<52}{'final cost':>16}{'iters':>7}{'compile s':>11}{'solve s':>10}"
        f"{'to GTSAM cost: iters':>22}{'s':>8}  status"
    )
    target = None  # GTSAM's final error with its defaults, 1e-6 relative above it
    for name, run in rows.items():
        if only is not None and name not in only:
            continue
        cost, iterations, compile_time, solve_time, *status = run()
        if name == "gtsam LM (default params)":
            target = cost * (1 + 1e-6)
        compile_text = "" if compile_time is None else f"{compile_time:.2f}"
        reach = ""
        if status and target is not None:
            chordal = name.endswith(" (chordal start)")
            strategy, linear = name.removeprefix("jaxnls ").removesuffix(" (chordal start)").split(" + ")
            solver = STRATEGIES[strategy](linear_solver=LINEAR_SOLVERS[linear]())
            steps, seconds = time_to_reach(graph, solver, args.max_steps, target, args.repeats, chordal)
            reach = f"{'never':>22}{'':>8}" if steps is None else f"{steps:>22}{seconds:>8.3f}"
        print(
            f"{name:<52}{cost:>16.6f}{iterations:>7}{compile_text:>11}{solve_time:>10.3f}{reach}"
            f"  {status[0] if status else ''}",
            flush=True,
        )


if __name__ == "__main__":
    main()
