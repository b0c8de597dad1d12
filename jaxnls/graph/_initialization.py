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
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NamedTuple, overload

import numpy as np
from jaxtyping import Float, Int

from ._factors import between
from ._files import _anchors
from ._graph import FactorGraph

if TYPE_CHECKING:
    from ..io import PoseGraph2D, PoseGraph3D


@overload
def chordal_initialization(problem: PoseGraph2D, kind: str = "pose") -> PoseGraph2D: ...
@overload
def chordal_initialization(problem: PoseGraph3D, kind: str = "pose") -> PoseGraph3D: ...
@overload
def chordal_initialization(problem: FactorGraph, kind: str = "pose") -> FactorGraph: ...
def chordal_initialization(
    problem: PoseGraph2D | PoseGraph3D | FactorGraph, kind: str = "pose"
) -> PoseGraph2D | PoseGraph3D | FactorGraph:
    r"""A pose graph (or factor graph) whose free poses are replaced by their chordal estimates.

    Rotations come from the chordal relaxation and positions from linear least squares given them (see the
    module's description); measurements, information matrices and anchored poses are unchanged. Start a solve
    from the result::

        start = jaxnls.graph.chordal_initialization(jaxnls.io.read_pose_graph("torus3D.g2o"))
        sol = jaxnls.graph.solve(jaxnls.graph.pose_graph_problem(start))

        graph = jaxnls.graph.chordal_initialization(graph)  # a FactorGraph built by hand
        sol = jaxnls.graph.solve(graph)

    For a :class:`~jaxnls.io.PoseGraph2D` / :class:`~jaxnls.io.PoseGraph3D` the anchors are those of
    :func:`pose_graph_problem` (the file's ``FIX`` vertices, else the first pose) and 2-D landmarks are placed
    too. For a :class:`FactorGraph` the measurements are its :func:`between` groups joining two variables of
    ``kind`` (jaxlie ``SE2`` or ``SE3``), weighted by :math:`L^\top L` of their ``sqrt_information``; the anchors
    are ``fixed[kind]``, else its first variable; other groups (priors, landmarks, other kinds) and robust losses
    are not used (an outlier edge pulls the relaxation as any other), and other kinds keep their values.

    Args:
        problem: a ``PoseGraph2D``, ``PoseGraph3D`` or an unbatched :class:`FactorGraph`.
        kind: for a ``FactorGraph``, the variable kind holding the poses (default ``"pose"``).

    Returns:
        The same type: a pose graph whose ``poses`` (2-D: ``[x, y, θ]``, θ in (-π, π]; 3-D: ``translations``
        and ``quaternions``, ``w >= 0``) and 2-D ``landmarks`` are the estimates, or a ``FactorGraph`` whose
        ``variables[kind]`` are.

    Raises:
        TypeError: ``problem`` is none of these, or ``variables[kind]`` is not a stack of ``SE2`` / ``SE3``.
        ValueError: there is no edge between poses, or a pose (landmark) that no chain of pose-to-pose edges (a
            landmark edge) connects to an anchored vertex: its rotation (position) is not determined. The message
            names it (by file id for pose graphs, by index for a ``FactorGraph``).
    """
    from ..io import PoseGraph2D, PoseGraph3D

    if isinstance(problem, FactorGraph):
        return _initialize_factor_graph(problem, kind)
    if not isinstance(problem, (PoseGraph2D, PoseGraph3D)):
        raise TypeError(f"expected a PoseGraph2D, PoseGraph3D or FactorGraph, got {type(problem).__name__}")
    if problem.num_edges == 0:
        raise ValueError("the pose graph has no edges: nothing to initialise from")
    anchors = _anchors(problem)
    anchored_landmarks = np.asarray(anchors.get("landmark", []), np.int64)
    if isinstance(problem, PoseGraph2D):
        rotations = _rotation_matrices_2d(problem.poses[:, 2])
        measured = _rotation_matrices_2d(problem.measurements[:, 2])
        positions, measured_positions = problem.poses[:, :2], problem.measurements[:, :2]
    else:
        rotations = _rotation_matrices_3d(problem.quaternions)
        measured = _rotation_matrices_3d(problem.measurement_quaternions)
        positions, measured_positions = problem.translations, problem.measurement_translations
    landmarks = None
    if isinstance(problem, PoseGraph2D) and problem.landmarks.shape[0] > 0:
        _check_landmarks_observed(problem, anchored_landmarks)
        landmarks = _Landmarks(
            problem.landmark_edges,
            problem.landmark_measurements,
            problem.landmark_information,
            problem.landmarks,
            anchored_landmarks,
        )
    rotations, solved = _estimate(
        _Edges(problem.edges, measured, measured_positions, problem.information),
        rotations,
        positions,
        anchors["pose"],
        lambda index: f"pose {int(problem.pose_ids[index])}",
        landmarks,
    )
    if isinstance(problem, PoseGraph2D):
        theta = np.arctan2(rotations[:, 1, 0], rotations[:, 0, 0])
        changes: dict = {"poses": np.concatenate([solved[: problem.num_poses], theta[:, None]], axis=1)}
        if landmarks is not None:
            changes["landmarks"] = solved[problem.num_poses :]
        return dataclasses.replace(problem, **changes)
    return dataclasses.replace(problem, translations=solved, quaternions=_quaternions(rotations))


class _Edges(NamedTuple):
    """Relative-pose measurements: ``information`` in the tangent order (position, rotation)."""

    pairs: Int[np.ndarray, "E 2"]
    rotations: Float[np.ndarray, "E d d"]
    positions: Float[np.ndarray, "E d"]
    information: Float[np.ndarray, "E k k"]


class _Landmarks(NamedTuple):
    """2-D landmark observations: (pose, landmark) pairs, positions in the pose's frame, starts, anchors."""

    pairs: Int[np.ndarray, "K 2"]
    positions: Float[np.ndarray, "K d"]
    information: Float[np.ndarray, "K d d"]
    values: Float[np.ndarray, "L d"]
    anchored: Int[np.ndarray, " B"]


def _estimate(
    edges: _Edges,
    rotations: Float[np.ndarray, "N d d"],
    positions: Float[np.ndarray, "N d"],
    anchored: Sequence[int],
    name: Callable[[int], str],
    landmarks: _Landmarks | None = None,
) -> tuple[Float[np.ndarray, "N d d"], Float[np.ndarray, "M d"]]:
    """The chordal rotations and the positions given them (the poses', then the landmarks')."""
    d = rotations.shape[-1]
    num_poses = rotations.shape[0]
    # only landmarks anchored: they hold the positions, but the rotations need a reference (the first pose's)
    rotation_anchors = np.asarray(anchored or [0], np.int64)
    position_anchors = np.asarray(
        anchored or ([] if landmarks is not None and landmarks.anchored.size else [0]), np.int64
    )
    _check_connected(num_poses, edges.pairs, rotation_anchors, name)

    rotation_information = edges.information[:, d:, d:]
    weight = np.trace(rotation_information, axis1=1, axis2=2) / rotation_information.shape[-1]
    rotations = _project_to_rotations(
        _relaxed_rotations(edges.pairs, edges.rotations, weight, rotations, rotation_anchors)
    )

    # positions: pose-to-pose terms t_j - t_i - R_i t_ij, and landmark terms l - t_i - R_i z
    pairs, offsets, informations = [edges.pairs], [edges.positions], [edges.information[:, :d, :d]]
    values, anchors = positions, position_anchors
    if landmarks is not None:
        pairs.append(landmarks.pairs + np.array([0, num_poses]))
        offsets.append(landmarks.positions)
        informations.append(landmarks.information)
        values = np.concatenate([positions, landmarks.values])
        anchors = np.concatenate([position_anchors, landmarks.anchored + num_poses])
    all_pairs = np.concatenate(pairs)
    frames = rotations[all_pairs[:, 0]]
    # the information of R_i^T (t_j - t_i) - t_ij, expressed on t_j - t_i - R_i t_ij
    information = frames @ np.concatenate(informations) @ np.swapaxes(frames, 1, 2)
    offsets_world = np.einsum("eab,eb->ea", frames, np.concatenate(offsets))
    return rotations, _anchored_least_squares(all_pairs, information, values, anchors, offsets=offsets_world)


def _initialize_factor_graph(graph: FactorGraph, kind: str) -> FactorGraph:
    import equinox as eqx
    import jax.numpy as jnp
    import jaxlie

    if kind not in graph.variables:
        raise ValueError(f"chordal initialisation: no variable kind {kind!r} (the graph has {sorted(graph.variables)})")
    poses = graph.variables[kind]
    if not isinstance(poses, (jaxlie.SE2, jaxlie.SE3)):
        raise TypeError(
            f"chordal initialisation: variables[{kind!r}] must be a stack of jaxlie SE2 or SE3 poses, got "
            f"{type(poses).__name__}"
        )
    parameters = np.asarray(poses.parameters(), np.float64)
    if parameters.ndim != 2:
        raise ValueError(
            f"chordal initialisation: variables[{kind!r}] must be one stack of N poses (an unbatched graph), got "
            f"parameters of shape {parameters.shape}"
        )
    groups = [c for c in graph.costs if c.residual_fn is between and c.kinds == (kind, kind)]
    if not groups:
        raise ValueError(f"chordal initialisation: the graph has no `between` group joining two {kind!r} variables")
    planar = isinstance(poses, jaxlie.SE2)
    k = 3 if planar else 6  # the tangent size
    pairs, rotations, positions, information = [], [], [], []
    for group in groups:
        measured = np.asarray(group.data.parameters(), np.float64)
        count = group.num_terms
        if group.sqrt_information is None:
            root = np.broadcast_to(np.eye(k), (count, k, k))
        else:
            root = np.broadcast_to(np.asarray(group.sqrt_information, np.float64), (count, k, k))
        pairs.append(group.indices.array)
        rotations.append(
            _rotation_matrices_2d(np.arctan2(measured[:, 1], measured[:, 0]))
            if planar
            else _rotation_matrices_3d(measured[:, :4])
        )
        positions.append(measured[:, 2:] if planar else measured[:, 4:])
        information.append(np.swapaxes(root, 1, 2) @ root)
    if planar:
        start_rotations, start_positions = (
            _rotation_matrices_2d(np.arctan2(parameters[:, 1], parameters[:, 0])),
            parameters[:, 2:],
        )
    else:
        start_rotations, start_positions = _rotation_matrices_3d(parameters[:, :4]), parameters[:, 4:]
    anchored = [int(i) for fixed_kind, indices in graph.fixed if fixed_kind == kind for i in indices.array]
    estimated, solved = _estimate(
        _Edges(
            np.concatenate(pairs), np.concatenate(rotations), np.concatenate(positions), np.concatenate(information)
        ),
        start_rotations,
        start_positions,
        anchored,
        lambda index: f"variable {index} of kind {kind!r}",
    )
    if planar:
        new = np.concatenate([estimated[:, :, 0], solved], axis=1)  # [cos θ, sin θ, x, y]
    else:
        new = np.concatenate([_quaternions(estimated), solved], axis=1)
    value = type(poses)(jnp.asarray(new, dtype=jnp.asarray(poses.parameters()).dtype))
    return eqx.tree_at(lambda g: g.variables[kind], graph, value)


def _check_connected(
    num_poses: int, pairs: Int[np.ndarray, "E 2"], anchored: Int[np.ndarray, " A"], name: Callable[[int], str]
) -> None:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    i, j = pairs.T
    adjacency = coo_matrix((np.ones(i.shape[0]), (i, j)), shape=(num_poses, num_poses))
    _, component = connected_components(adjacency, directed=False)
    reached = np.isin(component, component[anchored])
    if not reached.all():
        raise ValueError(
            f"chordal initialisation: {name(int(np.argmin(reached)))} is not connected to an anchored pose by "
            f"pose-to-pose edges ({int((~reached).sum())} such poses): its rotation is not determined"
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
    d = rotations.shape[-1]
    # row k of M_j - M_i R_ij is u_j - R_ij^T u_i with u = M[k, :]^T: d problems, one matrix. Column k of M^T
    # is u for row k, so the unknowns are the M_i^T with d right-hand sides.
    information = weight[:, None, None] * np.broadcast_to(np.eye(d), measured.shape)
    solved = _anchored_least_squares(
        edges, information, np.swapaxes(rotations, 1, 2), anchored, transforms=np.swapaxes(measured, 1, 2)
    )
    return np.swapaxes(solved, 1, 2)


def _project_to_rotations(matrices: Float[np.ndarray, "N d d"]) -> Float[np.ndarray, "N d d"]:
    """The nearest rotation (Frobenius norm) to each matrix."""
    u, _, vt = np.linalg.svd(matrices)
    sign = np.ones(matrices.shape[:2])
    sign[:, -1] = np.linalg.det(u @ vt)
    return (u * sign[:, None, :]) @ vt


def _anchored_least_squares(
    pairs: Int[np.ndarray, "E 2"],
    information: Float[np.ndarray, "E d d"],
    values: Float[np.ndarray, "N d *k"],
    anchored: Int[np.ndarray, " A"],
    transforms: Float[np.ndarray, "E d d"] | None = None,
    offsets: Float[np.ndarray, "E d *k"] | None = None,
) -> Float[np.ndarray, "N d *k"]:
    r"""The minimiser of :math:`\sum_e \|x_j - A_e x_i - c_e\|^2_{Ω_e}` over the free blocks of ``values`` (the
    anchored ones held; ``A_e`` = ``transforms``, identity if None; ``c_e`` = ``offsets``, zero if None), for each
    of the trailing columns ``k`` of ``values``: with :math:`J = [-A, I]` the normal equations have blocks
    :math:`H_{ii} \mathrel{+}= A^\top Ω A`, :math:`H_{jj} \mathrel{+}= Ω`, :math:`H_{ij} \mathrel{+}= -A^\top Ω`
    and right-hand side :math:`b_j \mathrel{+}= Ωc`, :math:`b_i \mathrel{-}= A^\top Ωc`."""
    num, d = values.shape[:2]
    columns = values.shape[2:]
    if transforms is None:
        first, cross = information, -information
    else:
        weighted_transforms = np.swapaxes(transforms, 1, 2) @ information  # A^T Ω
        first, cross = weighted_transforms @ transforms, -weighted_transforms
    matrix = _block_normal_matrix(num, d, pairs, first, information, cross)
    rhs = np.zeros(values.shape)
    if offsets is not None:
        weighted = np.einsum("eab,eb...->ea...", information, offsets)
        np.add.at(rhs, pairs[:, 1], weighted)
        down = weighted if transforms is None else np.einsum("eba,eb...->ea...", transforms, weighted)
        np.add.at(rhs, pairs[:, 0], -down)
    flat = (num * d, *columns)
    return _solve_with_anchors(matrix, rhs.reshape(flat), values.reshape(flat), anchored, d).reshape(values.shape)


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
            f"chordal initialisation: the anchored vertices do not determine every pose and landmark ({err})"
        ) from err
    solution[free] = factor.solve(np.asarray(reduced_rhs))
    return solution
