r"""Powell's dogleg trust-region method in Marquardt-scaled variables."""

from __future__ import annotations

from typing import ClassVar

import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from .._numerics import norm, safe_sqrt
from ..linear import AbstractLinearization
from ._base import AbstractLeastSquaresSolver, check_option, initial_radius, radius_exhausted


class Dogleg(AbstractLeastSquaresSolver):
    r"""Dogleg: within the trust region :math:`\|d \odot δ\| \le Δ`, :math:`d_j = \sqrt{D_j}`
    (:math:`D` the running max of diag(JᵀJ), as in MINPACK's ``hybrd``; with ``scaling="current"`` the
    current diagonal), take

    - the Gauss-Newton step :math:`δ_{GN}` if it fits;
    - else the scaled steepest-descent step cut at the boundary if the Cauchy point
      :math:`δ_C = -t\,u`, :math:`u = D^{-1} g`, :math:`t = \|d^{-1}g\|^2 / \|J u\|^2` lies outside;
    - else the point where the segment :math:`δ_C \to δ_{GN}` leaves the region.

    Radius update: ρ < 1/4 (or a rejected step) gives :math:`Δ \leftarrow \tfrac12\min(Δ, \|dδ\|)`;
    ρ > 3/4 gives :math:`Δ \leftarrow \max(Δ, 3\|dδ\|)`. The first radius is
    ``initial_radius_factor · ‖d ⊙ x₀‖`` (or the factor itself at x₀ = 0). Stalls once Δ is below
    machine precision relative to ``‖d ⊙ x‖``.

    The tolerances (``rtol``, ``atol``, ``ftol``, ``gtol``), ``linear_solver`` and ``scaling`` are those of
    :class:`~jaxnls.AbstractLeastSquaresSolver`.

    Attributes:
        initial_radius_factor: the first radius in units of ``‖d ⊙ x₀‖``, > 0, default 100 (MINPACK's).
    """

    initial_radius_factor: float = 100.0

    control_label: ClassVar[str] = "radius"

    def __check_init__(self):
        check_option(self, "initial_radius_factor", self.initial_radius_factor, lower=0.0, strict=True)

    def init_control(
        self, lin: AbstractLinearization, scale: Float[Array, " n"], x: Float[Array, " n"]
    ) -> Float[Array, ""]:
        return initial_radius(self.initial_radius_factor, scale, x)

    def propose(
        self, lin: AbstractLinearization, scale: Float[Array, " n"], control: Float[Array, ""]
    ) -> tuple[Float[Array, " n"], Float[Array, ""]]:
        radius = control
        d = jnp.sqrt(scale)
        gauss_newton = self.step_solver.solve(lin, jnp.zeros_like(scale))
        direction, slope, length = lin.steepest_descent(scale)
        grad_scaled_norm = safe_sqrt(slope)  # ‖d⁻¹g‖
        cauchy = -jnp.where(jnp.isfinite(length), length, 0.0) * direction
        safe_grad_norm = jnp.where(grad_scaled_norm > 0, grad_scaled_norm, 1.0)
        boundary_descent = -(radius / safe_grad_norm) * direction
        # Where the segment cauchy -> gauss_newton crosses ‖d·δ‖ = radius: solve ‖a + βb‖² = radius², β ∈ [0, 1].
        a = d * cauchy
        b = d * gauss_newton - a
        bb, ab, aa = b @ b, a @ b, a @ a
        disc = safe_sqrt(ab**2 + bb * (radius**2 - aa))
        beta = jnp.where(bb > 0, (-ab + disc) / jnp.where(bb > 0, bb, 1.0), 0.0)
        interpolated = (a + jnp.clip(beta, 0.0, 1.0) * b) / d
        step = jnp.where(
            norm(d * gauss_newton) <= radius,
            gauss_newton,
            jnp.where(~(length * grad_scaled_norm < radius), boundary_descent, interpolated),
        )
        return step, control

    def update_control(
        self,
        control: Float[Array, ""],
        accepted: Bool[Array, ""],
        ratio: Float[Array, ""],
        step: Float[Array, " n"],
        scale: Float[Array, " n"],
    ) -> Float[Array, ""]:
        step_size = norm(jnp.sqrt(scale) * step)
        shrunk = 0.5 * jnp.minimum(control, step_size)
        grown = jnp.maximum(control, 3.0 * step_size)
        return jnp.where(~accepted | (ratio < 0.25), shrunk, jnp.where(ratio > 0.75, grown, control))

    def stalled(self, control: Float[Array, ""], x: Float[Array, " n"], scale: Float[Array, " n"]) -> Bool[Array, ""]:
        return radius_exhausted(control, x, scale)

    def steps_within_tolerance(
        self, control: Float[Array, ""], x: Float[Array, " n"], scale: Float[Array, " n"]
    ) -> Bool[Array, ""]:
        return self.radius_within_tolerance(control, x, scale)

    def control_value(self, control: Float[Array, ""]) -> Float[Array, ""]:
        return control
