"""Bounds and frozen parameters: bounded NIST StRD and MGH problems against scipy's least_squares(method="trf",
bounds=...) computed here (equal cost to rounding or lower) with the KKT conditions checked in the test; batches
mixing bounded and free problems; derivatives at a bounded solution against central differences; clear errors."""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import mgh_problems as mgh
import numpy as np
import pytest
from conftest import cosine_resolution

import jaxnls
from jaxnls.io import read_nist

NIST_DIR = Path(__file__).parent / "data" / "nist"
NAMES = sorted(p.stem for p in NIST_DIR.glob("*.dat"))
#: The same cost as scipy's TRF to rounding: relative differences measured up to 4e-11 (Lanczos, whose
#: costs of 1e-10 are themselves rounding-sized residuals squared).
COST_MATCH = 1e-10
SOLVER = jaxnls.LevenbergMarquardt(rtol=1e-12, atol=1e-12)


def kkt_violations(solver, status, x, residual, jacobian, lower, upper, residual_fn=None):
    """What the KKT conditions of the bounded problem say about (x, its claimed status), in the test's own
    arithmetic: x in the box; at an active bound the gradient g = Jᵀr points out of the box; along the free
    coordinates every gradient cosine within the claimed test's tolerance — beyond the cosines' rounding at x
    (:func:`conftest.cosine_resolution`, from ``residual_fn``, asked only where the plain check fails)."""
    failures = []
    if np.any(x < lower) or np.any(x > upper):
        failures.append("outside the box")
    g = jacobian.T @ residual
    at_lower, at_upper = x <= lower, x >= upper
    if np.any(g[at_lower] < 0) or np.any(g[at_upper] > 0):
        failures.append(f"gradient points into the box at an active bound: g = {g}")
    free = ~(at_lower | at_upper)
    norms = np.linalg.norm(jacobian[:, free], axis=0) * np.linalg.norm(residual)
    cosine = np.abs(g[free]) / np.where(norms > 0, norms, 1.0)
    worst = float(cosine.max()) if cosine.size else 0.0
    bound = {
        jaxnls.Status.CONVERGED_GRADIENT: solver.gradient_tolerance,
        jaxnls.Status.CONVERGED_FUNCTION: np.sqrt(solver.function_tolerance),
    }.get(status)
    if bound is not None and worst > bound and residual_fn is not None:
        worst = float(np.max(cosine - cosine_resolution(residual_fn, x)[free]))
    if bound is not None and worst > bound:
        failures.append(f"{status.name} but the largest free gradient cosine is {worst:.2e} > {bound:.2e}")
    return failures


@functools.cache
def bounded_nist(name: str):
    """NIST problem with its first parameter bounded 10% short of the certified value (towards zero), which
    excludes the unconstrained minimum; start 2 projected into the box."""
    problem = read_nist(NIST_DIR / f"{name}.dat")
    certified = np.asarray(problem.certified_values)
    lower, upper = np.full(certified.size, -np.inf), np.full(certified.size, np.inf)
    if certified[0] > 0:
        upper[0] = 0.9 * certified[0]
    else:
        lower[0] = 0.9 * certified[0]
    return problem, lower, upper, np.clip(np.asarray(problem.starts[1]), lower, upper)


def _scipy_trf(residual, jacobian, start, lower, upper):
    optimize = pytest.importorskip("scipy.optimize")
    return optimize.least_squares(
        lambda x: np.asarray(residual(jnp.asarray(x))),
        start,
        jac=lambda x: np.asarray(jacobian(jnp.asarray(x))),
        bounds=(lower, upper),
        method="trf",
        xtol=1e-15,
        ftol=1e-15,
        gtol=1e-15,
        max_nfev=20000,
    )


# (QR for every problem doubles the compilations: in the slow set; the default set runs Cholesky)
@pytest.mark.parametrize(
    "linear_solver", [jaxnls.Cholesky(), pytest.param(jaxnls.QR(), marks=pytest.mark.slow)], ids=["Cholesky", "QR"]
)
@pytest.mark.parametrize("name", NAMES)
def test_bounded_nist_problems_match_scipy_trf_and_satisfy_kkt(name, linear_solver):
    problem, lower, upper, start = bounded_nist(name)
    residual = jax.jit(lambda x: problem.residual_fn(x, problem.args))
    jacobian = jax.jit(jax.jacfwd(lambda x: problem.residual_fn(x, problem.args)))
    reference = _scipy_trf(residual, jacobian, start, lower, upper)
    solver = jaxnls.LevenbergMarquardt(rtol=1e-12, atol=1e-12, linear_solver=linear_solver)
    sol = jaxnls.solve(
        problem.residual_fn, jnp.asarray(start), problem.args, bounds=(lower, upper), solver=solver, max_steps=2000
    )
    status = jaxnls.Status(int(sol.status))
    x = np.asarray(sol.params)
    where = (
        f"{name} ({type(linear_solver).__name__}): {status.name}, cost {float(sol.cost):.12e}, scipy "
        f"{reference.cost:.12e}"
    )
    assert status.converged, where
    assert float(sol.cost) <= reference.cost * (1 + COST_MATCH), where
    assert not kkt_violations(
        solver, status, x, np.asarray(residual(x)), np.asarray(jacobian(x)), lower, upper, residual_fn=residual
    ), where
    assert x[0] == (upper[0] if np.isfinite(upper[0]) else lower[0]), where  # the bound is active


MGH_BOXES = {
    # (problem, bounds): each excludes an unconstrained minimum (box 3-d keeps another inside its box)
    "rosenbrock": (mgh.rosenbrock, np.array([-1.2, 1.0]), ([-np.inf, -np.inf], [0.5, np.inf])),
    "helical valley": (mgh.helical_valley, np.array([-1.0, 0.0, 0.0]), ([-np.inf, -np.inf, 0.1], [np.inf] * 3)),
    "freudenstein-roth": (mgh.freudenstein_roth, np.array([0.5, -2.0]), ([0.0, -np.inf], [np.inf, 3.5])),
    "bard": (mgh.bard, np.array([1.0, 1.0, 1.0]), ([-np.inf, 0.0, 2.0], [0.05, np.inf, np.inf])),
    "box 3-d": (mgh.box_3d(10), np.array([0.0, 10.0, 20.0]), ([0.0, 5.0, 0.0], [np.inf, 15.0, 1.5])),
}


@pytest.mark.parametrize("name", list(MGH_BOXES))
def test_bounded_mgh_problems_match_scipy_trf_and_satisfy_kkt(name):
    residual_fn, start, (lower, upper) = MGH_BOXES[name]
    lower, upper = np.asarray(lower, float), np.asarray(upper, float)
    start = np.clip(start, lower, upper)
    residual = jax.jit(lambda x: residual_fn(x))
    jacobian = jax.jit(jax.jacfwd(lambda x: residual_fn(x)))
    reference = _scipy_trf(residual, jacobian, start, lower, upper)
    # a cost whose residuals are all at rounding level (1e-14 of the start's) is zero: at a zero-residual minimum
    # (box 3-d's (1, 10, 1) lies inside its box) two solvers' costs of ~1e-32 differ by rounding alone
    start_residual = np.asarray(residual(start))
    rounding = start_residual.size * (1e-14 * np.max(np.abs(start_residual))) ** 2
    for solver in (
        SOLVER,
        jaxnls.Dogleg(rtol=1e-12, atol=1e-12),
        jaxnls.IndirectLevenbergMarquardt(rtol=1e-12, atol=1e-12),
    ):
        sol = jaxnls.solve(residual_fn, jnp.asarray(start), bounds=(lower, upper), solver=solver, max_steps=2000)
        status = jaxnls.Status(int(sol.status))
        x = np.asarray(sol.params)
        where = (
            f"{name}, {type(solver).__name__}: {status.name}, x {x}, cost {float(sol.cost):.12e}, scipy "
            f"{reference.cost:.12e} at {reference.x}"
        )
        assert status.converged, where
        assert float(sol.cost) <= reference.cost * (1 + COST_MATCH) + rounding, where
        assert not kkt_violations(
            solver, status, x, np.asarray(residual(x)), np.asarray(jacobian(x)), lower, upper, residual_fn=residual
        ), where


def exponential(p, args):
    t, y = args
    return p[0] * jnp.exp(-p[1] * t) + p[2] - y


T = jnp.linspace(0.0, 4.0, 30)
Y = 2.0 * jnp.exp(-0.8 * T) + 0.3


def test_a_batch_mixing_bounded_and_free_problems_equals_its_problems_solved_alone():
    """Per-problem bounds (batch axis in front): problem 0 unbounded, 1 with an active upper bound, 2 with an
    inactive one; each bit-identical to its own solve."""
    starts = jnp.asarray([[1.0, 1.0, 0.0]] * 3)
    lower = jnp.full((3, 3), -jnp.inf)
    upper = jnp.asarray([[jnp.inf] * 3, [1.5, jnp.inf, jnp.inf], [5.0, jnp.inf, jnp.inf]])
    batch = jaxnls.solve(
        exponential, starts, (T, Y), batched=True, args_axes=None, bounds=(lower, upper), solver=SOLVER
    )
    for i in range(3):
        alone = jaxnls.solve(exponential, starts[i], (T, Y), bounds=(lower[i], upper[i]), solver=SOLVER)
        np.testing.assert_array_equal(batch.params[i], alone.params)
        assert int(batch.status[i]) == int(alone.status) and jaxnls.Status(int(alone.status)).converged
    assert float(batch.params[1, 0]) == 1.5
    free = jaxnls.solve(exponential, starts[0], (T, Y), solver=SOLVER)
    np.testing.assert_allclose(batch.params[0], free.params, rtol=1e-10)
    np.testing.assert_allclose(batch.params[2], free.params, rtol=1e-10)  # its bound is not active


@pytest.mark.parametrize("mode", ["reverse", "forward"])
def test_derivative_at_a_bounded_solution_matches_central_differences(mode):
    """The active coordinate does not move with the data; the free ones follow the reduced implicit system."""
    lower, upper = jnp.asarray([0.0, 0.0, 0.5]), jnp.asarray([1.5, 10.0, 10.0])

    def params(y):
        return jaxnls.solve(
            exponential,
            jnp.asarray([1.0, 1.0, 0.6]),
            (T, y),
            bounds=(lower, upper),
            solver=jaxnls.LevenbergMarquardt(rtol=1e-13, atol=1e-13),
        ).params

    solution = np.asarray(params(Y))
    assert solution[0] == 1.5 and solution[2] == 0.5  # both bounds active, the rate free
    direction = jnp.asarray(np.random.default_rng(0).standard_normal(T.size))
    h = 1e-6
    expected = (np.asarray(params(Y + h * direction)) - np.asarray(params(Y - h * direction))) / (2 * h)
    if mode == "forward":
        derivative = np.asarray(jax.jvp(params, (Y,), (direction,))[1])
    else:
        derivative = np.asarray(jax.jacrev(params)(Y) @ direction)
    assert derivative[0] == 0.0 and derivative[2] == 0.0
    np.testing.assert_allclose(derivative, expected, rtol=1e-6, atol=1e-10)


def test_the_solution_follows_its_active_bound():
    """d x*/d(upper bound) at an active bound is 1 for that coordinate (checked by central differences)."""

    def params(bound):
        upper = jnp.stack([bound, jnp.asarray(jnp.inf), jnp.asarray(jnp.inf)])
        return jaxnls.solve(
            exponential,
            jnp.asarray([1.0, 1.0, 0.0]),
            (T, Y),
            bounds=(None, upper),
            solver=jaxnls.LevenbergMarquardt(rtol=1e-13, atol=1e-13),
        ).params

    bound = jnp.asarray(1.5)
    derivative = np.asarray(jax.jacfwd(params)(bound))
    h = 1e-6
    expected = (np.asarray(params(bound + h)) - np.asarray(params(bound - h))) / (2 * h)
    np.testing.assert_allclose(derivative, expected, rtol=1e-6, atol=1e-10)
    assert derivative[0] == 1.0


def test_fixed_coordinates_stay_at_their_start_and_the_rest_is_the_reduced_fit():
    """fixed=[False, True, False] equals fitting the two-parameter model with the rate written in (scipy's
    answer for that model as the truth), and the frozen coordinate carries params0's derivative."""
    optimize = pytest.importorskip("scipy.optimize")
    start = jnp.asarray([1.0, 0.65, 0.0])
    sol = jaxnls.solve(
        exponential, start, (T, Y + 0.01 * jnp.sin(5 * T)), fixed=jnp.asarray([False, True, False]), solver=SOLVER
    )
    assert float(sol.params[1]) == 0.65 and bool(sol.converged)
    reduced = optimize.least_squares(
        lambda q: np.asarray(exponential(jnp.asarray([q[0], 0.65, q[1]]), (T, Y + 0.01 * jnp.sin(5 * T)))),
        [1.0, 0.0],
        xtol=1e-15,
        ftol=1e-15,
        gtol=1e-15,
    )
    np.testing.assert_allclose(np.asarray(sol.params)[[0, 2]], reduced.x, rtol=1e-9)
    derivative = jax.jacfwd(
        lambda p0: jaxnls.solve(exponential, p0, (T, Y), fixed=jnp.asarray([False, True, False]), solver=SOLVER).params
    )(start)
    assert float(derivative[1, 1]) == 1.0 and float(derivative[1, 0]) == 0.0


def test_a_start_outside_the_box_is_projected_and_reported():
    with pytest.warns(UserWarning, match="outside the bounds at 1 coordinate.*projection"):
        sol = jaxnls.solve(
            exponential, jnp.asarray([5.0, 1.0, 0.0]), (T, Y), bounds=(None, [1.5, 10.0, 10.0]), solver=SOLVER
        )
    assert bool(sol.converged) and float(sol.params[0]) == 1.5
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # inside the box: no warning
        jaxnls.solve(exponential, jnp.asarray([1.0, 1.0, 0.0]), (T, Y), bounds=(None, [1.5, 10.0, 10.0]))


def test_bad_bounds_are_named():
    x0 = jnp.asarray([1.0, 1.0, 0.0])
    with pytest.raises(ValueError, match="lower > upper at coordinate 1"):
        jaxnls.solve(exponential, x0, (T, Y), bounds=([0.0, 2.0, 0.0], [1.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="NaN"):
        jaxnls.solve(exponential, x0, (T, Y), bounds=([0.0, jnp.nan, 0.0], None))
    with pytest.raises(ValueError, match="has shape"):
        jaxnls.solve(exponential, x0, (T, Y), bounds=(jnp.zeros(4), None))
    with pytest.raises(ValueError, match="pair"):
        jaxnls.solve(exponential, x0, (T, Y), bounds=jnp.zeros(3))
    with pytest.raises(TypeError, match="fixed must be booleans"):
        jaxnls.solve(exponential, x0, (T, Y), fixed=jnp.zeros(3))
    jaxlie = pytest.importorskip("jaxlie")
    with pytest.raises(NotImplementedError, match="Euclidean parameters"):
        jaxnls.solve(lambda p, a: p.log(), jaxlie.SO2.from_radians(0.3), bounds=(0.0, 1.0))


def test_a_box_holding_no_point_inside_a_callers_jit_is_a_nonfinite_start():
    """Inside a caller's jit the box cannot be refused; crossed bounds (lower > upper) or a NaN bound then make that
    problem's start NaN — ``NONFINITE_START`` — where the solve used to report ``CONVERGED_GRADIENT`` at a point
    outside the box. In a batch the others are solved as alone."""
    x0 = jnp.asarray([1.0, 1.0, 0.0])
    solve = jax.jit(lambda lo, hi: jaxnls.solve(exponential, x0, (T, Y), solver=SOLVER, bounds=(lo, hi)))
    for lower, upper in [(jnp.full(3, 3.0), jnp.zeros(3)), (jnp.zeros(3), jnp.asarray([jnp.nan, 9.0, 9.0]))]:
        sol = solve(lower, upper)
        assert int(sol.status) == jaxnls.Status.NONFINITE_START and np.isnan(np.asarray(sol.params)).all()
    lowers = jnp.asarray([[0.0, 0.0, -1.0], [3.0, 3.0, 3.0], [0.0, 0.0, -1.0]])
    uppers = jnp.asarray([[9.0, 9.0, 9.0], [0.0, 0.0, 0.0], [1.5, 9.0, 9.0]])
    batch = jax.jit(
        lambda lo, hi: jaxnls.solve(
            exponential, jnp.tile(x0, (3, 1)), (T, Y), solver=SOLVER, bounds=(lo, hi), batched=True, args_axes=None
        )
    )(lowers, uppers)
    assert int(batch.status[1]) == jaxnls.Status.NONFINITE_START
    for k in (0, 2):  # (alone inside a jit too: the same compiled path, so the same bits)
        alone = solve(lowers[k], uppers[k])
        assert bool(batch.converged[k])
        np.testing.assert_array_equal(batch.params[k], alone.params)
