r"""Gauss-Newton with a backtracking step length."""

from __future__ import annotations

from typing import ClassVar

import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from ..linear import AbstractLinearization
from ._base import AbstractLeastSquaresSolver, check_option


class GaussNewton(AbstractLeastSquaresSolver):
    r"""Gauss-Newton: the step is :math:`α δ_{GN}` with :math:`J^\top J\, δ_{GN} = -J^\top r`.

    The full step (α = 1) is tried first; a trial that does not decrease the cost halves α, an accepted
    one doubles it back towards 1. On a rank-deficient :math:`J^\top J` the step solver's pivot floor
    gives a finite minimum-norm-like step. Stalls when α falls below ``min_step_length``.

    The tolerances (``rtol``, ``atol``, ``ftol``, ``gtol``), ``linear_solver`` and ``scaling`` are those of
    :class:`~jaxnls.AbstractLeastSquaresSolver`.

    Attributes:
        min_step_length: the smallest step length α, in (0, 1], default 1e-10: the solve stalls below it.
    """

    min_step_length: float = 1e-10

    control_label: ClassVar[str] = "alpha"
    acceptance: ClassVar[float] = 0.0

    def __check_init__(self):
        check_option(self, "min_step_length", self.min_step_length, lower=0.0, upper=1.0, strict=True)

    def init_control(
        self, lin: AbstractLinearization, scale: Float[Array, " n"], x: Float[Array, " n"]
    ) -> Float[Array, ""]:
        return jnp.asarray(1.0, scale.dtype)

    def propose(
        self, lin: AbstractLinearization, scale: Float[Array, " n"], control: Float[Array, ""]
    ) -> tuple[Float[Array, " n"], Float[Array, ""]]:
        return control * self.step_solver.solve(lin, jnp.zeros_like(scale)), control

    def update_control(
        self,
        control: Float[Array, ""],
        accepted: Bool[Array, ""],
        ratio: Float[Array, ""],
        step: Float[Array, " n"],
        scale: Float[Array, " n"],
    ) -> Float[Array, ""]:
        return jnp.where(accepted, jnp.minimum(2.0 * control, 1.0), 0.5 * control)

    def stalled(self, control: Float[Array, ""], x: Float[Array, " n"], scale: Float[Array, " n"]) -> Bool[Array, ""]:
        return control < self.min_step_length

    def control_value(self, control: Float[Array, ""]) -> Float[Array, ""]:
        return control
