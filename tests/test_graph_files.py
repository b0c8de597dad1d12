"""Problem files as factor graphs, and ``jaxnls solve FILE`` on them: costs against GTSAM's
(``graph.error``) at the file's start and after GTSAM's Levenberg-Marquardt from the same start and
anchoring; the written solution read back; clean errors for malformed files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from jaxnls import graph
from jaxnls.graph import bal_graph_problem, bal_reprojection, pose_graph_problem, updated_pose_graph
from jaxnls.io import read_bal, read_pose_graph, write_g2o

gtsam = pytest.importorskip("gtsam")

ROOT = Path(__file__).parent.parent
DATA = Path(__file__).parent / "data" / "graphs"


def _gtsam_lm(factor_graph, values, anchor_key, pose):
    """GTSAM's LM with tight tolerances; pose ``anchor_key`` pinned by a 1e-8-sigma prior (our fixed pose)."""
    sigmas = [1e-8] * (3 if isinstance(pose, gtsam.Pose2) else 6)
    prior = (gtsam.PriorFactorPose2 if isinstance(pose, gtsam.Pose2) else gtsam.PriorFactorPose3)(
        anchor_key, pose, gtsam.noiseModel.Diagonal.Sigmas(sigmas)
    )
    factor_graph.add(prior)
    params = gtsam.LevenbergMarquardtParams()
    params.setRelativeErrorTol(1e-14)
    params.setAbsoluteErrorTol(1e-14)
    params.setMaxIterations(200)
    return factor_graph.error(gtsam.LevenbergMarquardtOptimizer(factor_graph, values, params).optimize())


def test_toro_pose_graph_costs_equal_gtsams():
    problem = read_pose_graph(DATA / "w100.graph")
    factor_graph, values = gtsam.load2D(str(DATA / "w100.graph"), noiseFormat=gtsam.NoiseFormat.NoiseFormatTORO)
    initial = factor_graph.error(values)
    final = _gtsam_lm(factor_graph, values, int(problem.pose_ids[0]), values.atPose2(int(problem.pose_ids[0])))
    sol = graph.solve(pose_graph_problem(problem))
    np.testing.assert_allclose(float(sol.initial_cost), initial, rtol=1e-10)
    np.testing.assert_allclose(float(sol.cost), final, rtol=1e-6)


def test_g2o_3d_pose_graph_costs_equal_gtsams():
    path = DATA / "pose3example.txt"
    problem = read_pose_graph(path)
    factor_graph, values = gtsam.readG2o(str(path), True)
    initial = factor_graph.error(values)
    key = int(problem.pose_ids[0])
    final = _gtsam_lm(factor_graph, values, key, values.atPose3(key))
    sol = graph.solve(pose_graph_problem(problem))
    np.testing.assert_allclose(float(sol.initial_cost), initial, rtol=1e-10)
    np.testing.assert_allclose(float(sol.cost), final, rtol=1e-6)


def test_bal_reprojection_against_an_independent_projection():
    problem = read_bal(DATA / "dubrovnik-3-7-pre.txt")
    for m in range(problem.observations.shape[0]):
        camera, point = problem.cameras[problem.camera_index[m]], problem.points[problem.point_index[m]]
        # Rodrigues by the matrix exponential of the skew matrix (scipy), not the library's formula
        from scipy.linalg import expm

        w = camera[:3]
        skew = np.array([[0, -w[2], w[1]], [w[2], 0, -w[0]], [-w[1], w[0], 0]])
        p = expm(skew) @ point + camera[3:6]
        p = -p[:2] / p[2]
        r2 = p @ p
        expected = camera[6] * (1 + camera[7] * r2 + camera[8] * r2**2) * p - problem.observations[m]
        np.testing.assert_allclose(
            bal_reprojection(jnp.asarray(camera), jnp.asarray(point), jnp.asarray(problem.observations[m])),
            expected,
            rtol=1e-10,
        )
    sol = graph.solve(bal_graph_problem(problem))
    assert bool(sol.converged) and float(sol.cost) < 1e-6 * float(sol.initial_cost)


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "jaxnls", "solve", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )


def test_cli_json_and_output_round_trip(tmp_path):
    out = tmp_path / "w100_solved.graph"
    result = _cli(DATA / "w100.graph", "--json", "--output", out)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["status"].startswith("CONVERGED") and report["iterations"] > 0
    # the one solve call timed whole, and the part of it JAX reports spending on compilation (tracing at least)
    assert 0 < report["compile_seconds"] <= report["seconds"]
    # CHOLMOD factored the steps, on SciPy's BLAS unless JAXNLS_BLAS chose another
    assert report["linear_solver"] == "SparseDirect"
    if not graph.SparseDirect().uses_cholmod("float64"):
        assert report["cholmod_blas"] is None
    elif os.environ.get("JAXNLS_BLAS"):
        assert report["cholmod_blas"] not in (None, "scipy")
    else:
        assert report["cholmod_blas"] == "scipy"
    factor_graph, values = gtsam.load2D(str(DATA / "w100.graph"), noiseFormat=gtsam.NoiseFormat.NoiseFormatTORO)
    np.testing.assert_allclose(report["initial_cost"], factor_graph.error(values), rtol=1e-10)
    # the written file starts where the solve ended (GTSAM evaluates it)
    solved_graph, solved_values = gtsam.load2D(str(out), noiseFormat=gtsam.NoiseFormat.NoiseFormatTORO)
    np.testing.assert_allclose(solved_graph.error(solved_values), report["final_cost"], rtol=1e-9)


def test_cli_rejects_a_malformed_graph_with_its_line(tmp_path):
    bad = tmp_path / "bad.g2o"
    bad.write_text("VERTEX_SE2 0 0 0 0\nVERTEX_SE2 1 1 0 0\nEDGE_SE2 0 1 1 0 0 1 0 0 1 0\n")
    result = _cli(bad)
    assert result.returncode == 2 and "line 3" in result.stderr


def test_written_pose_graph_reads_back(tmp_path):
    problem = read_pose_graph(DATA / "pose2example.txt")
    sol = graph.solve(pose_graph_problem(problem))
    write_g2o(tmp_path / "solved.g2o", updated_pose_graph(problem, sol.params))
    again = graph.solve(pose_graph_problem(read_pose_graph(tmp_path / "solved.g2o")), max_steps=0)
    np.testing.assert_allclose(float(again.initial_cost), float(sol.cost), rtol=1e-9)


def _synthetic_bal(path, num_cameras=4, num_points=40, seed=0):
    """Cameras ~10 units from a cloud of points, every point seen by every camera, pixel noise 0.5;
    the start perturbed. Values are float32-representable: GTSAM's BAL reader reads floats."""
    from jaxnls.io import BALProblem, write_bal

    rng = np.random.default_rng(seed)
    cameras = np.array(
        [
            np.concatenate(
                [
                    rng.normal(scale=0.1, size=3),
                    [rng.normal(scale=0.5), rng.normal(scale=0.5), -10.0],
                    [500.0 + 20 * c, 0.0, 0.0],
                ]
            )
            for c in range(num_cameras)
        ]
    )
    points = rng.normal(scale=2.0, size=(num_points, 3))
    camera_index, point_index = np.divmod(np.arange(num_cameras * num_points), num_points)
    clean = np.stack(
        [
            np.asarray(bal_reprojection(jnp.asarray(cameras[c]), jnp.asarray(points[p]), jnp.zeros(2)))
            for c, p in zip(camera_index, point_index)
        ]
    )
    as_float32 = lambda a: np.asarray(a, np.float32).astype(np.float64)
    start_cameras = cameras + np.concatenate(
        [rng.normal(scale=0.01, size=(num_cameras, 6)), np.zeros((num_cameras, 3))], axis=1
    )
    write_bal(
        path,
        BALProblem(
            cameras=as_float32(start_cameras),
            points=as_float32(points + rng.normal(scale=0.05, size=points.shape)),
            camera_index=camera_index,
            point_index=point_index,
            observations=as_float32(clean + rng.normal(scale=0.5, size=clean.shape)),
        ),
    )


def test_bundle_adjustment_cost_equals_gtsams(tmp_path):
    path = tmp_path / "synthetic.bal"
    _synthetic_bal(path)
    problem = read_bal(path)
    unanchored = bal_graph_problem(problem)
    # the same anchoring in both: camera 0 (pose and calibration) and point 0 held
    ours = graph.solve(
        graph.FactorGraph(unanchored.variables, unanchored.costs, fixed={"camera": [0], "point": [0]}), max_steps=200
    )
    sfm = gtsam.SfmData.FromBalFile(str(path))
    factor_graph = sfm.sfmFactorGraph()
    values = gtsam.Values()
    for i in range(sfm.numberCameras()):
        values.insert(i, sfm.camera(i))
    for j in range(sfm.numberTracks()):
        values.insert(gtsam.symbol("p", j), sfm.track(j).point3())
    np.testing.assert_allclose(float(ours.initial_cost), factor_graph.error(values), rtol=1e-10)
    factor_graph.add(
        gtsam.PriorFactorPinholeCameraCal3Bundler(0, sfm.camera(0), gtsam.noiseModel.Isotropic.Sigma(9, 1e-8))
    )
    factor_graph.add(
        gtsam.PriorFactorPoint3(gtsam.symbol("p", 0), sfm.track(0).point3(), gtsam.noiseModel.Isotropic.Sigma(3, 1e-8))
    )
    params = gtsam.LevenbergMarquardtParams()
    params.setRelativeErrorTol(1e-14)
    params.setAbsoluteErrorTol(1e-14)
    params.setMaxIterations(200)
    final = factor_graph.error(gtsam.LevenbergMarquardtOptimizer(factor_graph, values, params).optimize())
    assert bool(ours.converged)
    np.testing.assert_allclose(float(ours.cost), final, rtol=1e-6)
