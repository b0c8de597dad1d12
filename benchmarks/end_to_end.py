"""End to end: the process wall time and peak memory of ``jaxnls solve FILE`` beside a GTSAM process doing
the same job (read the file, Levenberg-Marquardt with its defaults, report), and Ceres' ``bundle_adjuster``
for a BAL file when its binary is given.

    python benchmarks/end_to_end.py --files w10000.graph sphere2500.txt
    python benchmarks/end_to_end.py --files torus3D.g2o --chordal   # also from the chordal initialisation
    python benchmarks/end_to_end.py --bal /tmp/ceres-bench/ceres-solver-2.1.0/data/problem-16-22106-pre.txt \\
        --ceres /tmp/ceres-bench/bundle_adjuster

Each command runs in a fresh process ``--repeats`` times after one warm-up run (which also fills jaxnls'
persistent compilation cache, in a temporary folder); reported: the median wall time and the largest peak
resident memory (GNU time's ``%M``). A name that is not a path is looked up in the gtsam wheel's Data folder; a
3-D TORO file is first rewritten as g2o
(``jaxnls.io.write_g2o``), because GTSAM orders a TORO ``EDGE3``'s information differently, and both processes
read that.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

GTSAM_SCRIPT = """
import sys, gtsam
path = sys.argv[1] if sys.argv[1].startswith("/") else gtsam.findExampleDataFile(sys.argv[1])
text = open(path).read()
is3d = any(tag in text for tag in ("SE3", "EDGE3", "VERTEX3"))
graph, initial = gtsam.readG2o(path, is3d) if is3d or "EDGE_SE2" in text else gtsam.load2D(path)
if initial.size() == 0:  # edges only: the chained odometry, as jaxnls starts
    values, pose = gtsam.Values(), gtsam.Pose3() if is3d else gtsam.Pose2()
    odometry = {f.keys()[0]: f.measured() for f in (graph.at(i) for i in range(graph.size()))
                if f.keys()[1] == f.keys()[0] + 1}
    values.insert(0, pose)
    for key in range(len(odometry)):
        pose = pose.compose(odometry[key])
        values.insert(key + 1, pose)
    initial = values
prior = gtsam.PriorFactorPose3 if is3d else gtsam.PriorFactorPose2
sigmas = gtsam.noiseModel.Diagonal.Sigmas([1e-6] * (6 if is3d else 3))
graph.add(prior(0, initial.atPose3(0) if is3d else initial.atPose2(0), sigmas))
result = gtsam.LevenbergMarquardtOptimizer(graph, initial, gtsam.LevenbergMarquardtParams()).optimize()
print(graph.error(result))
"""


def measure(command: list[str], repeats: int, env: dict) -> tuple[float, float]:
    """(median wall seconds, largest peak RSS in GB) of ``repeats`` runs after one warm-up; the peak of each
    process from GNU time's ``%M``."""
    walls, peaks = [], []
    with tempfile.NamedTemporaryFile("r") as report:
        for run in range(repeats + 1):
            start = time.perf_counter()
            done = subprocess.run(
                ["/usr/bin/time", "-f", "%M", "-o", report.name, *command], capture_output=True, env=env
            )
            if done.returncode not in (0, 1):  # 1: `jaxnls solve` reports a solve that did not converge
                raise subprocess.CalledProcessError(done.returncode, command, done.stdout, done.stderr)
            wall = time.perf_counter() - start
            if run:
                walls.append(wall)
                peaks.append(int(open(report.name).read().split()[-1]) / 1024**2)
    return statistics.median(walls), max(peaks)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", nargs="*", default=[], help="pose-graph files: paths, or GTSAM example names")
    parser.add_argument("--bal", default=None, help="a BAL file, compared with --ceres")
    parser.add_argument("--ceres", default=None, help="Ceres' bundle_adjuster (benchmarks/ceres/build.sh)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--chordal", action="store_true", help="also run `jaxnls solve FILE --init chordal` on the pose graphs"
    )
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, JAXNLS_CACHE_DIR=cache)
        rows = []
        for name in args.files:
            import gtsam

            from jaxnls.io import PoseGraph3D, read_pose_graph, write_g2o

            path = os.path.abspath(name) if os.path.exists(name) else gtsam.findExampleDataFile(name)
            graph = read_pose_graph(path)
            if isinstance(graph, PoseGraph3D) and not name.endswith(".g2o"):
                # GTSAM reads a TORO EDGE3's information matrix in another order than TORO's (see
                # jaxnls.io's docs), so the two would solve different problems; both read g2o alike
                path = os.path.join(cache, os.path.basename(name) + ".g2o")
                write_g2o(path, graph)
                name = os.path.basename(path)
            rows.append(
                (name, "jaxnls solve", *measure([sys.executable, "-m", "jaxnls", "solve", path], args.repeats, env))
            )
            if args.chordal:
                command = [sys.executable, "-m", "jaxnls", "solve", path, "--init", "chordal"]
                rows.append((name, "jaxnls solve --init chordal", *measure(command, args.repeats, env)))
            rows.append(
                (name, "GTSAM LM (python)", *measure([sys.executable, "-c", GTSAM_SCRIPT, path], args.repeats, env))
            )
        if args.bal:
            name = os.path.basename(args.bal)
            rows.append(
                (name, "jaxnls solve", *measure([sys.executable, "-m", "jaxnls", "solve", args.bal], args.repeats, env))
            )
            if args.ceres:
                command = [args.ceres, f"--input={args.bal}", "--normalize=false", "--num_iterations=100"]
                rows.append((name, "Ceres bundle_adjuster", *measure(command, args.repeats, env)))
    print(f"{'file':28s} {'process':28s} {'wall s (median)':>16s} {'peak RSS GB':>12s}")
    for name, label, wall, peak in rows:
        print(f"{name:28s} {label:28s} {wall:16.2f} {peak:12.2f}")


if __name__ == "__main__":
    main()
