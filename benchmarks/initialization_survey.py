"""The chordal start against the file's start on many public pose graphs, GTSAM beside jaxnls, one process per file.

    git -C <SE-Sync snapshot> show HEAD:data/MIT.g2o > /tmp/data/MIT.g2o     # (the files of SE-Sync's data/)
    python benchmarks/initialization_survey.py /tmp/data/*.g2o

For each file: jaxnls' Dogleg + SparseDirect (100 steps) from the file's poses (or the chained odometry of an
edges-only file) and from :func:`jaxnls.graph.chordal_initialization`; GTSAM's LM with its defaults from the same
start and from its own chordal start (``InitializePose3``, 3-D; ``lago``, 2-D, which takes diagonal noise models
only). Costs are ½Σ‖r‖²_Σ = GTSAM's ``graph.error`` without the anchoring prior; times are one warm call (jaxnls
compiled first), the initialisation's listed apart. Files whose information matrices are indefinite are read
with ``repair_information=True``; GTSAM would solve a different problem there and is skipped. Needs gtsam.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

import numpy as np


def survey(path: str, max_steps: int) -> str:
    import jax

    jax.config.update("jax_enable_x64", True)
    import gtsam

    import jaxnls
    from jaxnls.io import PoseGraph3D, read_pose_graph

    pose_graph = read_pose_graph(path, repair_information=True)
    is3d = isinstance(pose_graph, PoseGraph3D)
    cells = [
        path.rsplit("/", 1)[-1],
        f"{'3-D' if is3d else '2-D'}, {pose_graph.num_poses} poses, {pose_graph.num_edges} edges"
        + (", odometry start" if pose_graph.initialized_from_odometry else "")
        + (f", {pose_graph.repaired_information} repaired" if pose_graph.repaired_information else ""),
    ]

    def jaxnls_row(start) -> str:
        graph = jaxnls.graph.pose_graph_problem(start)
        solver = jaxnls.Dogleg(linear_solver=jaxnls.graph.SparseDirect())
        jaxnls.graph.solve(graph, solver=solver, max_steps=max_steps)
        begin = time.perf_counter()
        sol = jax.block_until_ready(jaxnls.graph.solve(graph, solver=solver, max_steps=max_steps))
        seconds = time.perf_counter() - begin
        status = jaxnls.Status(int(sol.status)).name
        return f"{float(sol.initial_cost):.4g} → {float(sol.cost):.8g} ({int(sol.num_steps)} it, {status}, {seconds:.2f} s)"

    begin = time.perf_counter()
    chordal = jaxnls.graph.chordal_initialization(pose_graph)
    chordal_seconds = time.perf_counter() - begin
    cells.append(jaxnls_row(pose_graph))
    cells.append(f"{jaxnls_row(chordal)} + {chordal_seconds:.2f} s")
    if pose_graph.repaired_information:
        return " | ".join([*cells, "—", "—"])

    graph, _ = gtsam.readG2o(path, is3d)
    plain = gtsam.NonlinearFactorGraph(graph)
    values = gtsam.Values()
    for k, key in enumerate(int(i) for i in pose_graph.pose_ids):
        if is3d:
            rotation = gtsam.Rot3.Quaternion(*pose_graph.quaternions[k])
            values.insert(key, gtsam.Pose3(rotation, gtsam.Point3(*pose_graph.translations[k])))
        else:
            values.insert(key, gtsam.Pose2(*pose_graph.poses[k]))
    first = int(pose_graph.pose_ids[0])
    prior = gtsam.PriorFactorPose3 if is3d else gtsam.PriorFactorPose2
    anchor = values.atPose3(first) if is3d else values.atPose2(first)
    graph.add(prior(first, anchor, gtsam.noiseModel.Diagonal.Sigmas(np.full(6 if is3d else 3, 1e-6))))

    def gtsam_row(initial) -> str:
        begin = time.perf_counter()
        optimizer = gtsam.LevenbergMarquardtOptimizer(graph, initial, gtsam.LevenbergMarquardtParams())
        result = optimizer.optimize()
        seconds = time.perf_counter() - begin
        return f"{plain.error(initial):.4g} → {plain.error(result):.8g} ({optimizer.iterations()} it, {seconds:.2f} s)"

    cells.append(gtsam_row(values))
    try:
        begin = time.perf_counter()
        start = gtsam.InitializePose3.initialize(graph) if is3d else gtsam.lago.initialize(graph)
        cells.append(f"{gtsam_row(start)} + {time.perf_counter() - begin:.2f} s")
    except (ValueError, IndexError, RuntimeError) as err:  # lago: diagonal noise models only
        cells.append(f"refused: {str(err)[:50]}")
    return " | ".join(cells)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", help="g2o / TORO pose-graph files")
    parser.add_argument("--max-steps", type=int, default=100)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # (the per-file child process)
    args = parser.parse_args(argv)
    if args.one:
        print(survey(args.files[0], args.max_steps), flush=True)
        return
    print(
        "| file | graph | jaxnls from the file | jaxnls from chordal_initialization | GTSAM LM from the file "
        "| GTSAM LM from its chordal start |"
    )
    print("|---|---|---|---|---|---|")
    for path in args.files:  # a fresh process per file: no file's compilations or caches meet another's
        done = subprocess.run(
            [sys.executable, __file__, path, "--one", "--max-steps", str(args.max_steps)],
            capture_output=True,
            text=True,
            check=False,
        )
        line = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else f"{path} | failed: {done.stderr[-200:]}"
        print(f"| {line} |", flush=True)


if __name__ == "__main__":
    main()
