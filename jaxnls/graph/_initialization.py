r"""Chordal initialisation of pose graphs: rotations from a linear relaxation, then positions by linear least
squares (Martinec & Pajdla 2007; Carlone, Tron, Daniilidis & Dellaert 2015, GTSAM's ``InitializePose3``).

A pose graph's cost is non-convex in the rotations; from an odometry start a local solver can stop in a poor
minimum (torus3D: every solver from the file's start ends near 29,950, while 12,118 is reachable). Dropping the
constraint :math:`R \in SO(d)` makes the rotation problem linear: with the rotation measurements
:math:`\tilde R_{ij} \approx R_i^\top R_j`,

.. math::  \min_{M_1 \dots M_N \in \mathbb{R}^{d\times d}} \sum_{(i,j)} κ_{ij} \|M_j - M_i \tilde R_{ij}\|_F^2,
           \qquad M_a = R_a \text{ for the anchored poses } a,

which separates into :math:`d` sparse linear systems, one per row of the :math:`M_i`, sharing one matrix: row
:math:`k` gives unknowns :math:`u_i = M_i[k,:]^\top` and residuals :math:`u_j - \tilde R_{ij}^\top u_i`. Each
:math:`M_i` is then projected on :math:`SO(d)` (:math:`U\,\mathrm{diag}(1,\dots,\det UV^\top)V^\top` from its SVD).
With the rotations fixed the positions are linear too: :math:`\min_t \sum \|t_j - t_i - R_i \tilde t_{ij}\|^2_{R_i
Ω_{ij} R_i^\top}` (and landmarks :math:`\|l - t_i - R_i z\|^2`), with the anchored positions held.

:math:`κ_{ij}` is the mean of the diagonal of the edge's rotation information block (the chordal distance
:math:`\|R(θ) - I\|_F^2 \approx 2θ^2` treats the rotation error isotropically); the rotation-translation
cross terms are left out. The systems are sparse, symmetric positive definite once every pose is connected to an
anchor, and solved on the host by SciPy's SuperLU in its symmetric mode (about 40 ms for sphere2500's 7,500
unknowns on 2 cores): an initial guess, so nothing here is differentiated.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np
from jaxtyping import Float, Int

from ._files import _anchors

if TYPE_CHECKING:
    from ..io import PoseGraph2D, PoseGraph3D


def chordal_initialization(pose_graph: PoseGraph2D | PoseGraph3D) -> PoseGraph2D | PoseGraph3D:
    """The pose graph with every free pose (and 2-D landmark) replaced by its chordal estimate.

    Rotations come from the chordal relaxation and positions from linear least squares given them (see the
    module's description); the measurements, information matrices and anchored vertices are the file's. The
    anchors are those of :func:`pose_graph_problem`: the file's ``FIX`` vertices, else the first pose, which
    keep their values. Start a solve from the result::

        start = jaxnls.graph.chordal_initialization(jaxnls.io.read_pose_graph("torus3D.g2o"))
        sol = jaxnls.graph.solve(jaxnls.graph.pose_graph_problem(start))

    Args:
        pose_graph: a :class:`~jaxnls.io.PoseGraph2D` or :class:`~jaxnls.io.PoseGraph3D`.

    Returns:
        A pose graph of the same type whose ``poses`` (2-D: ``[x, y, θ]``, θ in (-π, π]; 3-D: ``translations``
        and ``quaternions``, ``w >= 0``) and 2-D ``landmarks`` are the estimates.

    Raises:
        TypeError: ``pose_graph`` is neither a ``PoseGraph2D`` nor a ``PoseGraph3D``.
        ValueError: the pose graph has no edges, or a pose (landmark) that no chain of pose-to-pose edges
            (a landmark edge) connects to an anchored vertex: its rotation (position) is not determined. The
            message names its file id.
    """
    from ..io import PoseGraph2D, PoseGraph3D

    if not isinstance(pose_graph, (PoseGraph2D, PoseGraph3D)):
        raise TypeError(f"expected a PoseGraph2D or PoseGraph3D, got {type(pose_graph).__name__}")
    if pose_graph.num_edges == 0:
        raise ValueError("the pose graph has no edges: nothing to initialise from")
    anchors = _anchors(pose_graph)
    anchored_landmarks = np.asarray(anchors.get("landmark", []), np.int64)
    # only landmarks fixed: they hold the positions, but the rotations need a reference (the first pose's)
    rotation_anchors = np.asarray(anchors["pose"] or [0], np.int64)
    anchored_poses = np.asarray(anchors["pose"] or ([] if anchored_landmarks.size else [0]), np.int64)
    _check_connected(pose_graph, rotation_anchors)
    if isinstance(pose_graph, PoseGraph2D):
        rotations = _rotation_matrices_2d(pose_graph.poses[:, 2])
        measured = _rotation_matrices_2d(pose_graph.measurements[:, 2])
        positions = pose_graph.poses[:, :2]
        measured_positions = pose_graph.measurements[:, :2]
        rotation_information = pose_graph.information[:, 2:, 2:]
        position_information = pose_graph.information[:, :2, :2]
    else:
        rotations = _rotation_matrices_3d(pose_graph.quaternions)
        measured = _rotation_matrices_3d(pose_graph.measurement_quaternions)
        positions = pose_graph.translations
        measured_positions = pose_graph.measurement_translations
        rotation_information = pose_graph.information[:, 3:, 3:]
        position_information = pose_graph.information[:, :3, :3]

    weight = np.trace(rotation_information, axis1=1, axis2=2) / rotation_information.shape[-1]
    rotations = _project_to_rotations(
        _relaxed_rotations(pose_graph.edges, measured, weight, rotations, rotation_anchors)
    )

    # positions: pose-to-pose terms t_j - t_i - R_i t_ij, and for 2-D files landmark terms l - t_i - R_i z
    first = pose_graph.edges[:, 0]
    pairs = [pose_graph.edges]
    offsets = [np.einsum("eab,eb->ea", rotations[first], measured_positions)]
    informations = [position_information]
    values = positions
    anchored = anchored_poses
    landmarks = False
    if isinstance(pose_graph, PoseGraph2D) and pose_graph.landmarks.shape[0] > 0:
        landmarks = True
        num_poses = pose_graph.num_poses
        _check_landmarks_observed(pose_graph, anchored_landmarks)
        observer = pose_graph.landmark_edges[:, 0]
        pairs.append(pose_graph.landmark_edges + np.array([0, num_poses]))
        offsets.append(np.einsum("eab,eb->ea", rotations[observer], pose_graph.landmark_measurements))
        informations.append(pose_graph.landmark_information)
        values = np.concatenate([positions, pose_graph.landmarks])
        anchored = np.concatenate([anchored_poses, anchored_landmarks + num_poses])
    pairs_all = np.concatenate(pairs)
    frames = rotations[pairs_all[:, 0]]
    # the information of R_i^T (t_j - t_i) - t_ij, expressed on t_j - t_i - R_i t_ij
    information = frames @ np.concatenate(informations) @ np.swapaxes(frames, 1, 2)
    solved = _anchored_least_squares(pairs_all, information, np.concatenate(offsets), values, anchored)

    if isinstance(pose_graph, PoseGraph2D):
        theta = np.arctan2(rotations[:, 1, 0], rotations[:, 0, 0])
        poses = np.concatenate([solved[: pose_graph.num_poses], theta[:, None]], axis=1)
        changes: dict = {"poses": poses}
        if landmarks:
            changes["landmarks"] = solved[pose_graph.num_poses :]
        return dataclasses.replace(pose_graph, **changes)
    return dataclasses.replace(pose_graph, translations=solved, quaternions=_quaternions(rotations))


def _check_connected(pose_graph, anchored: Int[np.ndarray, " A"]) -> None:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = pose_graph.num_poses
    i, j = pose_graph.edges.T
    adjacency = coo_matrix((np.ones(i.shape[0]), (i, j)), shape=(n, n))
    _, component = connected_components(adjacency, directed=False)
    reached = np.isin(component, component[anchored])
    if not reached.all():
        lost = int(pose_graph.pose_ids[np.argmin(reached)])
        raise ValueError(
            f"chordal initialisation: pose {lost} is not connected to an anchored pose by pose-to-pose edges "
            f"({int((~reached).sum())} such poses): its rotation is not determined"
        )


def _check_landmarks_observed(pose_graph, anchored: Int[np.ndarray, " B"]) -> None:
    observed = np.zeros(pose_graph.landmarks.shape[0], bool)
    observed[pose_graph.landmark_edges[:, 1]] = True
    observed[anchored] = True
    if not observed.all():
        lost = int(pose_graph.landmark_ids[np.argmin(observed)])
        raise ValueError(f"chordal initialisation: landmark {lost} has no edge: its position is not determined")


def _rotation_matrices_2d(theta: Float[np.ndarray, " N"]) -> Float[np.ndarray, "N 2 2"]:
    c, s = np.cos(theta), np.sin(theta)
    return np.stack([np.stack([c, -s], -1), np.stack([s, c], -1)], -2)


def _rotation_matrices_3d(wxyz: Float[np.ndarray, "N 4"]) -> Float[np.ndarray, "N 3 3"]:
    w, x, y, z = (wxyz / np.linalg.norm(wxyz, axis=-1, keepdims=True)).T
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
            np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
            np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
        ],
        -2,
    )


def _quaternions(rotations: Float[np.ndarray, "N 3 3"]) -> Float[np.ndarray, "N 4"]:
    """``[w, x, y, z]`` with ``w >= 0`` of rotation matrices (via SciPy's ``Rotation``)."""
    from scipy.spatial.transform import Rotation

    xyzw = Rotation.from_matrix(rotations).as_quat()
    wxyz = np.concatenate([xyzw[:, 3:], xyzw[:, :3]], axis=1)
    return wxyz * np.where(wxyz[:, :1] < 0, -1.0, 1.0)


def _relaxed_rotations(
    edges: Int[np.ndarray, "E 2"],
    measured: Float[np.ndarray, "E d d"],
    weight: Float[np.ndarray, " E"],
    rotations: Float[np.ndarray, "N d d"],
    anchored: Int[np.ndarray, " A"],
) -> Float[np.ndarray, "N d d"]:
    """The unconstrained minimiser :math:`M` of :math:`\\sum κ\\|M_j - M_i \\tilde R_{ij}\\|_F^2` with the anchors held."""
    num, d = rotations.shape[0], rotations.shape[-1]
    eye = np.broadcast_to(np.eye(d), measured.shape)
    diagonal = weight[:, None, None] * eye
    # unknowns of row k: u_i = M_i[k, :]^T; residual u_j - R_ij^T u_i, so H_ij = -κ R_ij; the d right-hand sides
    # (one per row) share the matrix. Column k of the (N d, d) array stacks the rows k of every M_i.
    values = np.swapaxes(rotations, 1, 2).reshape(num * d, d)
    matrix = _block_normal_matrix(num, d, edges, diagonal, diagonal, -weight[:, None, None] * measured)
    rows = _solve_with_anchors(matrix, np.zeros_like(values), values, anchored, d)
    return np.swapaxes(rows.reshape(num, d, d), 1, 2)


def _project_to_rotations(matrices: Float[np.ndarray, "N d d"]) -> Float[np.ndarray, "N d d"]:
    """The nearest rotation (Frobenius norm) to each matrix."""
    u, _, vt = np.linalg.svd(matrices)
    sign = np.ones(matrices.shape[:2])
    sign[:, -1] = np.linalg.det(u @ vt)
    return (u * sign[:, None, :]) @ vt


def _anchored_least_squares(
    pairs: Int[np.ndarray, "E 2"],
    information: Float[np.ndarray, "E d d"],
    offsets: Float[np.ndarray, "E d"],
    values: Float[np.ndarray, "N d"],
    anchored: Int[np.ndarray, " A"],
) -> Float[np.ndarray, "N d"]:
    r"""The minimiser of :math:`\sum_e \|x_{j} - x_{i} - c_e\|^2_{Ω_e}` over the free blocks of ``values``."""
    num, d = values.shape
    matrix = _block_normal_matrix(num, d, pairs, information, information, -information)
    weighted = np.einsum("eab,eb->ea", information, offsets)
    rhs = np.zeros((num, d))
    np.add.at(rhs, pairs[:, 1], weighted)
    np.add.at(rhs, pairs[:, 0], -weighted)
    return _solve_with_anchors(matrix, rhs.reshape(-1), values.reshape(-1), anchored, d).reshape(num, d)


def _block_normal_matrix(num: int, d: int, pairs, first_block, second_block, cross_block):
    """The sparse ``(num d, num d)`` sum over pairs (i, j) of blocks ``H_ii``, ``H_jj``, ``H_ij`` and ``H_ji = H_ijᵀ``."""
    from scipy.sparse import coo_matrix

    offset = np.arange(d)
    rows, columns, values = [], [], []
    for r, c, block in (
        (pairs[:, 0], pairs[:, 0], first_block),
        (pairs[:, 1], pairs[:, 1], second_block),
        (pairs[:, 0], pairs[:, 1], cross_block),
        (pairs[:, 1], pairs[:, 0], np.swapaxes(cross_block, 1, 2)),
    ):
        rows.append(np.repeat((r[:, None] * d + offset)[:, :, None], d, axis=2).reshape(-1))
        columns.append(np.repeat((c[:, None] * d + offset)[:, None, :], d, axis=1).reshape(-1))
        values.append(np.asarray(block).reshape(-1))
    return coo_matrix(
        (np.concatenate(values), (np.concatenate(rows), np.concatenate(columns))), shape=(num * d, num * d)
    ).tocsc()


def _solve_with_anchors(matrix, rhs: np.ndarray, values: np.ndarray, anchored: Int[np.ndarray, " A"], d: int):
    """Solve ``matrix x = rhs`` for the free entries with the anchored blocks of ``x`` held at ``values``."""
    from scipy.sparse.linalg import splu

    free = np.ones(matrix.shape[0], bool)
    free[(anchored[:, None] * d + np.arange(d)).reshape(-1)] = False
    solution = np.array(values, dtype=np.float64)
    reduced_rhs = (rhs - matrix[:, ~free] @ values[~free])[free]
    # symmetric positive definite: SuperLU's symmetric mode (minimum degree on A + Aᵀ, diagonal pivots)
    try:
        factor = splu(
            matrix[free][:, free].tocsc(),
            permc_spec="MMD_AT_PLUS_A",
            diag_pivot_thresh=0.0,
            options={"SymmetricMode": True},
        )
    except RuntimeError as err:  # "Factor is exactly singular": a vertex no anchored one determines
        raise ValueError(
            f"chordal initialisation: the positions are not determined by the anchored vertices ({err})"
        ) from err
    solution[free] = factor.solve(np.asarray(reduced_rhs))
    return solution
