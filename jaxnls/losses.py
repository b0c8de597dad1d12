r"""Robust losses: a cost term with residual block :math:`r` and squared norm :math:`s = \|r\|^2`
contributes :math:`\tfrac12\rho(s)` instead of :math:`\tfrac12 s` (Ceres' convention: every loss has
:math:`\rho(0) = 0`, :math:`\rho'(0) = 1`, so small residuals are treated as in plain least squares and
large ones are down-weighted). The scale :math:`a` is where the down-weighting sets in; it is an array
leaf, so it can be learned through the solve's adjoints.

=========  =====================================================================================
Huber      :math:`\rho(s) = s` for :math:`s \le a^2`, else :math:`2a\sqrt s - a^2`
SoftL1     :math:`\rho(s) = 2a^2\big(\sqrt{1 + s/a^2} - 1\big)`
Cauchy     :math:`\rho(s) = a^2 \log(1 + s/a^2)`
Arctan     :math:`\rho(s) = a \arctan(s / a)`
Tukey      :math:`\rho(s) = \tfrac{a^2}{3}\big(1 - (1 - s/a^2)^3\big)` for :math:`s \le a^2`, else :math:`a^2/3`
=========  =====================================================================================

A Gauss-Newton solver needs a residual and Jacobian whose normal equations approximate the Hessian
of :math:`\tfrac12\rho(\|r\|^2)`. Triggs' correction (Triggs et al., *Bundle adjustment — a modern
synthesis*, 2000; as in Ceres' ``Corrector``) rescales them:

.. math:: \tilde r = \frac{\sqrt{\rho'}}{1 - \alpha}\, r, \qquad
          \tilde J = \sqrt{\rho'}\Big(I - \frac{\alpha}{s}\, r r^\top\Big) J, \qquad
          \alpha = 1 - \sqrt{1 + 2 s \rho''/\rho'},

so that :math:`\tilde J^\top \tilde r = \rho' J^\top r` (the exact gradient) and
:math:`\tilde J^\top \tilde J = \rho' J^\top J + 2\rho'' J^\top r r^\top J` (the Hessian without the
residuals' second derivatives). Where :math:`\rho'' \le 0` — every loss above, outside its quadratic
zone — the square root could go imaginary, and Ceres (and this module) uses :math:`\alpha = 0`, i.e. the
reweighting :math:`\sqrt{\rho'}`. The *cost* of a corrected term is not :math:`\tfrac12\|\tilde r\|^2`;
solvers use :meth:`AbstractRobustLoss.rho` for it, and :meth:`AbstractRobustLoss.whiten`
(:math:`\sqrt{\rho(s)/s}\; r`, whose half squared norm is exactly :math:`\tfrac12\rho(s)`) where a residual
with the right cost is needed, e.g. for the adjoints.
"""

from __future__ import annotations

import abc

import equinox as eqx
import jax
import jax.core
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from ._numerics import safe_sqrt


class AbstractRobustLoss(eqx.Module):
    """A robust loss :math:`\\rho` with scale :math:`a`.

    Args:
        scale: :math:`a`, positive and finite (default 1); stored as a float array leaf, so the adjoints
            differentiate it.
    """

    scale: Float[Array, ""]

    def __init__(self, scale: ArrayLike = 1.0):
        if not isinstance(scale, jax.core.Tracer):
            value = float(jnp.asarray(scale))
            if not value > 0 or not jnp.isfinite(value):
                raise ValueError(f"{type(self).__name__}: scale must be positive and finite, got {value}")
        self.scale = jnp.asarray(scale, dtype=jnp.result_type(float))

    @abc.abstractmethod
    def rho(self, s: Float[Array, ...]) -> tuple[Float[Array, ...], Float[Array, ...], Float[Array, ...]]:
        """:math:`(\\rho(s), \\rho'(s), \\rho''(s))` elementwise, for :math:`s \\ge 0`."""

    @abc.abstractmethod
    def ratio(self, s: Float[Array, ...]) -> Float[Array, ...]:
        """:math:`\\rho(s)/s`, continued by :math:`\\rho'(0) = 1` at 0, computed without cancellation."""

    def whiten(self, residual: Float[Array, " k"]) -> Float[Array, " k"]:
        """:math:`\\sqrt{\\rho(s)/s}\\, r`: a residual block whose half squared norm is the term's cost."""
        s = jnp.sum(residual**2)
        return safe_sqrt(self.ratio(s)) * residual

    def correct(
        self, residual: Float[Array, " k"], jacobian: Float[Array, "k n"]
    ) -> tuple[Float[Array, " k"], Float[Array, "k n"]]:
        """Triggs' correction of one residual block and its Jacobian (module docstring)."""
        s = jnp.sum(residual**2)
        _, d1, d2 = self.rho(s)
        sqrt_d1 = safe_sqrt(d1)
        second_order = (s > 0) & (d2 > 0) & (d1 > 0)
        discriminant = 1.0 + 2.0 * s * d2 / jnp.where(second_order, d1, 1.0)
        alpha = jnp.where(second_order, 1.0 - safe_sqrt(discriminant), 0.0)
        alpha_over_s = jnp.where(second_order, alpha / jnp.where(s > 0, s, 1.0), 0.0)
        corrected_residual = sqrt_d1 / (1.0 - alpha) * residual
        projection = residual[:, None] * (residual @ jacobian)[None, :]
        corrected_jacobian = sqrt_d1 * (jacobian - alpha_over_s * projection)
        return corrected_residual, corrected_jacobian


class Huber(AbstractRobustLoss):
    r""":math:`\rho(s) = s` for :math:`s \le a^2`, else :math:`2a\sqrt s - a^2` (linear growth in :math:`\|r\|`).

    Args:
        scale: :math:`a` > 0 (default 1), the residual norm :math:`\|r\|` beyond which the cost grows linearly.
    """

    def rho(self, s: Float[Array, ...]) -> tuple[Float[Array, ...], Float[Array, ...], Float[Array, ...]]:
        a = self.scale
        inside = s <= a**2
        root = safe_sqrt(jnp.where(inside, a**2, s))
        value = jnp.where(inside, s, 2 * a * root - a**2)
        d1 = jnp.where(inside, 1.0, a / root)
        d2 = jnp.where(inside, 0.0, -0.5 * a / (root**3))
        return value, d1, d2

    def ratio(self, s: Float[Array, ...]) -> Float[Array, ...]:
        a = self.scale
        inside = s <= a**2
        s_out = jnp.where(inside, a**2, s)
        return jnp.where(inside, 1.0, 2 * a / safe_sqrt(s_out) - a**2 / s_out)


class SoftL1(AbstractRobustLoss):
    r""":math:`\rho(s) = 2a^2(\sqrt{1 + s/a^2} - 1)` (a smooth Huber).

    Args:
        scale: :math:`a` > 0 (default 1), the residual norm :math:`\|r\|` around which the cost turns linear.
    """

    def rho(self, s: Float[Array, ...]) -> tuple[Float[Array, ...], Float[Array, ...], Float[Array, ...]]:
        a2 = self.scale**2
        root = jnp.sqrt(1 + s / a2)
        return 2 * a2 * (root - 1), 1 / root, -0.5 / (a2 * root**3)

    def ratio(self, s: Float[Array, ...]) -> Float[Array, ...]:
        u = s / self.scale**2
        # 2(√(1+u) − 1)/u = 2/(√(1+u) + 1), no cancellation at small u
        return 2 / (jnp.sqrt(1 + u) + 1)


class Cauchy(AbstractRobustLoss):
    r""":math:`\rho(s) = a^2 \log(1 + s/a^2)`.

    Args:
        scale: :math:`a` > 0 (default 1), the residual norm :math:`\|r\|` beyond which the cost grows
            logarithmically.
    """

    def rho(self, s: Float[Array, ...]) -> tuple[Float[Array, ...], Float[Array, ...], Float[Array, ...]]:
        a2 = self.scale**2
        u = s / a2
        return a2 * jnp.log1p(u), 1 / (1 + u), -1 / (a2 * (1 + u) ** 2)

    def ratio(self, s: Float[Array, ...]) -> Float[Array, ...]:
        u = s / self.scale**2
        small = u < 1e-4
        u_safe = jnp.where(small, 1.0, u)
        # log1p(u)/u = 1 − u/2 + u²/3 − … below 1e-4 (the series' next term is under 1e-16 there)
        return jnp.where(small, 1 - u / 2 + u**2 / 3, jnp.log1p(u_safe) / u_safe)


class Arctan(AbstractRobustLoss):
    r""":math:`\rho(s) = a \arctan(s/a)` (bounded by :math:`a\pi/2`).

    Args:
        scale: :math:`a` > 0 (default 1), in units of the *squared* norm :math:`s` (Ceres' ``ArctanLoss``):
            terms with :math:`s \gg a` approach the bound.
    """

    def rho(self, s: Float[Array, ...]) -> tuple[Float[Array, ...], Float[Array, ...], Float[Array, ...]]:
        a = self.scale
        v = s / a
        return a * jnp.arctan(v), 1 / (1 + v**2), -2 * v / (a * (1 + v**2) ** 2)

    def ratio(self, s: Float[Array, ...]) -> Float[Array, ...]:
        v = s / self.scale
        small = v < 1e-4
        v_safe = jnp.where(small, 1.0, v)
        return jnp.where(small, 1 - v**2 / 3, jnp.arctan(v_safe) / v_safe)


class Tukey(AbstractRobustLoss):
    r""":math:`\rho(s) = \tfrac{a^2}{3}(1 - (1 - s/a^2)^3)` for :math:`s \le a^2`, else :math:`a^2/3`
    (Tukey's biweight: terms beyond :math:`a` no longer pull at all).

    Args:
        scale: :math:`a` > 0 (default 1), the residual norm :math:`\|r\|` beyond which a term costs the
            constant :math:`a^2/3`.
    """

    def rho(self, s: Float[Array, ...]) -> tuple[Float[Array, ...], Float[Array, ...], Float[Array, ...]]:
        a2 = self.scale**2
        inside = s <= a2
        w = jnp.where(inside, 1 - s / a2, 0.0)
        return a2 / 3 * (1 - w**3), w**2, jnp.where(inside, -2 * w / a2, 0.0)

    def ratio(self, s: Float[Array, ...]) -> Float[Array, ...]:
        a2 = self.scale**2
        inside = s <= a2
        u = jnp.where(inside, s / a2, 1.0)
        # (1 − (1 − u)³)/(3u) = 1 − u + u²/3
        return jnp.where(inside, 1 - u + u**2 / 3, a2 / (3 * jnp.where(inside, 1.0, s)))


__all__ = ["AbstractRobustLoss", "Arctan", "Cauchy", "Huber", "SoftL1", "Tukey"]


def linearize_block(
    loss: AbstractRobustLoss | None, residual: Float[Array, " k"], jacobian: Float[Array, "k n"]
) -> tuple[Float[Array, " k"], Float[Array, "k n"], Float[Array, ""]]:
    r"""What a solver's step model uses of one residual block: ``(r, J, cost)`` with the term's cost
    :math:`\tfrac12\rho(\|r\|^2)` and, under a loss, Triggs' corrected ``r`` and ``J``; without one
    (``loss=None``) ``r``, ``J`` and :math:`\tfrac12\|r\|^2`."""
    if loss is None:
        return residual, jacobian, 0.5 * jnp.sum(residual**2)
    value, _, _ = loss.rho(jnp.sum(residual**2))
    corrected, corrected_jacobian = loss.correct(residual, jacobian)
    return corrected, corrected_jacobian, 0.5 * value
