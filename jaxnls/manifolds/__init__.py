r"""Lie-group parameters (jaxlie's ``SO2``, ``SE2``, ``SO3``, ``SE3``) and the retract/tangent protocol.

A leaf of ``params`` in :func:`jaxnls.solve` (or a variable kind of a :class:`jaxnls.graph.FactorGraph`)
may be a jaxlie group, possibly stacked (``SE3`` with ``wxyz_xyz`` of shape ``(N, 7)`` holds N poses).
The solver then works in the tangent space: for a group :math:`G` with tangent dimension :math:`d`
(SO2: 1, SE2: 3, SO3: 3, SE3: 6 — no redundant quaternion or unit-complex columns) a step
:math:`δ \in \mathbb R^d` is applied by the **right** retraction

.. math::  X \oplus δ = X \cdot \operatorname{Exp}(δ)

(``group @ type(group).exp(δ)``, a perturbation in the body frame — GTSAM's and jaxlie's ``rplus``
convention), and the Jacobian is taken with respect to δ at δ = 0:
:math:`J = \partial r(X \oplus δ) / \partial δ\,|_{δ=0}`. Euclidean leaves keep :math:`x \oplus δ = x + δ`.

Tangent order is jaxlie's: SE2 :math:`(x, y, θ)` (as GTSAM's Pose2), SE3 :math:`(v, ω)` — translation
first, unlike GTSAM's Pose3 :math:`(ω, v)`; :func:`jaxnls.graph.from_gtsam_pose3` maps a GTSAM covariance or
information matrix.
"""

from ._space import (
    EUCLIDEAN,
    ProductSpace,
    has_groups,
    is_group,
    local,
    parameter_array,
    retract,
    tangent_magnitude,
    tangent_size,
)

__all__ = [
    "EUCLIDEAN",
    "ProductSpace",
    "has_groups",
    "is_group",
    "local",
    "parameter_array",
    "retract",
    "tangent_magnitude",
    "tangent_size",
]
