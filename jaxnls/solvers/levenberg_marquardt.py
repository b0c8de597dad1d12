r"""Levenberg-Marquardt: damping updated directly (Nielsen) or found from a trust radius (Moré, MINPACK)."""

from __future__ import annotations

import dataclasses
from typing import ClassVar, NamedTuple

import equinox as eqx
import jax
import jax.core
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float

from .._batching import vmap_traced_once
from .._numerics import norm
from ..linear import AbstractLinearization, AbstractLinearSolver, Linearization, pivot_floor
from ._base import AbstractLeastSquaresSolver, check_option, initial_radius, radius_exhausted

#: The first damping where ``initial_damping`` is not given, by problem kind (see LevenbergMarquardt).
_INITIAL_DAMPING = {"dense": 0.1, "graph": 1e-8}
#: Whether the first trial may be a long one where ``long_first_trial`` is not given, by problem kind.
_LONG_FIRST_TRIAL = {"dense": True, "graph": False}

#: Moré's λ search stops once the scaled step length is within this fraction of the radius ...
_RADIUS_FIT = 0.1
#: ... or after this many Newton iterations on the secular equation (MINPACK's limit).
_SEARCH_ITERATIONS = 10

# the strategies' controls: LevenbergMarquardt's (damping λ, growth ν[, the long first trial's length ‖D^½x₀‖
# until the first trial, then 0]; from propose, also the _LongTrial), IndirectLevenbergMarquardt's (radius Δ,
# damping λ, first step?)
_DampingControl = (
    tuple[Float[Array, ""], Float[Array, ""]]
    | tuple[Float[Array, ""], Float[Array, ""], Float[Array, ""]]
    | tuple[Float[Array, ""], Float[Array, ""], Float[Array, ""], "_LongTrial"]
)


class _LongTrial(NamedTuple):
    """What LevenbergMarquardt's long first trial (see ``long_first_trial``) hands from ``propose`` to ``accepts``
    and ``update_control``: whether this trial is the long one, and the decrease it must reach to be kept (what
    the λ0-damped step's model promised)."""

    pending: Bool[Array, ""]
    damped_decrease: Float[Array, ""]


_RadiusControl = tuple[Float[Array, ""], Float[Array, ""], Bool[Array, ""]]


class LevenbergMarquardt(AbstractLeastSquaresSolver):
    r"""Levenberg-Marquardt: each step solves

    .. math::  (J^\top J + λ\,\mathrm{diag}(D))\,δ = -J^\top r,

    where :math:`D_j` is the running maximum of :math:`(J^\top J)_{jj}` (Marquardt's scaling, kept
    monotone as in MINPACK so that the damping means the same thing from one iteration to the next;
    ``scaling="current"`` uses the current diagonal instead).
    The damping :math:`λ` is per problem and follows Nielsen (1999): after an accepted step
    :math:`λ \leftarrow λ \max(1/3,\, 1-(2ρ-1)^3)`, :math:`ν \leftarrow 2`; after a rejected one
    :math:`λ \leftarrow λν`, :math:`ν \leftarrow 2ν`. Steps that beat the model (ρ > 1) are accepted
    and shrink λ. The solve stalls (``Status.STALLED``) when λ exceeds ``max_damping``.

    One linear solve per step (with the long first trial below, of two dampings at once): the fastest per
    iteration, and on the benchmark curve fits (started 10% off) it ends in better minima than MINPACK's
    trust-region rule. Its weakness is a λ that must travel many decades (see
    :class:`IndirectLevenbergMarquardt`), and on the hardest single fits the first steps decide the basin: on
    the NIST runs BoxBOD, MGH09, MGH10 and MGH17 from start 1 (tight tolerances, 1,000 steps, without the long
    first trial), first dampings from 1e-16 to 100 lose one to three of them in no order with λ0 (1e-12 happens
    to win all four, 1e-14 and 1e-10 do not), and so does Ceres' damping matrix (benchmarks/README.md (ag));
    geodesic acceleration (Transtrum & Sethna), the usual remedy for curved valleys, loses MGH17 from start 1
    too ((aj)).

    **The long first trial** (``long_first_trial``; by default on in :func:`jaxnls.solve`, off in
    :func:`jaxnls.graph.solve`). λ0 is chosen before anything is known of the problem's scale. So where the
    Gauss-Newton step from the start is longer than the start itself in the scaled norm,
    :math:`\|D^{1/2}δ_{GN}\| > \|D^{1/2}x_0\|` (MINPACK's first trust radius: the start is far in the model's
    own eyes), the first trial is that step cut to :math:`\|D^{1/2}x_0\|`. It is kept only where it decreases
    the cost by at least what the λ0-damped step's model promises,
    :math:`\tfrac12(-g^\top δ_{λ_0} + λ_0\,δ_{λ_0}^\top D δ_{λ_0})`; otherwise it counts as a rejected trial and
    the λ0-damped step follows from the start, as without it. After a kept trial λ goes on from λ0 by Nielsen's
    rule. On NIST MGH10 from start 1 (the model 500 times the data) the damped first steps fit the data's level
    by shrinking :math:`b_1` and then follow the valley :math:`b_1 e^{b_2/(x+b_3)} \approx y` for 7,656 steps;
    the long trial takes the cost from 2.3e15 to 1.9e9, beyond the damped model's 2.3e12, into a valley the
    solve leaves in 285. Measured (``python benchmarks/lm_first_trial.py``, (as)): with ``rtol = atol = 1e-15``
    and 1,000 steps 54 of the 54 NIST runs reach NIST's 8 digits (53 without; 16 starts try the trial, MGH10's
    first keeps it); the benchmark curve fits never try it (their Gauss-Newton steps are at most 0.54 of
    the start's length) and take the same path; of 4,096 far starts (e^N(0,1) off), 3 end in a worse and 3 in a
    better minimum. Kept whenever ρ > 1e-3 instead, it loses Lanczos1-3 from start 1 (a worse local minimum);
    tried at every start, it costs the curve fits 11% more steps. The trial's step comes from the same solve as
    the damped one (two dampings at once), so with it every step solves two systems.

    The first damping, ``initial_damping``, defaults by problem kind (``None``):

    - :func:`jaxnls.solve` (dense fits): λ0 = 0.1 (Madsen, Nielsen & Tingleff advise a λ0 near 1 relative
      to diag(JᵀJ) when the start may be poor). On three random sets of 1,024 benchmark curve fits started
      10% off, λ0 = 1e-3 ended 4-7 problems in a worse local minimum than optimistix's LM and sent one or
      two along a valley towards infinity; λ0 = 0.1 ended none worse (6-9 better) and every problem within
      19 iterations, for one more iteration at the median.
    - :func:`jaxnls.graph.solve` (factor graphs): λ0 = 1e-8. A pose graph's JᵀJ is a weighted graph
      Laplacian whose smallest eigenvalues are ~1/N² of its diagonal along a chain of N poses, so a damping
      relative to the diagonal that is not far below that suppresses exactly the global, low-frequency
      corrections an odometry start needs. The damped steps then move single poses' rotations, where the
      Gauss-Newton model is poor (ρ < ½), and Nielsen's rule *raises* λ after such accepted steps: a trap.
      Measured (``SparseDirect``, 200 steps; GTSAM's LM with its defaults in brackets): w10000 from
      odometry λ0 = 0.1 / 1e-3 / 1e-5 stop at cost 978 / 478 / 148 after 200 steps, 1e-8 converges to
      144.867382 in 13 (GTSAM 8); sphere2500 4475 / 3516 after 200, 1133.0231 in 82, 1132.9936 in 41
      (GTSAM 26, 1133.0184); w100 11 / 7 / 4 / 4 (GTSAM 3); pose3example 15 / 13 / 13 / 13 (GTSAM 7).
      (GTSAM damps with λ·I, λ0 = 1e-5, far below the diagonal of these systems.)

    The tolerances (``rtol``, ``atol``, ``ftol``, ``gtol``), ``linear_solver`` and ``scaling`` are those of
    :class:`~jaxnls.AbstractLeastSquaresSolver`.

    Attributes:
        initial_damping: λ0, > 0; None (default): by problem kind, as above.
        min_damping: the floor of λ after accepted steps, >= 0, default 0.
        max_damping: the ceiling of λ, above ``min_damping``, default 1e32: the solve stalls once λ
            exceeds it.
        long_first_trial: whether the first trial may be the long one described above: None (default) by
            problem kind (:func:`jaxnls.solve` True, :func:`jaxnls.graph.solve` False), or True / False; True is
            refused by :func:`jaxnls.graph.solve` (it would factor every step's sparse system twice).
    """

    initial_damping: float | None = None
    min_damping: float = 0.0
    max_damping: float = 1e32
    long_first_trial: bool | None = eqx.field(static=True, default=None)

    control_label: ClassVar[str] = "damping"

    def __check_init__(self):
        if self.initial_damping is not None:
            check_option(self, "initial_damping", self.initial_damping, lower=0.0, strict=True)
        check_option(self, "min_damping", self.min_damping, lower=0.0)
        check_option(self, "max_damping", self.max_damping, lower=0.0, strict=True)
        if self.long_first_trial is not None and not isinstance(self.long_first_trial, (bool, np.bool_)):
            raise TypeError(
                f"LevenbergMarquardt(long_first_trial=...) must be True, False or None, got {self.long_first_trial!r}"
            )
        if (
            not isinstance(self.min_damping, jax.core.Tracer)
            and not isinstance(self.max_damping, jax.core.Tracer)
            and float(self.min_damping) >= float(self.max_damping)
        ):
            raise ValueError(
                f"LevenbergMarquardt: min_damping ({self.min_damping:g}) must be below max_damping "
                f"({self.max_damping:g})"
            )
        if (
            self.initial_damping is not None
            and not isinstance(self.initial_damping, jax.core.Tracer)
            and not isinstance(self.max_damping, jax.core.Tracer)
            and float(self.initial_damping) > float(self.max_damping)
        ):
            raise ValueError(
                f"LevenbergMarquardt: initial_damping ({self.initial_damping:g}) must be at most max_damping "
                f"({self.max_damping:g})"
            )

    def for_problem_kind(self, kind: str, linear_solver: AbstractLinearSolver) -> LevenbergMarquardt:
        solver = super().for_problem_kind(kind, linear_solver)
        if solver.initial_damping is None:
            solver = dataclasses.replace(solver, initial_damping=_INITIAL_DAMPING[kind])
        if solver.long_first_trial is None:
            solver = dataclasses.replace(solver, long_first_trial=_LONG_FIRST_TRIAL[kind])
        elif solver.long_first_trial and kind == "graph":
            raise NotImplementedError(
                "LevenbergMarquardt(long_first_trial=True) is for jaxnls.solve's dense problems: a factor graph's "
                "first trial would need a second sparse factorisation of every step's system; leave it None or False"
            )
        return solver

    def init_control(
        self, lin: AbstractLinearization, scale: Float[Array, " n"], x: Float[Array, " n"]
    ) -> _DampingControl:
        dtype = scale.dtype
        damping = jnp.asarray(
            _INITIAL_DAMPING["dense"] if self.initial_damping is None else self.initial_damping, dtype
        )
        growth = jnp.asarray(2.0, dtype)
        if not self.long_first_trial:
            return damping, growth
        # (the length doubles as the flag: 0 once the first trial is over)
        return damping, growth, initial_radius(1.0, scale, x)

    def propose(
        self, lin: AbstractLinearization, scale: Float[Array, " n"], control: _DampingControl
    ) -> tuple[Float[Array, " n"], _DampingControl]:
        if len(control) == 2:
            return self.step_solver.solve(lin, control[0] * scale), control
        damping, growth, radius = control[:3]
        # the damped step and, for the first trial, the Gauss-Newton one: one solve of two dampings, the step
        # solver's code traced once (on the benchmark curve fit two separate solves added 0.26 s to the loop's
        # 0.65 s of compiling, this form 0.14 s; the time per step is unchanged within noise at n = 4, +2.5% at
        # n = 20)
        step, gauss_newton = vmap_traced_once(lambda d: self.step_solver.solve(lin, d * scale), in_axes=(0,))(
            jnp.stack([damping, jnp.zeros_like(damping)])
        )
        # ‖D^½δ_GN‖² and the damped model's decrease, ½(-gᵀδ + λ δᵀDδ) where (JᵀJ + λD)δ = -g (MINPACK's
        # prered)
        squared_length, damped_decrease = jnp.sum(
            jnp.stack([scale * gauss_newton**2, 0.5 * (damping * scale * step**2 - lin.gradient * step)]), axis=-1
        )
        pending = (radius > 0) & jnp.isfinite(squared_length) & (squared_length > radius**2)
        cut = radius * jax.lax.rsqrt(jnp.where(pending, squared_length, 1.0))
        step = jnp.where(pending, gauss_newton * cut, step)
        return step, (damping, growth, radius, _LongTrial(pending, damped_decrease))

    def accepts(self, ratio: Float[Array, ""], decrease: Float[Array, ""], control: _DampingControl) -> Bool[Array, ""]:
        accepted = super().accepts(ratio, decrease, control)
        if len(control) == 4:  # a long first trial is kept only where it beats the damped step's own promise
            long = control[3]
            accepted = accepted & ~(long.pending & ~(decrease >= long.damped_decrease))
        return accepted

    def update_control(
        self,
        control: _DampingControl,
        accepted: Bool[Array, ""],
        ratio: Float[Array, ""],
        step: Float[Array, " n"],
        scale: Float[Array, " n"],
    ) -> _DampingControl:
        damping, growth = control[:2]
        # ρ outside [0, 1] gives the same factor as its end point; clipping keeps the unused branch
        # finite (ρ = -inf marks an inconsistent trial) so an unrolled backward pass stays NaN-free
        ratio = jnp.clip(ratio, 0.0, 1.0)
        shrink = jnp.maximum(1.0 / 3.0, 1.0 - (2.0 * ratio - 1.0) ** 3)
        good = (jnp.maximum(damping * shrink, self.min_damping), jnp.full_like(growth, 2.0))
        # D is a running maximum, so far-out starts can need λ many decades below its start; a
        # rejection restarts a λ that has shrunk towards zero from eps instead of staying stuck there
        bad = (jnp.maximum(damping * growth, jnp.finfo(damping.dtype).eps), growth * 2.0)
        if len(control) == 4:  # a long first trial not kept: the damped one follows, from λ0 as it was
            pending = control[3].pending
            bad = (jnp.where(pending, damping, bad[0]), jnp.where(pending, growth, bad[1]))
        updated = jnp.where(accepted, good[0], bad[0]), jnp.where(accepted, good[1], bad[1])
        if len(control) == 4:  # (the first trial is over: no radius, no long trial)
            return *updated, jnp.zeros_like(control[2])
        return updated

    def stalled(self, control: _DampingControl, x: Float[Array, " n"], scale: Float[Array, " n"]) -> Bool[Array, ""]:
        return control[0] > self.max_damping

    def control_value(self, control: _DampingControl) -> Float[Array, ""]:
        return control[0]


def trust_region_damping(
    lin: Linearization, scale: Float[Array, " n"], radius: Float[Array, ""], guess: Float[Array, ""]
) -> Float[Array, ""]:
    r"""The damping λ ≥ 0 whose step has :math:`|\,\|Dδ(λ)\| - Δ\,| \le 0.1Δ`, or 0 when the Gauss-Newton step
    is no longer than 1.1Δ.

    In the scaled variables :math:`z = Dδ`, :math:`A = D^{-1}J^\top J D^{-1} = V\,\mathrm{diag}(μ)\,V^\top` and
    :math:`c = V^\top D^{-1} J^\top r`, the step length is :math:`\|z(λ)\|^2 = \sum_i c_i^2/(μ_i + λ)^2`, so one
    eigendecomposition per step makes every trial λ cost O(n). On it runs Moré's safeguarded Newton
    iteration on :math:`1/\|z\| - 1/Δ` (MINPACK's ``lmpar``),

    .. math::  λ \leftarrow \max\!\Big(λ_l,\; λ + \frac{\|z\| - Δ}{Δ}\,\frac{\|z\|}{-\,d\|z\|/dλ}\Big),

    warm-started from the previous step's λ, inside bounds :math:`[λ_l, λ_u]` (a Newton step from 0 and
    :math:`\|c\|/Δ`) that tighten as it goes. Eigenvalues are floored at the step solvers' relative pivot
    floor, so a rank-deficient J gives the same bounded Gauss-Newton length as the step solve.
    """
    lin, scale, radius, guess = jax.lax.stop_gradient((lin, scale, radius, guess))
    d = jnp.sqrt(scale)
    n = scale.shape[0]
    tiny = jnp.finfo(scale.dtype).tiny
    eigenvalues, vectors = jnp.linalg.eigh(lin.normal_matrix() / (d[:, None] * d[None, :]))
    eigenvalues = jnp.maximum(eigenvalues, pivot_floor(n, scale.dtype) * jnp.max(eigenvalues))
    coefficients = jnp.sum(vectors * (lin.gradient / d)[:, None], axis=0)

    def length_and_slope(damping):
        shifted = eigenvalues + damping
        length = norm(coefficients / shifted)
        slope = jnp.sum(coefficients**2 / shifted**3) / jnp.where(length > 0, length, 1.0)  # -d‖z‖/dλ
        return length, slope

    gauss_newton_length, slope0 = length_and_slope(0.0)
    fits = gauss_newton_length - radius <= _RADIUS_FIT * radius

    def newton_step(damping, length, slope):
        return damping + (length - radius) / radius * length / jnp.where(slope > 0, slope, 1.0)

    lower = jnp.where(fits, 0.0, newton_step(0.0, gauss_newton_length, slope0))
    upper = norm(coefficients) / radius
    upper = jnp.where(upper > 0, upper, tiny / jnp.minimum(radius, 0.1))
    damping = jnp.clip(guess, lower, upper)
    damping = jnp.where(
        damping > 0, damping, norm(coefficients) / jnp.where(gauss_newton_length > 0, gauss_newton_length, 1.0)
    )

    def newton(_, carry):
        damping, lower, upper, done = carry
        damping = jnp.where(damping > 0, damping, jnp.maximum(tiny, 1e-3 * upper))
        length, slope = length_and_slope(damping)
        done = done | (jnp.abs(length - radius) <= _RADIUS_FIT * radius)
        lower = jnp.where(length > radius, jnp.maximum(lower, damping), lower)
        upper = jnp.where(length < radius, jnp.minimum(upper, damping), upper)
        return jnp.where(done, damping, jnp.maximum(lower, newton_step(damping, length, slope))), lower, upper, done

    damping, *_ = jax.lax.fori_loop(0, _SEARCH_ITERATIONS, newton, (damping, lower, upper, fits))
    return jnp.where(fits, 0.0, damping)


class IndirectLevenbergMarquardt(AbstractLeastSquaresSolver):
    r"""Levenberg-Marquardt in its trust-region form (Moré 1978, as in MINPACK's ``lmder``): each step
    solves

    .. math::  (J^\top J + λ D^2)\,δ = -J^\top r,\qquad D_{jj}^2 = \max_{k \le \text{now}} (J_k^\top J_k)_{jj},

    with λ chosen per problem so that the scaled step fits a trust region, :math:`\|Dδ\| \approx Δ`
    (λ = 0, the Gauss-Newton step, when that is no longer than 1.1Δ; see :func:`trust_region_damping`).
    The radius follows the gain ratio ρ: ρ < 1/4 (or a rejected step) gives
    :math:`Δ \leftarrow \tfrac12 \min(Δ, 10\|Dδ\|)`, ρ ≥ 3/4 or a Gauss-Newton step gives
    :math:`Δ \leftarrow 2\|Dδ\|`. Once Δ is too small for any step it allows to fail the parameter test,
    the solve has converged in the parameters (MINPACK's ``delta <= xtol·xnorm``); it stalls
    (``Status.STALLED``) if Δ falls below machine precision relative to ``‖Dx‖`` first.

    Controlling the step length rather than λ decides where the first steps land. On NIST MGH10
    (:math:`b_1 e^{b_2/(x+b_3)}`) from start 1, damped first steps (:class:`LevenbergMarquardt` without its long
    first trial) fit the level by shrinking :math:`b_1` to ~1e-53 and then follow the valley
    :math:`b_1 e^{b_2/(x+b_3)} \approx y` back up: along it :math:`b_1` must climb 50 decades, and each (by then
    nearly undamped, λ ~ 1e-90) Gauss-Newton step, a straight line across a valley that is exponential in
    :math:`b_1`, gains a factor of ~1.02, so it needs 7,656 steps. Here the first radius admits a Gauss-Newton
    step into a different valley (:math:`b_2 < 0`), from which the solve takes ~300 (LevenbergMarquardt's long
    first trial is that step). The price: an n×n eigendecomposition per step besides the step solve (on the benchmark
    curve fit about 1.8× the time per iteration of :class:`LevenbergMarquardt`), and on well-started
    problems it takes longer Gauss-Newton steps, with MINPACK's outcomes (see benchmarks/README.md).

    The first radius is ``initial_radius_factor · ‖D x₀‖`` (the factor itself at x₀ = 0), cut to the
    first step's length. MINPACK's default factor is 100 and its guide suggests smaller ones for hard
    starts. Over the 54 NIST StRD runs (QR, ``rtol`` = 1e-10) factors 0.1, 0.3, 1 and 2 reach LRE ≥ 8 on
    every run; 100 and 10 miss two (BoxBOD and MGH09 from start 1: long first steps land on a plateau
    or in a far valley), 0.5 and 3 miss MGH10 start 1, whose outcome depends on exactly where the
    early steps land. The default is 1.

    The tolerances (``rtol``, ``atol``, ``ftol``, ``gtol``), ``linear_solver`` and ``scaling`` are those of
    :class:`~jaxnls.AbstractLeastSquaresSolver` (dense problems only: the damping search needs an eigendecomposition of JᵀJ).

    Attributes:
        initial_radius_factor: the first radius in units of ``‖D x₀‖``, > 0, default 1.
    """

    initial_radius_factor: float = 1.0

    control_label: ClassVar[str] = "radius"

    def __check_init__(self):
        check_option(self, "initial_radius_factor", self.initial_radius_factor, lower=0.0, strict=True)

    def init_control(
        self, lin: AbstractLinearization, scale: Float[Array, " n"], x: Float[Array, " n"]
    ) -> _RadiusControl:
        # (radius Δ, damping λ, first step?): the first step's length also caps the first radius
        return initial_radius(self.initial_radius_factor, scale, x), jnp.zeros((), scale.dtype), jnp.asarray(True)

    def propose(
        self, lin: AbstractLinearization, scale: Float[Array, " n"], control: _RadiusControl
    ) -> tuple[Float[Array, " n"], _RadiusControl]:
        if not isinstance(lin, Linearization):  # (jaxnls.graph.solve rejects this strategy up front)
            raise TypeError("IndirectLevenbergMarquardt needs a dense linearisation (JᵀJ for its eigendecomposition)")
        radius, guess, first = control
        # λ is a choice of step length, not a function of the data to differentiate; the step solved
        # with it is, through ``lin``
        damping = trust_region_damping(lin, scale, radius, guess)
        return self.step_solver.solve(lin, damping * scale), (radius, damping, first)

    def update_control(
        self,
        control: _RadiusControl,
        accepted: Bool[Array, ""],
        ratio: Float[Array, ""],
        step: Float[Array, " n"],
        scale: Float[Array, " n"],
    ) -> _RadiusControl:
        radius, damping, first = control
        length = norm(jnp.sqrt(scale) * step)
        radius = jnp.where(first, jnp.minimum(radius, length), radius)
        poor = ~accepted | (ratio < 0.25)
        good = (ratio >= 0.75) | (damping == 0)
        radius = jnp.where(poor, 0.5 * jnp.minimum(radius, 10.0 * length), jnp.where(good, 2.0 * length, radius))
        damping = jnp.where(poor, 2.0 * damping, jnp.where(good, 0.5 * damping, damping))
        return radius, damping, jnp.zeros_like(first)

    def stalled(self, control: _RadiusControl, x: Float[Array, " n"], scale: Float[Array, " n"]) -> Bool[Array, ""]:
        return radius_exhausted(control[0], x, scale)

    def steps_within_tolerance(
        self, control: _RadiusControl, x: Float[Array, " n"], scale: Float[Array, " n"]
    ) -> Bool[Array, ""]:
        return self.radius_within_tolerance(control[0], x, scale)

    def control_value(self, control: _RadiusControl) -> Float[Array, ""]:
        return control[0]
