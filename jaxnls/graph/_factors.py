r"""Residual functions the library provides for pose graphs (GTSAM's BetweenFactor and PriorFactor).

With the right retraction :math:`X \oplus δ = X\operatorname{Exp}(δ)` and :math:`\operatorname{Log}` the
group logarithm:

- :func:`between`: :math:`r = \operatorname{Log}\big(Z^{-1}\,(X_i^{-1} X_j)\big)`, GTSAM's
  ``BetweenFactor<Pose2/Pose3>::unwhitenedError`` (its Local is Logmap with these wheels);
- :func:`prior`: :math:`r = \operatorname{Log}(Z^{-1} X)`, GTSAM's ``PriorFactor``.

For Euclidean variables they are :math:`(x_j - x_i) - z` and :math:`x - z`.

Tangent orders differ for SE3: jaxlie's is :math:`(v, ω)`, GTSAM's Pose3 :math:`(ω, v)`. A GTSAM Pose3
covariance / information matrix is reordered by :func:`from_gtsam_pose3` (Pose2's order (x, y, θ) is
the same in both).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from ..manifolds import is_group, local

if TYPE_CHECKING:
    from jaxlie import MatrixLieGroup

    from ..manifolds._space import _Variable


def between(a: _Variable, b: _Variable, measured: _Variable) -> Float[Array, " d"]:
    r"""Relative-pose error :math:`\operatorname{Log}(Z^{-1} A^{-1} B)` (``(b - a) - z`` for arrays).

    Args:
        a: the first variable :math:`A`, one jaxlie group element (unstacked) or a ``(d,)`` array.
        b: the second variable :math:`B`, of the same type as ``a``.
        measured: the measured relative pose :math:`Z \approx A^{-1}B` (``b - a`` for arrays), same type.

    Returns:
        The ``(d,)`` residual in the tangent space of the group (d = 3 for SE2, 6 for SE3, jaxlie's order).
    """
    if is_group(a):
        return local(measured, a.inverse() @ b)
    return (b - a) - measured  # pyright: ignore[reportOperatorIssue]  # arrays here (pyright keeps the group constraint)


def between_linearization(
    a: _Variable, b: _Variable, measured: _Variable
) -> tuple[Float[Array, " d"], Float[Array, "d 2d"]]:
    r""":func:`between`'s residual and its Jacobian with respect to the right perturbations
    :math:`A\operatorname{Exp}(δ_a)`, :math:`B\operatorname{Exp}(δ_b)` of two jaxlie group elements, in closed form.

    With :math:`E = Z^{-1}A^{-1}B` and :math:`r = \operatorname{Log}(E)`: perturbing :math:`B` gives
    :math:`E\operatorname{Exp}(δ_b)`, so :math:`\partial r/\partial δ_b = J_r^{-1}(r)` (jaxlie's ``jlog``);
    perturbing :math:`A` puts :math:`\operatorname{Exp}(-δ_a)` inside, which moves to the right as
    :math:`E\operatorname{Exp}(-\operatorname{Ad}(B^{-1}A)\,δ_a)`, so
    :math:`\partial r/\partial δ_a = -J_r^{-1}(r)\operatorname{Ad}(B^{-1}A)` (the identities of GTSAM's
    ``BetweenFactor``). The graph solver linearises :func:`between` terms on groups with it: for sphere2500's 4,949
    SE(3) edges 5 ms and 4.5 MB of temporaries where ``jacfwd`` through the group's Exp and Log takes 60 ms and
    40 MB (benchmarks/README.md (ai)).

    Args:
        a: :math:`A`, one jaxlie group element (unstacked).
        b: :math:`B`, of the same group.
        measured: :math:`Z`, of the same group.

    Returns:
        ``(r, J)``: the ``(d,)`` residual of :func:`between` and the ``(d, 2d)`` Jacobian
        :math:`[\partial r/\partial δ_a,\ \partial r/\partial δ_b]`.
    """
    if not (is_group(a) and is_group(b) and is_group(measured)):
        raise TypeError("between_linearization: a, b and measured must be jaxlie group elements")
    stacked = [x.get_batch_axes() for x in (a, b, measured) if x.get_batch_axes()]
    if stacked:
        raise ValueError(
            f"between_linearization: a, b and measured must be single group elements (vmap it over a stack), got "
            f"batch shape {stacked[0]}"
        )
    error = measured.inverse() @ (a.inverse() @ b)
    residual = error.log()
    jlog = _right_jacobian_inverse(error, residual)
    return residual, jnp.concatenate([-jlog @ (b.inverse() @ a).adjoint(), jlog], axis=-1)


def _right_jacobian_inverse(error: MatrixLieGroup, tangent: Float[Array, " d"]) -> Float[Array, "d d"]:
    r""":math:`J_r^{-1}` at ``tangent`` = Log(``error``) (jaxlie's ``jlog``), with derivatives that stay finite at
    the identity.

    jaxlie's SE(3) formula takes the norm of the rotation vector and picks its small-angle value with ``jnp.where``,
    whose other branch still carries the norm's NaN derivative at zero into a gradient — which an unrolled adjoint
    meets wherever an edge fits exactly (odometry edges of a chained start). Below jaxlie's own small-angle
    threshold (squared angle under machine epsilon) this uses :math:`I + \tfrac12\operatorname{ad}_ξ`, exact there
    in value and first derivative, and hands the full formula a point away from zero. SO(2), SE(2) and SO(3)
    differentiate at the identity as they are."""
    import jaxlie

    if not isinstance(error, jaxlie.SE3):
        return error.jlog()
    v, w = tangent[:3], tangent[3:]  # (jaxlie's SE(3) tangent order)
    small = jnp.sum(w**2) < jnp.finfo(tangent.dtype).eps
    away = jaxlie.SE3.exp(jnp.asarray([0.0, 0.0, 0.0, 0.5, 0.0, 0.0], tangent.dtype)).wxyz_xyz
    full = jaxlie.SE3(jnp.where(small, away, error.wxyz_xyz)).jlog()
    ad = jnp.block([[_skew(w), _skew(v)], [jnp.zeros((3, 3), tangent.dtype), _skew(w)]])
    return jnp.where(small, jnp.eye(6, dtype=tangent.dtype) + 0.5 * ad, full)


def _skew(x: Float[Array, " 3"]) -> Float[Array, "3 3"]:
    zero = jnp.zeros((), x.dtype)
    return jnp.stack([jnp.stack([zero, -x[2], x[1]]), jnp.stack([x[2], zero, -x[0]]), jnp.stack([-x[1], x[0], zero])])


def closed_form_linearization(residual_fn: Callable) -> Callable | None:
    """The closed-form ``(r, J)`` of a residual function of this module on group variables (:func:`between`), or
    None: the graph solver differentiates every other residual function automatically."""
    return between_linearization if residual_fn is between else None


def prior(x: _Variable, measured: _Variable) -> Float[Array, " d"]:
    r"""Prior error :math:`\operatorname{Log}(Z^{-1} X)` (``x - z`` for arrays).

    Args:
        x: the variable :math:`X`, one jaxlie group element (unstacked) or a ``(d,)`` array.
        measured: the prior value :math:`Z`, same type as ``x``.

    Returns:
        The ``(d,)`` residual in the tangent space of the group (jaxlie's order).
    """
    if is_group(x):
        return local(measured, x)
    return x - measured


#: GTSAM Pose3 tangent (ω, v) -> jaxlie SE3 tangent (v, ω)
_POSE3_ORDER = np.array([3, 4, 5, 0, 1, 2])


def from_gtsam_pose3(matrix: Float[ArrayLike, "*batch 6 6"]) -> Float[Array, "*batch 6 6"]:
    """Reorder a 6×6 (or stacked ``(..., 6, 6)``) GTSAM Pose3 covariance or information matrix from
    GTSAM's tangent order (ω, v) to jaxlie's (v, ω).

    Args:
        matrix: ``(..., 6, 6)`` in GTSAM's order: rows and columns rotation first.

    Returns:
        The ``(..., 6, 6)`` matrix with rows and columns permuted to translation first.
    """
    matrix = jnp.asarray(matrix)
    return matrix[..., _POSE3_ORDER, :][..., :, _POSE3_ORDER]
