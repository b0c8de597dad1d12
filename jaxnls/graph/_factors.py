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

import jax.numpy as jnp
import numpy as np

from ..manifolds import is_group, local


def between(a, b, measured):
    r"""Relative-pose error :math:`\operatorname{Log}(Z^{-1} A^{-1} B)` (``(b - a) - z`` for arrays)."""
    if is_group(a):
        return local(measured, a.inverse() @ b)
    return (b - a) - measured


def prior(x, measured):
    r"""Prior error :math:`\operatorname{Log}(Z^{-1} X)` (``x - z`` for arrays)."""
    if is_group(x):
        return local(measured, x)
    return x - measured


#: GTSAM Pose3 tangent (ω, v) -> jaxlie SE3 tangent (v, ω)
_POSE3_ORDER = np.array([3, 4, 5, 0, 1, 2])


def from_gtsam_pose3(matrix):
    """Reorder a 6×6 (or stacked ``(..., 6, 6)``) GTSAM Pose3 covariance or information matrix from
    GTSAM's tangent order (ω, v) to jaxlie's (v, ω)."""
    matrix = jnp.asarray(matrix)
    return matrix[..., _POSE3_ORDER, :][..., :, _POSE3_ORDER]
