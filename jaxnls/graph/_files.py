r"""Problems read from files (:mod:`jaxnls.io`) as factor graphs, and solutions written back.

- Pose graphs (g2o, TORO): one variable kind ``"pose"`` (``jaxlie.SE2`` or ``SE3``), a :func:`between`
  group for the edges with the file's information matrices (:math:`L = R`, :math:`R^\top R = Ω`) and, for
  2-D files with landmarks, a kind ``"landmark"`` ((L, 2) points) with :func:`point_in_frame` terms. The
  gauge is fixed by holding the poses of the file's ``FIX`` lines, or the first pose when there are none.
- BAL files: kinds ``"camera"`` ((C, 9): Rodrigues rotation, translation, f, k1, k2) and ``"point"``
  ((P, 3)), one :func:`bal_reprojection` term per observation. No anchoring: the similarity gauge of
  bundle adjustment is left to the damping, as in Ceres' BAL examples.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, DTypeLike, Float

from ._factors import between
from ._graph import CostGroup, FactorGraph

if TYPE_CHECKING:
    import jaxlie

    from ..io import BALProblem, PoseGraph2D, PoseGraph3D


def point_in_frame(pose: jaxlie.SE2, point: Float[Array, " 2"], measured: Float[Array, " 2"]) -> Float[Array, " 2"]:
    r"""g2o's ``EDGE_SE2_XY``: the point in the pose's frame minus the measurement, :math:`T^{-1}p - z`.

    Args:
        pose: the observing pose :math:`T`, one ``jaxlie.SE2``.
        point: the landmark :math:`p`, ``(2,)`` in the world frame.
        measured: the landmark as observed from the pose, :math:`z`, ``(2,)`` in the pose's frame.

    Returns:
        The ``(2,)`` residual.
    """
    return pose.inverse() @ point - measured


def _rotate_rodrigues(omega, x):
    """R(ω) x for the rotation vector ω (Rodrigues' formula, with its small-angle limit)."""
    theta2 = jnp.sum(omega**2)
    small = theta2 < 1e-12
    theta = jnp.sqrt(jnp.where(small, 1.0, theta2))
    axis = omega / theta
    cos, sin = jnp.cos(theta), jnp.sin(theta)
    rotated = x * cos + jnp.cross(axis, x) * sin + axis * (axis @ x) * (1 - cos)
    return jnp.where(small, x + jnp.cross(omega, x), rotated)


def bal_reprojection(
    camera: Float[Array, " 9"], point: Float[Array, " 3"], observed: Float[Array, " 2"]
) -> Float[Array, " 2"]:
    r"""The BAL (Bundler) camera model: :math:`P = R(ω)X + t`, :math:`p = -P_{xy}/P_z`,
    :math:`\hat x = f\,(1 + k_1\|p\|^2 + k_2\|p\|^4)\,p`; the residual is :math:`\hat x - x_{\text{observed}}`.

    Args:
        camera: ``(9,)``: the Rodrigues rotation vector ω, the translation t, the focal length f and the
            radial distortion coefficients :math:`k_1, k_2`.
        point: the world point X, ``(3,)``.
        observed: the measured image point :math:`x_{\text{observed}}`, ``(2,)``.

    Returns:
        The ``(2,)`` reprojection error.
    """
    transformed = _rotate_rodrigues(camera[:3], point) + camera[3:6]
    p = -transformed[:2] / transformed[2]
    radius2 = p @ p
    distortion = 1.0 + radius2 * (camera[7] + camera[8] * radius2)
    return camera[6] * distortion * p - observed


def _import_jaxlie():
    try:
        import jaxlie
    except ImportError as err:  # pragma: no cover - jaxlie is a dependency
        raise ImportError("pose graphs need jaxlie (pip install jaxlie)") from err
    return jaxlie


def pose_graph_problem(pose_graph: PoseGraph2D | PoseGraph3D, dtype: DTypeLike = jnp.float64) -> FactorGraph:
    """A :class:`FactorGraph` of a :class:`~jaxnls.io.PoseGraph2D` / :class:`~jaxnls.io.PoseGraph3D`.

    Args:
        pose_graph: the pose graph, e.g. from :func:`jaxnls.io.read_pose_graph`; it needs at least one edge.
        dtype: the floating dtype of the variables and data (default float64).

    Returns:
        A :class:`FactorGraph` with kind ``"pose"`` (and ``"landmark"`` for 2-D files with landmarks), the
        edges as :func:`between` terms weighted by :func:`~jaxnls.io.sqrt_information` of their
        information matrices, and the vertices of the file's ``FIX`` lines (else the first pose) held fixed.

    Raises:
        TypeError: ``pose_graph`` is neither a ``PoseGraph2D`` nor a ``PoseGraph3D``.
        ValueError: the pose graph has no edges.
    """
    from ..io import PoseGraph2D, PoseGraph3D, sqrt_information

    jaxlie = _import_jaxlie()
    if isinstance(pose_graph, PoseGraph2D):
        # built in NumPy: jaxlie's from_xy_theta on concrete arrays compiles a handful of small programs
        # (~0.25 s of a command-line run on w100)
        poses = jaxlie.SE2(jnp.asarray(_unit_complex_xy(pose_graph.poses), dtype))
        measured = jaxlie.SE2(jnp.asarray(_unit_complex_xy(pose_graph.measurements), dtype))
    elif isinstance(pose_graph, PoseGraph3D):
        poses = jaxlie.SE3(jnp.asarray(pose_graph.poses_wxyz_xyz, dtype))
        measured = jaxlie.SE3(jnp.asarray(pose_graph.measurements_wxyz_xyz, dtype))
    else:
        raise TypeError(f"expected a PoseGraph2D or PoseGraph3D, got {type(pose_graph).__name__}")
    if pose_graph.num_edges == 0:
        raise ValueError("the pose graph has no edges: nothing to optimise")
    variables: dict[str, Any] = {"pose": poses}
    costs = [
        CostGroup(
            between,
            ("pose", "pose"),
            pose_graph.edges,
            measured,
            jnp.asarray(sqrt_information(pose_graph.information), dtype),
        )
    ]
    if isinstance(pose_graph, PoseGraph2D) and pose_graph.landmarks.shape[0]:
        variables["landmark"] = jnp.asarray(pose_graph.landmarks, dtype)
        costs.append(
            CostGroup(
                point_in_frame,
                ("pose", "landmark"),
                pose_graph.landmark_edges,
                jnp.asarray(pose_graph.landmark_measurements, dtype),
                jnp.asarray(sqrt_information(pose_graph.landmark_information), dtype),
            )
        )
    return FactorGraph(variables, costs, fixed=_anchors(pose_graph))


def _unit_complex_xy(x_y_theta: np.ndarray) -> np.ndarray:
    """``[cos θ, sin θ, x, y]`` rows: ``jaxlie.SE2``'s parameters of ``[x, y, θ]`` rows."""
    x, y, theta = np.asarray(x_y_theta, np.float64).T
    return np.stack([np.cos(theta), np.sin(theta), x, y], axis=-1)


def _anchors(pose_graph) -> dict:
    if not pose_graph.fixed_ids.size:
        return {"pose": [0]}
    pose_index = {int(i): k for k, i in enumerate(pose_graph.pose_ids)}
    landmark_index = {int(i): k for k, i in enumerate(getattr(pose_graph, "landmark_ids", ()))}
    fixed = {"pose": [pose_index[int(i)] for i in pose_graph.fixed_ids if int(i) in pose_index]}
    landmarks = [landmark_index[int(i)] for i in pose_graph.fixed_ids if int(i) in landmark_index]
    if landmarks:
        fixed["landmark"] = landmarks
    return fixed


def updated_pose_graph(
    pose_graph: PoseGraph2D | PoseGraph3D, variables: Mapping[str, Any]
) -> PoseGraph2D | PoseGraph3D:
    """The pose graph with its vertices replaced by the solution's ``variables`` (for writing).

    Args:
        pose_graph: the graph the problem was built from (:func:`pose_graph_problem`).
        variables: the solved variables, e.g. ``jaxnls.graph.solve(graph).params``: ``"pose"`` (and
            ``"landmark"`` for 2-D graphs with landmarks) of one unbatched solve.

    Returns:
        A copy of ``pose_graph`` with the new poses (and landmarks), edges and ids unchanged.
    """
    from ..io import PoseGraph2D

    poses = variables["pose"]
    if isinstance(pose_graph, PoseGraph2D):
        xy = np.asarray(poses.translation(), np.float64)
        theta = np.asarray(poses.rotation().as_radians(), np.float64)
        changes = dict(poses=np.concatenate([xy, theta[:, None]], axis=1))
        if "landmark" in variables:
            changes["landmarks"] = np.asarray(variables["landmark"], np.float64)
        return dataclasses.replace(pose_graph, **changes)
    wxyz_xyz = np.asarray(poses.wxyz_xyz, np.float64)
    return dataclasses.replace(pose_graph, quaternions=wxyz_xyz[:, :4], translations=wxyz_xyz[:, 4:])


def bal_graph_problem(problem: BALProblem, dtype: DTypeLike = jnp.float64) -> FactorGraph:
    """A :class:`FactorGraph` of a :class:`~jaxnls.io.BALProblem` (unit-weight reprojection errors).

    Args:
        problem: the bundle-adjustment problem, e.g. from :func:`jaxnls.io.read_bal`.
        dtype: the floating dtype of the variables and data (default float64).

    Returns:
        A :class:`FactorGraph` with kinds ``"camera"`` ``(C, 9)`` and ``"point"`` ``(P, 3)`` and one
        :func:`bal_reprojection` term per observation; nothing is held fixed.
    """
    indices = np.stack([problem.camera_index, problem.point_index], axis=1)
    return FactorGraph(
        {"camera": jnp.asarray(problem.cameras, dtype), "point": jnp.asarray(problem.points, dtype)},
        [CostGroup(bal_reprojection, ("camera", "point"), indices, jnp.asarray(problem.observations, dtype))],
    )


def updated_bal(problem: BALProblem, variables: Mapping[str, ArrayLike]) -> BALProblem:
    """The BAL problem with the solution's cameras and points (for writing).

    Args:
        problem: the problem the graph was built from (:func:`bal_graph_problem`).
        variables: the solved variables: ``"camera"`` ``(C, 9)`` and ``"point"`` ``(P, 3)``.

    Returns:
        A copy of ``problem`` with the new cameras and points (as float64), observations unchanged.
    """
    return dataclasses.replace(
        problem, cameras=np.asarray(variables["camera"], np.float64), points=np.asarray(variables["point"], np.float64)
    )
