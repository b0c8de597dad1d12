r"""Readers and writers for pose-graph (g2o, TORO) and bundle-adjustment (BAL) files.

Three plain-text formats are read into frozen dataclasses of read-only NumPy arrays:

- **g2o** (https://github.com/RainerKuemmerle/g2o): one record per line, ``TAG value ...``.
  :func:`read_g2o` returns a :class:`PoseGraph2D` (``VERTEX_SE2``, ``VERTEX_XY``, ``EDGE_SE2``,
  ``EDGE_SE2_XY``) or a :class:`PoseGraph3D` (``VERTEX_SE3:QUAT``, ``EDGE_SE3:QUAT``); ``FIX id ...``
  lines are kept in ``fixed_ids``.
- **TORO** (https://openslam-org.github.io/toro.html): :func:`read_toro` reads ``VERTEX2``/``EDGE2``
  (2-D), ``VERTEX3``/``EDGE3`` (3-D, roll-pitch-yaw) and ``EQUIV`` lines.
- **BAL**, Bundle Adjustment in the Large (Agarwal et al., https://grail.cs.washington.edu/projects/bal/):
  :func:`read_bal` returns a :class:`BALProblem`.

:func:`detect_format` tells the formats (and NIST StRD ``.dat`` files) apart by their tags, and
:func:`read_pose_graph` reads either pose-graph format. The writers (:func:`write_g2o`,
:func:`write_toro`, :func:`write_bal`) print every float with ``repr`` (the shortest text that reads
back to the same float64), so write -> read reproduces the arrays bit for bit; the one exception is
TORO 3-D, whose roll-pitch-yaw angles are converted to and from quaternions (agreement to ~1e-16).

The readers parse a plain file in bulk (each tag's lines as one block of numbers: w10000's 80,000 lines in
~0.1 s) and fall back to reading token by token, which names the line of a fault, for anything else; both
readings give the same arrays.

Conventions
-----------
- **Edges** ``(i, j)`` are dense indices into the pose arrays. The measurement is the pose of ``j``
  in the frame of ``i``, :math:`z_{ij} \approx T_i^{-1} T_j`, as in g2o, TORO and GTSAM.
- **2-D poses** are ``[x, y, theta]`` with ``theta`` in radians exactly as written (not wrapped).
- **Quaternions** are stored **scalar first, ``[w, x, y, z]``** (jaxlie's ``wxyz``); g2o files write
  them ``x y z w``. Quaternions are normalised on reading; one whose norm differs from 1 by more than
  :data:`QUATERNION_TOLERANCE` is an error. The sign is kept as written.
- **TORO 3-D rotations** ``roll pitch yaw`` mean :math:`R = R_z(\text{yaw})\,R_y(\text{pitch})\,R_x(\text{roll})`.
- **Information matrices** are stored full and symmetric: ``(E, 3, 3)`` in the order
  ``(x, y, theta)`` for 2-D and ``(E, 6, 6)`` in the order ``(tx, ty, tz, rx, ry, rz)`` --
  translation first -- for 3-D, which is the order of g2o's ``EDGE_SE3:QUAT``, of TORO's ``EDGE3``
  and of jaxlie's SE(3) tangent. (GTSAM orders its Pose3 tangent rotation first and permutes g2o's
  matrix when reading ``EDGE_SE3:QUAT``, but not when reading ``EDGE3``.) Matrices are kept as
  written, not rescaled: g2o's own ``EDGE_SE3:QUAT`` error uses the quaternion's vector part (about half
  the rotation vector), TORO's uses roll-pitch-yaw. In the file only the upper
  triangle is written, row by row, except TORO 2-D, which writes
  :math:`I_{11}\,I_{12}\,I_{22}\,I_{33}\,I_{13}\,I_{23}`. Every matrix must be positive definite;
  :func:`sqrt_information` gives the upper-triangular :math:`R` with :math:`R^\top R = \Omega` that whitens
  a residual, :math:`\tfrac12 r^\top \Omega r = \tfrac12 \lVert R r \rVert^2`.
- **Vertex ids** may be any non-negative integers, in any order and with gaps: ``pose_ids[k]`` is the
  file's id of dense pose ``k`` (dense order = order of appearance). In g2o, poses and landmarks share
  one id space.

Errors
------
Anything malformed raises :class:`GraphFormatError` (a :class:`ValueError`) whose message is
``"FILE, line N: what"``: unknown tags (g2o files in the wild also contain e.g. ``PARAMS_SE2OFFSET``
or ``VERTEX_TRACKXYZ``, which this module does not model -- they are rejected rather than silently
dropped), wrong token counts, non-numeric or non-finite numbers, duplicate vertex ids, edges that
reference a vertex the file never defines, non-unit quaternions, information matrices that are not
positive definite, BAL indices out of range and BAL headers whose counts do not match the body.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ._atomic import write_atomically
from ._errors import FileFormatError, ascii_lines, without_byte_order_mark

if TYPE_CHECKING:
    from jaxtyping import Float, Int
    from numpy.typing import ArrayLike, DTypeLike

__all__ = [
    "QUATERNION_TOLERANCE",
    "BALProblem",
    "GraphFormatError",
    "PoseGraph2D",
    "PoseGraph3D",
    "detect_format",
    "parse_bal",
    "parse_g2o",
    "parse_toro",
    "read_bal",
    "read_g2o",
    "read_pose_graph",
    "read_toro",
    "sqrt_information",
    "write_bal",
    "write_g2o",
    "write_toro",
]

QUATERNION_TOLERANCE = 1e-3
"""A quaternion read from a file may differ from unit norm by this much; it is then normalised."""


class GraphFormatError(FileFormatError):
    """A pose-graph or BAL file that does not follow its format. ``str(err)`` is ``"FILE, line N: what"``.

    Args:
        path: the file's name as shown in the message (``"<string>"`` for parsed text).
        line: the 1-based number of the offending line.
        message: what is wrong, kept as ``reason``.
    """


# --------------------------------------------------------------------------------------------------
# Data structures


def _readonly(a: ArrayLike, dtype: DTypeLike = np.float64) -> np.ndarray:
    a = np.array(a, dtype=dtype)
    a.flags.writeable = False
    return a


def _empty(*shape: int, dtype: DTypeLike = np.float64) -> np.ndarray:
    return _readonly(np.zeros(shape, dtype=dtype), dtype)


class _PoseGraph:
    """What the 2-D and 3-D pose graphs share."""

    # fields of both dataclasses (annotations only: this base is not a dataclass, so they add no field)
    pose_ids: Int[np.ndarray, " N"]
    edges: Int[np.ndarray, "E 2"]
    information: Float[np.ndarray, "E d d"]

    @property
    def num_poses(self) -> int:
        """N, the number of poses."""
        return int(self.pose_ids.shape[0])

    @property
    def num_edges(self) -> int:
        """E, the number of pose-to-pose edges."""
        return int(self.edges.shape[0])

    def index_of(self, pose_id: int) -> int:
        """Dense index of the pose with file id ``pose_id`` (``KeyError`` if there is none)."""
        return _index_of(self.pose_ids, pose_id, "pose")

    @property
    def sqrt_information(self) -> np.ndarray:
        """``(E, d, d)`` upper-triangular :math:`R` with :math:`R^\\top R` = :attr:`information`."""
        return sqrt_information(self.information)


@dataclasses.dataclass(frozen=True, eq=False)
class PoseGraph2D(_PoseGraph):
    """A 2-D pose graph, optionally with point landmarks. Arrays are read-only NumPy arrays.

    Attributes:
        pose_ids: ``(N,)`` int64, the file's id of each pose (dense index -> id).
        poses: ``(N, 3)`` ``[x, y, theta]``, ``theta`` in radians as written.
        edges: ``(E, 2)`` int64 dense pose indices ``(i, j)``.
        measurements: ``(E, 3)`` pose of ``j`` in the frame of ``i``, ``[dx, dy, dtheta]``.
        information: ``(E, 3, 3)`` symmetric positive-definite, order ``(x, y, theta)``.
        landmark_ids: ``(L,)`` int64 file ids of the landmarks (g2o ``VERTEX_XY``).
        landmarks: ``(L, 2)`` landmark positions.
        landmark_edges: ``(K, 2)`` int64 ``(pose index, landmark index)`` (g2o ``EDGE_SE2_XY``).
        landmark_measurements: ``(K, 2)`` landmark position in the frame of the pose.
        landmark_information: ``(K, 2, 2)`` symmetric positive-definite.
        fixed_ids: ``(F,)`` int64 file ids from g2o ``FIX`` lines, in file order (poses or landmarks).
        equivalences: ``(Q, 2)`` int64 dense pose-index pairs from TORO ``EQUIV`` lines.
        path: the file it was read from, if any.
        initialized_from_odometry: the file had edges but no vertex records, and :attr:`poses` were made by
            chaining the measurements from the lowest id (see :func:`read_g2o`).
        repaired_information: how many information matrices were not positive definite and were replaced by
            the nearest positive-definite one (``repair_information=True`` only; else such a file is refused).
    """

    pose_ids: Int[np.ndarray, " N"]
    poses: Float[np.ndarray, "N 3"]
    edges: Int[np.ndarray, "E 2"]
    measurements: Float[np.ndarray, "E 3"]
    information: Float[np.ndarray, "E 3 3"]
    landmark_ids: Int[np.ndarray, " L"] = dataclasses.field(default_factory=lambda: _empty(0, dtype=np.int64))
    landmarks: Float[np.ndarray, "L 2"] = dataclasses.field(default_factory=lambda: _empty(0, 2))
    landmark_edges: Int[np.ndarray, "K 2"] = dataclasses.field(default_factory=lambda: _empty(0, 2, dtype=np.int64))
    landmark_measurements: Float[np.ndarray, "K 2"] = dataclasses.field(default_factory=lambda: _empty(0, 2))
    landmark_information: Float[np.ndarray, "K 2 2"] = dataclasses.field(default_factory=lambda: _empty(0, 2, 2))
    fixed_ids: Int[np.ndarray, " F"] = dataclasses.field(default_factory=lambda: _empty(0, dtype=np.int64))
    equivalences: Int[np.ndarray, "Q 2"] = dataclasses.field(default_factory=lambda: _empty(0, 2, dtype=np.int64))
    path: str | None = None
    initialized_from_odometry: bool = False
    repaired_information: int = 0

    @property
    def landmark_sqrt_information(self) -> np.ndarray:
        """``(K, 2, 2)`` upper-triangular square roots of :attr:`landmark_information`."""
        return sqrt_information(self.landmark_information)


@dataclasses.dataclass(frozen=True, eq=False)
class PoseGraph3D(_PoseGraph):
    """A 3-D pose graph. Arrays are read-only NumPy arrays; quaternions are ``[w, x, y, z]`` and unit.

    Attributes:
        pose_ids: ``(N,)`` int64, the file's id of each pose.
        translations: ``(N, 3)`` pose positions.
        quaternions: ``(N, 4)`` pose orientations, ``[w, x, y, z]`` (body to world).
        edges: ``(E, 2)`` int64 dense pose indices ``(i, j)``.
        measurement_translations: ``(E, 3)`` translation of :math:`T_i^{-1} T_j`.
        measurement_quaternions: ``(E, 4)`` rotation of :math:`T_i^{-1} T_j`, ``[w, x, y, z]``.
        information: ``(E, 6, 6)`` symmetric positive-definite, order ``(tx, ty, tz, rx, ry, rz)``.
        fixed_ids: ``(F,)`` int64 file ids from g2o ``FIX`` lines.
        equivalences: ``(Q, 2)`` int64 dense pose-index pairs from TORO ``EQUIV`` lines.
        path: the file it was read from, if any.
        initialized_from_odometry: as for :class:`PoseGraph2D`.
        repaired_information: how many information matrices were not positive definite and were replaced by
            the nearest positive-definite one (``repair_information=True`` only; else such a file is refused).
    """

    pose_ids: Int[np.ndarray, " N"]
    translations: Float[np.ndarray, "N 3"]
    quaternions: Float[np.ndarray, "N 4"]
    edges: Int[np.ndarray, "E 2"]
    measurement_translations: Float[np.ndarray, "E 3"]
    measurement_quaternions: Float[np.ndarray, "E 4"]
    information: Float[np.ndarray, "E 6 6"]
    fixed_ids: Int[np.ndarray, " F"] = dataclasses.field(default_factory=lambda: _empty(0, dtype=np.int64))
    equivalences: Int[np.ndarray, "Q 2"] = dataclasses.field(default_factory=lambda: _empty(0, 2, dtype=np.int64))
    path: str | None = None
    initialized_from_odometry: bool = False
    repaired_information: int = 0

    @property
    def poses_wxyz_xyz(self) -> np.ndarray:
        """``(N, 7)`` ``[qw, qx, qy, qz, x, y, z]``, the parameter layout of ``jaxlie.SE3``."""
        return np.concatenate([self.quaternions, self.translations], axis=-1)

    @property
    def measurements_wxyz_xyz(self) -> np.ndarray:
        """``(E, 7)`` measurements in ``jaxlie.SE3`` layout."""
        return np.concatenate([self.measurement_quaternions, self.measurement_translations], axis=-1)


@dataclasses.dataclass(frozen=True, eq=False)
class BALProblem:
    r"""A Bundle Adjustment in the Large problem. Arrays are read-only NumPy arrays.

    BAL's camera model: a world point :math:`X` maps to :math:`P = R X + t` (:math:`R` from the
    Rodrigues / axis-angle vector), :math:`p = -P_{xy} / P_z`, and the predicted observation is
    :math:`f\,(1 + k_1 \lVert p\rVert^2 + k_2 \lVert p\rVert^4)\,p`, in pixels from the image centre
    with :math:`y` up.

    Attributes:
        cameras: ``(C, 9)`` ``[rx, ry, rz, tx, ty, tz, f, k1, k2]``.
        points: ``(P, 3)`` world points.
        camera_index: ``(M,)`` int64 camera of each observation.
        point_index: ``(M,)`` int64 point of each observation.
        observations: ``(M, 2)`` measured image coordinates ``[x, y]``.
        path: the file it was read from, if any.
    """

    cameras: Float[np.ndarray, "C 9"]
    points: Float[np.ndarray, "P 3"]
    camera_index: Int[np.ndarray, " M"]
    point_index: Int[np.ndarray, " M"]
    observations: Float[np.ndarray, "M 2"]
    path: str | None = None

    @property
    def num_cameras(self) -> int:
        """C, the number of cameras."""
        return int(self.cameras.shape[0])

    @property
    def num_points(self) -> int:
        """P, the number of points."""
        return int(self.points.shape[0])

    @property
    def num_observations(self) -> int:
        """M, the number of observations."""
        return int(self.observations.shape[0])


def _index_of(ids: np.ndarray, vertex_id: int, what: str) -> int:
    hits = np.flatnonzero(ids == vertex_id)
    if hits.size == 0:
        raise KeyError(f"no {what} with id {vertex_id}")
    return int(hits[0])


def sqrt_information(information: Float[ArrayLike, "*batch d d"]) -> Float[np.ndarray, "*batch d d"]:
    r"""Upper-triangular square root :math:`R` of information matrices, :math:`R^\top R = \Omega`.

    ``information`` has shape ``(..., n, n)``. The solver whitens a residual :math:`r` as :math:`R r`,
    so that :math:`\lVert R r\rVert^2 = r^\top \Omega r`. :math:`R` is the transposed lower Cholesky
    factor (positive diagonal), the same factor GTSAM's ``noiseModel.Gaussian.R()`` returns.

    Args:
        information: ``(..., n, n)`` symmetric positive-definite information matrices :math:`\Omega`.

    Returns:
        ``(..., n, n)`` float64 upper-triangular :math:`R`.

    Raises:
        ValueError: a matrix is not symmetric positive definite.
    """
    info = np.asarray(information, dtype=np.float64)
    if info.ndim < 2 or info.shape[-1] != info.shape[-2]:
        raise ValueError(f"expected (..., n, n) information matrices, got shape {info.shape}")
    try:
        lower = np.linalg.cholesky(info)
    except np.linalg.LinAlgError:
        raise ValueError("information matrix is not positive definite") from None
    if not np.all(np.isfinite(lower)):
        raise ValueError("information matrix is not positive definite")
    return np.swapaxes(lower, -1, -2).copy()


def nearest_positive_definite(
    information: Float[ArrayLike, "*batch d d"], relative_floor: float = 1e-9
) -> Float[np.ndarray, "*batch d d"]:
    r"""The symmetric matrix nearest to ``information`` in the Frobenius norm among those with every
    eigenvalue at least ``relative_floor`` times the largest magnitude (Higham 1988: the symmetric part with
    its eigenvalues clipped); the floor keeps it invertible, so that its square root whitens.

    Args:
        information: ``(..., n, n)`` matrices; only their symmetric part is used.
        relative_floor: the smallest eigenvalue kept, relative to the largest eigenvalue magnitude of each
            matrix (default 1e-9).

    Returns:
        ``(..., n, n)`` float64 symmetric positive-definite matrices (the identity for an all-zero matrix).
    """
    info = np.asarray(information, dtype=np.float64)
    symmetric = 0.5 * (info + np.swapaxes(info, -1, -2))
    values, vectors = np.linalg.eigh(symmetric)
    floor = relative_floor * np.max(np.abs(values), axis=-1, keepdims=True)
    floor = np.where(floor > 0, floor, 1.0)
    clipped = np.maximum(values, floor)
    return (vectors * clipped[..., None, :]) @ np.swapaxes(vectors, -1, -2)


# --------------------------------------------------------------------------------------------------
# Tokens

_FLOAT = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_NONFINITE = re.compile(r"[+-]?(?:nan|inf|infinity)", re.IGNORECASE)
_ID = re.compile(r"\+?\d+")
#: Ids are int64 (the arrays' dtype), however many leading zeros they are written with.
_LARGEST_ID = 2**63 - 1


def _number(token: str, path: str, line: int, what: str) -> float:
    if _NONFINITE.fullmatch(token):
        raise GraphFormatError(path, line, f"non-finite number {token!r} in {what}")
    if not _FLOAT.fullmatch(token):
        raise GraphFormatError(path, line, f"non-numeric token {token!r} in {what}")
    value = float(token)
    if not math.isfinite(value):
        raise GraphFormatError(path, line, f"non-finite number {token!r} (overflows float64) in {what}")
    return value


_FLOATS = re.compile(rf"{_FLOAT.pattern}(?: {_FLOAT.pattern})*")

# The only bytes a text of plain numbers holds; ids above 2^53 are not exact in float64.
_PLAIN_NUMBER_BYTES = b"0123456789+-.eE \t\n"
_EXACT_IDS = 2**53


@dataclasses.dataclass(frozen=True)
class _BulkNumbers:
    """Every whitespace-separated token of a text, parsed at once (see :func:`_bulk_numbers`)."""

    values: np.ndarray  # (T,) float64, one per token
    data: np.ndarray  # the text's bytes
    token: np.ndarray  # per byte, the index of the token it belongs to (or, for white space, follows)
    space: np.ndarray  # per byte, whether it is white space

    def tokens_per_line(self) -> np.ndarray:
        """How many tokens each line of the text holds."""
        ends = np.flatnonzero(self.data == 10)
        return np.diff(np.concatenate([[0], self.token[ends] + 1, [self.values.shape[0]]]))

    def are_ids(self, selected: np.ndarray) -> bool:
        """Whether the tokens ``selected`` (a mask over the tokens) are written as ids: digits with an optional
        leading ``+``, below 2^53 (the token-by-token readers' ids; the rest they would reject or read exactly)."""
        written = self.data[~self.space & selected[np.maximum(self.token, 0)]]
        digits = ((written >= 48) & (written <= 57)) | (written == 43)
        return bool(np.all(digits) and np.all(self.values[selected] < _EXACT_IDS))


def _bulk_numbers(text: bytes) -> _BulkNumbers | None:
    """The tokens of ``text`` when every one is a finite decimal number as the token-by-token readers accept
    it (no nan, inf, hex or digit separators: the bytes are checked first, and a token the parser does not
    read whole fails it), else None -- the fast path of the readers, which re-read anything else token by
    token to name the line of the fault."""
    if not text or text.translate(None, _PLAIN_NUMBER_BYTES):
        return None
    data = np.frombuffer(text, np.uint8)
    space = (data == 32) | (data == 9) | (data == 10)
    starts = ~space
    starts[1:] &= space[:-1]
    token = np.cumsum(starts, dtype=np.int64) - 1
    try:
        values = np.fromstring(text, sep=" ")
    except ValueError:
        return None
    if values.shape[0] != token[-1] + 1 or not np.all(np.isfinite(values)):
        return None
    return _BulkNumbers(values, data, token, space)


def _numbers(tokens: Sequence[str], path: str, line: int, what: str) -> list[float]:
    # Fast path: one regex over the whole run of tokens; the slow path finds the bad token.
    if tokens and _FLOATS.fullmatch(" ".join(tokens)):
        values = [float(t) for t in tokens]
        if all(map(math.isfinite, values)):
            return values
    return [_number(t, path, line, what) for t in tokens]


def _index(token: str, path: str, line: int, what: str) -> int:
    if not _ID.fullmatch(token):
        if re.fullmatch(r"-\d+", token):
            raise GraphFormatError(path, line, f"negative {what} {token}")
        raise GraphFormatError(path, line, f"expected a non-negative integer for {what}, found {token!r}")
    significant = token.lstrip("+").lstrip("0")
    # (the length first: Python refuses to convert a string of thousands of digits)
    if len(significant) > len(str(_LARGEST_ID)) or int(significant or "0") > _LARGEST_ID:
        raise GraphFormatError(path, line, f"{what} {token} is too large (ids are int64: at most 2^63 - 1)")
    return int(significant or "0")


_SUSPECT_BYTES = re.compile(rb"[^\t\n\r\x20-\x7e]|\r(?!\n)")
_PRINTABLE_BYTES = bytes(range(0x20, 0x7F)) + b"\t\n"


def _lines(content: bytes | str, path: str) -> list[str]:
    """The file's lines, checked to be plain ASCII text (line ``k`` is ``lines[k - 1]``)."""
    if isinstance(content, str):
        content = content.encode("utf-8", errors="surrogateescape")
    content = without_byte_order_mark(content)
    # (deleting the printable bytes is ~20x faster than the regex over a large file; \r is rare)
    plain = not content.translate(None, _PRINTABLE_BYTES) or not _SUSPECT_BYTES.search(content)
    if plain:
        # Plain printable ASCII (the usual case): no need to look at each line.
        lines = content.decode("ascii").replace("\r\n", "\n").split("\n")
        if len(lines) > 1 and lines[-1] == "":
            lines.pop()
        return lines
    return ascii_lines(content, path, GraphFormatError, "the format")


def _read(path: str | os.PathLike) -> tuple[bytes, str]:
    path = os.fspath(path)
    with open(path, "rb") as fh:
        return fh.read(), path


# --------------------------------------------------------------------------------------------------
# Rotations


def _se2_compose(a, b) -> np.ndarray:
    """``a ∘ b`` for 2-D poses ``[x, y, theta]`` (theta wrapped to [-pi, pi))."""
    c, s_ = math.cos(a[2]), math.sin(a[2])
    theta = (a[2] + b[2] + math.pi) % (2 * math.pi) - math.pi
    return np.array([a[0] + c * b[0] - s_ * b[1], a[1] + s_ * b[0] + c * b[1], theta])


def _se2_inverse(a) -> np.ndarray:
    c, s_ = math.cos(a[2]), math.sin(a[2])
    return np.array([-c * a[0] - s_ * a[1], s_ * a[0] - c * a[1], -a[2]])


def _quaternion_product(p, q) -> np.ndarray:
    """Hamilton product of ``[w, x, y, z]`` quaternions."""
    pw, px, py, pz = p
    qw, qx, qy, qz = q
    return np.array(
        [
            pw * qw - px * qx - py * qy - pz * qz,
            pw * qx + px * qw + py * qz - pz * qy,
            pw * qy - px * qz + py * qw + pz * qx,
            pw * qz + px * qy - py * qx + pz * qw,
        ]
    )


def _rotate(q, v) -> np.ndarray:
    return _quaternion_product(_quaternion_product(q, np.concatenate([[0.0], v])), q * [1, -1, -1, -1])[1:]


def _se3_compose(t_a, q_a, t_b, q_b):
    """``(t, q)`` of :math:`T_a T_b` (quaternions ``[w, x, y, z]``, renormalised)."""
    q = _quaternion_product(q_a, q_b)
    return t_a + _rotate(q_a, np.asarray(t_b, np.float64)), q / np.linalg.norm(q)


def _se3_inverse(t, q):
    conjugate = np.asarray(q, np.float64) * [1, -1, -1, -1]
    return -_rotate(conjugate, np.asarray(t, np.float64)), conjugate


def _wxyz_to_rpy(q: np.ndarray) -> tuple[float, float, float]:
    r"""Inverse of :func:`_rpy_to_wxyz` (pitch in [-pi/2, pi/2]), to rounding at every pitch.

    With :math:`R = R_z(y) R_y(p) R_x(r)`: :math:`p = \operatorname{atan2}(-R_{20}, \sqrt{R_{00}^2 + R_{10}^2})`
    and :math:`y = \operatorname{atan2}(R_{10}, R_{00})`; then :math:`r` is read from
    :math:`R_y(p)^\top R_z(y)^\top R = R_x(r)`, not from :math:`R_{21}, R_{22}`, which are
    :math:`\cos p` times the answer: near :math:`p = \pm\pi/2` roll and yaw each lose their digits and only
    their sum or difference is defined, so roll is taken to fit whatever yaw was found."""
    w, x, y, z = (float(v) for v in q / np.linalg.norm(q))
    r00, r10, r20 = 1 - 2 * (y * y + z * z), 2 * (x * y + w * z), 2 * (x * z - w * y)
    r01, r11, r21 = 2 * (x * y - w * z), 1 - 2 * (x * x + z * z), 2 * (y * z + w * x)
    pitch = math.atan2(-r20, math.hypot(r00, r10))
    yaw = math.atan2(r10, r00)
    sp, cp, sy, cy = math.sin(pitch), math.cos(pitch), math.sin(yaw), math.cos(yaw)
    roll = math.atan2(sp * (cy * r01 + sy * r11) + cp * r21, cy * r11 - sy * r01)
    return roll, pitch, yaw


# --------------------------------------------------------------------------------------------------
# Pose graphs: g2o and TORO

# Tag -> (kind, number of values after the tag). Kinds: v2 (SE2 vertex), xy (2-D landmark),
# e2 (SE2 edge), exy (SE2 -> landmark edge), v3 (SE3 vertex), e3 (SE3 edge).
_G2O_TAGS = {
    "VERTEX_SE2": ("v2", 4),
    "VERTEX_XY": ("xy", 3),
    "EDGE_SE2": ("e2", 11),
    "EDGE_SE2_XY": ("exy", 7),
    "VERTEX_SE3:QUAT": ("v3", 8),
    "EDGE_SE3:QUAT": ("e3", 30),
    # GTSAM's readG2o also reads the TORO tags with g2o's information order; some files it ships
    # (w100_30.g2o) are written that way.
    "VERTEX2": ("v2", 4),
    "EDGE2": ("e2", 11),
}
_TORO_TAGS = {
    "VERTEX2": ("v2", 4),
    "EDGE2": ("e2", 11),
    "VERTEX3": ("v3", 7),
    "EDGE3": ("e3", 29),
    "EQUIV": ("equiv", 2),
}
_DIMENSION = {"v2": 2, "xy": 2, "e2": 2, "exy": 2, "v3": 3, "e3": 3}
_VALUE_NAMES = {
    "v2": "id x y theta",
    "xy": "id x y",
    "e2": "id1 id2 dx dy dtheta and 6 information entries",
    "exy": "id1 id2 dx dy and 3 information entries",
    "v3": "id x y z qx qy qz qw",
    "e3": "id1 id2 x y z qx qy qz qw and 21 information entries",
}
_TORO_VALUE_NAMES = {
    "v2": "id x y theta",
    "e2": "id1 id2 dx dy dtheta I11 I12 I22 I33 I13 I23",
    "v3": "id x y z roll pitch yaw",
    "e3": "id1 id2 x y z roll pitch yaw and 21 information entries",
    "equiv": "id1 id2",
}


def _symmetric_index(n: int) -> np.ndarray:
    """``(n, n)`` positions in a row-by-row upper triangle: ``values[..., index]`` is the symmetric matrix."""
    index = np.zeros((n, n), dtype=np.intp)
    rows, columns = np.triu_indices(n)
    index[rows, columns] = index[columns, rows] = np.arange(rows.size)
    return index


# Where each entry of a symmetric information matrix sits among a record's information numbers: g2o writes
# the upper triangle row by row; TORO's 2-D order is I11 I12 I22 I33 I13 I23 (TORO's loader and GTSAM's
# NoiseFormatTORO agree).
_UPPER_INDEX = {n: _symmetric_index(n) for n in (2, 3, 6)}
_TORO_2D_INDEX = np.array([[0, 1, 4], [1, 2, 5], [4, 5, 3]])
# How many of a record's values are vertex ids, by kind.
_ID_COLUMNS = {"v2": 1, "xy": 1, "v3": 1, "e2": 2, "exy": 2, "e3": 2, "equiv": 2}


def _unit_quaternions(xyzw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``([w, x, y, z], norm)`` of a file's ``x y z w`` rows, normalised where the norm is off 1 by more than
    1e-14 (already-unit quaternions, e.g. ones this module wrote, are kept bit for bit, so that write -> read
    is exact)."""
    q = xyzw[:, [3, 0, 1, 2]]
    norm = np.sqrt(np.sum(q * q, axis=1))
    return np.where(np.abs(norm - 1.0)[:, None] > 1e-14, q / norm[:, None], q), norm


def _rpy_to_wxyz(rpy: np.ndarray) -> np.ndarray:
    """Quaternions of :math:`R_z(\\text{yaw}) R_y(\\text{pitch}) R_x(\\text{roll})` (GTSAM's ``Rot3.Ypr``) for
    ``(k, 3)`` rows of roll, pitch, yaw."""
    cr, cp, cy = np.cos(rpy / 2).T
    sr, sp, sy = np.sin(rpy / 2).T
    return np.stack(
        [
            cr * cp * cy + sr * sp * sy,
            sr * cp * cy - cr * sp * sy,
            cr * sp * cy + sr * cp * sy,
            cr * cp * sy - sr * sp * cy,
        ],
        axis=1,
    )


@dataclasses.dataclass
class _Records:
    """One kind of record, in file order: the vertex ids it names, the numbers after them, the line of each
    record and its tag."""

    ids: np.ndarray  # (R, w) int64
    values: np.ndarray  # (R, c) float64
    lines: np.ndarray  # (R,) int64
    tags: np.ndarray  # (R,) str

    @classmethod
    def empty(cls, kind: str) -> _Records:
        # as wide as the widest record (EDGE_SE3:QUAT's 28 numbers), so that every slice of a kind's
        # columns exists
        return cls(
            np.zeros((0, _ID_COLUMNS[kind]), np.int64), np.zeros((0, 28)), np.zeros(0, np.int64), np.zeros(0, str)
        )

    def __len__(self) -> int:
        return self.lines.shape[0]


class _GraphParser:
    """Reads a g2o or TORO file into a pose graph in two stages: the records of each kind as arrays (by
    columns, or line by line), then one assembly that checks what spans records (ids, quaternions,
    information matrices) and converts them.

    The columnar reading handles the regular files quickly (the lines of each tag parsed as one block of
    numbers); it declines -- and the line-by-line reading, which names the line of any fault, takes over --
    as soon as a file is anything but plain: ``FIX`` lines, an unknown tag, mixed dimensions, a token that is
    not a plain number, a line with the wrong token count, an id beyond 2^53, a non-finite value."""

    def __init__(self, path: str, lines: list[str], fmt: Literal["g2o", "toro"], repair: bool = False):
        self.path = path
        self.lines = lines
        self.fmt = fmt
        self.tags = _G2O_TAGS if fmt == "g2o" else _TORO_TAGS
        self.dimension: int | None = None
        self.dimension_line = 0  # the line that set the dimension (line by line)
        self.fixed: list[tuple[int, int]] = []  # (vertex id, line)
        self.repair = repair

    def error(self, line: int, message: str) -> GraphFormatError:
        return GraphFormatError(self.path, line, message)

    def parse(self) -> PoseGraph2D | PoseGraph3D:
        records = self._read_columns()
        if records is None:
            records = self._read_lines()
        return self._build(records)

    # -- the records, by columns ------------------------------------------------------------------

    def _read_columns(self) -> dict[str, _Records] | None:
        """The records of a plain file, parsed tag by tag as blocks of numbers; None for anything else."""
        numbers_by_tag: dict[str, list[int]] = {}
        for number, text in enumerate(self.lines, start=1):
            head = text.split(None, 1)
            if head and head[0][0] != "#":
                numbers_by_tag.setdefault(head[0], []).append(number)
        if not numbers_by_tag or any(tag not in self.tags for tag in numbers_by_tag):
            return None  # (this includes FIX, which is not in the tag tables)
        dimensions = {_DIMENSION.get(self.tags[tag][0]) for tag in numbers_by_tag} - {None}
        if len(dimensions) != 1:
            return None
        blocks: dict[str, list[_Records]] = {}
        for tag, numbers in numbers_by_tag.items():
            kind, count = self.tags[tag]
            block = self._block(tag, numbers, count, _ID_COLUMNS[kind])
            if block is None:
                return None
            blocks.setdefault(kind, []).append(block)
        self.dimension = dimensions.pop()
        records = {}
        for kind, parts in blocks.items():
            if len(parts) == 1:
                records[kind] = parts[0]
                continue
            # (g2o's two spellings of one kind, EDGE2 and EDGE_SE2: back into file order)
            order = np.argsort(np.concatenate([p.lines for p in parts]), kind="stable")
            records[kind] = _Records(
                *(np.concatenate([getattr(p, f.name) for p in parts])[order] for f in dataclasses.fields(_Records))
            )
        return records

    def _block(self, tag: str, numbers: list[int], count: int, id_columns: int) -> _Records | None:
        """The lines ``numbers`` (all ``tag`` records) as one block, or None unless every line holds exactly
        ``count`` plain numbers, the first ``id_columns`` of them non-negative integers below 2^53."""
        skip = len(tag)
        bulk = _bulk_numbers("\n".join(self.lines[n - 1].lstrip()[skip:] for n in numbers).encode("ascii"))
        if bulk is None:
            return None
        per_line = bulk.tokens_per_line()
        if per_line.shape[0] != len(numbers) or np.any(per_line != count):
            return None
        if not bulk.are_ids(np.arange(bulk.values.shape[0]) % count < id_columns):
            return None
        values = bulk.values.reshape(len(numbers), count)
        return _Records(
            values[:, :id_columns].astype(np.int64),
            values[:, id_columns:],
            np.asarray(numbers, np.int64),
            np.full(len(numbers), tag),
        )

    # -- the records, line by line ----------------------------------------------------------------

    def _read_lines(self) -> dict[str, _Records]:
        rows: dict[str, list] = {}
        content_lines = 0
        for number, text in enumerate(self.lines, start=1):
            tokens = text.split()
            if not tokens or tokens[0].startswith("#"):
                continue
            content_lines += 1
            self._line(number, tokens, rows)
        if content_lines == 0:
            raise self.error(
                1,
                "the file contains no vertices or edges"
                if self.lines and any(t.strip() for t in self.lines)
                else "the file is empty",
            )
        if self.dimension is None:
            raise self.error(1, "the file contains no vertices or edges")
        records = {}
        for kind, kind_rows in rows.items():
            ids, values, lines, tags = zip(*kind_rows, strict=True)
            records[kind] = _Records(
                np.array(ids, np.int64),
                np.array(values, np.float64).reshape(len(kind_rows), -1),
                np.array(lines, np.int64),
                np.array(tags),
            )
        return records

    def _line(self, number: int, tokens: list[str], rows: dict[str, list]):
        tag = tokens[0]
        if tag == "FIX" and self.fmt == "g2o":
            if len(tokens) < 2:
                raise self.error(number, "FIX needs at least one vertex id")
            for token in tokens[1:]:
                self.fixed.append((_index(token, self.path, number, "vertex id in FIX"), number))
            return
        if tag not in self.tags:
            known = ", ".join(sorted(set(self.tags) | ({"FIX"} if self.fmt == "g2o" else set())))
            shown = tag if len(tag) <= 40 else tag[:40] + "..."
            raise self.error(number, f"unknown or unsupported tag {shown!r} in a {self.fmt} file (supported: {known})")
        kind, count = self.tags[tag]
        values = tokens[1:]
        if len(values) != count:
            names = (_VALUE_NAMES if self.fmt == "g2o" else _TORO_VALUE_NAMES)[kind]
            raise self.error(number, f"wrong token count: {tag} takes {count} values ({names}), found {len(values)}")
        id_columns = _ID_COLUMNS[kind]
        ids = [_index(token, self.path, number, "vertex id") for token in values[:id_columns]]
        if kind != "equiv":
            dim = _DIMENSION[kind]
            if self.dimension is None:
                self.dimension, self.dimension_line = dim, number
            elif dim != self.dimension:
                raise self.error(
                    number,
                    f"{tag} is a {dim}-D record but the file is {self.dimension}-D (from line "
                    f"{self.dimension_line}); mixed 2-D and 3-D graphs are not supported",
                )
        nums = _numbers(values[id_columns:], self.path, number, f"the {tag} record")
        rows.setdefault(kind, []).append((ids, nums, number, tag))

    # -- the assembly -----------------------------------------------------------------------------

    def _build(self, records: dict[str, _Records]) -> PoseGraph2D | PoseGraph3D:
        dimension = self.dimension
        assert dimension is not None

        def get(kind: str) -> _Records:
            return records[kind] if kind in records else _Records.empty(kind)

        vertices, edges = get("v2" if dimension == 2 else "v3"), get("e2" if dimension == 2 else "e3")
        landmarks, landmark_edges, equivalences = get("xy"), get("exy"), get("equiv")
        self._check_unique(vertices, landmarks)

        if dimension == 2:
            measurements, quaternions = edges.values[:, :3], None
            info = edges.values[:, 3:][:, _UPPER_INDEX[3] if self.fmt == "g2o" else _TORO_2D_INDEX]
        elif self.fmt == "g2o":
            self._check_quaternions(vertices, edges)
            measurements, quaternions = edges.values[:, :3], _unit_quaternions(edges.values[:, 3:7])[0]
            info = edges.values[:, 7:][:, _UPPER_INDEX[6]]
        else:
            measurements, quaternions = edges.values[:, :3], _rpy_to_wxyz(edges.values[:, 3:6])
            info = edges.values[:, 6:][:, _UPPER_INDEX[6]]
        landmark_info = landmark_edges.values[:, 2:][:, _UPPER_INDEX[2]]
        info, landmark_info, repaired = self._check_information((edges, info), (landmark_edges, landmark_info))

        chained = not len(vertices) and bool(len(edges)) and not len(landmark_edges)
        if chained:
            pose_ids, pose_values = self._chain_odometry(edges, measurements, quaternions)
            vertices = _Records(
                pose_ids[:, None], pose_values, np.zeros(len(pose_ids), np.int64), np.full(len(pose_ids), "")
            )
        table = _VertexTable(vertices, landmarks)
        edge_indices = self._resolve(table, edges, ("pose", "pose"))
        fixed = []
        for vid, number in self.fixed:
            if table.find(vid) is None:
                raise self.error(number, f"FIX references vertex {vid}, which the file does not define")
            fixed.append(vid)
        common: dict[str, Any] = dict(
            pose_ids=_readonly(vertices.ids[:, 0], np.int64),
            edges=_readonly(edge_indices, np.int64),
            fixed_ids=_readonly(fixed, np.int64),
            equivalences=_readonly(self._resolve(table, equivalences, ("pose", "pose")), np.int64),
            information=_readonly(info),
            path=self.path,
            initialized_from_odometry=chained,
            repaired_information=repaired,
        )
        if dimension == 2:
            return PoseGraph2D(
                poses=_readonly(vertices.values[:, :3].reshape(-1, 3)),
                measurements=_readonly(measurements.reshape(-1, 3)),
                landmark_ids=_readonly(landmarks.ids[:, 0], np.int64),
                landmarks=_readonly(landmarks.values.reshape(-1, 2)),
                landmark_edges=_readonly(self._resolve(table, landmark_edges, ("pose", "landmark")), np.int64),
                landmark_measurements=_readonly(landmark_edges.values[:, :2].reshape(-1, 2)),
                landmark_information=_readonly(landmark_info.reshape(-1, 2, 2)),
                **common,
            )
        if chained or self.fmt == "g2o":
            pose_quaternions = _unit_quaternions(vertices.values[:, 3:7])[0]
        else:
            pose_quaternions = _rpy_to_wxyz(vertices.values[:, 3:6])
        assert quaternions is not None
        return PoseGraph3D(
            translations=_readonly(vertices.values[:, :3].reshape(-1, 3)),
            quaternions=_readonly(pose_quaternions.reshape(-1, 4)),
            measurement_translations=_readonly(measurements.reshape(-1, 3)),
            measurement_quaternions=_readonly(quaternions.reshape(-1, 4)),
            **common,
        )

    def _check_unique(self, vertices: _Records, landmarks: _Records):
        ids = np.concatenate([vertices.ids[:, 0], landmarks.ids[:, 0]])
        lines = np.concatenate([vertices.lines, landmarks.lines])
        order = np.argsort(lines, kind="stable")
        ids, lines = ids[order], lines[order]
        unique, first = np.unique(ids, return_index=True)
        if unique.shape[0] == ids.shape[0]:
            return
        repeated = np.ones(ids.shape[0], bool)
        repeated[first] = False
        k = int(np.argmax(repeated))  # the earliest line that repeats an id
        original = lines[first[np.searchsorted(unique, ids[k])]]
        raise self.error(int(lines[k]), f"duplicate vertex id {ids[k]} (first defined on line {original})")

    def _check_quaternions(self, vertices: _Records, edges: _Records):
        """Every g2o quaternion of unit norm within :data:`QUATERNION_TOLERANCE`, else an error naming the
        first bad one in the file."""
        bad = []
        for records, is_vertex in ((vertices, True), (edges, False)):
            norms = _unit_quaternions(records.values[:, 3:7])[1]
            wrong = np.flatnonzero(~(np.abs(norms - 1.0) <= QUATERNION_TOLERANCE))
            if wrong.size:
                k = int(wrong[0])
                what = (
                    f"vertex {records.ids[k, 0]}"
                    if is_vertex
                    else f"the edge {records.ids[k, 0]} -> {records.ids[k, 1]}"
                )
                bad.append((int(records.lines[k]), what, float(norms[k])))
        if bad:
            number, what, norm = min(bad)
            raise self.error(
                number, f"the quaternion of {what} has norm {norm:.6g}; it must be 1 within {QUATERNION_TOLERANCE:g}"
            )

    def _check_information(self, *groups: tuple[_Records, np.ndarray]) -> list:
        """Every information matrix positive definite; else, for the first bad one in the file, an error with
        its line and smallest eigenvalue, or (``repair``) every bad one replaced by its nearest
        positive-definite matrix. Returns the groups' matrices and the number repaired."""
        try:
            for _, info in groups:
                if info.shape[0]:
                    sqrt_information(info)  # one batched Cholesky per kind
            return [info for _, info in groups] + [0]
        except ValueError:
            pass
        bad = []  # (line, tag, group, position) of every matrix that is not positive definite
        for g, (records, info) in enumerate(groups):
            for k in range(info.shape[0]):
                try:
                    sqrt_information(info[k])
                except ValueError:
                    bad.append((int(records.lines[k]), str(records.tags[k]), g, k))
        if not self.repair:
            number, tag, g, k = min(bad)
            info = groups[g][1][k]
            smallest = float(np.linalg.eigvalsh(0.5 * (info + info.T))[0])
            raise self.error(
                number,
                f"the information matrix of this {tag} is not positive definite (smallest "
                f"eigenvalue {smallest:.6g}); GTSAM and Ceres would take it silently, jaxnls "
                "refuses it (repair_information=True, or the command line's "
                "--repair-information, replaces it by the nearest positive-definite matrix)",
            )
        matrices = [info.copy() for _, info in groups]
        for _, _, g, k in bad:
            matrices[g][k] = nearest_positive_definite(matrices[g][k])
        return [*matrices, len(bad)]

    def _chain_odometry(
        self, edges: _Records, translations: np.ndarray, quaternions: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Vertices for a file of edges only, as GTSAM's examples start such files: the lowest id at the
        identity, every other pose composed along a breadth-first spanning tree of the edges
        (:math:`X_j = X_i Z_{ij}`, or :math:`X_i = X_j Z_{ij}^{-1}` against an edge's direction); the tree
        follows the file's edge order, so consecutive odometry edges chain as written. Returns the sorted
        ids and their values (2-D ``x y theta``; 3-D ``x y z qx qy qz qw``, as a g2o vertex record)."""
        three_d = quaternions is not None
        neighbours: dict[int, list] = {}
        for k, (a, b) in enumerate(edges.ids.tolist()):
            quaternion = quaternions[k] if three_d else None
            neighbours.setdefault(a, []).append((b, translations[k], quaternion, False))
            neighbours.setdefault(b, []).append((a, translations[k], quaternion, True))
        ids = sorted(neighbours)
        poses: dict[int, tuple[np.ndarray, Any]] = {
            ids[0]: (np.zeros(3), np.array([1.0, 0.0, 0.0, 0.0])) if three_d else (np.zeros(3), None)
        }
        queue = [ids[0]]
        for current in queue:
            for other, translation, quaternion, backwards in neighbours[current]:
                if other in poses:
                    continue
                if three_d:
                    step = _se3_inverse(translation, quaternion) if backwards else (translation, quaternion)
                    poses[other] = _se3_compose(*poses[current], *step)
                else:
                    step = _se2_inverse(translation) if backwards else translation
                    poses[other] = (_se2_compose(poses[current][0], step), None)
                queue.append(other)
        unreachable = [vid for vid in ids if vid not in poses]
        if unreachable:
            first = next(
                int(n) for (a, b), n in zip(edges.ids.tolist(), edges.lines, strict=True) if unreachable[0] in (a, b)
            )
            raise self.error(
                first,
                f"the file has no vertex records, and vertex {unreachable[0]} is not connected "
                f"to vertex {ids[0]} by edges, so its start cannot be chained from the odometry",
            )
        if three_d:
            values = [np.concatenate([poses[v][0], poses[v][1][[1, 2, 3, 0]]]) for v in ids]
        else:
            values = [poses[v][0] for v in ids]
        return np.array(ids, np.int64), np.array(values, np.float64)

    def _resolve(self, table: _VertexTable, records: _Records, wants: tuple[str, str]) -> np.ndarray:
        """``(R, 2)`` dense indices of the records' two vertices, which must be of the kinds ``wants``; else
        an error naming the first record (and, within it, the first vertex) that is not."""
        if not len(records):
            return np.zeros((0, 2), np.int64)
        found, kinds, indices = zip(*(table.lookup(records.ids[:, c]) for c in (0, 1)), strict=True)
        ok = [f & (k == (1 if want == "landmark" else 0)) for f, k, want in zip(found, kinds, wants, strict=True)]
        bad = ~(ok[0] & ok[1])
        if np.any(bad):
            k = int(np.argmax(bad))
            c = 0 if not ok[0][k] else 1
            vid, number = int(records.ids[k, c]), int(records.lines[k])
            if not found[c][k]:
                raise self.error(number, f"the record references vertex {vid}, which the file does not define")
            kind, line = table.find(vid) or ("?", 0)
            raise self.error(number, f"vertex {vid} (line {line}) is a {kind}, but this edge needs a {wants[c]} there")
        return np.stack(indices, axis=1)


class _VertexTable:
    """The file's vertices by id: whether each is a pose or a landmark, its dense index and its line."""

    def __init__(self, poses: _Records, landmarks: _Records):
        ids = np.concatenate([poses.ids[:, 0], landmarks.ids[:, 0]])
        order = np.argsort(ids)
        self.ids = ids[order]
        self.kinds = np.concatenate([np.zeros(len(poses), np.int64), np.ones(len(landmarks), np.int64)])[order]
        self.indices = np.concatenate([np.arange(len(poses)), np.arange(len(landmarks))])[order]
        self.lines = np.concatenate([poses.lines, landmarks.lines])[order]

    def _positions(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(found, where in the table) for each of ``ids``; the table is not empty."""
        position = np.minimum(np.searchsorted(self.ids, ids), self.ids.shape[0] - 1)
        return self.ids[position] == ids, position

    def lookup(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(found, kind 0 pose / 1 landmark, dense index) for each of ``ids``."""
        if not self.ids.shape[0]:
            return np.zeros(ids.shape, bool), np.zeros(ids.shape, np.int64), np.zeros(ids.shape, np.int64)
        found, position = self._positions(ids)
        return found, self.kinds[position], self.indices[position]

    def find(self, vid: int) -> tuple[str, int] | None:
        """(``"pose"`` or ``"landmark"``, line) of vertex ``vid``, or None."""
        if not self.ids.shape[0]:
            return None
        found, position = self._positions(np.array([vid]))
        if not found[0]:
            return None
        return ("pose", "landmark")[int(self.kinds[position[0]])], int(self.lines[position[0]])


def parse_g2o(
    content: bytes | str, path: str = "<string>", *, repair_information: bool = False
) -> PoseGraph2D | PoseGraph3D:
    """:func:`read_g2o` on a file's contents (``path`` is only used in error messages).

    Args:
        content: the file's text or bytes (plain ASCII).
        path: the name error messages give the file.
        repair_information: replace information matrices that are not positive definite by the nearest
            positive-definite ones (:func:`nearest_positive_definite`; counted in ``repaired_information``)
            instead of refusing the file.

    Returns:
        A :class:`PoseGraph2D`, or a :class:`PoseGraph3D` for ``*_SE3:QUAT`` records.

    Raises:
        GraphFormatError: the content does not follow the format (the message names the line).
    """
    return _GraphParser(path, _lines(content, path), "g2o", repair_information).parse()


def parse_toro(
    content: bytes | str, path: str = "<string>", *, repair_information: bool = False
) -> PoseGraph2D | PoseGraph3D:
    """:func:`read_toro` on a file's contents (``path`` is only used in error messages).

    Args:
        content: the file's text or bytes (plain ASCII).
        path: the name error messages give the file.
        repair_information: replace information matrices that are not positive definite by the nearest
            positive-definite ones (counted in ``repaired_information``) instead of refusing the file.

    Returns:
        A :class:`PoseGraph2D` (``VERTEX2``/``EDGE2``) or :class:`PoseGraph3D` (``VERTEX3``/``EDGE3``).

    Raises:
        GraphFormatError: the content does not follow the format (the message names the line).
    """
    return _GraphParser(path, _lines(content, path), "toro", repair_information).parse()


def read_g2o(path: str | os.PathLike, *, repair_information: bool = False) -> PoseGraph2D | PoseGraph3D:
    """Read a g2o pose graph: a :class:`PoseGraph2D` or, for ``*_SE3:QUAT`` records, a :class:`PoseGraph3D`.

    Records (one per line; blank lines and lines starting with ``#`` are skipped)::

        VERTEX_SE2 id x y theta
        VERTEX_XY id x y
        EDGE_SE2 i j dx dy dtheta I11 I12 I13 I22 I23 I33
        EDGE_SE2_XY i j dx dy I11 I12 I22
        VERTEX_SE3:QUAT id x y z qx qy qz qw
        EDGE_SE3:QUAT i j x y z qx qy qz qw I11 I12 ... I16 I22 ... I66   (21 entries, t before R)
        FIX id [id ...]

    ``VERTEX2``/``EDGE2`` are accepted as aliases of ``VERTEX_SE2``/``EDGE_SE2`` with g2o's
    information order, as GTSAM's ``readG2o`` does. Records may come in any order (an edge may precede
    its vertices). Other tags are rejected. A file of pose edges only (no vertex records at all, e.g.
    ``manhattan.g2o``) starts from the chained odometry: the lowest id at the identity, the others composed
    along a breadth-first spanning tree of the edges in file order (``initialized_from_odometry`` is then
    True); otherwise every vertex an edge uses must be defined.

    Args:
        path: the file.
        repair_information: replace information matrices that are not positive definite by the nearest
            positive-definite ones (:func:`nearest_positive_definite`; counted in ``repaired_information``)
            instead of refusing the file.

    Returns:
        A :class:`PoseGraph2D`, or a :class:`PoseGraph3D` for ``*_SE3:QUAT`` records.

    Raises:
        GraphFormatError: the file does not follow the format (the message names the line).
        OSError: the file cannot be read.
    """
    content, path = _read(path)
    return parse_g2o(content, path, repair_information=repair_information)


def read_toro(path: str | os.PathLike, *, repair_information: bool = False) -> PoseGraph2D | PoseGraph3D:
    """Read a TORO pose graph (``.graph``): a :class:`PoseGraph2D` or :class:`PoseGraph3D`.

    Records::

        VERTEX2 id x y theta
        EDGE2 i j dx dy dtheta I11 I12 I22 I33 I13 I23     (TORO's information order)
        VERTEX3 id x y z roll pitch yaw
        EDGE3 i j x y z roll pitch yaw I11 I12 ... I66     (21 entries, upper triangle, x y z r p y)
        EQUIV i j

    A file of edges only (no vertex records at all) starts from the chained odometry, as GTSAM's
    examples start such files (``initialized_from_odometry`` says so); otherwise every vertex an edge uses
    must be defined.

    Args:
        path: the file.
        repair_information: replace information matrices that are not positive definite by the nearest
            positive-definite ones (counted in ``repaired_information``) instead of refusing the file.

    Returns:
        A :class:`PoseGraph2D` (``VERTEX2``/``EDGE2``) or :class:`PoseGraph3D` (``VERTEX3``/``EDGE3``).

    Raises:
        GraphFormatError: the file does not follow the format (the message names the line).
        OSError: the file cannot be read.
    """
    content, path = _read(path)
    return parse_toro(content, path, repair_information=repair_information)


def read_pose_graph(path: str | os.PathLike, *, repair_information: bool = False) -> PoseGraph2D | PoseGraph3D:
    """Read a g2o or TORO file, whichever :func:`detect_format` says it is.

    Args:
        path: the file.
        repair_information: replace information matrices that are not positive definite by the nearest
            positive-definite ones (counted in ``repaired_information``) instead of refusing the file.

    Returns:
        A :class:`PoseGraph2D` or :class:`PoseGraph3D`.

    Raises:
        GraphFormatError: the file is not a pose graph (a BAL or NIST file, or no format fits) or does not
            follow its format.
        OSError: the file cannot be read.
    """
    fmt = detect_format(path)
    if fmt == "g2o":
        return read_g2o(path, repair_information=repair_information)
    if fmt == "toro":
        return read_toro(path, repair_information=repair_information)
    raise GraphFormatError(os.fspath(path), 1, f"this is a {fmt} file, not a pose graph")


_G2O_ONLY = set(_G2O_TAGS) - set(_TORO_TAGS) | {"FIX"}
_TORO_ONLY = set(_TORO_TAGS) - set(_G2O_TAGS)


def detect_format(path: str | os.PathLike) -> Literal["g2o", "toro", "bal", "nist"]:
    """Which reader a file needs: ``"g2o"``, ``"toro"``, ``"bal"`` or ``"nist"`` (StRD ``.dat``).

    Decided by content: a NIST StRD header (``Dataset Name:``), a BAL header (three whole numbers on the
    first non-blank line), or the record tags. Files whose only tags are ``VERTEX2``/``EDGE2`` -- valid
    in both pose-graph formats, with different information orders -- are g2o when the name ends in
    ``.g2o`` and TORO otherwise.

    Args:
        path: the file.

    Returns:
        ``"g2o"``, ``"toro"``, ``"bal"`` or ``"nist"``.

    Raises:
        GraphFormatError: none of the formats fits (or the file mixes g2o-only and TORO-only tags).
        OSError: the file cannot be read.
    """
    content, path = _read(path)
    text = without_byte_order_mark(content).decode("ascii", errors="replace")
    lines = text.split("\n")
    if re.search(r"^\s*Dataset\s+Name:", "\n".join(lines[:10]), re.MULTILINE):
        return "nist"
    first = next(((n, line.split()) for n, line in enumerate(lines, start=1) if line.strip()), None)
    if first is None:
        raise GraphFormatError(path, 1, "the file is empty")
    _, tokens = first
    if len(tokens) >= 3 and all(re.fullmatch(r"[+-]?\d+", t) for t in tokens[:3]):
        return "bal"  # (a negative count is then reported by the BAL reader, naming it)
    first_line: dict[str, int] = {}  # each tag's first line
    for n, line in enumerate(lines, start=1):
        head = line.split(None, 1)
        if head and head[0] not in first_line and not head[0].startswith("#"):
            first_line[head[0]] = n
    unknown = [tag for tag in first_line if tag not in _G2O_TAGS and tag not in _TORO_TAGS and tag != "FIX"]
    if unknown:
        tag = min(unknown, key=first_line.__getitem__)
        shown = tag if len(tag) <= 40 else tag[:40] + "..."
        raise GraphFormatError(path, first_line[tag], f"cannot tell the format: unknown tag {shown!r}")
    g2o_line = min((first_line[tag] for tag in first_line if tag in _G2O_ONLY), default=None)
    toro_line = min((first_line[tag] for tag in first_line if tag in _TORO_ONLY), default=None)
    if g2o_line and toro_line:
        raise GraphFormatError(
            path,
            max(g2o_line, toro_line),
            f"the file mixes g2o records (line {g2o_line}) and TORO records (line {toro_line})",
        )
    if g2o_line:
        return "g2o"
    if toro_line:
        return "toro"
    return "g2o" if path.lower().endswith(".g2o") else "toro"


# --------------------------------------------------------------------------------------------------
# Writers


def _f(x) -> str:
    x = float(x)
    if not math.isfinite(x):
        raise ValueError(f"cannot write the non-finite number {x}")
    return repr(x)


def _fs(values) -> str:
    return " ".join(_f(v) for v in np.asarray(values, dtype=np.float64).ravel())


def _upper_text(m: np.ndarray) -> str:
    return _fs(np.asarray(m)[np.triu_indices(m.shape[-1])])


def _xyzw(q_wxyz) -> str:
    q = np.asarray(q_wxyz, dtype=np.float64)
    return _fs([q[1], q[2], q[3], q[0]])


def _write(path: str | os.PathLike, lines: list[str]):
    write_atomically(path, "\n".join(lines) + ("\n" if lines else ""))


def write_g2o(path: str | os.PathLike, graph: PoseGraph2D | PoseGraph3D) -> None:
    """Write ``graph`` as a g2o file (``VERTEX_SE2``/``EDGE_SE2``/... or ``*_SE3:QUAT``, then ``FIX``).

    Args:
        path: the file, replaced atomically (:func:`write_atomically`).
        graph: the pose graph; its file ids are written, its dense indices mapped back to them.

    Raises:
        ValueError: the graph has TORO ``EQUIV`` constraints (g2o has no such record) or non-finite values.
    """
    if len(graph.equivalences):
        raise ValueError("g2o has no record for TORO's EQUIV constraints; drop graph.equivalences first")
    lines = []
    ids = graph.pose_ids
    if isinstance(graph, PoseGraph2D):
        for vid, pose in zip(ids, graph.poses):
            lines.append(f"VERTEX_SE2 {int(vid)} {_fs(pose)}")
        for vid, point in zip(graph.landmark_ids, graph.landmarks):
            lines.append(f"VERTEX_XY {int(vid)} {_fs(point)}")
        for (i, j), z, info in zip(graph.edges, graph.measurements, graph.information):
            lines.append(f"EDGE_SE2 {int(ids[i])} {int(ids[j])} {_fs(z)} {_upper_text(info)}")
        for (i, k), z, info in zip(graph.landmark_edges, graph.landmark_measurements, graph.landmark_information):
            lines.append(f"EDGE_SE2_XY {int(ids[i])} {int(graph.landmark_ids[k])} {_fs(z)} {_upper_text(info)}")
    else:
        for vid, t, q in zip(ids, graph.translations, graph.quaternions):
            lines.append(f"VERTEX_SE3:QUAT {int(vid)} {_fs(t)} {_xyzw(q)}")
        for (i, j), t, q, info in zip(
            graph.edges, graph.measurement_translations, graph.measurement_quaternions, graph.information
        ):
            lines.append(f"EDGE_SE3:QUAT {int(ids[i])} {int(ids[j])} {_fs(t)} {_xyzw(q)} {_upper_text(info)}")
    for vid in graph.fixed_ids:
        lines.append(f"FIX {int(vid)}")
    _write(path, lines)


def write_toro(path: str | os.PathLike, graph: PoseGraph2D | PoseGraph3D) -> None:
    """Write ``graph`` as a TORO file (``VERTEX2``/``EDGE2`` or ``VERTEX3``/``EDGE3``, then ``EQUIV``).

    3-D rotations are written as roll, pitch, yaw, so reading the file back reproduces the rotations
    to rounding (~1e-16), not bit for bit, and the quaternions possibly with the opposite sign.

    Args:
        path: the file, replaced atomically (:func:`write_atomically`).
        graph: the pose graph; its file ids are written, its dense indices mapped back to them.

    Raises:
        ValueError: the graph has landmarks or ``FIX`` anchors (TORO has no record for them) or
            non-finite values.
    """
    if len(graph.fixed_ids):
        raise ValueError("TORO has no record for g2o's FIX anchors; drop graph.fixed_ids first")
    lines = []
    ids = graph.pose_ids
    if isinstance(graph, PoseGraph2D):
        if len(graph.landmark_ids) or len(graph.landmark_edges):
            raise ValueError("TORO has no records for landmarks; write this graph with write_g2o")
        for vid, pose in zip(ids, graph.poses):
            lines.append(f"VERTEX2 {int(vid)} {_fs(pose)}")
        for (i, j), z, m in zip(graph.edges, graph.measurements, graph.information):
            info = _fs([m[0, 0], m[0, 1], m[1, 1], m[2, 2], m[0, 2], m[1, 2]])
            lines.append(f"EDGE2 {int(ids[i])} {int(ids[j])} {_fs(z)} {info}")
    else:
        for vid, t, q in zip(ids, graph.translations, graph.quaternions):
            lines.append(f"VERTEX3 {int(vid)} {_fs(t)} {_fs(_wxyz_to_rpy(q))}")
        for (i, j), t, q, info in zip(
            graph.edges, graph.measurement_translations, graph.measurement_quaternions, graph.information
        ):
            lines.append(f"EDGE3 {int(ids[i])} {int(ids[j])} {_fs(t)} {_fs(_wxyz_to_rpy(q))} {_upper_text(info)}")
    for i, j in graph.equivalences:
        lines.append(f"EQUIV {int(ids[i])} {int(ids[j])}")
    _write(path, lines)


# --------------------------------------------------------------------------------------------------
# BAL


def _bal_bulk(text: bytes) -> BALProblem | None:
    """The problem in bulk when every token is well formed and the counts and indices agree with the header
    (the usual case), else None: the token-by-token reading then finds the first fault and its line."""
    bulk = _bulk_numbers(text)
    if bulk is None or bulk.values.shape[0] < 3:
        return None
    values = bulk.values
    num_cameras, num_points, num_obs = (int(v) for v in values[:3])
    obs_end = 3 + 4 * num_obs
    cam_end = obs_end + 9 * num_cameras
    if values.shape[0] != cam_end + 3 * num_points:
        return None
    ids = np.zeros(values.shape[0], bool)
    ids[:3] = ids[3:obs_end:4] = ids[4:obs_end:4] = True
    if not bulk.are_ids(ids):
        return None
    camera_index, point_index = values[3:obs_end:4].astype(np.int64), values[4:obs_end:4].astype(np.int64)
    if not (np.all(camera_index < num_cameras) and np.all(point_index < num_points)):
        return None
    return BALProblem(
        cameras=_readonly(values[obs_end:cam_end].reshape(num_cameras, 9)),
        points=_readonly(values[cam_end:].reshape(num_points, 3)),
        camera_index=_readonly(camera_index, np.int64),
        point_index=_readonly(point_index, np.int64),
        observations=_readonly(np.stack([values[5:obs_end:4], values[6:obs_end:4]], axis=1)),
    )


def parse_bal(content: bytes | str, path: str = "<string>") -> BALProblem:
    """:func:`read_bal` on a file's contents (``path`` is only used in error messages).

    Args:
        content: the file's text or bytes (plain ASCII).
        path: the name error messages give the file.

    Returns:
        The :class:`BALProblem`.

    Raises:
        GraphFormatError: the content does not follow the format (the message names the line).
    """
    lines = _lines(content, path)
    bulk = _bal_bulk("\n".join(lines).encode("ascii"))
    if bulk is not None:
        return dataclasses.replace(bulk, path=path)
    tokens: list[str] = []
    where: list[int] = []
    for number, text in enumerate(lines, start=1):
        parts = text.split()
        tokens.extend(parts)
        where.extend([number] * len(parts))
    if not tokens:
        raise GraphFormatError(path, 1, "the file is empty")
    last_line = len(lines)

    def need(count: int, what: str):
        if len(tokens) < count:
            found_line = where[-1] if where else 1
            raise GraphFormatError(
                path,
                max(found_line, last_line),
                f"the file ends after {len(tokens)} numbers, inside the {what}; the header "
                f"(line {where[0]}) announces {num_cameras} cameras, {num_points} points and "
                f"{num_obs} observations, which take {expected} numbers",
            )

    if len(tokens) < 3:
        raise GraphFormatError(
            path,
            where[-1],
            f"truncated header: expected 'num_cameras num_points num_observations', found {len(tokens)} number(s)",
        )
    num_cameras, num_points, num_obs = (
        _index(tokens[k], path, where[k], name)
        for k, name in enumerate(("the number of cameras", "the number of points", "the number of observations"))
    )
    expected = 3 + 4 * num_obs + 9 * num_cameras + 3 * num_points
    # Read in file order, so that the first bad token is the one reported; the counts are checked
    # against what is there before anything of the announced size is allocated.
    obs_end = 3 + 4 * num_obs
    need(obs_end, "observations")
    camera_index = np.empty(num_obs, dtype=np.int64)
    point_index = np.empty(num_obs, dtype=np.int64)
    observations = np.empty((num_obs, 2))
    for k in range(num_obs):
        base = 3 + 4 * k
        line = where[base]
        c = _index(tokens[base], path, line, f"camera index of observation {k}")
        p = _index(tokens[base + 1], path, where[base + 1], f"point index of observation {k}")
        if c >= num_cameras:
            raise GraphFormatError(
                path,
                line,
                f"observation {k}: camera index {c} out of range (the header, line "
                f"{where[0]}, announces {num_cameras} cameras)",
            )
        if p >= num_points:
            raise GraphFormatError(
                path,
                where[base + 1],
                f"observation {k}: point index {p} out of range (the "
                f"header, line {where[0]}, announces {num_points} points)",
            )
        camera_index[k], point_index[k] = c, p
        observations[k, 0] = _number(tokens[base + 2], path, where[base + 2], f"observation {k}")
        observations[k, 1] = _number(tokens[base + 3], path, where[base + 3], f"observation {k}")
    cam_end = obs_end + 9 * num_cameras
    need(cam_end, "camera parameters")
    cameras = np.empty((num_cameras, 9))
    for k in range(num_cameras * 9):
        t = obs_end + k
        cameras.flat[k] = _number(tokens[t], path, where[t], f"the parameters of camera {k // 9}")
    need(expected, "point coordinates")
    points = np.empty((num_points, 3))
    for k in range(num_points * 3):
        t = cam_end + k
        points.flat[k] = _number(tokens[t], path, where[t], f"the coordinates of point {k // 3}")
    if len(tokens) > expected:
        raise GraphFormatError(
            path,
            where[expected],
            f"unexpected token {tokens[expected][:40]!r} after the last "
            f"point: the header (line {where[0]}) announces {num_cameras} cameras, {num_points} "
            f"points and {num_obs} observations, which take {expected} numbers, but the file "
            f"has {len(tokens)}",
        )
    return BALProblem(
        cameras=_readonly(cameras),
        points=_readonly(points),
        camera_index=_readonly(camera_index, np.int64),
        point_index=_readonly(point_index, np.int64),
        observations=_readonly(observations),
        path=path,
    )


def read_bal(path: str | os.PathLike) -> BALProblem:
    """Read a Bundle Adjustment in the Large file.

    Layout, as whitespace-separated numbers (line breaks are not significant)::

        num_cameras num_points num_observations
        camera_index point_index x y          (num_observations times)
        rx ry rz tx ty tz f k1 k2             (num_cameras times)
        X Y Z                                 (num_points times)

    Args:
        path: the file.

    Returns:
        The :class:`BALProblem`.

    Raises:
        GraphFormatError: the file does not follow the format (the message names the line of the
            offending number).
        OSError: the file cannot be read.
    """
    content, path = _read(path)
    return parse_bal(content, path)


def write_bal(path: str | os.PathLike, problem: BALProblem) -> None:
    """Write ``problem`` as a BAL file (one observation per line, one number per line for the parameters,
    as the BAL distribution does).

    Args:
        path: the file, replaced atomically (:func:`write_atomically`).
        problem: the problem to write.

    Raises:
        ValueError: non-finite values.
    """
    lines = [f"{problem.num_cameras} {problem.num_points} {problem.num_observations}"]
    for c, p, xy in zip(problem.camera_index, problem.point_index, problem.observations):
        lines.append(f"{int(c)} {int(p)} {_fs(xy)}")
    lines.extend(_f(v) for v in np.asarray(problem.cameras, dtype=np.float64).ravel())
    lines.extend(_f(v) for v in np.asarray(problem.points, dtype=np.float64).ravel())
    _write(path, lines)
