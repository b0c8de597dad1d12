"""Degenerate problem files get a clean message naming the file and exit status 2 (they used to end in a
traceback), and a cost group without terms is valid in the library (skipped)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from jaxnls import graph

ROOT = Path(__file__).parent.parent


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "jaxnls", *map(str, args)], capture_output=True, text=True, cwd=ROOT, timeout=300
    )


@pytest.mark.parametrize(
    "name,text,message",
    [
        ("no_edges.g2o", "VERTEX_SE2 0 0 0 0\nVERTEX_SE2 1 1 0 0\n", "the pose graph has 2 pose(s) and no edges"),
        ("one_vertex.g2o", "VERTEX_SE2 0 0 0 0\n", "the pose graph has 1 pose(s) and no edges"),
        ("empty.bal", "0 0 0\n", "the problem has no cameras and no points and no observations"),
        ("negative.bal", "-3 2 1\n", "line 1: negative the number of cameras -3"),
    ],
)
def test_degenerate_files_exit_2_naming_the_file(tmp_path, capsys, name, text, message):
    """(``main`` in this process, as the console calls it: an exception would fail the test as a traceback
    would the console's; tests/test_cli.py runs the console itself for its exit statuses)"""
    from jaxnls.__main__ import main

    path = tmp_path / name
    path.write_text(text)
    code = main(["solve", str(path), "--no-cache"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert str(path) in err or name in err
    assert message in err


def test_a_landmark_no_edge_observes_is_left_alone(tmp_path):
    """A 2-D g2o file whose XY landmark no edge observes (an empty cost group inside) solves the poses."""
    path = tmp_path / "unobserved.g2o"
    path.write_text(
        "VERTEX_SE2 0 0 0 0\nVERTEX_SE2 1 1.2 0.1 0\nVERTEX_XY 2 3 3\nEDGE_SE2 0 1 1 0 0 1 0 0 1 0 1\nFIX 0\n"
    )
    result = _cli("solve", path, "--json")
    assert result.returncode == 0, result.stderr
    assert '"status": "CONVERGED' in result.stdout


def test_empty_cost_groups_are_skipped_and_change_nothing():
    def offset(a, b, d):
        return b - a - d

    def prior(a, d):
        return a - d

    used = graph.CostGroup(offset, ("x", "x"), np.array([[0, 1], [1, 2]]), data=jnp.ones((2, 1)))
    anchor = graph.CostGroup(prior, "x", np.array([0]), data=jnp.zeros((1, 1)))
    empty = graph.CostGroup(offset, ("x", "x"), np.zeros((0, 2), np.int64), data=jnp.zeros((0, 1)))
    variables = {"x": jnp.array([[0.3], [0.1], [5.0]])}
    with_empty = graph.solve(graph.FactorGraph(variables, [used, empty, anchor]))
    without = graph.solve(graph.FactorGraph(variables, [used, anchor]))
    np.testing.assert_array_equal(with_empty.params["x"], without.params["x"])
    np.testing.assert_allclose(with_empty.params["x"][:, 0], [0.0, 1.0, 2.0], atol=1e-9)  # the closed form
    with pytest.raises(ValueError, match="every cost group is empty"):
        graph.FactorGraph(variables, [empty])


def test_version_is_the_installed_distribution_s():
    from importlib.metadata import version

    result = _cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"jaxnls {version('jaxnls')}"


def test_solve_help_lists_formats_solvers_and_exit_codes():
    result = _cli("solve", "--help")
    assert result.returncode == 0
    for expected in (
        "NIST StRD",
        "g2o",
        "TORO",
        "BAL",
        "--linear-solver",
        "--write-unconverged",
        "rtol = 1e-10",
        "exit status: 0 converged; 1 not converged",
    ):
        assert expected in result.stdout, expected


GRAPHS = Path(__file__).parent / "data" / "graphs"
POSE_GRAPHS = [
    "Klaus3.g2o",
    "noisyToyGraph.txt",
    "pose2example.txt",
    "pose3example.txt",
    "toyExample.g2o",
    "w100.graph",
    "w100_30.g2o",
]
BAL_FILES = ["dubrovnik-1-1-pre.txt", "dubrovnik-3-7-pre.txt"]
EDGE_TAGS = ("EDGE", "EQUIV")


def _structural_edits(name: str, text: str):
    """(edit, new text) pairs that leave nothing to optimise, or a header that lies."""
    lines = text.splitlines()
    if name in BAL_FILES:
        header = lines[0].split()
        rest = "\n".join(lines[1:]) + "\n"
        yield "zero counts", "0 0 0\n" + rest
        yield "no observations", f"{header[0]} {header[1]} 0\n" + rest
        yield "negative cameras", f"-{header[0]} {header[1]} {header[2]}\n" + rest
        yield "negative observations", f"{header[0]} {header[1]} -{header[2]}\n" + rest
        yield "header only", " ".join(header) + "\n"
        return
    vertices = [line for line in lines if not line.split() or not line.split()[0].startswith(EDGE_TAGS)]
    yield "every edge dropped", "\n".join(vertices) + "\n"
    first_vertex = next(line for line in lines if line.split() and line.split()[0].startswith("VERTEX"))
    yield "one vertex", first_vertex + "\n"


@pytest.mark.parametrize("name", POSE_GRAPHS + BAL_FILES)
def test_structural_edits_give_clean_errors_and_leave_the_file_alone(tmp_path, name, capsys):
    """The shipped problem files with structural edits (every edge dropped, a single vertex, zero or negative
    BAL counts, a header without its data): the command line (in process, so that any exception would
    surface here) exits 2 with a message naming the file, and the edited file keeps every byte."""
    from jaxnls.__main__ import main

    text = (GRAPHS / name).read_text()
    for edit, edited in _structural_edits(name, text):
        path = tmp_path / f"edited_{name}"
        path.write_text(edited)
        before = path.read_bytes()
        code = main(["solve", str(path), "--output", str(tmp_path / f"out_{name}")])
        err = capsys.readouterr().err
        assert code == 2, f"{name}, {edit}: exit {code}; {err}"
        assert path.name in err, f"{name}, {edit}: {err}"
        assert path.read_bytes() == before
        assert not (tmp_path / f"out_{name}").exists()


def test_command_lines_that_cannot_work_are_refused_before_solving(tmp_path, capsys):
    """Each with exit status 2 and a message saying why, before anything is compiled: Schur elimination asked of
    a graph of poses only (it used to end in a traceback, exit 1), a file whose every vertex is fixed (it used to
    end STALLED, exit 1), an empty ``--output``, an ``--output`` naming a folder or a place no file can be made,
    a pipe as the input (the file is read twice: the second read found it empty), and options for another kind of
    file (ignored without a word before)."""
    from jaxnls.__main__ import main

    poses = GRAPHS / "pose2example.txt"

    def refused(*argv):
        code = main(["solve", *map(str, argv), "--no-cache"])
        err = capsys.readouterr().err
        assert code == 2, err
        return err

    assert "poses only" in refused(poses, "--linear-solver", "schur")
    text = poses.read_text()
    ids = [line.split()[1] for line in text.splitlines() if line.startswith("VERTEX_SE2")]
    fixed = tmp_path / "all_fixed.g2o"
    fixed.write_text(text.rstrip("\n") + f"\nFIX {' '.join(ids)}\n")
    assert "every vertex is fixed" in refused(fixed)
    assert "needs a file name" in refused(poses, "--output", "")
    assert "names a folder" in refused(poses, "--output", f"{tmp_path}/new/")
    if Path("/proc/self").is_dir():  # (a pseudo file system: no new file can be made there, even by root)
        assert "cannot take a new file" in refused(poses, "--output", "/proc/jaxnls-out.g2o")
    if hasattr(os, "mkfifo"):
        pipe = tmp_path / "pipe.g2o"
        os.mkfifo(pipe)
        assert "not a regular file" in refused(pipe)
    # options for another kind of file, which used to be ignored without a word
    nist = ROOT / "tests" / "data" / "nist" / "Misra1a.dat"
    assert "--linear-solver direct applies to pose-graph and BAL files" in refused(nist, "--linear-solver", "direct")
    assert "--repair-information applies to pose-graph files" in refused(nist, "--repair-information")
    assert "--start 2 applies to NIST files" in refused(poses, "--start", "2")
    assert "BAL has no information" in refused(GRAPHS / "dubrovnik-3-7-pre.txt", "--repair-information")
    with pytest.raises(SystemExit) as exit:
        main(["solve", str(poses), "--write-unconverged"])
    assert exit.value.code == 2 and "applies with --output" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit:  # (a batch of one has no spread: NaN standard deviations before)
        main(["demo", "--batch", "1"])
    assert exit.value.code == 2 and "--batch must be at least 2" in capsys.readouterr().err


LANDMARK_GRAPH = """\
VERTEX_SE2 0 0 0 0
VERTEX_SE2 1 1.02 -0.05 0.01
VERTEX_SE2 2 1.98 0.04 -0.02
VERTEX_XY 100 0.1 1.8
VERTEX_XY 101 1.4 2.2
EDGE_SE2 0 1 1 0 0 100 0 0 100 0 1000
EDGE_SE2 1 2 1 0 0 100 0 0 100 0 1000
EDGE_SE2_XY 0 100 0 2 100 0 100
EDGE_SE2_XY 0 101 1.5 2 100 0 100
EDGE_SE2_XY 1 100 -1.05 2.03 100 0 100
EDGE_SE2_XY 1 101 0.5 2 100 0 100
EDGE_SE2_XY 2 101 -0.45 2.1 100 0 100
"""


def test_schur_on_a_landmark_graph_and_json_that_any_reader_takes(tmp_path, capsys):
    """``--linear-solver schur`` eliminates a 2-D graph's landmarks (it asked for BAL's points and failed), reaching
    the sparse direct solve's cost and SciPy's minimum of the same cost written in the test; ``--json`` is strict JSON — a BAL start whose cost is not finite (a point at
    its camera's centre) reports ``null``, not ``NaN``, which JSON does not have."""
    import json

    from jaxnls.__main__ import main

    def report(*argv):
        code = main(["solve", *map(str, argv), "--json", "--no-cache"])
        return code, json.loads(capsys.readouterr().out.splitlines()[-1], parse_constant=_refuse)

    graph_file = tmp_path / "landmarks.g2o"
    graph_file.write_text(LANDMARK_GRAPH)
    code, schur = report(graph_file, "--linear-solver", "schur")
    assert code == 0 and schur["linear_solver"] == "SchurDirect" and schur["converged"]
    _, direct = report(graph_file, "--linear-solver", "direct")
    assert direct["final_cost"] > 0.1  # (the measurements disagree: a minimum above zero)
    np.testing.assert_allclose(schur["final_cost"], direct["final_cost"], rtol=1e-8)
    np.testing.assert_allclose(schur["final_cost"], _scipy_landmark_cost(LANDMARK_GRAPH), rtol=1e-8)
    at_centre = tmp_path / "at_centre.txt"  # one camera at the origin, its one point there too
    at_centre.write_text("1 1 1\n0 0 1 2\n" + "0\n" * 6 + "500\n0\n0\n" + "0\n0\n0\n")
    code, nan_start = report(at_centre)
    assert code == 1 and nan_start["status"] == "NONFINITE_START"
    assert nan_start["initial_cost"] is None and nan_start["final_cost"] is None


def _scipy_landmark_cost(text: str) -> float:
    """The minimum of a 2-D g2o file's cost by SciPy, its residuals written here from the format's definition
    (g2o and GTSAM: Log(Z⁻¹ Xᵢ⁻¹ Xⱼ) whitened by the information's square root for an odometry edge, Rᵢᵀ(l - tᵢ) - z
    for a landmark sighting), the first pose held fixed; for the diagonal informations of ``LANDMARK_GRAPH``."""
    import scipy.optimize

    poses, landmarks, edges, sightings = {}, {}, [], []
    for line in text.splitlines():
        tag, *values = line.split()
        if tag == "VERTEX_SE2":
            poses[int(values[0])] = np.array(values[1:4], float)
        elif tag == "VERTEX_XY":
            landmarks[int(values[0])] = np.array(values[1:3], float)
        elif tag == "EDGE_SE2":
            edges.append((int(values[0]), int(values[1]), np.array(values[2:5], float), np.array(values[5:], float)))
        elif tag == "EDGE_SE2_XY":
            sightings.append(
                (int(values[0]), int(values[1]), np.array(values[2:4], float), np.array(values[4:], float))
            )
    pose_ids, landmark_ids = sorted(poses), sorted(landmarks)

    def matrix(p):
        c, s = np.cos(p[2]), np.sin(p[2])
        return np.array([[c, -s, p[0]], [s, c, p[1]], [0.0, 0.0, 1.0]])

    def log(m):  # SE(2)'s logarithm: (V⁻¹t, θ)
        theta = np.arctan2(m[1, 0], m[0, 0])
        half = theta / 2
        a = 1.0 if abs(theta) < 1e-12 else half / np.tan(half)
        return np.array([a * m[0, 2] + half * m[1, 2], -half * m[0, 2] + a * m[1, 2], theta])

    def residual(z):
        free = len(pose_ids) - 1
        at = {pose_ids[0]: poses[pose_ids[0]], **{i: z[3 * k : 3 * k + 3] for k, i in enumerate(pose_ids[1:])}}
        seen = {i: z[3 * free + 2 * k : 3 * free + 2 * k + 2] for k, i in enumerate(landmark_ids)}
        out = []
        for i, j, measured, information in edges:  # (I11 I12 I13 I22 I23 I33: diagonal here)
            relative = np.linalg.inv(matrix(measured)) @ np.linalg.inv(matrix(at[i])) @ matrix(at[j])
            out.append(np.sqrt(information[[0, 3, 5]]) * log(relative))
        for i, j, measured, information in sightings:  # (I11 I12 I22)
            c, s = np.cos(at[i][2]), np.sin(at[i][2])
            local = np.array([[c, s], [-s, c]]) @ (seen[j] - at[i][:2])
            out.append(np.sqrt(information[[0, 2]]) * (local - measured))
        return np.concatenate(out)

    start = np.concatenate([poses[i] for i in pose_ids[1:]] + [landmarks[i] for i in landmark_ids])
    return float(scipy.optimize.least_squares(residual, start, xtol=1e-15, ftol=1e-15, gtol=1e-15).cost)


def _refuse(constant):
    raise ValueError(f"not JSON: {constant}")


def test_toro_equiv_records_are_said_to_be_unused_and_written_back(tmp_path, capsys):
    """A TORO file's EQUIV records are read and written back but are not constraints of the solve (as in GTSAM):
    the command line says so, and the solve reaches the cost of the same file without them."""
    import json

    from jaxnls.__main__ import main

    lines = (Path(__file__).parent / "data" / "graphs" / "w100.graph").read_text().splitlines()
    equivalences = [line for line in lines if line.startswith("EQUIV")]
    assert len(equivalences) == 40
    with_equiv, without = tmp_path / "equiv.graph", tmp_path / "plain.graph"
    with_equiv.write_text("\n".join(lines) + "\n")
    without.write_text("\n".join(line for line in lines if not line.startswith("EQUIV")) + "\n")
    code = main(["solve", str(with_equiv), "--json", "--no-cache", "--output", str(tmp_path / "out.graph")])
    said = capsys.readouterr()
    assert code == 0 and ": 40 EQUIV record(s) are not used in the solve" in said.err
    assert "they are kept in the output" in said.err
    assert main(["solve", str(without), "--json", "--no-cache"]) == 0
    plain = capsys.readouterr()
    assert "EQUIV" not in plain.err
    costs = [json.loads(out.out.splitlines()[-1])["final_cost"] for out in (said, plain)]
    assert costs[0] == costs[1]
    written = (tmp_path / "out.graph").read_text().splitlines()
    assert [line for line in written if line.startswith("EQUIV")] == equivalences
