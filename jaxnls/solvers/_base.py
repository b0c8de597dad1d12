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
import dataclasses
from typing import ClassVar, TypeVar

import equinox as eqx
import jax
import jax.core
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, PyTree

from .._numerics import norm
from ..linear import AbstractLinearization, AbstractLinearSolver


def initial_radius(factor: float, scale: Float[Array, " n"], x: Float[Array, " n"]) -> Float[Array, ""]:
    """MINPACK's first trust radius: ``factor · ‖D x₀‖``, or ``factor`` itself at ``D x₀ = 0``."""
    size = norm(jnp.sqrt(scale) * x)
    return factor * jnp.where(size > 0, size, 1.0)


def radius_exhausted(radius: Float[Array, ""], x: Float[Array, " n"], scale: Float[Array, " n"]) -> Bool[Array, ""]:
    """The trust radius is below machine precision relative to ``‖D x‖``: no step can change x."""
    return radius <= jnp.finfo(radius.dtype).eps * norm(jnp.sqrt(scale) * x) + jnp.finfo(radius.dtype).tiny


#: √ε of float64: a relative cost change of ε resolves parameter errors of about √ε (in units of their
#: uncertainty), so no function test can certify parameters more accurately than that.
_SQRT_EPS = float(np.sqrt(np.finfo(np.float64).eps))


def check_option(
    owner: object,
    name: str,
    value: object,
    *,
    lower: float | None = None,
    upper: float | None = None,
    strict: bool = False,
    below: float | None = None,
) -> None:
    """Raise a ValueError / TypeError naming ``owner``'s option ``name`` unless ``value`` is a real, finite
    number within ``[lower, upper]`` (``(lower, upper]`` with ``strict``) and less than ``below``. A traced
    value (a solver built inside a transformation) cannot be checked and passes."""
    where = f"{type(owner).__name__}({name}=...)"
    if isinstance(value, jax.core.Tracer):
        return
    if isinstance(value, (bool, np.bool_, str)) or not isinstance(
        value, (int, float, np.number, np.ndarray, jax.Array)
    ):
        raise TypeError(f"{where} must be a real number, got {value!r} ({type(value).__name__})")
    if np.ndim(value) != 0 or not np.isrealobj(value):
        raise TypeError(f"{where} must be a real scalar, got {value!r}")
    number = float(value)
    if not np.isfinite(number):
        raise ValueError(f"{where} must be finite, got {number}")
    if lower is not None and (number <= lower if strict else number < lower):
        raise ValueError(f"{where} must be {'>' if strict else '>='} {lower:g}, got {number:g}")
    if upper is not None and number > upper:
        raise ValueError(f"{where} must be <= {upper:g}, got {number:g}")
    if below is not None and number >= below:
        raise ValueError(f"{where} must be < {below:g}, got {number:g}")


_Solver = TypeVar("_Solver", bound="AbstractLeastSquaresSolver")


class AbstractLeastSquaresSolver(eqx.Module):
    r"""Tolerances shared by every strategy (Ceres/MINPACK-style; which test fired is in the status).

    ==========  ==============  ================================================================================
    option      default         the test (a ``CONVERGED_*`` status only where it holds at the returned point)
    ==========  ==============  ================================================================================
    ``rtol``,   ``1e-8``,       PARAMETER: the step is within ``|δ_j| <= rtol·|x_j| + atol`` for every j (an
    ``atol``    ``1e-8``        accepted step, a rejected one that left the cost unchanged to rounding, or a
                                trust radius too small for any step to fail it) AND the Newton step along every
                                coordinate, ``|g_j| / (JᵀJ)_jj``, is within the same bound
    ``ftol``    ``rtol`` down   FUNCTION: the step changed the cost by ``<= ftol·cost`` (an accepted one, or a
                to √ε, then     rejected one whose model promised no more) AND no coordinate direction offers
                ``rtol²/√ε``    more, ``cos∠(J_j, r) <= √ftol`` for every j. The cost excess grows with the
                                square of the parameter error, so a cost change of ε·cost resolves parameter
                                errors of √ε (units of their uncertainty) and no finer: below √ε ≈ 1.5e-8 the
                                default shrinks quadratically and the parameter test decides. ``ftol=0``
                                switches it off
    ``gtol``    ``rtol``        GRADIENT: ``|J_jᵀr| <= gtol·‖J_j‖·‖r‖`` for every j (MINPACK's scale-free
                                test), or ``r = 0``
    ==========  ==============  ================================================================================

    Here g = Jᵀr at the returned point and (JᵀJ)_jj the squared norm of column j. The second half of the
    function and parameter tests exists because the step they test is shortened by the damping, the trust
    radius or the backtracking: a tiny damped step gains nothing at a point with a large gradient, and
    without them such a point was reported converged. Nor is a plateau convergence: where the whole
    Jacobian is zero, or the column of a coordinate that moved the residual at the start or an accepted point
    since is now exactly zero (its influence underflowed: e^{-b·t} past the dtype's range, at b·t ≈ 88 in
    float32), the tests hold without saying anything about that coordinate and no claim is made. (A column
    zero from the start, a held or unused coordinate, or one started on such a plateau, is taken as it is.)
    A solve that cannot make progress before a test holds ends ``STALLED`` or ``MAX_STEPS``. Every tolerance is
    a non-negative finite number, and ``rtol``, ``ftol`` and ``gtol`` are below 1 (a relative test of 1 or more
    holds everywhere); tightening ``rtol`` alone tightens all three tests (``LevenbergMarquardt(rtol=1e-15,
    atol=1e-15)`` and ``IndirectLevenbergMarquardt(rtol=1e-15, atol=1e-15)`` fit all 54 NIST StRD runs to their
    certified digits within 1,000 steps).

    Attributes:
        rtol: relative parameter tolerance (table above), default 1e-8.
        atol: absolute parameter tolerance (table above), default 1e-8.
        ftol: function tolerance (table above); None (default): derived from ``rtol``
            (:attr:`function_tolerance`).
        gtol: gradient tolerance (table above); None (default): ``rtol``.
        linear_solver: the solver of the step's linear system: :class:`~jaxnls.Cholesky` or
            :class:`~jaxnls.QR` for :func:`jaxnls.solve`; a graph solver (:class:`~jaxnls.graph.SparseDirect`,
            :class:`~jaxnls.graph.PCG`, :class:`~jaxnls.graph.SchurDirect`, :class:`~jaxnls.graph.SchurPCG`)
            for :func:`jaxnls.graph.solve`. None (default): the solve's choice for its problem,
            :class:`~jaxnls.Cholesky` in :func:`jaxnls.solve` and
            :func:`jaxnls.graph.default_linear_solver`'s in :func:`jaxnls.graph.solve`, so that one strategy
            object serves both.
        scaling: the scaling D of the damping / trust region: ``"running_max"`` (default), the running
            maximum of diag(JᵀJ) over accepted points (MINPACK); ``"current"``, diag(JᵀJ) at the current
            point clamped to [1e-6, 1e32] (Ceres).
    """

    rtol: float = 1e-8
    atol: float = 1e-8
    ftol: float | None = None
    gtol: float | None = None
    linear_solver: AbstractLinearSolver | None = None
    #: The scaling D of the damping / trust region: ``"running_max"`` (default) the running maximum of
    #: diag(JᵀJ) over accepted points (MINPACK); ``"current"`` diag(JᵀJ) at the current point, clamped to
    #: [1e-6, 1e32] (Ceres). A running max never forgets large early columns; ``"current"`` does. (On
    #: GTSAM's w10000 from odometry the scaling was not what made Levenberg-Marquardt crawl: with the dense
    #: fits' initial damping 0.1 both stay above cost 1,000 after 100 steps, with the graph default 1e-8
    #: the running max converges in 13.)
    scaling: str = eqx.field(static=True, default="running_max")

    @property
    def function_tolerance(self) -> float:
        """``ftol``, or where it was not given ``rtol·min(1, rtol/√ε)`` (ε of float64): ``rtol`` itself down
        to √ε ≈ 1.5e-8, the finest parameter accuracy a cost change can resolve, and quadratically smaller
        below it, so that a tight ``rtol`` is decided by the parameter test."""
        if self.ftol is not None:
            return self.ftol
        if isinstance(self.rtol, (int, float)):
            return self.rtol * min(1.0, self.rtol / _SQRT_EPS)
        return self.rtol * jnp.minimum(1.0, self.rtol / _SQRT_EPS)  # an array (a traced solver field)

    @property
    def gradient_tolerance(self) -> float:
        """``gtol``, or ``rtol`` where it was not given."""
        return self.rtol if self.gtol is None else self.gtol

    def __check_init__(self):
        if self.scaling not in ("running_max", "current"):
            raise ValueError(f"scaling must be 'running_max' or 'current', got {self.scaling!r}")
        for name in ("rtol", "atol", "ftol", "gtol"):
            if name in ("ftol", "gtol") and getattr(self, name) is None:
                continue
            # a relative tolerance of 1 or more holds everywhere (a cosine is at most 1; gtol defaults to rtol)
            check_option(self, name, getattr(self, name), lower=0.0, below=None if name == "atol" else 1.0)
        if self.linear_solver is not None and not isinstance(self.linear_solver, AbstractLinearSolver):
            hint = " (an instance: call it, e.g. jaxnls.QR())" if isinstance(self.linear_solver, type) else ""
            raise TypeError(
                f"{type(self).__name__}(linear_solver=...) must be a jaxnls linear solver such as jaxnls.QR(), "
                f"jaxnls.Cholesky() or jaxnls.graph.SparseDirect(), got {self.linear_solver!r}{hint}"
            )

    def for_problem_kind(self: _Solver, kind: str, linear_solver: AbstractLinearSolver) -> _Solver:
        """This solver with the defaults it leaves to the problem kind filled in (``"dense"``: a residual
        function's problems, ``"graph"``: a factor graph): ``linear_solver``, the solve's choice for its
        problem, where none was given, and the strategy's own (:class:`LevenbergMarquardt`'s first damping)."""
        if self.linear_solver is not None:
            return self
        return dataclasses.replace(self, linear_solver=linear_solver)

    @property
    def step_solver(self) -> AbstractLinearSolver:
        """``linear_solver`` once a solve has filled it in (:meth:`for_problem_kind`): what the steps and the
        loop's linearisation use."""
        if self.linear_solver is None:
            raise ValueError(
                f"{type(self).__name__} has no linear_solver yet: jaxnls.solve and jaxnls.graph.solve choose one "
                "for their problem (or give linear_solver=...)"
            )
        return self.linear_solver

    #: Column heading of the control value in the verbose log.
    control_label: ClassVar[str] = "control"
    #: A step is accepted when its gain ratio exceeds this.
    acceptance: ClassVar[float] = 1e-3

    def accepts(self, ratio: Float[Array, ""], decrease: Float[Array, ""], control: PyTree) -> Bool[Array, ""]:
        """Whether a trial with gain ratio ``ratio`` (actual / predicted decrease), which decreased the cost by
        ``decrease``, is taken; ``control`` is the control :meth:`propose` returned with it."""
        return ratio > self.acceptance

    def update_scale(
        self,
        scale: Float[Array, " n"],
        trial_diagonal: Float[Array, " n"],
        accepted: Bool[Array, ""],
        started: Bool[Array, ""],
    ) -> Float[Array, " n"]:
        """The scaling D after a trial whose diag(JᵀJ) is ``trial_diagonal`` (see ``scaling``); the first
        evaluation (``started`` False) sets it."""
        if self.scaling == "running_max":
            return jnp.where(
                started,
                jnp.where(accepted, jnp.maximum(scale, trial_diagonal), scale),
                jnp.where(trial_diagonal > 0, trial_diagonal, 1.0),
            )
        # "current": Ceres' diag(JᵀJ) at the current point, clamped to [1e-6, 1e32]
        return jnp.where(accepted | ~started, jnp.clip(trial_diagonal, 1e-6, 1e32), scale)

    @abc.abstractmethod
    def init_control(self, lin: AbstractLinearization, scale: Float[Array, " n"], x: Float[Array, " n"]) -> PyTree:
        """Initial damping / radius / step length."""

    @abc.abstractmethod
    def propose(
        self, lin: AbstractLinearization, scale: Float[Array, " n"], control: PyTree
    ) -> tuple[Float[Array, " n"], PyTree]:
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

    def steps_within_tolerance(
        self, control: PyTree, x: Float[Array, " n"], scale: Float[Array, " n"]
    ) -> Bool[Array, ""]:
        """True once every step the control still allows passes the parameter test (MINPACK's
        ``delta <= xtol·‖Dx‖``): the solve has converged in the parameters whether or not the next
        trial would be accepted."""
        return jnp.zeros((), bool)

    def radius_within_tolerance(
        self, radius: Float[Array, ""], x: Float[Array, " n"], scale: Float[Array, " n"]
    ) -> Bool[Array, ""]:
        r"""A trust region :math:`\|Dδ\| \le Δ` bounds every component, :math:`|δ_j| \le Δ/D_j`; when
        that is within ``rtol·|x_j| + atol`` for every j, no step it allows can fail the parameter test."""
        return radius <= jnp.min(jnp.sqrt(scale) * (self.rtol * jnp.abs(x) + self.atol))

    @abc.abstractmethod
    def control_value(self, control: PyTree) -> Float[Array, ""]:
        """The number printed in the verbose log's control column."""
