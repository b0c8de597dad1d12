r"""The contract between the solve loop and a step strategy.

A strategy sees ONE problem (the loop vmaps it over the batch). Each iteration it proposes a step δ from
the Gauss-Newton model of the cost :math:`c(x) = \tfrac12\|r(x)\|^2`,

.. math::  m(δ) = c(x) + g^\top δ + \tfrac12 \|J δ\|^2,\qquad g = J^\top r,

the loop evaluates the residual and Jacobian at :math:`x + δ` in one pass, computes the gain ratio
:math:`ρ = (c(x) - c(x+δ)) / (m(0) - m(δ))`, accepts the step when :math:`ρ > η` (``acceptance``), and hands
ρ back so the strategy can adapt its damping / radius / step length (its "control").
"""

from __future__ import annotations

import abc
from typing import ClassVar

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, PyTree

from .._numerics import norm
from ..linear import AbstractLinearSolver, Cholesky, Linearization


def initial_radius(factor: float, scale, x):
    """MINPACK's first trust radius: ``factor · ‖D x₀‖``, or ``factor`` itself at ``D x₀ = 0``."""
    size = norm(jnp.sqrt(scale) * x)
    return factor * jnp.where(size > 0, size, 1.0)


def radius_exhausted(radius, x, scale):
    """The trust radius is below machine precision relative to ``‖D x‖``: no step can change x."""
    return radius <= jnp.finfo(radius.dtype).eps * norm(jnp.sqrt(scale) * x) + jnp.finfo(radius.dtype).tiny


class AbstractLeastSquaresSolver(eqx.Module):
    """Tolerances shared by every strategy (Ceres/MINPACK-style; which one fired is in the status).

    - parameter (``rtol``, ``atol``): ``|δ_i| <= rtol·|x_i| + atol`` for every parameter, on an
      accepted step (or on one that left the cost unchanged to rounding where even the best gradient
      step could gain no more than ``ftol·cost``);
    - function (``ftol``): an accepted step gained ``<= ftol·cost`` (or a rejected one changed the cost
      by no more than that while the model, too, promised no more).
      The cost excess grows with the square of the parameter error, so this stops with parameters
      accurate to about √ftol in units of their uncertainty: set ``ftol=0`` to stop on ``rtol`` alone;
    - gradient (``gtol``): every Jacobian column is orthogonal to the residual,
      ``|J_jᵀr| <= gtol·‖J_j‖·‖r‖`` (MINPACK's scale-free test), or the residual is exactly zero.
    """

    rtol: float = 1e-8
    atol: float = 1e-8
    ftol: float | None = None
    gtol: float | None = None
    linear_solver: AbstractLinearSolver = Cholesky()
    #: The scaling D of the damping / trust region: ``"running_max"`` (default) the running maximum of
    #: diag(JᵀJ) over accepted points (MINPACK); ``"current"`` diag(JᵀJ) at the current point, clamped to
    #: [1e-6, 1e32] (Ceres). A running max never forgets large early columns; ``"current"`` does, though on
    #: GTSAM's w10000 started from odometry neither lets Levenberg-Marquardt reach the minimum in 100 steps
    #: (1,387 / 1,352; Dogleg, the graph default, takes 9).
    scaling: str = eqx.field(static=True, default="running_max")

    @property
    def function_tolerance(self) -> float:
        """``ftol``, or ``rtol²`` where it was not given."""
        return self.rtol**2 if self.ftol is None else self.ftol

    @property
    def gradient_tolerance(self) -> float:
        """``gtol``, or ``rtol`` where it was not given."""
        return self.rtol if self.gtol is None else self.gtol

    def __check_init__(self):
        if self.scaling not in ("running_max", "current"):
            raise ValueError(f"scaling must be 'running_max' or 'current', got {self.scaling!r}")

    #: Column heading of the control value in the verbose log.
    control_label: ClassVar[str] = "control"
    #: A step is accepted when its gain ratio exceeds this.
    acceptance: ClassVar[float] = 1e-3

    @abc.abstractmethod
    def init_control(self, lin: Linearization, scale: Float[Array, " n"], x: Float[Array, " n"]) -> PyTree:
        """Initial damping / radius / step length."""

    @abc.abstractmethod
    def propose(self, lin: Linearization, scale: Float[Array, " n"], control: PyTree) -> tuple[Float[Array, " n"], PyTree]:
        """A step δ from the model at the current point, and the control as it stands after choosing it
        (what :meth:`update_control` then sees). ``scale`` is the running max of diag(JᵀJ)."""

    @abc.abstractmethod
    def update_control(
        self,
        control: PyTree,
        accepted: Bool[Array, ""],
        ratio: Float[Array, ""],
        step: Float[Array, " n"],
        scale: Float[Array, " n"],
    ) -> PyTree:
        """Adapt the control to how well the model predicted the last trial."""

    @abc.abstractmethod
    def stalled(self, control: PyTree, x: Float[Array, " n"], scale: Float[Array, " n"]) -> Bool[Array, ""]:
        """True once the control has reached a limit where no further step can be taken."""

    def steps_within_tolerance(self, control: PyTree, x: Float[Array, " n"], scale: Float[Array, " n"]) -> Bool[Array, ""]:
        """True once every step the control still allows passes the parameter test (MINPACK's
        ``delta <= xtol·‖Dx‖``): the solve has converged in the parameters whether or not the next
        trial would be accepted."""
        return jnp.zeros((), bool)

    def radius_within_tolerance(self, radius, x, scale) -> Bool[Array, ""]:
        r"""A trust region :math:`\|Dδ\| \le Δ` bounds every component, :math:`|δ_j| \le Δ/D_j`; when
        that is within ``rtol·|x_j| + atol`` for every j, no step it allows can fail the parameter test."""
        return radius <= jnp.min(jnp.sqrt(scale) * (self.rtol * jnp.abs(x) + self.atol))

    @abc.abstractmethod
    def control_value(self, control: PyTree) -> Float[Array, ""]:
        """The number printed in the verbose log's control column."""
