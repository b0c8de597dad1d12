"""A CONVERGED_* status is a first-order stationarity claim: checked on NIST StRD, independently (float64).

Every status that says "converged" promises something about the returned point x, with g = Jᵀr,
cost = ½‖r‖² and cos_j = |J_jᵀr| / (‖J_j‖ ‖r‖) (MINPACK's measure, scale-free):

- CONVERGED_GRADIENT: cos_j <= gtol for every column j;
- CONVERGED_FUNCTION: the best gain along any coordinate, g_j² / (2‖J_j‖²) = cos_j²·cost, is at most
  ftol·cost, i.e. cos_j <= √ftol;
- CONVERGED_PARAMETER: the Newton step along every coordinate, |g_j| / ‖J_j‖², is within the parameter
  tolerance rtol·|x_j| + atol.

Before the stopping rules were tightened (commit c824d14) a heavily damped or backtracked step that
changed nothing ended the solve as CONVERGED_FUNCTION at points far from any minimum (BoxBOD from
start 1 under Levenberg-Marquardt stopped at cost 4885.75, the minimum being 584.00, with a gradient
cosine of 0.64). So this module recomputes r and J with ``jax.jacfwd`` of the NIST residual at the
returned parameters — nothing the solver reports is trusted — and checks the claim each status makes.

Cosines are computed on each column divided by its largest entry (and r by its own), so a column whose
squared norm underflows (MGH10 and MGH17 reach points where exp() underflows) is still measured. A
comparison of the solver's float64 test with ours must allow for rounding: ``Stationarity.cosine_floor``
is how far a float64 evaluation of Jᵀr can be off, in cosine units (dot-product rounding, m·eps, plus r
moving by one rounding of y and of x, relative to ‖r‖). It is negligible except on Lanczos1, whose
residuals (~8e-14) are at the level where rounding in y - f(x) decides their direction.

Truth beyond the solver: the certified NIST values (LRE, the number of agreeing significant digits),
and as a peer, optimistix's Levenberg-Marquardt on a few problems.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxnls
from jaxnls.io import log_relative_error, read_nist

NIST_DIR = Path(__file__).parent / "data" / "nist"
NAMES = sorted(path.stem for path in NIST_DIR.glob("*.dat"))
EPS = float(np.finfo(np.float64).eps)

#: A status's own test, recomputed here, may exceed its tolerance by this factor (rounding).
SLACK = 1.5
#: Whatever the status, a converged point with a gradient cosine above this (beyond rounding) is a
#: false claim: the points falsely called converged before c824d14 had cosines 0.05 to 1.
FALSE_CONVERGENCE_COSINE = 1e-3
#: The certified values carry 11 significant digits; about 10-11 is the most LRE can measure.
LRE_CAP = 10.0
#: NIST's accuracy target.
LRE_TARGET = 8.0


def test_x64_enabled():
    assert jnp.asarray(1.0).dtype == jnp.float64


def test_all_nist_problems_present():
    assert len(NAMES) == 27


# --------------------------------------------------------------------------------------------------
# The independent check
# --------------------------------------------------------------------------------------------------


@functools.cache
def nist(name: str):
    return read_nist(NIST_DIR / f"{name}.dat")


@functools.cache
def _residual_and_jacobian(name: str):
    """Jitted ``params -> (r, J)`` of the NIST residual (forward-mode autodiff), one compile per problem."""
    problem = nist(name)

    def residual(params):
        return problem.residual_fn(params, problem.args)

    return jax.jit(lambda params: (residual(params), jax.jacfwd(residual)(params)))


def _unit_columns(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(a / s, s)`` with ``s`` the largest |entry| of each column (0 -> the column stays 0)."""
    scale = np.max(np.abs(a), axis=0)
    safe = np.where(scale > 0, scale, 1.0)
    return np.where(scale > 0, a / safe, 0.0), scale


@dataclasses.dataclass(frozen=True)
class Stationarity:
    """First-order measures at one point, from r and J recomputed in float64."""

    cost: float  # ½‖r‖²
    cosine: np.ndarray  # (k,) cos∠(J_j, r); inf where non-finite, or where J_j = 0 but g_j != 0
    newton: np.ndarray  # (k,) |g_j| / ‖J_j‖², the Newton step along coordinate j alone
    cosine_floor: float  # the cosine a float64 evaluation of Jᵀr cannot resolve (see module docstring)
    newton_floor: np.ndarray  # (k,) the same in Newton-step units: cosine_floor·‖r‖ / ‖J_j‖

    @property
    def max_cosine(self) -> float:
        return float(np.max(self.cosine))


def stationarity(name: str, params) -> Stationarity:
    x = np.asarray(params, dtype=np.float64)
    r, jac = (np.asarray(a) for a in _residual_and_jacobian(name)(jnp.asarray(x)))
    k = x.shape[0]
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(r)) and np.all(np.isfinite(jac))):
        inf = np.full(k, np.inf)
        return Stationarity(float("inf"), inf, inf, 0.0, np.zeros(k))
    m = r.shape[0]
    unit_jac, col_scale = _unit_columns(jac)  # J_j = col_scale_j · unit_jac_j
    unit_r, r_scale = _unit_columns(r[:, None])
    unit_r, r_scale = unit_r[:, 0], float(r_scale[0])
    unit_col_norms = np.linalg.norm(unit_jac, axis=0)
    unit_r_norm = float(np.linalg.norm(unit_r))
    r_norm = r_scale * unit_r_norm
    col_norms = col_scale * unit_col_norms  # ‖J_j‖, without squaring entries that may underflow
    unit_gradient = unit_jac.T @ unit_r  # g_j / (col_scale_j · r_scale)
    # A column of J that is exactly 0 has g_j = 0 exactly and makes no claim (cosine 0); a column whose
    # squared norm underflows is measured through its scaled copy like any other. The unscaled g_j is
    # checked too, so that "g_j != 0 beside a zero column" could not pass unnoticed.
    gradient = jac.T @ r
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        cosine = np.where(unit_gradient == 0, 0.0, np.abs(unit_gradient) / (unit_col_norms * unit_r_norm))
        cosine = np.where((col_norms == 0) & (gradient != 0), np.inf, cosine)
        newton = np.where(unit_gradient == 0, 0.0, np.abs(unit_gradient) * r_scale / (col_scale * unit_col_norms**2))
        newton = np.where((col_norms == 0) & (gradient != 0), np.inf, newton)
        # r moves by ~eps·|y_i| when y_i is rounded and by ~eps·|J_ij x_j| when x_j is: relative to ‖r‖
        # that is the noise on r's direction; the dot products add ~m·eps.
        data_norm = float(np.linalg.norm(nist(name).y))
        x_norm = float(np.linalg.norm(col_norms * np.abs(x)))
        cosine_floor = EPS * (m + (data_norm + x_norm) / r_norm) if r_norm > 0 else float("inf")
        newton_floor = np.where(col_norms > 0, cosine_floor * r_norm / col_norms, np.inf)
    return Stationarity(0.5 * r_norm**2, cosine, newton, float(cosine_floor), newton_floor)


def claim_violations(solver, status: jaxnls.Status, params, point: Stationarity) -> list[str]:
    """What is wrong with the convergence claim of ``status`` at ``params`` (empty: nothing)."""
    if not status.converged:
        return []
    x = np.asarray(params, dtype=np.float64)
    problems = []
    if status == jaxnls.Status.CONVERGED_FUNCTION:
        bound = SLACK * np.sqrt(solver.function_tolerance) + point.cosine_floor
        if not np.all(point.cosine <= bound):
            problems.append(f"CONVERGED_FUNCTION but max cos = {point.max_cosine:.3g} > √ftol bound {bound:.3g}")
    elif status == jaxnls.Status.CONVERGED_PARAMETER:
        tolerance = solver.rtol * np.abs(x) + solver.atol
        bound = SLACK * tolerance + point.newton_floor
        if not np.all(point.newton <= bound):
            worst = int(np.argmax(point.newton / bound))
            problems.append(
                f"CONVERGED_PARAMETER but the Newton step along b{worst + 1} is "
                f"{point.newton[worst]:.3g} > {bound[worst]:.3g} "
                f"(rtol·|x| + atol = {tolerance[worst]:.3g})"
            )
    elif status == jaxnls.Status.CONVERGED_GRADIENT:
        bound = SLACK * solver.gradient_tolerance + point.cosine_floor
        if not np.all(point.cosine <= bound):
            problems.append(f"CONVERGED_GRADIENT but max cos = {point.max_cosine:.3g} > gtol bound {bound:.3g}")
    if not point.max_cosine <= FALSE_CONVERGENCE_COSINE + point.cosine_floor:
        problems.append(f"converged at a non-stationary point: max cos = {point.max_cosine:.3g}")
    return problems


def describe(name: str, start: int, solver_name: str, status, steps, params, point: Stationarity) -> str:
    problem = nist(name)
    return (
        f"{name} start {start}, {solver_name}: {jaxnls.Status(int(status)).name} after {int(steps)} steps, "
        f"cost {point.cost:.6e} (certified minimum {problem.certified_rss / 2:.6e}), "
        f"max cos {point.max_cosine:.3g}, min LRE {problem.lre(params).min():.2f}"
    )


@functools.cache
def solve_both_starts(name: str, solver_name: str, tolerances: tuple = (), max_steps: int = 256):
    """Both NIST starts in one batched solve: (params (2, k), status (2,), steps (2,)).

    ``tolerances`` is a tuple of (keyword, value) pairs for the solver class ``jaxnls.<solver_name>``.
    """
    problem = nist(name)
    solver = getattr(jaxnls, solver_name)(**dict(tolerances))
    sol = jaxnls.solve(
        problem.residual_fn,
        jnp.asarray(problem.starts),
        problem.args,
        solver=solver,
        max_steps=max_steps,
        batched=True,
        args_axes=None,
    )
    return np.asarray(sol.params), np.asarray(sol.status), np.asarray(sol.num_steps)


def solve_one_start(name: str, start: int, solver, max_steps: int = 256):
    """One NIST start on its own (not batched): (params (k,), status, steps)."""
    problem = nist(name)
    sol = jaxnls.solve(
        problem.residual_fn, jnp.asarray(problem.starts[start - 1]), problem.args, solver=solver, max_steps=max_steps
    )
    return np.asarray(sol.params), jaxnls.Status(int(sol.status)), int(sol.num_steps)


def test_stationarity_measures_scale_free_columns():
    """The measure itself: at the certified minimum every cosine is tiny; at the NIST start it is not; a
    column whose squared norm underflows (MGH10 at b1 = 1e-170: ‖J_2‖² and ‖J_3‖² round to 0) is still
    measured, not silently called orthogonal."""
    problem = nist("Misra1a")
    at_minimum = stationarity("Misra1a", problem.certified_values)
    at_start = stationarity("Misra1a", problem.starts[0])
    # 11 certified digits: the certified point is stationary to ~1e-10 in cosine, far from the start's
    assert at_minimum.max_cosine < 1e-6
    assert at_start.max_cosine > 1e-2
    assert at_minimum.cost == pytest.approx(problem.certified_rss / 2, rel=1e-9)

    # MGH10: y = b1·exp(b2/(x + b3)); ∂r/∂b2 = ∓b1·exp(.)/(x + b3) is ~1e-170·1e6/400: its square underflows
    x = np.array([1e-170, 6000.0, 345.0])
    _, jac = (np.asarray(a) for a in _residual_and_jacobian("MGH10")(jnp.asarray(x)))
    assert np.all(jac[:, 1] != 0) and np.sum(jac[:, 1] ** 2) < 1e-300  # the column is there, its norm² is not
    point = stationarity("MGH10", x)
    # the model is ~0 there, so r = ±y, and each column of J keeps one sign over the data: large cosines
    assert np.all(np.isfinite(point.cosine)) and point.max_cosine > 0.5, point


# --------------------------------------------------------------------------------------------------
# 1. Default tolerances: every claim is the stationarity it names
# --------------------------------------------------------------------------------------------------

DEFAULT_SOLVERS = ("LevenbergMarquardt", "Dogleg", "GaussNewton")


# One test per problem (three solvers, both starts batched), so that pytest-xdist spreads the compiles.
@pytest.mark.parametrize("name", NAMES)
def test_default_tolerances_claim_only_stationary_points(name):
    """``LevenbergMarquardt()``, ``Dogleg()`` and ``GaussNewton()`` at their default tolerances and
    ``max_steps``: every CONVERGED_* run passes the independent check of the claim its status makes,
    and none sits at a point with a gradient cosine above 1e-3. Runs that do not converge make no claim
    (higher-difficulty problems from start 1 defeat Gauss-Newton and Dogleg); they are not checked here."""
    failures = []
    for solver_name in DEFAULT_SOLVERS:
        solver = getattr(jaxnls, solver_name)()
        params, status, steps = solve_both_starts(name, solver_name)
        for start in (1, 2):
            x = params[start - 1]
            point = stationarity(name, x)
            state = jaxnls.Status(int(status[start - 1]))
            detail = describe(name, start, solver_name, state, steps[start - 1], x, point)
            failures += [f"{p}: {detail}" for p in claim_violations(solver, state, x, point)]
    assert not failures, "\n".join(failures)


# --------------------------------------------------------------------------------------------------
# 2. The optimistix-style call: rtol = atol = 1e-15, max_steps = 1000
# --------------------------------------------------------------------------------------------------

TIGHT = (("rtol", 1e-15), ("atol", 1e-15))
TIGHT_MAX_STEPS = 1000


@pytest.mark.parametrize("name", NAMES)
def test_tight_tolerances_reach_the_certified_values(name):
    """``LevenbergMarquardt(rtol=1e-15, atol=1e-15)`` and ``IndirectLevenbergMarquardt(...)`` with
    ``max_steps=1000`` (how optimistix is usually called): every run reaches LRE >= 8 on every
    parameter, and whatever a run claims, the independent check agrees with it."""
    problem = nist(name)
    failures = []
    for solver_name in ("LevenbergMarquardt", "IndirectLevenbergMarquardt"):
        solver = getattr(jaxnls, solver_name)(**dict(TIGHT))
        params, status, steps = solve_both_starts(name, solver_name, TIGHT, TIGHT_MAX_STEPS)
        for start in (1, 2):
            x = params[start - 1]
            state = jaxnls.Status(int(status[start - 1]))
            point = stationarity(name, x)
            detail = describe(name, start, solver_name, state, steps[start - 1], x, point)
            failures += [f"{p}: {detail}" for p in claim_violations(solver, state, x, point)]
            lre = problem.lre(x).min()
            if lre < LRE_TARGET:
                failures.append(f"below LRE {LRE_TARGET}: {detail}")
            rss_lre = float(log_relative_error(2 * point.cost, problem.certified_rss))
            # Lanczos1's RSS (1.4e-25) is at float64's rounding level in y - f(x): ~3 digits at most
            if rss_lre < (2.5 if name == "Lanczos1" else LRE_TARGET):
                failures.append(f"RSS LRE {rss_lre:.2f}: {detail}")
    assert not failures, "\n".join(failures)


def test_without_the_long_first_trial_mgh10_crawls_to_the_certified_minimum():
    """What the long first trial changes: with ``long_first_trial=False`` LevenbergMarquardt's damped
    first steps from MGH10's start 1 shrink b1 to fit the data's level and then follow the curved valley
    b1·exp(b2/(x + b3)) ≈ y for thousands of steps. It is slow, not lost: MAX_STEPS (no claim) at 1,000
    steps, the certified values (and a claim that passes the independent check) given 10,000."""
    solver = jaxnls.LevenbergMarquardt(**dict(TIGHT), long_first_trial=False)
    _params, status, _steps = solve_one_start("MGH10", 1, solver, max_steps=TIGHT_MAX_STEPS)
    assert status == jaxnls.Status.MAX_STEPS, status
    params, status, steps = solve_one_start("MGH10", 1, solver, max_steps=10_000)
    point = stationarity("MGH10", params)
    detail = describe("MGH10", 1, "LevenbergMarquardt", status, steps, params, point)
    assert status.converged, detail
    assert steps > TIGHT_MAX_STEPS, detail
    assert not claim_violations(solver, status, params, point), detail
    assert nist("MGH10").lre(params).min() >= LRE_TARGET, detail


def _first_trials(name: str, start: int) -> dict:
    """LevenbergMarquardt's two candidate first steps at a NIST start, computed here in NumPy from r and J
    (``jax.jacfwd`` of the NIST residual): the Gauss-Newton step (SVD least squares) cut to the scaled
    length ‖D^½x₀‖ with D = diag(JᵀJ), the λ0 = 0.1 damped step, and the costs and model decreases that
    decide between them."""
    problem = nist(name)
    x0 = np.asarray(problem.starts[start - 1], dtype=np.float64)
    r, jac = (np.asarray(a) for a in _residual_and_jacobian(name)(jnp.asarray(x0)))
    d = np.sum(jac**2, axis=0)
    gauss_newton = np.linalg.lstsq(jac, -r, rcond=None)[0]
    radius, length = np.linalg.norm(np.sqrt(d) * x0), np.linalg.norm(np.sqrt(d) * gauss_newton)
    long = gauss_newton * min(1.0, radius / length)
    damped = np.linalg.solve(jac.T @ jac + 0.1 * np.diag(d), -jac.T @ r)

    def cost(x):
        return 0.5 * float(np.sum(np.asarray(_residual_and_jacobian(name)(jnp.asarray(x))[0]) ** 2))

    def model_decrease(step):
        return 0.5 * float(np.sum(r**2) - np.sum((r + jac @ step) ** 2))

    damped_taken = cost(x0) - cost(x0 + damped) > 1e-3 * model_decrease(damped)  # ρ > the acceptance 1e-3
    return dict(
        x0=x0,
        tried=length > radius,
        long=long,
        after_damped=x0 + damped if damped_taken else x0,
        long_decrease=cost(x0) - cost(x0 + long),
        damped_model_decrease=model_decrease(damped),
        gram=jac.T @ jac,
        gradient=jac.T @ r,
        d=d,
    )


def _gauss_newton_backward_error(trials: dict, step: np.ndarray) -> float:
    """How far ``step`` is from a multiple t of a Gauss-Newton step, JᵀJ·step = -t·Jᵀr, as a backward error
    in the Jacobi-scaled system (the solver's scaling): ‖Â z + t ĝ‖ / (‖Â‖‖z‖) with the best t. The solver's
    normal equations and an SVD agree only to ~cond(J)²·ε in the step itself (1e-6 on MGH10's start, where
    cond(J) is 2e7), but a backward-stable solve leaves a residual of a few ε whatever the conditioning."""
    scale = 1.0 / np.sqrt(trials["d"])
    gram = trials["gram"] * scale[:, None] * scale[None, :]
    gradient, z = trials["gradient"] * scale, step / scale
    applied = gram @ z
    t = -float(gradient @ applied) / float(gradient @ gradient)
    return float(np.linalg.norm(applied + t * gradient) / (np.linalg.norm(gram, 2) * np.linalg.norm(z)))


@pytest.mark.parametrize(
    "name, start, outcome",
    [("MGH10", 1, "kept"), ("BoxBOD", 1, "refused"), ("Misra1a", 1, "refused"), ("Misra1a", 2, "not tried")],
)
def test_the_long_first_trial_is_the_gauss_newton_step_cut_to_the_start_and_kept_only_where_it_beats_the_damped_one(
    name, start, outcome
):
    """The dense LevenbergMarquardt's first trial, against its description computed in NumPy
    (``_first_trials``): where the Gauss-Newton step is longer than the start, ‖D^½δ‖ > ‖D^½x₀‖, the first
    trial is that step cut to the start's length, kept only where its actual decrease reaches what the
    λ0-damped step's model promises; otherwise (refused, or not tried) the damped step follows from the
    start as before. MGH10 from start 1 keeps it (the model is 500 times the data there: the cut step
    brings the cost from 2.3e15 to 1.9e9, beyond the damped model's 2.3e12); BoxBOD and Misra1a from start 1
    refuse it; Misra1a from start 2 is near enough for the Gauss-Newton step to be shorter than the start."""
    trials = _first_trials(name, start)
    assert bool(trials["tried"]) == (outcome != "not tried")
    if outcome != "not tried":
        # (kept also needs ρ > 1e-3, which beating the damped model's decrease implies)
        kept = trials["long_decrease"] >= trials["damped_model_decrease"]
        assert kept == (outcome == "kept"), trials
    solver = jaxnls.LevenbergMarquardt(**dict(TIGHT))
    x0, rtol = trials["x0"], 1e-9
    after_one, _status, steps = solve_one_start(name, start, solver, max_steps=1)
    after_two, _status, _steps = solve_one_start(name, start, solver, max_steps=2)
    assert steps == 1
    if outcome == "kept":  # a Gauss-Newton step, of the start's scaled length
        step = after_one - x0
        assert _gauss_newton_backward_error(trials, step) < 100 * EPS
        length, start_length = (float(np.linalg.norm(np.sqrt(trials["d"]) * v)) for v in (step, x0))
        assert length == pytest.approx(start_length, rel=1e-9)
        np.testing.assert_allclose(after_one, x0 + trials["long"], rtol=1e-4)  # (to cond(J)²·ε, as above)
    elif outcome == "refused":
        np.testing.assert_array_equal(after_one, x0)
        np.testing.assert_allclose(after_two, trials["after_damped"], rtol=rtol)
    else:
        np.testing.assert_allclose(after_one, trials["after_damped"], rtol=rtol)
    # the same solve without the long trial takes the damped step first
    plain = jaxnls.LevenbergMarquardt(**dict(TIGHT), long_first_trial=False)
    np.testing.assert_allclose(solve_one_start(name, start, plain, max_steps=1)[0], trials["after_damped"], rtol=rtol)


#: Problems on which optimistix's Levenberg-Marquardt is the peer reference (cheap ones, both starts).
OPTIMISTIX_PEERS = ["MGH09", "Thurber"]


@pytest.mark.parametrize("name", OPTIMISTIX_PEERS)
def test_tight_tolerances_as_accurate_as_optimistix(name):
    """The same call in optimistix (``optx.least_squares`` with ``optx.LevenbergMarquardt(rtol=1e-15,
    atol=1e-15)``, 1000 steps): our LevenbergMarquardt agrees with the certified values to at least as
    many digits as optimistix does (up to the ~10 digits the certified values can measure), and to NIST's
    8 digits whatever the peer reaches. (Optimistix's own digits depend on the machine's rounding: on MGH09 from
    start 2 it reached 8+ digits in this test's earlier runs, CI's included, and reports success at 7.1 on the
    machine of 2026-12-02's session, with optimistix 0.0.11 and 0.1.0 and lineax 0.0.8 to 0.1.1 alike.)"""
    optx = pytest.importorskip("optimistix")
    problem = nist(name)

    def optx_solve(y0):
        sol = optx.least_squares(
            problem.residual_fn,
            optx.LevenbergMarquardt(rtol=1e-15, atol=1e-15),
            y0,
            args=problem.args,
            max_steps=TIGHT_MAX_STEPS,
            throw=False,
        )
        return sol.value, sol.result == optx.RESULTS.successful

    peer, peer_ok = jax.jit(jax.vmap(optx_solve))(jnp.asarray(problem.starts))
    ours, status, _steps = solve_both_starts(name, "LevenbergMarquardt", TIGHT, TIGHT_MAX_STEPS)
    for start in (1, 2):
        peer_lre = problem.lre(np.asarray(peer[start - 1])).min()
        our_lre = problem.lre(ours[start - 1]).min()
        where = (
            f"{name} start {start}: ours LRE {our_lre:.2f} ({jaxnls.Status(int(status[start - 1])).name}), "
            f"optimistix LRE {peer_lre:.2f} (successful: {bool(peer_ok[start - 1])})"
        )
        assert bool(peer_ok[start - 1]), f"the peer reference itself failed: {where}"
        assert our_lre >= max(LRE_TARGET, min(peer_lre, LRE_CAP)), where


# --------------------------------------------------------------------------------------------------
# 3. The false claims that existed before c824d14
# --------------------------------------------------------------------------------------------------

#: (problem, start, solver, max_steps) -> what the parent of c824d14 reported (default tolerances, one
#: start on its own). Each was a CONVERGED_FUNCTION claim at a point far from stationary.
FORMER_FALSE_CLAIMS = {
    ("BoxBOD", 1, "LevenbergMarquardt", 256): (
        "CONVERGED_FUNCTION after 6 steps at cost 4885.75 (minimum 584.00), max cos 0.64"
    ),
    ("MGH09", 1, "GaussNewton", 3000): (
        "CONVERGED_FUNCTION after ~1030 steps at cost 444.1 (minimum 1.5e-4), max cos 1.0: Gauss-Newton "
        "backtracks along a valley where the parameters grow without bound (hence 3000 steps, not 256)"
    ),
    ("MGH17", 1, "GaussNewton", 256): (
        "CONVERGED_FUNCTION after 32 steps at cost 43,802.9 (minimum 2.7e-5), max cos 0.99"
    ),
    ("MGH10", 1, "Dogleg", 256): "CONVERGED_FUNCTION after 6 steps at cost 1.95e9 (minimum 44.0), max cos 0.05",
    ("MGH17", 1, "Dogleg", 256): "CONVERGED_FUNCTION after 135 steps at cost 1.23e-2 (minimum 2.7e-5), max cos 0.57",
}


@pytest.mark.parametrize("case", list(FORMER_FALSE_CLAIMS), ids=lambda c: f"{c[0]}-start{c[1]}-{c[2]}")
def test_former_false_convergence(case):
    """Each run once claimed convergence at a non-stationary point (``FORMER_FALSE_CLAIMS``). Now it
    either does not claim convergence, or its claim holds by the independent check — and then it is at
    the certified minimum (cost to 8 digits, every parameter within 1e-3 of its certified standard deviation)."""
    name, start, solver_name, max_steps = case
    solver = getattr(jaxnls, solver_name)()
    params, status, steps = solve_one_start(name, start, solver, max_steps)
    point = stationarity(name, params)
    detail = (
        f"{describe(name, start, solver_name, status, steps, params, point)}; "
        f"before c824d14: {FORMER_FALSE_CLAIMS[case]}"
    )
    assert np.all(np.isfinite(params)), detail
    if not status.converged:
        return
    violations = claim_violations(solver, status, params, point)
    assert not violations, f"{violations}: {detail}"
    problem = nist(name)
    assert float(log_relative_error(2 * point.cost, problem.certified_rss)) >= LRE_TARGET, detail
    # at the default tolerances the function test stops with the parameters accurate to about √ftol in
    # units of their uncertainty: within a thousandth of NIST's certified standard deviations
    distance = np.abs(params - problem.certified_values) / problem.certified_std_devs
    assert distance.max() <= 1e-3, f"{np.round(distance, 6)} standard deviations from the certified values: {detail}"


# --------------------------------------------------------------------------------------------------
# 4. Tighter tolerances, more accurate answers
# --------------------------------------------------------------------------------------------------

TIGHTENING_RTOLS = (1e-6, 1e-9, 1e-12)


@pytest.mark.parametrize("name", ["BoxBOD", "ENSO", "Hahn1"])
def test_tightening_the_tolerances_tightens_the_answer(name):
    """With ``rtol = atol`` going 1e-6 -> 1e-9 -> 1e-12 (ftol and gtol derived from rtol by default), Levenberg-
    Marquardt and Dogleg never lose certified digits from one level to the next (unless already at the
    ~10 digits that can be measured), and the six orders of magnitude from 1e-6 to 1e-12 buy at least
    three digits. Every run converges, honestly."""
    problem = nist(name)
    failures = []
    for solver_name in ("LevenbergMarquardt", "Dogleg"):
        lre = {}
        for rtol in TIGHTENING_RTOLS:
            tolerances = (("rtol", rtol), ("atol", rtol))
            solver = getattr(jaxnls, solver_name)(**dict(tolerances))
            params, status, steps = solve_both_starts(name, solver_name, tolerances, TIGHT_MAX_STEPS)
            lre[rtol] = [problem.lre(params[i]).min() for i in range(2)]
            for i in range(2):
                state = jaxnls.Status(int(status[i]))
                point = stationarity(name, params[i])
                detail = describe(name, i + 1, f"{solver_name}(rtol={rtol:g})", state, steps[i], params[i], point)
                if not state.converged:
                    failures.append(f"not converged: {detail}")
                failures += [f"{p}: {detail}" for p in claim_violations(solver, state, params[i], point)]
        for i in range(2):
            digits = [lre[rtol][i] for rtol in TIGHTENING_RTOLS]
            where = f"{name} start {i + 1}, {solver_name}: min LRE at rtol {TIGHTENING_RTOLS} = {np.round(digits, 2)}"
            for looser, tighter in itertools.pairwise(digits):
                if not (tighter >= looser or tighter >= LRE_CAP):
                    failures.append(f"lost digits: {where}")
            if not digits[-1] >= min(digits[0] + 3.0, LRE_CAP):
                failures.append(f"gained fewer than 3 digits: {where}")
    assert not failures, "\n".join(failures)


# --------------------------------------------------------------------------------------------------
# 5. The tolerance defaults
# --------------------------------------------------------------------------------------------------

ALL_SOLVERS = [jaxnls.LevenbergMarquardt, jaxnls.IndirectLevenbergMarquardt, jaxnls.Dogleg, jaxnls.GaussNewton]


@pytest.mark.parametrize("cls", ALL_SOLVERS, ids=lambda c: c.__name__)
def test_tolerance_defaults(cls):
    """ftol defaults to rtol down to √ε of float64 (a cost change of ε·cost resolves parameter errors of
    about √ε, in units of their uncertainty) and to rtol²/√ε below it, so that tight tolerances are decided
    by the parameter test; gtol defaults to rtol. An explicit value is kept, 0 included (0 switches a test
    off, it must not fall back to the default)."""
    sqrt_eps = float(np.sqrt(np.finfo(np.float64).eps))
    solver = cls(rtol=1e-6)
    assert solver.ftol is None and solver.gtol is None
    assert solver.function_tolerance == 1e-6
    assert solver.gradient_tolerance == 1e-6
    tight = cls(rtol=1e-12, atol=1e-12)
    assert tight.function_tolerance == pytest.approx(1e-24 / sqrt_eps, rel=1e-12)
    assert tight.function_tolerance < np.finfo(np.float64).eps  # the function test no longer decides
    default = cls()
    assert default.function_tolerance == pytest.approx(default.rtol * min(1.0, default.rtol / sqrt_eps), rel=1e-15)
    assert default.gradient_tolerance == default.rtol
    explicit = cls(rtol=1e-6, ftol=1e-9, gtol=1e-11)
    assert explicit.function_tolerance == 1e-9
    assert explicit.gradient_tolerance == 1e-11
    off = cls(rtol=1e-6, ftol=0.0, gtol=0.0)
    assert off.function_tolerance == 0.0
    assert off.gradient_tolerance == 0.0


def test_a_flat_plateau_is_not_a_minimum():
    """From MGH10's first start Gauss-Newton and Dogleg reach points where exp(b2/(x+b3)) underflows for
    every observation: J is exactly zero, so every test holds trivially (g = 0) though the cost is 1.9e9
    against a minimum of 44. No convergence may be claimed there."""
    for solver in (jaxnls.GaussNewton(), jaxnls.Dogleg()):
        params, status, _steps = solve_one_start("MGH10", 1, solver, 256)
        _, jac = (np.asarray(a) for a in _residual_and_jacobian("MGH10")(jnp.asarray(params)))
        cost = float(stationarity("MGH10", params).cost)
        if status.converged:  # then it must be the minimum, not the plateau
            assert np.any(jac != 0) and cost < 2 * nist("MGH10").certified_rss, (type(solver).__name__, status, cost)


# --------------------------------------------------------------------------------------------------
# 4. A coordinate whose influence underflowed makes no claim of convergence
# --------------------------------------------------------------------------------------------------


def _two_exponentials(p, args):
    t, y = args
    return p[0] * jnp.exp(-p[1] * t) + p[2] * jnp.exp(-p[3] * t) - y


def test_a_float32_fit_whose_decay_rate_underflowed_off_the_data_claims_no_convergence():
    """512 two-exponential fits in float32 from starts up to e^±3 off (a decay rate sent so high that e^{-b·t} is
    zero past the first sample leaves its column exactly zero in float32: a plateau whose exact gradient is not
    zero). Every CONVERGED_* claim of Dogleg and GaussNewton holds in exact arithmetic: the gradient cosines,
    recomputed in float64 at the returned point, are below 1e-3 (above the residual's rounding level), or, for a
    CONVERGED_PARAMETER claim, the Newton step along every coordinate is within the tolerance. (Before: 9–11 of
    the 512 ended CONVERGED_FUNCTION at cosines 0.1–0.4, a decay rate in the thousands.)"""
    rng = np.random.default_rng(0)
    t = np.linspace(0.0, 4.0, 40)
    truth = rng.uniform(0.2, 3.0, size=(512, 4))
    y = truth[:, :1] * np.exp(-truth[:, 1:2] * t) + truth[:, 2:3] * np.exp(-truth[:, 3:] * t)
    y = y + 0.05 * rng.standard_normal(y.shape) * rng.choice([0.0, 1.0, 10.0], size=(512, 1))
    start = truth * np.exp(rng.normal(0, 1.0, size=truth.shape)) * rng.choice([1, -1], size=truth.shape, p=[0.9, 0.1])
    exact = jax.vmap(lambda p, data: (_two_exponentials(p, (t, data)), jax.jacfwd(_two_exponentials)(p, (t, data))))
    failures, plateaus = [], 0
    for solver in (jaxnls.Dogleg(), jaxnls.GaussNewton()):
        sol = jaxnls.solve(
            _two_exponentials,
            jnp.asarray(start, jnp.float32),
            (jnp.asarray(t, jnp.float32), jnp.asarray(y, jnp.float32)),
            solver=solver,
            batched=True,
            args_axes=(None, 0),
            max_steps=200,
        )
        x = np.asarray(sol.params, np.float64)
        r, jac = (np.asarray(a) for a in exact(jnp.asarray(x), jnp.asarray(y)))
        gradient = np.einsum("bmn,bm->bn", jac, r)
        r_norm = np.linalg.norm(r, axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            # scaled columns: a column whose squared norm underflows is measured like any other
            column_scale = np.max(np.abs(jac), axis=1)
            unit = jac / np.where(column_scale > 0, column_scale, 1.0)[:, None, :]
            cosine = np.where(
                gradient == 0,
                0.0,
                np.abs(np.einsum("bmn,bm->bn", unit, r)) / (np.linalg.norm(unit, axis=1) * r_norm[:, None]),
            )
            newton = np.where(gradient == 0, 0.0, np.abs(gradient) / (column_scale**2 * np.sum(unit**2, axis=1)))
            # float32's rounding of y and of the model, relative to ‖r‖ (as in the NIST checks above)
            x_norm = np.linalg.norm(column_scale * np.sqrt(np.sum(unit**2, axis=1)) * np.abs(x), axis=1)
            floor = float(np.finfo(np.float32).eps) * (r.shape[1] + (np.linalg.norm(y, axis=1) + x_norm) / r_norm)
        status = np.asarray(sol.status)
        for i in np.flatnonzero(np.asarray(sol.converged)):
            if r_norm[i] == 0:  # (r = 0 in float64 at the returned point: every claim holds)
                continue
            if status[i] == jaxnls.Status.CONVERGED_PARAMETER:
                bound = 1.5 * (solver.rtol * np.abs(x[i]) + solver.atol) + floor[i] * r_norm[i] / (
                    column_scale[i] * np.sqrt(np.sum(unit[i] ** 2, axis=0))
                )
                holds = np.all(newton[i] <= bound)
            else:
                holds = np.all(cosine[i] <= 1e-3 + floor[i])
            if not holds:
                failures.append(
                    f"{type(solver).__name__} problem {i}: {jaxnls.Status(int(status[i])).name} at x = {x[i]}, "
                    f"cost {float(sol.cost[i]):.4g}, max cos {np.max(cosine[i]):.3g}"
                )
        plateaus += int(np.sum((status == jaxnls.Status.STALLED) & np.any(x[:, [1, 3]] > 500, axis=1)))
    assert not failures, "\n".join(failures)
    assert plateaus > 0  # (some do walk onto the plateau: the rule is exercised)
