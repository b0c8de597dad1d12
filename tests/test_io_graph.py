"""Pose-graph (g2o, TORO) and BAL readers/writers: values against GTSAM's own readers on the files GTSAM
ships, exact write -> read round trips, and only line-numbered GraphFormatErrors on malformed input."""

from __future__ import annotations

import dataclasses
import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxnls.io import (
    BALProblem,
    GraphFormatError,
    PoseGraph2D,
    PoseGraph3D,
    detect_format,
    graph_files,
    parse_bal,
    parse_g2o,
    parse_toro,
    read_bal,
    read_g2o,
    read_pose_graph,
    read_toro,
    sqrt_information,
    write_bal,
    write_g2o,
    write_toro,
)

DATA = Path(__file__).parent / "data" / "graphs"
G2O_2D = ["pose2example.txt", "noisyToyGraph.txt", "w100_30.g2o"]
G2O_3D = ["pose3example.txt", "pose3example-offdiagonal.txt", "pose3example-grid.txt", "toyExample.g2o", "Klaus3.g2o"]
TORO_2D = ["w100.graph"]
BAL = ["dubrovnik-1-1-pre.txt", "dubrovnik-3-7-pre.txt"]

# g2o's 6x6 order is (t, R); GTSAM's Pose3 tangent is (R, t).
SWAP = np.r_[3:6, 0:3]


def _wrap(a):
    return (np.asarray(a) + np.pi) % (2 * np.pi) - np.pi


def _quat_matrix(q):
    w, x, y, z = q
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def _rodrigues(w):
    w = np.asarray(w, dtype=np.float64)
    theta = np.linalg.norm(w)
    k = np.array([[0, -w[2], w[1]], [w[2], 0, -w[0]], [-w[1], w[0], 0]])
    if theta < 1e-12:
        return np.eye(3) + k
    return np.eye(3) + np.sin(theta) / theta * k + (1 - np.cos(theta)) / theta**2 * (k @ k)


def _info(factor):
    r = np.asarray(factor.noiseModel().R())
    return r.T @ r


# --------------------------------------------------------------------------------------------------
# The data files


def test_readme_checksums():
    readme = (DATA / "README.md").read_text()
    listed = dict(re.findall(r"^\|\s*`([^`]+)`\s*\|.*\|\s*`([0-9a-f]{64})`\s*\|\s*$", readme, re.MULTILINE))
    files = sorted(p.name for p in DATA.iterdir() if p.name != "README.md")
    assert sorted(listed) == files
    for name, digest in listed.items():
        assert hashlib.sha256((DATA / name).read_bytes()).hexdigest() == digest, name


@pytest.mark.parametrize(
    "name,fmt", [*((n, "g2o") for n in G2O_2D + G2O_3D), *((n, "toro") for n in TORO_2D), *((n, "bal") for n in BAL)]
)
def test_detect_format(name, fmt):
    assert detect_format(DATA / name) == fmt


def test_detect_format_nist_and_unknown(tmp_path):
    assert detect_format(Path(__file__).parent / "data" / "nist" / "Misra1a.dat") == "nist"
    with pytest.raises(GraphFormatError, match=r"line 190: cannot tell the format: unknown tag 'BR'"):
        detect_format(DATA / "example.graph")
    (tmp_path / "mixed.txt").write_text("VERTEX_SE2 0 0 0 0\nEQUIV 0 0\n")
    with pytest.raises(GraphFormatError, match="line 2: the file mixes g2o records"):
        detect_format(tmp_path / "mixed.txt")
    (tmp_path / "empty.g2o").write_text("\n \n")
    with pytest.raises(GraphFormatError, match="line 1: the file is empty"):
        detect_format(tmp_path / "empty.g2o")
    with pytest.raises(GraphFormatError, match="bal file, not a pose graph"):
        read_pose_graph(DATA / "dubrovnik-1-1-pre.txt")
    # VERTEX2/EDGE2 only: the name decides. w100_30.g2o's "1 0 0 1 0 1" is g2o's order; read in
    # TORO's order (I11 I12 I22 I33 I13 I23) it is singular, so the TORO reading fails loudly.
    renamed = tmp_path / "w100_30.graph"
    renamed.write_bytes((DATA / "w100_30.g2o").read_bytes())
    assert detect_format(renamed) == "toro"
    with pytest.raises(GraphFormatError, match=r"line 31: the information matrix of this EDGE2 is not positive"):
        read_pose_graph(renamed)


def test_example_graph_rejected_with_line():
    # GTSAM's example.graph has bearing-range (BR) records, which this module does not model.
    with pytest.raises(GraphFormatError, match=r"example\.graph, line 190: unknown or unsupported tag 'BR'"):
        read_toro(DATA / "example.graph")


def test_shapes_and_ids():
    g = read_toro(DATA / "w100.graph")
    assert isinstance(g, PoseGraph2D)
    assert (g.num_poses, g.num_edges) == (100, 300)
    assert g.equivalences.shape == (40, 2) and g.index_of(21) == 21
    assert tuple(g.equivalences[0]) == (21, 1)
    assert not g.poses.flags.writeable
    g3 = read_g2o(DATA / "pose3example.txt")
    assert isinstance(g3, PoseGraph3D)
    assert g3.poses_wxyz_xyz.shape == (5, 7) and g3.measurements_wxyz_xyz.shape == (6, 7)
    np.testing.assert_allclose(np.linalg.norm(g3.quaternions, axis=1), 1, atol=1e-15)
    b = read_bal(DATA / "dubrovnik-3-7-pre.txt")
    assert (b.num_cameras, b.num_points, b.num_observations) == (3, 7, 19)
    assert b.cameras.shape == (3, 9) and b.camera_index.dtype == np.int64


# --------------------------------------------------------------------------------------------------
# Against GTSAM


def _compare_2d(ours: PoseGraph2D, graph, values):
    assert values.size() == ours.num_poses
    for k, vid in enumerate(ours.pose_ids):
        p = values.atPose2(int(vid))
        np.testing.assert_allclose([p.x(), p.y()], ours.poses[k, :2], rtol=0, atol=1e-12)
        np.testing.assert_allclose(_wrap(p.theta() - ours.poses[k, 2]), 0, atol=1e-12)
    assert graph.size() == ours.num_edges
    for e in range(ours.num_edges):
        f = graph.at(e)
        assert list(f.keys()) == [int(ours.pose_ids[i]) for i in ours.edges[e]]
        m = f.measured()
        np.testing.assert_allclose([m.x(), m.y()], ours.measurements[e, :2], rtol=0, atol=1e-12)
        np.testing.assert_allclose(_wrap(m.theta() - ours.measurements[e, 2]), 0, atol=1e-12)
        np.testing.assert_allclose(_info(f), ours.information[e], rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(np.asarray(f.noiseModel().R()), ours.sqrt_information[e], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", G2O_2D)
def test_g2o_2d_matches_gtsam(name):
    gtsam = pytest.importorskip("gtsam")
    graph, values = gtsam.readG2o(str(DATA / name), False)
    _compare_2d(read_g2o(DATA / name), graph, values)


def test_toro_2d_matches_gtsam():
    gtsam = pytest.importorskip("gtsam")
    path = str(DATA / "w100.graph")
    graph, values = gtsam.load2D(path, noiseFormat=gtsam.NoiseFormat.NoiseFormatTORO)
    _compare_2d(read_toro(path), graph, values)


def test_toro_information_order_matches_gtsam(tmp_path):
    """TORO writes I11 I12 I22 I33 I13 I23; GTSAM's NoiseFormatTORO is the independent reading."""
    gtsam = pytest.importorskip("gtsam")
    text = "VERTEX2 3 0 0 0\nVERTEX2 7 1 0 0.5\nEDGE2 3 7 1 0.1 0.5 10 1 20 30 2 3\n"
    path = tmp_path / "offdiag.graph"
    path.write_text(text)
    ours = read_toro(path)
    np.testing.assert_array_equal(ours.information[0], [[10, 1, 2], [1, 20, 3], [2, 3, 30]])
    graph, values = gtsam.load2D(str(path), noiseFormat=gtsam.NoiseFormat.NoiseFormatTORO)
    _compare_2d(ours, graph, values)
    # The same numbers in g2o's order (I11 I12 I13 I22 I23 I33) are not even positive definite.
    with pytest.raises(GraphFormatError, match="line 3: the information matrix of this EDGE2 is not positive"):
        parse_g2o(text)


@pytest.mark.parametrize("name", G2O_3D)
def test_g2o_3d_matches_gtsam(name):
    gtsam = pytest.importorskip("gtsam")
    graph, values = gtsam.readG2o(str(DATA / name), True)
    ours = read_g2o(DATA / name)
    _compare_3d(ours, graph, values, permute_information=True)


def test_gtsam_reads_what_we_write(tmp_path):
    """Our writers' output, read by GTSAM, gives back what we read."""
    gtsam = pytest.importorskip("gtsam")
    g2 = read_g2o(DATA / "pose2example.txt")
    write_g2o(tmp_path / "a.g2o", g2)
    _compare_2d(g2, *gtsam.readG2o(str(tmp_path / "a.g2o"), False))
    write_toro(tmp_path / "a.graph", g2)
    _compare_2d(g2, *gtsam.load2D(str(tmp_path / "a.graph"), noiseFormat=gtsam.NoiseFormat.NoiseFormatTORO))
    g3 = read_g2o(DATA / "pose3example-offdiagonal.txt")
    write_g2o(tmp_path / "b.g2o", g3)
    _compare_3d(g3, *gtsam.readG2o(str(tmp_path / "b.g2o"), True), permute_information=True)
    t3 = parse_toro(TORO_3D.replace("EQUIV 10 15\n", ""))
    write_toro(tmp_path / "b.graph", t3)
    _compare_3d(t3, *gtsam.load3D(str(tmp_path / "b.graph")), permute_information=False)


def _compare_3d(ours: PoseGraph3D, graph, values, permute_information: bool):
    assert values.size() == ours.num_poses
    for k, vid in enumerate(ours.pose_ids):
        p = values.atPose3(int(vid))
        np.testing.assert_allclose(p.translation(), ours.translations[k], rtol=0, atol=1e-12)
        np.testing.assert_allclose(p.rotation().matrix(), _quat_matrix(ours.quaternions[k]), rtol=0, atol=1e-12)
    assert graph.size() == ours.num_edges
    for e in range(ours.num_edges):
        f = graph.at(e)
        assert list(f.keys()) == [int(ours.pose_ids[i]) for i in ours.edges[e]]
        m = f.measured()
        np.testing.assert_allclose(m.translation(), ours.measurement_translations[e], rtol=0, atol=1e-12)
        np.testing.assert_allclose(
            m.rotation().matrix(), _quat_matrix(ours.measurement_quaternions[e]), rtol=0, atol=1e-12
        )
        info = ours.information[e][np.ix_(SWAP, SWAP)] if permute_information else ours.information[e]
        np.testing.assert_allclose(_info(f), info, rtol=1e-9, atol=1e-9)


TORO_3D = """\
VERTEX3 10 0 0 0 0 0 0
VERTEX3 12 1.5 -0.25 0.75 0.3 -0.2 1.1
VERTEX3 15 2 1 -1 -2.5 1.2 -3.0
EDGE3 10 12 1.5 -0.25 0.75 0.3 -0.2 1.1 10 1 0 0 0.5 0 20 2 0 0 0 30 0 0 3 100 4 0 200 5 300
EDGE3 12 15 0.1 0.2 0.3 0.01 -0.02 0.03 1 0 0 0 0 0 1 0 0 0 0 1 0 0 0 4 0 0 4 0 4
EQUIV 10 15
"""


def test_toro_3d_matches_gtsam(tmp_path):
    gtsam = pytest.importorskip("gtsam")
    path = tmp_path / "small3d.graph"
    path.write_text(TORO_3D)
    ours = read_toro(path)
    assert isinstance(ours, PoseGraph3D) and ours.equivalences.tolist() == [[0, 2]]
    graph, values = gtsam.load3D(str(path))
    # GTSAM reads EDGE3's 21 entries straight into its (R, t)-ordered information, without the
    # permutation it applies to EDGE_SE3:QUAT; ours keeps TORO's (x y z roll pitch yaw) order.
    _compare_3d(ours, graph, values, permute_information=False)
    # roll-pitch-yaw against GTSAM's Rot3.Ypr, directly.
    r = gtsam.Rot3.Ypr(-3.0, 1.2, -2.5).matrix()
    np.testing.assert_allclose(_quat_matrix(ours.quaternions[2]), r, atol=1e-14)


@pytest.mark.parametrize("name", BAL)
def test_bal_matches_gtsam(name):
    gtsam = pytest.importorskip("gtsam")
    sfm = gtsam.SfmData.FromBalFile(str(DATA / name))
    ours = read_bal(DATA / name)
    assert sfm.numberCameras() == ours.num_cameras and sfm.numberTracks() == ours.num_points
    # GTSAM reads BAL with C++ float (single precision), hence the tolerances.
    tol = dict(rtol=1e-6, atol=1e-6)
    for i in range(ours.num_cameras):
        cam = sfm.camera(i)
        k = cam.calibration()
        np.testing.assert_allclose([k.fx(), k.k1(), k.k2()], ours.cameras[i, 6:], rtol=1e-6, atol=1e-12)
        # BAL maps world to camera, P = R X + t, with the camera looking down -z; GTSAM stores the
        # camera-to-world pose of a +z-looking camera: wRc = R^T diag(1, -1, -1), wtc = -R^T t.
        r = _rodrigues(ours.cameras[i, :3])
        pose = cam.pose()
        np.testing.assert_allclose(pose.rotation().matrix(), r.T @ np.diag([1.0, -1.0, -1.0]), **tol)
        np.testing.assert_allclose(pose.translation(), -r.T @ ours.cameras[i, 3:6], rtol=1e-5, atol=1e-5)
    for j in range(ours.num_points):
        track = sfm.track(j)
        np.testing.assert_allclose(track.point3(), ours.points[j], **tol)
        mine = np.flatnonzero(ours.point_index == j)
        assert track.numberMeasurements() == mine.size
        for k, obs in enumerate(mine):
            cam, uv = track.measurement(k)
            assert cam == ours.camera_index[obs]
            # GTSAM flips v (BAL's y is up).
            np.testing.assert_allclose(uv, ours.observations[obs] * [1, -1], **tol)


# --------------------------------------------------------------------------------------------------
# Round trips


def _assert_same(a, b):
    assert type(a) is type(b)
    for field in a.__dataclass_fields__:
        if field == "path":
            continue
        x, y = getattr(a, field), getattr(b, field)
        if not isinstance(x, np.ndarray):  # (initialized_from_odometry)
            assert x == y, field
            continue
        assert x.dtype == y.dtype and x.shape == y.shape, field
        np.testing.assert_array_equal(x, y, err_msg=field, strict=True)


@pytest.mark.parametrize(
    "name,read",
    [
        ("pose2example.txt", read_g2o),
        ("pose3example.txt", read_g2o),
        ("w100.graph", read_toro),
        ("dubrovnik-3-7-pre.txt", read_bal),
    ],
)
def test_a_leading_byte_order_mark_is_skipped(name, read, tmp_path):
    """Editors on Windows write a UTF-8 byte-order mark before plain text: the file reads (and is detected) as
    without it, where it was refused as an unknown record."""
    marked = tmp_path / name
    marked.write_bytes(b"\xef\xbb\xbf" + (DATA / name).read_bytes())
    assert detect_format(marked) == detect_format(DATA / name)
    _assert_same(read(marked), read(DATA / name))


@pytest.mark.parametrize("name", G2O_2D + G2O_3D)
def test_g2o_round_trip(name, tmp_path):
    g = read_g2o(DATA / name)
    write_g2o(tmp_path / "out.g2o", g)
    _assert_same(g, read_g2o(tmp_path / "out.g2o"))
    assert detect_format(tmp_path / "out.g2o") == "g2o"


@pytest.mark.parametrize("name", TORO_2D + G2O_2D)
def test_toro_2d_round_trip(name, tmp_path):
    g = read_pose_graph(DATA / name)
    write_toro(tmp_path / "out.graph", g)
    _assert_same(g, read_toro(tmp_path / "out.graph"))


def test_toro_3d_round_trip(tmp_path):
    g = parse_toro(TORO_3D)
    write_toro(tmp_path / "out.graph", g)
    h = read_toro(tmp_path / "out.graph")
    for field in ("pose_ids", "translations", "edges", "measurement_translations", "information", "equivalences"):
        np.testing.assert_array_equal(getattr(g, field), getattr(h, field))
    for q, r in [(g.quaternions, h.quaternions), (g.measurement_quaternions, h.measurement_quaternions)]:
        same_sign = np.sign(np.sum(q * r, axis=1))[:, None]
        np.testing.assert_allclose(q, same_sign * r, rtol=0, atol=1e-15)
    # g2o 3-D -> TORO -> back: same rotations to rounding.
    g3 = read_g2o(DATA / "pose3example-grid.txt")
    write_toro(tmp_path / "grid.graph", g3)
    h3 = read_toro(tmp_path / "grid.graph")
    for a, b in zip(g3.quaternions, h3.quaternions):
        np.testing.assert_allclose(_quat_matrix(a), _quat_matrix(b), atol=1e-14)


def _ypr_matrix(roll, pitch, yaw):
    """:math:`R_z(yaw) R_y(pitch) R_x(roll)`, TORO's and GTSAM's ``Rot3.Ypr`` convention, from its factors."""
    c, s = np.cos, np.sin
    rz = np.array([[c(yaw), -s(yaw), 0], [s(yaw), c(yaw), 0], [0, 0, 1]])
    ry = np.array([[c(pitch), 0, s(pitch)], [0, 1, 0], [-s(pitch), 0, c(pitch)]])
    rx = np.array([[1, 0, 0], [0, c(roll), -s(roll)], [0, s(roll), c(roll)]])
    return rz @ ry @ rx


def test_toro_3d_rotations_survive_writing_at_every_pitch(tmp_path):
    """Roll, pitch, yaw written from quaternions give back the rotation to rounding, also at pitch ±π/2 (gimbal
    lock, where roll and yaw are each undefined and only their sum or difference is) and just beside it."""
    rng = np.random.default_rng(7)
    pitches = [np.pi / 2, -np.pi / 2, np.pi / 2 - 1e-9, -np.pi / 2 + 1e-12, np.pi / 2 - 1e-5, 0.3, -1.2]
    angles = [(r, p, y) for p in pitches for r, y in rng.uniform(-np.pi, np.pi, (4, 2)).tolist()]
    lines = [f"VERTEX3 {k} 0 0 0 {r!r} {p!r} {y!r}" for k, (r, p, y) in enumerate(angles)]
    information = " ".join("1" if i == j else "0" for i in range(6) for j in range(i, 6))
    lines += [f"EDGE3 0 {k} 1 2 3 {r!r} {p!r} {y!r} {information}" for k, (r, p, y) in enumerate(angles) if k]
    write_toro(tmp_path / "out.graph", parse_toro("\n".join(lines) + "\n"))
    back = read_toro(tmp_path / "out.graph")
    for k, (r, p, y) in enumerate(angles):
        np.testing.assert_allclose(_quat_matrix(back.quaternions[k]), _ypr_matrix(r, p, y), rtol=0, atol=4e-15)
        if k:
            measured = _quat_matrix(back.measurement_quaternions[k - 1])
            np.testing.assert_allclose(measured, _ypr_matrix(r, p, y), rtol=0, atol=4e-15)


@pytest.mark.parametrize("name", BAL)
def test_bal_round_trip(name, tmp_path):
    b = read_bal(DATA / name)
    write_bal(tmp_path / "out.txt", b)
    _assert_same(b, read_bal(tmp_path / "out.txt"))
    assert detect_format(tmp_path / "out.txt") == "bal"


LANDMARKS = """\
# 2-D graph with landmarks, gaps in the ids and an anchor
VERTEX_SE2 100 0 0 0
VERTEX_SE2 7 1 0 1.5707963267948966
VERTEX_XY 50 2 3
EDGE_SE2 100 7 1 0 1.5707963267948966 500 0 0 500 0 5000
EDGE_SE2_XY 7 50 3 -1 10 1 20
EDGE_SE2_XY 100 50 2 3 10 0 10
FIX 100
"""


def test_landmarks_fix_and_round_trip(tmp_path):
    g = parse_g2o(LANDMARKS)
    assert g.pose_ids.tolist() == [100, 7] and g.landmark_ids.tolist() == [50]
    assert g.edges.tolist() == [[0, 1]] and g.landmark_edges.tolist() == [[1, 0], [0, 0]]
    assert g.fixed_ids.tolist() == [100] and g.index_of(7) == 1
    np.testing.assert_array_equal(g.landmark_information[0], [[10, 1], [1, 20]])
    write_g2o(tmp_path / "lm.g2o", g)
    _assert_same(g, read_g2o(tmp_path / "lm.g2o"))
    with pytest.raises(ValueError, match="FIX"):
        write_toro(tmp_path / "lm.graph", g)
    with pytest.raises(ValueError, match="EQUIV"):
        write_g2o(tmp_path / "w.g2o", read_toro(DATA / "w100.graph"))
    with pytest.raises(KeyError):
        g.index_of(50)


def test_quaternion_normalisation():
    base = "VERTEX_SE3:QUAT 0 0 0 0 {} {} {} {}\n"
    g = parse_g2o(base.format(0, 0, 0, 1.0005))
    np.testing.assert_array_equal(g.quaternions[0], [1, 0, 0, 0])
    with pytest.raises(GraphFormatError, match=r"line 1: the quaternion of vertex 0 has norm 1.002"):
        parse_g2o(base.format(0, 0, 0, 1.002))


def test_sqrt_information():
    info = read_g2o(DATA / "pose3example-offdiagonal.txt").information
    r = sqrt_information(info)
    np.testing.assert_allclose(np.swapaxes(r, -1, -2) @ r, info, rtol=1e-12)
    assert np.all(np.tril(r[0], -1) == 0) and np.all(np.diagonal(r, axis1=-2, axis2=-1) > 0)
    with pytest.raises(ValueError, match="not positive definite"):
        sqrt_information(np.diag([1.0, -1.0]))


# --------------------------------------------------------------------------------------------------
# Specific errors


G2O_ERRORS = [
    ("VERTEX_SE2 0 0 0 0\nVERTEX_SE2 1 0 0\n", 2, r"wrong token count: VERTEX_SE2 takes 4 values .*found 3"),
    ("VERTEX_SE2 0 0 0 0\n\nVERTEX_SE2 1 0 abc 0\n", 3, r"non-numeric token 'abc'"),
    ("VERTEX_SE2 0 0 0 nan\n", 1, r"non-finite number 'nan'"),
    ("VERTEX_SE2 0 0 0 1e400\n", 1, r"overflows float64"),
    ("VERTEX_SE2 0 0 0 0\nVERTEX_SE2 0 1 0 0\n", 2, r"duplicate vertex id 0 \(first defined on line 1\)"),
    (
        "VERTEX_SE2 0 0 0 0\nVERTEX_SE2 1 0 0 0\nEDGE_SE2 0 2 1 0 0 1 0 0 1 0 1\n",
        3,
        r"references vertex 2, which the file does not define",
    ),
    ("VERTEX_SE2 0 0 0 0\nVERTEX_SE2 1 0 0 0\nEDGE_SE2 0 1 1 0 0 1 0 0 -1 0 1\n", 3, r"not positive definite"),
    ("VERTEX_SE2 0 0 0 0\nVERTEX_SE2 -1 0 0 0\n", 2, r"negative vertex id -1"),
    ("VERTEX_SE2 0 0 0 0\nPARAMS_SE2OFFSET 0 0 0 0\n", 2, r"unknown or unsupported tag 'PARAMS_SE2OFFSET'"),
    ("VERTEX_SE2 0 0 0 0\nVERTEX_SE3:QUAT 1 0 0 0 0 0 0 1\n", 2, r"mixed 2-D and 3-D"),
    ("VERTEX_SE2 0 0 0 0\nFIX 3\n", 2, r"FIX references vertex 3"),
    ("VERTEX_SE2 0 0 0 0\nVERTEX_XY 1 0 0\nEDGE_SE2 0 1 1 0 0 1 0 0 1 0 1\n", 3, r"vertex 1 \(line 2\) is a landmark"),
    ("", 1, r"the file is empty"),
    ("# only a comment\n", 1, r"no vertices or edges"),
    ("VERTEX_SE2 0 0 0 0\nVERTEX_SE2 1 0 0 0\xe9\n", 2, r"non-ASCII"),
    ("VERTEX_SE2 0 0 0 0\nVERTEX_SE2 123456789012345678901 0 0 0\n", 2, r"too large"),
    ("VERTEX_SE2 0 0 0 0\nVERTEX_SE2 9223372036854775808 0 0 0\n", 2, r"too large \(ids are int64"),
    ("VERTEX_SE2 0 0 0 0\nFIX 1" + "0" * 5000 + "\n", 2, r"too large"),
]


def test_ids_read_the_same_however_they_are_written():
    """An id with leading zeros is the same id on both of the g2o reader's paths (the bulk one for plain files,
    the line-by-line one that a FIX record selects); they disagreed past 18 digits."""
    padded = "0" * 20 + "1"
    text = f"VERTEX_SE2 0 0 0 0\nVERTEX_SE2 {padded} 1 0 0\nEDGE_SE2 0 +{padded} 1 0 0 1 0 0 1 0 1\n"
    plain, with_fix = parse_g2o(text), parse_g2o(text + "FIX 0\n")
    for graph in (plain, with_fix):
        assert graph.pose_ids.tolist() == [0, 1] and graph.edges.tolist() == [[0, 1]]
    largest = parse_g2o(f"VERTEX_SE2 {2**63 - 1} 0 0 0\nFIX {2**63 - 1}\n")
    assert largest.pose_ids.tolist() == [2**63 - 1] and largest.fixed_ids.tolist() == [2**63 - 1]


@pytest.mark.parametrize("text,line,message", G2O_ERRORS)
def test_g2o_errors(text, line, message):
    with pytest.raises(GraphFormatError, match=rf"^bad\.g2o, line {line}: .*{message}") as info:
        parse_g2o(text, "bad.g2o")
    assert info.value.line == line and info.value.path == "bad.g2o"


def test_toro_errors():
    with pytest.raises(GraphFormatError, match=r"line 3: unknown or unsupported tag 'EDGE_SE2'"):
        parse_toro("VERTEX2 0 0 0 0\nVERTEX2 1 0 0 0\nEDGE_SE2 0 1 1 0 0 1 0 0 1 0 1\n")
    with pytest.raises(GraphFormatError, match=r"line 2: wrong token count: EDGE3 takes 29 values"):
        # GTSAM's sphere_smallnoise.graph writes EDGE3 without information entries; rejected.
        parse_toro("VERTEX3 0 0 0 0 0 0 0\nEDGE3 0 0 0.1 2.3 0 -0.03 0.02 0.14\n")
    with pytest.raises(GraphFormatError, match=r"line 2: the record references vertex 9"):
        parse_toro("VERTEX2 0 0 0 0\nEQUIV 0 9\n")


BAL_TEXT = (DATA / "dubrovnik-1-1-pre.txt").read_text()


@pytest.mark.parametrize(
    "text,line,message",
    [
        (BAL_TEXT.replace("0 0     -3.859900e+02", "0 1     -3.859900e+02"), 3, r"point index 1 out of range"),
        (BAL_TEXT.replace("0 0     -3.859900e+02", "5 0     -3.859900e+02"), 3, r"camera index 5 out of range"),
        (BAL_TEXT.replace("0 0     -3.859900e+02", "-1 0     -3.859900e+02"), 3, r"negative camera index"),
        (
            BAL_TEXT.replace("1.1171804676513932e-02", "nan"),
            6,
            r"non-finite number 'nan' in the parameters of camera 0",
        ),
        (BAL_TEXT.replace("1 1 1", "1 2 1", 1), 17, r"the file ends after 19 numbers, inside the point coordinates"),
        # 0 observations: the observation line is read as camera parameters, leaving 4 numbers over.
        (BAL_TEXT.replace("1 1 1", "1 1 0", 1), 13, r"unexpected token '3.2377569465570913e-14' after the last point"),
        # (the file has no final newline)
        (BAL_TEXT + "\n7\n", 18, r"unexpected token '7'.*take 19 numbers, but the file has 20"),
        ("1 1\n", 1, r"truncated header"),
        ("1 1 x\n", 1, r"expected a non-negative integer for the number of observations"),
        ("", 1, r"the file is empty"),
        ("1 0 0\n\n1 2 3 4 5 6 7 8\n", 3, r"the file ends after 11 numbers, inside the camera parameters"),
    ],
)
def test_bal_errors(text, line, message):
    with pytest.raises(GraphFormatError, match=rf"^b\.txt, line {line}: .*{message}"):
        parse_bal(text, "b.txt")


def test_bal_tokens_may_span_lines():
    text = "1 1\n1 0\n0 1.0\n2.0 " + " ".join(["0.5"] * 9) + "\n1 2\n3\n"
    b = parse_bal(text)
    np.testing.assert_array_equal(b.observations, [[1.0, 2.0]])
    np.testing.assert_array_equal(b.points, [[1, 2, 3]])
    with pytest.raises(GraphFormatError, match=r"line 5: non-numeric token 'x' in the coordinates of point 0"):
        parse_bal(text.replace("1 2\n3", "1 x\n3"))
    # "+0" is a valid index that the bulk path leaves to the token-by-token one: same result.
    _assert_same(parse_bal(text.replace("1 0\n0", "1 0\n+0")), b)


# --------------------------------------------------------------------------------------------------
# Fuzzing: mutated files either read into a consistent structure or raise GraphFormatError with a line


SAMPLES = {
    "g2o2": (parse_g2o, LANDMARKS + (DATA / "noisyToyGraph.txt").read_text()),
    "g2o3": (parse_g2o, (DATA / "pose3example-offdiagonal.txt").read_text() + "\nFIX 0\n"),
    "toro2": (
        parse_toro,
        "".join((DATA / "w100.graph").read_text().splitlines(True)[:8])
        + "EDGE2 1 0 -0.99879 0.0417574 -0.00818381 1 0 1 1 0 0\nEQUIV 2 1\n",
    ),
    "toro3": (parse_toro, TORO_3D),
    "bal1": (parse_bal, BAL_TEXT),
    "bal3": (parse_bal, (DATA / "dubrovnik-3-7-pre.txt").read_text()),
}
JUNK = [
    "nan",
    "inf",
    "-inf",
    "abc",
    "1e400",
    "-1",
    "-7",
    "99999999999999999999",
    "1e18",
    "0",
    "3",
    "1.5",
    "VERTEX_SE2",
    "EDGE3",
    "FIX",
    "#",
    "0x10",
    "1,5",
    "\t",
]


@st.composite
def mutated(draw):
    key = draw(st.sampled_from(sorted(SAMPLES)))
    lines = SAMPLES[key][1].splitlines()
    if draw(st.integers(0, 30)) == 0:
        return key, ""
    for _ in range(draw(st.integers(1, 3))):
        if not lines:
            break
        i = draw(st.integers(0, len(lines) - 1))
        tokens = lines[i].split()
        op = draw(
            st.sampled_from(["truncate", "delete", "insert", "replace", "drop_line", "dup_line", "swap", "header"])
        )
        j = draw(st.integers(0, max(len(tokens), 1)))
        if op == "truncate":
            lines[i] = lines[i][: draw(st.integers(0, len(lines[i])))]
        elif op == "delete" and tokens:
            del tokens[min(j, len(tokens) - 1)]
            lines[i] = " ".join(tokens)
        elif op == "insert":
            tokens.insert(min(j, len(tokens)), draw(st.sampled_from(JUNK)))
            lines[i] = " ".join(tokens)
        elif op == "replace" and tokens:
            tokens[min(j, len(tokens) - 1)] = draw(st.sampled_from(JUNK))
            lines[i] = " ".join(tokens)
        elif op == "drop_line":
            del lines[i]
        elif op == "dup_line":
            lines.insert(i, lines[i])
        elif op == "swap":
            k = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[k] = lines[k], lines[i]
        elif op == "header" and lines[0].split():
            # BAL: permute or perturb the counts; pose graphs: garbles the first record.
            head = lines[0].split()
            if draw(st.booleans()):
                head = draw(st.permutations(head))
            else:
                h = draw(st.integers(0, len(head) - 1))
                head[h] = str(draw(st.sampled_from([0, 1, 2, 8, 20, 10**6, 10**15])))
            lines[0] = " ".join(head)
    return key, "\n".join(lines) + draw(st.sampled_from(["", "\n"]))


def _check_valid(result):
    if isinstance(result, BALProblem):
        m = result.num_observations
        assert result.camera_index.shape == result.point_index.shape == (m,)
        assert result.observations.shape == (m, 2) and result.cameras.shape[1:] == (9,)
        assert np.all((0 <= result.camera_index) & (result.camera_index < result.num_cameras))
        assert np.all((0 <= result.point_index) & (result.point_index < result.num_points))
        for a in (result.cameras, result.points, result.observations):
            assert np.all(np.isfinite(a))
        return
    n, e = result.num_poses, result.num_edges
    assert result.pose_ids.shape == (n,) and len(set(result.pose_ids.tolist())) == n
    assert result.edges.shape == (e, 2) and np.all((0 <= result.edges) & (result.edges < n))
    dim = 3 if isinstance(result, PoseGraph2D) else 6
    assert result.information.shape == (e, dim, dim)
    np.testing.assert_array_equal(result.information, np.swapaxes(result.information, -1, -2))
    assert np.all(np.linalg.eigvalsh(result.information) > 0)
    if isinstance(result, PoseGraph3D):
        np.testing.assert_allclose(np.linalg.norm(result.quaternions, axis=-1), 1, atol=1e-14)
        np.testing.assert_allclose(np.linalg.norm(result.measurement_quaternions, axis=-1), 1, atol=1e-14)
        assert result.translations.shape == (n, 3) and np.all(np.isfinite(result.translations))
    else:
        assert result.poses.shape == (n, 3) and np.all(np.isfinite(result.poses))
        assert np.all((0 <= result.landmark_edges[:, 1]) & (result.landmark_edges[:, 1] < len(result.landmark_ids)))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_fuzz_mutations(case):
    key, text = case
    parse = SAMPLES[key][0]
    n_lines = max(1, len(text.split("\n")))
    try:
        result = parse(text, "fuzz.txt")
    except GraphFormatError as err:
        match = re.match(r"fuzz\.txt, line (\d+): \S", str(err))
        assert match, str(err)
        assert 1 <= int(match.group(1)) <= n_lines + 1, (str(err), n_lines)
        return
    _check_valid(result)


# --------------------------------------------------------------------------------------------------
# The two readings of a file: in bulk (plain files, fast) and token by token (everything else, naming the
# line of a fault) must give the same graph or problem, or the same error


def _read_both(parse, text, monkeypatch):
    """``parse(text)`` with the columnar reading allowed, then with it disabled: each a graph or an error."""
    outcomes = []
    for columns in (True, False):
        with monkeypatch.context() as patch:
            if not columns:
                patch.setattr(graph_files._GraphParser, "_read_columns", lambda self: None)
                patch.setattr(graph_files, "_bal_bulk", lambda text: None)
            try:
                outcomes.append(parse(text, "f.txt"))
            except GraphFormatError as err:
                outcomes.append(str(err))
    return outcomes


def _assert_same_outcome(a, b):
    if isinstance(a, str) or isinstance(b, str):
        assert a == b
        return
    assert type(a) is type(b)
    for field in dataclasses.fields(a):
        x, y = getattr(a, field.name), getattr(b, field.name)
        if isinstance(x, np.ndarray):
            assert x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y), field.name
        else:
            assert x == y, field.name


@pytest.mark.parametrize("name", G2O_2D + G2O_3D + TORO_2D + BAL)
def test_both_readings_give_the_same_result_bit_for_bit(name, monkeypatch):
    parse = parse_toro if name in TORO_2D else parse_bal if name in BAL else parse_g2o
    text = (DATA / name).read_text()
    bulk, by_token = _read_both(parse, text, monkeypatch)
    _assert_same_outcome(bulk, by_token)
    # the bulk reading did read it: a plain file is not handed to the token-by-token reading
    if name in BAL:
        assert graph_files._bal_bulk(text.encode()) is not None
    else:
        parser = graph_files._GraphParser("f.txt", text.splitlines(), "toro" if name in TORO_2D else "g2o")
        assert parser._read_columns() is not None


def test_a_short_line_and_a_long_line_do_not_cancel_out(monkeypatch):
    # one EDGE2 record a token short and the next a token long: the block has the right number of
    # numbers, but not line by line
    lines = (DATA / "w100.graph").read_text().splitlines()
    edges = [k for k, line in enumerate(lines) if line.startswith("EDGE2")]
    lines[edges[0]] = lines[edges[0]].rsplit(" ", 1)[0]
    lines[edges[1]] += " 1"
    columns, by_line = _read_both(parse_toro, "\n".join(lines), monkeypatch)
    assert columns == by_line and f"line {edges[0] + 1}: wrong token count" in columns


# tokens that a float parser might take although the format does not (and some it does)
NEAR_NUMBERS = [
    "1e3",
    "1_000",
    "+-1",
    "1e",
    ".",
    "1.2.3",
    "1-2",
    "+1",
    "1.0",
    "0x1p3",
    "1e+5",
    "-0",
    "1e-400",
    "5.",
    ".5",
]


@pytest.mark.parametrize("key", ["g2o2", "g2o3", "toro2", "toro3", "bal1"])
def test_both_readings_agree_on_every_odd_id(key, monkeypatch):
    # each id-like token of the first records (vertex and edge ids; BAL's header and observation indices)
    # replaced by every odd token in turn
    parse, text = SAMPLES[key]
    lines = [line for line in text.splitlines() if not line.startswith("FIX")]
    places = [(i, j) for i in range(min(len(lines), 12)) for j in range(len(lines[i].split())) if j < 3]
    for i, j in places:
        for junk in [*NEAR_NUMBERS, *JUNK, "99999999999999999999", "9007199254740993", "7"]:
            tokens = lines[i].split()
            tokens[j] = junk
            mutated = "\n".join([*lines[:i], " ".join(tokens), *lines[i + 1 :]])
            _assert_same_outcome(*_read_both(parse, mutated, monkeypatch))


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(key=st.sampled_from(["g2o2", "g2o3", "toro2", "toro3", "bal1", "bal3"]), data=st.data())
def test_both_readings_agree_on_mutated_files(key, data, monkeypatch):
    parse, text = SAMPLES[key]
    lines = [line for line in text.splitlines() if not line.startswith("FIX")]
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(lines) - 1))
        tokens = lines[i].split()
        # (mostly the ids and numbers after the tag: the part the columnar reading parses itself)
        j = data.draw(st.integers(min(1, len(tokens) - 1) if data.draw(st.booleans()) else 0, max(len(tokens) - 1, 0)))
        junk = data.draw(st.sampled_from(NEAR_NUMBERS) if data.draw(st.booleans()) else st.sampled_from(JUNK))
        op = data.draw(
            st.sampled_from(["replace", "replace", "insert", "delete", "drop_line", "dup_line", "swap", "spaces"])
        )
        if op == "replace" and tokens:
            tokens[j] = junk
        elif op == "insert":
            tokens.insert(j, junk)
        elif op == "delete" and tokens:
            del tokens[j]
        elif op == "drop_line" and len(lines) > 1:
            del lines[i]
            continue
        elif op == "dup_line":
            lines.insert(i, lines[i])
            continue
        elif op == "swap":
            k = data.draw(st.integers(0, len(lines) - 1))
            lines[i], lines[k] = lines[k], lines[i]
            continue
        elif op == "spaces":
            lines[i] = "\t " + "  \t".join(tokens) + " \t"
            continue
        lines[i] = " ".join(tokens)
    _assert_same_outcome(*_read_both(parse, "\n".join(lines) + "\n", monkeypatch))


# --------------------------------------------------------------------------------------------------
# Files of edges only start from the chained odometry


def _edges_only(name):
    return "\n".join(line for line in (DATA / name).read_text().splitlines() if not line.startswith("VERTEX"))


def _gtsam_chain(gtsam, ours, is3d):
    """GTSAM's own composition along the same spanning tree (breadth first from the lowest id, file order)."""
    pose = gtsam.Pose3 if is3d else gtsam.Pose2
    measured = []
    for k in range(ours.num_edges):
        if is3d:
            w, x, y, z = ours.measurement_quaternions[k]
            measured.append(gtsam.Pose3(gtsam.Rot3.Quaternion(w, x, y, z), ours.measurement_translations[k]))
        else:
            measured.append(gtsam.Pose2(*ours.measurements[k]))
    neighbours = {}
    for (i, j), z in zip(ours.edges, measured):
        neighbours.setdefault(int(i), []).append((int(j), z))
        neighbours.setdefault(int(j), []).append((int(i), z.inverse()))
    poses, queue = {0: pose()}, [0]
    for current in queue:
        for other, z in neighbours[current]:
            if other not in poses:
                poses[other] = poses[current].compose(z)
                queue.append(other)
    return [poses[i] for i in range(ours.num_poses)]


@pytest.mark.parametrize("name,fmt", [("w100_30.g2o", "g2o"), ("pose3example.txt", "g2o"), ("w100.graph", "toro")])
def test_a_file_of_edges_only_starts_from_the_chained_odometry(name, fmt):
    """The starting poses equal GTSAM's composition of the same measurements (Pose2/Pose3.compose); the
    measurements and information are the full file's."""
    gtsam = pytest.importorskip("gtsam")
    full = read_pose_graph(DATA / name)
    ours = (parse_g2o if fmt == "g2o" else parse_toro)(_edges_only(name), name)
    assert ours.initialized_from_odometry and not full.initialized_from_odometry
    np.testing.assert_array_equal(ours.pose_ids, np.sort(full.pose_ids))
    np.testing.assert_array_equal(ours.information, full.information)
    is3d = isinstance(ours, PoseGraph3D)
    chained = _gtsam_chain(gtsam, ours, is3d)
    for k, expected in enumerate(chained):
        if is3d:
            np.testing.assert_allclose(ours.translations[k], expected.translation(), atol=1e-9)
            np.testing.assert_allclose(_quat_matrix(ours.quaternions[k]), expected.rotation().matrix(), atol=1e-12)
        else:
            np.testing.assert_allclose(ours.poses[k, :2], [expected.x(), expected.y()], atol=1e-9)
            assert abs(_wrap(ours.poses[k, 2] - expected.theta())) < 1e-12


def test_an_edges_only_file_with_a_disconnected_vertex_names_the_line():
    text = "EDGE_SE2 0 1 1 0 0 1 0 0 1 0 1\nEDGE_SE2 1 2 1 0 0 1 0 0 1 0 1\nEDGE_SE2 5 6 1 0 0 1 0 0 1 0 1\n"
    with pytest.raises(GraphFormatError, match=r"line 3: .*vertex 5 is not connected to vertex 0"):
        parse_g2o(text, "edges.g2o")


# --------------------------------------------------------------------------------------------------
# Information matrices that are not positive definite


INDEFINITE = (
    "VERTEX_SE2 0 0 0 0\nVERTEX_SE2 1 1 0 0\nVERTEX_SE2 2 2 0 0\n"
    "EDGE_SE2 0 1 1 0 0 1 0 0 1 0 1\n"
    "EDGE_SE2 1 2 1 0 0 1 2 0 1 0 1\n"
)  # I12 = 2 > 1: eigenvalues -1, 1, 3


def test_an_indefinite_information_matrix_is_refused_with_its_line_and_eigenvalue():
    with pytest.raises(GraphFormatError, match=r"line 5: .*not positive definite \(smallest eigenvalue -1\)"):
        parse_g2o(INDEFINITE, "cubicle.g2o")


def test_repair_replaces_it_by_the_nearest_positive_definite_matrix_and_counts_it():
    """The repaired matrix against the closed form (Higham: the eigenvalues of the symmetric part clipped)
    computed here; the healthy matrix is left bit for bit."""
    graph = parse_g2o(INDEFINITE, "cubicle.g2o", repair_information=True)
    assert graph.repaired_information == 1
    np.testing.assert_array_equal(graph.information[0], np.eye(3))
    given = np.array([[1.0, 2.0, 0.0], [2.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    values, vectors = np.linalg.eigh(given)
    expected = vectors @ np.diag(np.maximum(values, 1e-9 * 3.0)) @ vectors.T
    np.testing.assert_allclose(graph.information[1], expected, atol=1e-12)
    assert np.all(np.linalg.eigvalsh(graph.information[1]) > 0)
    sqrt_information(graph.information)  # whitens
    healthy = parse_g2o(INDEFINITE.replace("1 2 0 1 0 1\n", "1 0 0 1 0 1\n"), "ok.g2o", repair_information=True)
    assert healthy.repaired_information == 0
