"""Core solver behaviour against independent truth: closed forms, scipy's answer, solo-vs-batch."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import jaxnls
from jaxnls import Status

SOLVERS = [
    jaxnls.LevenbergMarquardt(),
    jaxnls.GaussNewton(),
    jaxnls.Dogleg(),
    jaxnls.IndirectLevenbergMarquardt(),
    jaxnls.LevenbergMarquardt(linear_solver=jaxnls.QR()),
]
TIGHT = dict(rtol=1e-12, atol=1e-12, ftol=0.0)


def curve(p, t):
    a, b, c, d = p
    return a * jnp.exp(-b * t) + c * jnp.sin(d * t)


def curve_residual(p, args):
    t, y = args
    return curve(p, t) - y


T = np.linspace(0.0, 10.0, 100)
P_TRUE = np.array([2.0, 0.3, 0.5, 1.5])


def noisy_data(seed, size=None):
    rng = np.random.default_rng(seed)
    shape = (100,) if size is None else (size, 100)
    return np.asarray(curve(P_TRUE, T)) + 0.02 * rng.standard_normal(shape)


def scipy_fit(p0, y):
    fit = scipy.optimize.least_squares(
        lambda p: np.asarray(curve_residual(p, (T, y))),
        p0,
        jac=lambda p: np.asarray(jax.jacfwd(curve_residual)(p, (T, y))),
        method="lm",
        xtol=1e-15,
        ftol=1e-15,
        gtol=1e-15,
    )
    return fit.x, fit.cost


@pytest.mark.parametrize(
    "solver",
    SOLVERS,
    ids=lambda s: f"{type(s).__name__}-{type(s.linear_solver).__name__ if s.linear_solver else 'default'}",
)
def test_matches_scipy_on_noisy_curve_fit(solver):
    y = noisy_data(0)
    p0 = np.array([1.5, 0.4, 0.4, 1.4])
    sol = jaxnls.solve(
        curve_residual,
        jnp.asarray(p0),
        (T, y),
        solver=eqx.tree_at(
            lambda s: (s.rtol, s.atol, s.ftol), solver, (1e-12, 1e-12, 0.0), is_leaf=lambda x: x is None
        ),
    )
    ref_x, ref_cost = scipy_fit(p0, y)
    assert bool(sol.converged), Status(int(sol.status))
    np.testing.assert_allclose(sol.params, ref_x, rtol=1e-7)
    np.testing.assert_allclose(sol.cost, ref_cost, rtol=1e-10)
    # the reported cost is 0.5·Σr² at the returned parameters
    np.testing.assert_allclose(sol.cost, 0.5 * np.sum(np.asarray(curve_residual(sol.params, (T, y))) ** 2), rtol=1e-12)


def test_a_strategy_without_a_linear_solver_solves_dense_problems_with_cholesky():
    """The strategies' default linear_solver (None) is the solve's choice: in jaxnls.solve Cholesky, bit for bit
    the solve with Cholesky() given, at scipy's minimum. Outside a solve the strategy says it has none yet."""
    y = noisy_data(0)
    p0 = jnp.asarray([1.5, 0.4, 0.4, 1.4])
    chosen = jaxnls.solve(curve_residual, p0, (T, y), solver=jaxnls.Dogleg(**TIGHT))
    explicit = jaxnls.solve(curve_residual, p0, (T, y), solver=jaxnls.Dogleg(**TIGHT, linear_solver=jaxnls.Cholesky()))
    np.testing.assert_array_equal(chosen.params, explicit.params)
    assert int(chosen.num_steps) == int(explicit.num_steps)
    np.testing.assert_allclose(chosen.params, scipy_fit(np.asarray(p0), y)[0], rtol=1e-7)
    with pytest.raises(ValueError, match="Dogleg has no linear_solver yet"):
        jaxnls.Dogleg().step_solver  # noqa: B018


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_random_rational_fits_agree_with_scipy_and_are_stationary(seed):
    """Random well-posed problems: a rational model y = (a + b t) / (1 + c t) on noisy data."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0.0, 4.0, 30)
    truth = np.array([rng.uniform(0.5, 2.0), rng.uniform(-1.0, 1.0), rng.uniform(0.1, 1.0)])
    y = (truth[0] + truth[1] * t) / (1 + truth[2] * t) + 0.01 * rng.standard_normal(t.size)
    p0 = truth * (1 + 0.05 * rng.standard_normal(3))
    sol = jaxnls.solve(rational_residual, jnp.asarray(p0), (t, y), solver=jaxnls.LevenbergMarquardt(**TIGHT))
    fit = scipy.optimize.least_squares(
        lambda p: np.asarray(rational_residual(p, (t, y))),
        p0,
        method="lm",
        jac=lambda p: np.asarray(jax.jacfwd(rational_residual)(p, (t, y))),
        xtol=1e-15,
        ftol=1e-15,
        gtol=1e-15,
    )
    # noise can put the minimum at infinity (b, c -> inf with b/c fixed): not a well-posed instance
    assume(np.all(np.abs(fit.x) < 1e3))
    assert bool(sol.converged)
    np.testing.assert_allclose(sol.cost, fit.cost, rtol=1e-9)
    np.testing.assert_allclose(sol.params, fit.x, rtol=1e-6, atol=1e-9)
    r = rational_residual(sol.params, (t, y))
    jac = jax.jacfwd(rational_residual)(sol.params, (t, y))
    # at a minimum Jᵀr = 0 (relative to the sizes of J and r)
    assert np.max(np.abs(jac.T @ r)) <= 1e-8 * np.linalg.norm(jac) * np.linalg.norm(r)


def rational_residual(p, args):
    t, y = args
    return (p[0] + p[1] * t) / (1 + p[2] * t) - y


def test_batch_equals_solo_solves():
    ys = noisy_data(1, size=6)
    rng = np.random.default_rng(2)
    p0 = P_TRUE * (1 + 0.1 * rng.standard_normal((6, 4)))
    batch = jaxnls.solve(curve_residual, jnp.asarray(p0), (T, ys), batched=True, args_axes=(None, 0))
    for i in range(6):
        solo = jaxnls.solve(curve_residual, jnp.asarray(p0[i]), (T, ys[i]))
        np.testing.assert_allclose(batch.params[i], solo.params, rtol=1e-10)
        np.testing.assert_allclose(batch.cost[i], solo.cost, rtol=1e-10)
        assert int(batch.status[i]) == int(solo.status)
        assert int(batch.num_steps[i]) == int(solo.num_steps)


def test_bad_neighbours_never_change_good_answers():
    """A NaN start and a diverging element share the batch with good ones; the good ones are bitwise
    what they are in a batch of good problems only."""
    ys = noisy_data(3, size=4)
    rng = np.random.default_rng(4)
    p0 = P_TRUE * (1 + 0.1 * rng.standard_normal((4, 4)))
    clean = jaxnls.solve(curve_residual, jnp.asarray(p0), (T, ys), batched=True, args_axes=(None, 0))
    poisoned = p0.copy()
    poisoned[1] = np.nan
    poisoned[2] = [1.0, -50.0, 0.0, 0.0]  # exp(50 t): residuals overflow to inf along the path
    mixed = jaxnls.solve(curve_residual, jnp.asarray(poisoned), (T, ys), batched=True, args_axes=(None, 0))
    for i in (0, 3):
        np.testing.assert_array_equal(mixed.params[i], clean.params[i])
        np.testing.assert_array_equal(mixed.cost[i], clean.cost[i])
        assert int(mixed.num_steps[i]) == int(clean.num_steps[i])
    assert int(mixed.status[1]) == Status.NONFINITE_START
    assert not bool(mixed.converged[1])
    # a start that is not finite has no gradient: NaN, not the 0 of a stationary point
    assert np.isnan(mixed.gradient_norm[1]) and np.isfinite(np.asarray(mixed.gradient_norm)[[0, 3]]).all()
    assert np.isfinite(mixed.cost[2]) or not bool(mixed.converged[2])


@pytest.mark.parametrize("slots", [1, 5, 16])
def test_working_set_takes_the_same_iterations_as_the_whole_batch(slots):
    """Problems that need 4 to 68 iterations, a NaN start and an overflowing one, run through a
    refilled working set of a few slots: every problem ends exactly where the whole-batch loop (and
    its solo solve) leaves it."""
    size = 24
    ys = noisy_data(20, size=size)
    rng = np.random.default_rng(21)
    p0 = P_TRUE * (1 + rng.uniform(-0.6, 0.6, (size, 4)))  # near and far starts: 4..68 iterations
    p0[3] = np.nan
    p0[7] = [1.0, -50.0, 0.0, 0.0]
    p0[11] = P_TRUE
    kwargs = dict(batched=True, args_axes=(None, 0), solver=jaxnls.LevenbergMarquardt(**TIGHT))
    whole = jaxnls.solve(curve_residual, jnp.asarray(p0), (T, ys), working_set=None, **kwargs)
    part = jaxnls.solve(curve_residual, jnp.asarray(p0), (T, ys), working_set=slots, **kwargs)
    steps = np.asarray(whole.num_steps)
    assert steps.max() > 2.5 * np.median(steps)  # the kind of batch a working set is for
    np.testing.assert_array_equal(part.status, whole.status)
    np.testing.assert_array_equal(part.num_steps, whole.num_steps)
    np.testing.assert_array_equal(part.num_accepted, whole.num_accepted)
    np.testing.assert_allclose(part.params, whole.params, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(part.cost, whole.cost, rtol=1e-13)
    np.testing.assert_allclose(part.initial_cost, whole.initial_cost, rtol=1e-13)
    assert int(part.status[3]) == Status.NONFINITE_START
    slowest = int(np.argmax(steps))
    solo = jaxnls.solve(curve_residual, jnp.asarray(p0[slowest]), (T, ys[slowest]), solver=kwargs["solver"])
    assert int(solo.num_steps) == steps[slowest]
    np.testing.assert_allclose(part.params[slowest], solo.params, rtol=1e-12)


def test_working_set_auto_rule_and_bad_values():
    from jaxnls._solve import _working_set_size

    cpu = jax.default_backend() == "cpu" and jax.device_count() == 1
    big, small = jnp.zeros((1024, 4)), jnp.zeros((100, 4))
    assert _working_set_size("auto", big, True, False) == (64 if cpu else None)
    assert _working_set_size("auto", jnp.zeros((16384, 4)), True, False) == (256 if cpu else None)
    assert _working_set_size("auto", small, True, False) is None  # B < 4·64: whole batch
    assert _working_set_size(10, small, True, False) == 10
    assert _working_set_size(100, small, True, False) is None
    assert _working_set_size(10, small, False, False) is None
    for bad in (0, -3, 2.5, True, "all"):
        with pytest.raises(ValueError, match="working_set"):
            jaxnls.solve(
                curve_residual,
                jnp.ones((2, 4)),
                (T, noisy_data(0, size=2)),
                batched=True,
                args_axes=(None, 0),
                working_set=bad,
            )


def test_pytree_params_residuals_and_shared_args():
    """Dict parameters, a tuple of residual blocks, args mixing batched and shared leaves."""

    def residual(p, args):
        t, y, weight = args["t"], args["y"], args["weight"]
        model = p["amp"][0] * jnp.exp(-p["rates"][0] * t) + p["amp"][1] * jnp.exp(-p["rates"][1] * t)
        return (model - y, weight * (p["amp"] - 1.0))

    t = np.linspace(0, 3, 40)
    truth = [(np.array([1.0, 2.0]), np.array([0.5, 3.0])), (np.array([1.5, 0.5]), np.array([1.0, 4.0]))]
    y = np.stack([a[0] * np.exp(-r[0] * t) + a[1] * np.exp(-r[1] * t) for a, r in truth])
    params0 = {"amp": jnp.array([[1.2, 1.8], [1.4, 0.6]]), "rates": jnp.array([[0.6, 2.5], [1.1, 3.5]])}
    args = {"t": t, "y": y, "weight": 0.1}
    sol = jaxnls.solve(
        residual,
        params0,
        args,
        batched=True,
        args_axes={"t": None, "y": 0, "weight": None},
        solver=jaxnls.LevenbergMarquardt(**TIGHT),
    )
    assert sol.params["amp"].shape == (2, 2) and sol.params["rates"].shape == (2, 2)
    assert np.all(np.asarray(sol.converged))
    for i in range(2):
        flat = lambda q, i=i: jnp.concatenate(
            [jnp.ravel(r) for r in residual({"amp": q[:2], "rates": q[2:]}, {"t": t, "y": y[i], "weight": 0.1})]
        )
        x0 = np.concatenate([params0["amp"][i], params0["rates"][i]])
        fit = scipy.optimize.least_squares(
            flat, x0, jac=jax.jacfwd(flat), method="lm", xtol=1e-15, ftol=1e-15, gtol=1e-15
        )
        ours = np.concatenate([sol.params["amp"][i], sol.params["rates"][i]])
        np.testing.assert_allclose(ours, fit.x, rtol=1e-7)
        np.testing.assert_allclose(sol.cost[i], fit.cost, rtol=1e-9)


def test_fewer_residuals_than_parameters_uses_reverse_mode_and_converges():
    """m = 1 < n = 3: a point on the unit sphere; any such point is a zero-cost minimum."""

    def residual(x, args):
        return jnp.sum(x**2, keepdims=True) - 1.0

    sol = jaxnls.solve(residual, jnp.array([0.3, -0.2, 2.0]), None, solver=jaxnls.LevenbergMarquardt(**TIGHT))
    assert bool(sol.converged)
    assert float(sol.cost) < 1e-20
    np.testing.assert_allclose(np.linalg.norm(sol.params), 1.0, rtol=1e-10)


@pytest.mark.parametrize("solver", SOLVERS[:4], ids=lambda s: type(s).__name__)
def test_rank_deficient_problem_gives_finite_least_squares_answer(solver):
    """r = (a + b) t - y: only a + b is identifiable; JᵀJ is exactly singular."""

    def residual(p, args):
        t, y = args
        return (p[0] + p[1]) * t - y

    t = np.linspace(0, 1, 20)
    y = 3.0 * t + 0.01 * np.sin(7 * t)
    sol = jaxnls.solve(residual, jnp.array([0.2, 0.7]), (t, y), solver=solver)
    slope = np.dot(t, y) / np.dot(t, t)  # closed-form least-squares slope
    assert np.all(np.isfinite(np.asarray(sol.params)))
    assert bool(sol.converged), Status(int(sol.status))
    np.testing.assert_allclose(float(sol.params[0] + sol.params[1]), slope, rtol=1e-9)
    np.testing.assert_allclose(float(sol.cost), 0.5 * np.sum((slope * t - y) ** 2), rtol=1e-9)


@pytest.mark.parametrize("n", [1, 2, 4, 8, 9, 12])
def test_cholesky_steps_solve_the_damped_normal_equations(n):
    """Cholesky's step (elimination with Cholesky's pivots up to n = 8, LAPACK above) against NumPy's solve of
    (JᵀJ + diag(d)) δ = -Jᵀr, for a batch of random full-rank Jacobians with and without damping; and a
    rank-deficient J (two equal columns) gives a finite step that solves the equations in the least-squares sense
    (JᵀJ δ = -Jᵀr holds: -Jᵀr lies in the range of JᵀJ)."""
    rng = np.random.default_rng(n)
    solver = jaxnls.Cholesky()
    step = jax.jit(jax.vmap(lambda r, j, d: solver.solve(solver.linearize(r, j), d)))
    jac = rng.standard_normal((6, 3 * n, n)) * np.exp(rng.uniform(-2, 2, (6, 1, n)))
    res = rng.standard_normal((6, 3 * n))
    damping = np.where(np.arange(6)[:, None] < 3, 0.0, rng.uniform(0.01, 1, (6, n)))
    got = np.asarray(step(res, jac, damping))
    for k in range(6):
        gram = jac[k].T @ jac[k] + np.diag(damping[k])
        np.testing.assert_allclose(got[k], np.linalg.solve(gram, -jac[k].T @ res[k]), rtol=1e-9, atol=1e-12)
    if n > 1:
        jac[:, :, 1] = jac[:, :, 0]
        got = np.asarray(step(res, jac, np.zeros((6, n))))
        assert np.all(np.isfinite(got))
        for k in range(6):
            gram, rhs = jac[k].T @ jac[k], -jac[k].T @ res[k]
            np.testing.assert_allclose(gram @ got[k], rhs, rtol=1e-6, atol=1e-6 * np.abs(rhs).max())


def test_float32_path_keeps_dtype_and_converges():
    y = noisy_data(5).astype(np.float32)
    p0 = jnp.asarray([1.5, 0.4, 0.4, 1.4], dtype=jnp.float32)
    sol = jaxnls.solve(
        curve_residual, p0, (T.astype(np.float32), y), solver=jaxnls.LevenbergMarquardt(rtol=1e-6, atol=1e-6)
    )
    assert sol.params.dtype == jnp.float32 and sol.cost.dtype == jnp.float32
    assert bool(sol.converged), Status(int(sol.status))
    ref_x, ref_cost = scipy_fit(np.asarray(p0, np.float64), y.astype(np.float64))
    np.testing.assert_allclose(np.asarray(sol.params, np.float64), ref_x, rtol=1e-3)
    np.testing.assert_allclose(float(sol.cost), ref_cost, rtol=1e-4)


def test_jit_and_vmap_around_solve_match_batched_solve():
    ys = noisy_data(6, size=3)
    p0 = jnp.tile(jnp.asarray([1.5, 0.4, 0.4, 1.4]), (3, 1))
    batched = jaxnls.solve(curve_residual, p0, (T, ys), batched=True, args_axes=(None, 0))
    vmapped = jax.vmap(lambda p, y: jaxnls.solve(curve_residual, p, (T, y)))(p0, ys)
    jitted = jax.jit(lambda p, y: jaxnls.solve(curve_residual, p, (T, y), batched=True, args_axes=(None, 0)))(p0, ys)
    for other in (vmapped, jitted):
        np.testing.assert_allclose(other.params, batched.params, rtol=1e-10)
        np.testing.assert_array_equal(other.status, batched.status)
    # a Solution holds arrays only: it stacks and slices like any pytree
    stacked = jax.tree_util.tree_map(lambda a, b: jnp.stack([a, b]), batched, jitted)
    assert stacked.cost.shape == (2, 3)


def test_no_recompilation_for_new_data_of_the_same_shape():
    traces = []

    def residual(p, args):
        traces.append(None)
        return curve_residual(p, args)

    p0 = jnp.asarray([1.5, 0.4, 0.4, 1.4])
    jaxnls.solve(residual, p0, (T, noisy_data(7)))
    count = len(traces)
    assert count > 0
    for seed in (8, 9):
        jaxnls.solve(residual, p0 * 1.01, (T, noisy_data(seed)))
    assert len(traces) == count


def test_a_new_shape_compiles_one_program_per_call():
    """The residual's size is read from shapes: a batched solve, and a batched covariance, of shapes not
    seen before compile their own program and nothing else (slicing one problem out of params0 and args
    eagerly compiled a program per slice and new shape, ~50 ms of a first call). Counted from JAX's own
    events: every program lowered for compilation, also one that a persistent compilation cache would then
    supply (the command line's ``main()``, run in-process by other tests, turns that cache on); the inputs are
    device arrays made before counting."""
    compiled = []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/jaxpr_to_mlir_module_duration":
            compiled.append(kwargs.get("fun_name"))

    y = jnp.asarray(noisy_data(11, size=7)[:, :23])  # (7, 23): data per problem
    p0 = jnp.asarray(np.tile([1.5, 0.4, 0.4, 1.4], (7, 1)))
    t = jnp.asarray(T[:23])
    jaxnls.solve(curve_residual, p0[:2], (t, y[:2]), batched=True, args_axes=(None, 0))  # the probes, once
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        solution = jaxnls.solve(curve_residual, p0, (t, y), batched=True, args_axes=(None, 0))
        jax.block_until_ready(solution)
        solve_programs = list(compiled)
        jax.block_until_ready(
            jaxnls.covariance(curve_residual, solution.params, (t, y), batched=True, args_axes=(None, 0))
        )
        covariance_programs = compiled[len(solve_programs) :]
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert len(solve_programs) == 1, solve_programs
    assert len(covariance_programs) == 1, covariance_programs


def test_equinox_module_in_args():
    class Model(eqx.Module):
        basis: jax.Array
        activation: callable = eqx.field(static=True)

        def __call__(self, p):
            return self.activation(self.basis @ p)

    rng = np.random.default_rng(10)
    model = Model(jnp.asarray(rng.standard_normal((30, 3))), jnp.tanh)
    truth = np.array([0.3, -0.5, 0.8])
    y = model(truth)
    sol = jaxnls.solve(lambda p, m: m(p) - y, jnp.zeros(3), model, solver=jaxnls.LevenbergMarquardt(**TIGHT))
    np.testing.assert_allclose(sol.params, truth, rtol=1e-8)


def test_gradient_tolerance_at_exact_start_and_zero_max_steps():
    y = np.asarray(curve(P_TRUE, T))
    at_minimum = jaxnls.solve(curve_residual, jnp.asarray(P_TRUE), (T, y))
    assert int(at_minimum.status) == Status.CONVERGED_GRADIENT and int(at_minimum.num_steps) == 0
    untouched = jaxnls.solve(curve_residual, jnp.asarray(P_TRUE) * 1.1, (T, y), max_steps=0)
    assert int(untouched.status) == Status.MAX_STEPS
    np.testing.assert_array_equal(untouched.params, np.asarray(P_TRUE) * 1.1)


def test_max_steps_is_reported_not_converged():
    sol = jaxnls.solve(curve_residual, jnp.asarray([1.5, 0.4, 0.4, 1.4]), (T, noisy_data(11)), max_steps=2)
    assert int(sol.status) == Status.MAX_STEPS and not bool(sol.converged)
    assert int(sol.num_steps) == 2


def test_rejected_steps_at_a_nonfinite_wall_do_not_count_as_parameter_convergence():
    """The start sits on a wall beyond which the residual is NaN, and the minimum (x = 2) lies beyond
    it. Every trial is rejected and the damped steps shrink far below the parameter tolerance; a tiny
    REJECTED step must not be mistaken for convergence (the stall jaxls warns about)."""

    def residual(x, args):
        return jnp.where(x > 1.0, jnp.nan, x - 2.0)

    sol = jaxnls.solve(residual, jnp.array([1.0]), None, solver=jaxnls.LevenbergMarquardt(rtol=1e-8, atol=1e-8))
    assert not bool(sol.converged)
    # the last trials round back onto the wall point itself, so "stalled" and "non-finite" are both honest
    assert int(sol.status) in (Status.STALLED, Status.NONFINITE_RESIDUAL)
    assert int(sol.num_accepted) == 0 and float(sol.params[0]) == 1.0


def test_a_float32_damping_that_overflows_the_step_stalls_and_does_not_blame_the_residual():
    """MGH Meyer in float32 with tight tolerances: λ grows until λ·D overflows float32 (D ~ 1e14) and the step is NaN;
    that is a stall, not ``NONFINITE_RESIDUAL`` ("every nearby trial point was non-finite"), which it was called
    although the residual is finite at the answer and around it (checked here)."""
    times = 45.0 + 5.0 * np.arange(1, 17, dtype=np.float32)
    observed = np.array(
        [34780, 28610, 23650, 19630, 16370, 13720, 11540, 9744, 8261, 7030, 6005, 5147, 4427, 3820, 3307, 2872],
        np.float32,
    )

    def meyer(p, args):
        t, y = args
        return p[0] * jnp.exp(p[1] / (t + p[2])) - y

    data = (jnp.asarray(times), jnp.asarray(observed))
    start = jnp.array([0.02, 4000.0, 250.0], jnp.float32)
    sol = jaxnls.solve(meyer, start, data, solver=jaxnls.LevenbergMarquardt(rtol=1e-15, atol=1e-15), max_steps=300)
    assert sol.params.dtype == jnp.float32
    for nearby in (1.0, 1.001, 0.999):
        assert np.isfinite(np.asarray(meyer(sol.params * nearby, data))).all()
    assert int(sol.status) == Status.STALLED, Status(int(sol.status)).name


def test_steps_better_than_predicted_are_accepted_and_relax_damping():
    lm = jaxnls.LevenbergMarquardt()
    damping, growth = lm.update_control(
        (jnp.asarray(1.0), jnp.asarray(8.0)), jnp.asarray(True), jnp.asarray(3.0), None, None
    )
    assert float(damping) == pytest.approx(1.0 / 3.0) and float(growth) == 2.0
    damping, growth = lm.update_control(
        (jnp.asarray(1.0), jnp.asarray(2.0)), jnp.asarray(False), jnp.asarray(-1.0), None, None
    )
    assert float(damping) == 2.0 and float(growth) == 4.0


def test_trust_region_follows_the_gain_ratio():
    """Moré's radius rules: ρ ≥ 3/4 doubles the step just taken (and halves λ), ρ < 1/4 or a rejection
    halves min(Δ, 10‖Dδ‖) (and doubles λ), in between nothing changes; the first step caps Δ."""
    lm = jaxnls.IndirectLevenbergMarquardt()
    step, scale = jnp.array([0.0, 2.0]), jnp.array([1.0, 4.0])  # ‖Dδ‖ = 4
    no = jnp.asarray(False)

    def update(radius, damping, accepted, ratio, first=no):
        out = lm.update_control(
            (jnp.asarray(radius), jnp.asarray(damping), first), jnp.asarray(accepted), jnp.asarray(ratio), step, scale
        )
        return float(out[0]), float(out[1])

    assert update(10.0, 0.3, True, 0.9) == (8.0, 0.15)
    assert update(10.0, 0.3, False, -1.0) == (5.0, 0.6)
    assert update(100.0, 0.3, True, 0.1) == (20.0, 0.6)
    assert update(10.0, 0.3, True, 0.5) == (10.0, 0.3)
    assert update(10.0, 0.0, True, 0.5) == (8.0, 0.0)  # a Gauss-Newton step that fitted
    assert update(10.0, 0.3, True, 0.5, first=jnp.asarray(True)) == (4.0, 0.3)


@pytest.mark.parametrize("linear_solver", [jaxnls.Cholesky(), jaxnls.QR()], ids=["Cholesky", "QR"])
def test_trust_region_damping_solves_the_secular_equation(linear_solver):
    """λ from Moré's iteration gives ‖Dδ(λ)‖ within 10% of Δ, checked against the root of
    ‖D(JᵀJ + λD²)⁻¹Jᵀr‖ = Δ found by scipy's brentq in numpy; λ = 0 when the Gauss-Newton step fits."""
    from scipy.optimize import brentq

    from jaxnls.solvers.levenberg_marquardt import trust_region_damping

    rng = np.random.default_rng(31)
    jac = rng.standard_normal((12, 4)) * np.array([1.0, 10.0, 0.1, 3.0])
    res = rng.standard_normal(12)
    scale = np.sum(jac**2, axis=0) * rng.uniform(1.0, 5.0, 4)  # a running max is at least diag(JᵀJ)
    lin = linear_solver.linearize(jnp.asarray(res), jnp.asarray(jac))

    def length(lam):
        step = np.linalg.solve(jac.T @ jac + lam * np.diag(scale), -jac.T @ res)
        return np.linalg.norm(np.sqrt(scale) * step)

    gauss_newton = length(0.0)
    for radius in [0.5 * gauss_newton, 0.1 * gauss_newton, 1e-3 * gauss_newton]:
        lam = float(trust_region_damping(lin, jnp.asarray(scale), jnp.asarray(radius), jnp.asarray(0.0)))
        assert abs(length(lam) - radius) <= 0.1 * radius
        root = brentq(lambda t: length(t) - radius, 0.0, 1e6)
        assert lam == pytest.approx(root, rel=0.5)
    assert (
        float(trust_region_damping(lin, jnp.asarray(scale), jnp.asarray(1.05 * gauss_newton), jnp.asarray(0.7))) == 0.0
    )


def test_damping_is_per_problem():
    """Two problems of very different difficulty in one batch follow their own damping: the easy one
    takes exactly as many steps as it does alone."""
    ys = noisy_data(12, size=2)
    p0 = np.array([[1.9, 0.31, 0.5, 1.5], [0.1, 2.0, 3.0, 0.2]])
    batch = jaxnls.solve(curve_residual, jnp.asarray(p0), (T, ys), batched=True, args_axes=(None, 0))
    solo = jaxnls.solve(curve_residual, jnp.asarray(p0[0]), (T, ys[0]))
    assert int(batch.num_steps[0]) == int(solo.num_steps)
    assert int(batch.num_steps[1]) > int(batch.num_steps[0])


def test_throw_raises_with_the_reason():
    with pytest.raises(Exception, match="maximum number of steps"):
        jaxnls.solve(curve_residual, jnp.asarray([1.5, 0.4, 0.4, 1.4]), (T, noisy_data(13)), max_steps=1, throw=True)
    sol = jaxnls.solve(curve_residual, jnp.asarray([1.5, 0.4, 0.4, 1.4]), (T, noisy_data(13)), throw=True)
    assert bool(sol.converged)


def test_bad_inputs_raise_naming_the_problem():
    y = noisy_data(14)
    with pytest.raises(TypeError, match=r"params0\['b'\].*int"):
        jaxnls.solve(lambda p, a: p["a"] - p["b"], {"a": jnp.zeros(2), "b": jnp.zeros(2, jnp.int32)}, None)
    with pytest.raises(ValueError, match=r"params0\['b'\]: 3"):
        jaxnls.solve(lambda p, a: p["a"] - p["b"], {"a": jnp.zeros((2, 2)), "b": jnp.zeros((3, 2))}, None, batched=True)
    with pytest.raises(ValueError, match=r"args\[1\] has leading size 100 but params0 has batch size 2"):
        jaxnls.solve(curve_residual, jnp.ones((2, 4)), (T, y), batched=True, args_axes=(None, 0))
    with pytest.raises(TypeError, match=r"residual_fn output.*int"):
        jaxnls.solve(lambda p, a: jnp.zeros(3, jnp.int32), jnp.zeros(2), None)
    with pytest.raises(ValueError, match="no array leaves"):
        jaxnls.solve(lambda p, a: jnp.zeros(3), {}, None)
    with pytest.raises(TypeError, match="solver must be a jaxnls solver"):
        jaxnls.solve(curve_residual, jnp.ones(4), (T, y), solver="lm")
    with pytest.raises(ValueError, match="max_steps"):
        jaxnls.solve(curve_residual, jnp.ones(4), (T, y), max_steps=-1)
    nan_start = jaxnls.solve(curve_residual, jnp.array([1.0, np.nan, 0.0, 1.0]), (T, y))
    assert int(nan_start.status) == Status.NONFINITE_START and not bool(nan_start.converged)


def test_verbose_prints_one_row_per_iteration(capfd):
    sol = jaxnls.solve(curve_residual, jnp.asarray([1.5, 0.4, 0.4, 1.4]), (T, noisy_data(15)), verbose=True)
    jax.effects_barrier()
    out = capfd.readouterr().out.strip().splitlines()
    assert out[0].split() == ["iter", "cost", "cost_change", "|gradient|", "|step|", "damping", "accepted"]
    rows = out[1:]
    assert len(rows) == int(sol.num_steps) + 1  # iteration 0 is the start
    assert float(rows[0].split()[1]) == pytest.approx(float(sol.initial_cost), rel=1e-6)
    assert float(rows[-1].split()[1]) == pytest.approx(float(sol.cost), rel=1e-6)
    assert sum(r.split()[-1] == "yes" for r in rows[1:]) == int(sol.num_accepted)


def test_summary_reports_the_solution():
    sol = jaxnls.solve(curve_residual, jnp.asarray([1.5, 0.4, 0.4, 1.4]), (T, noisy_data(16)))
    text = sol.summary()
    assert f"{float(sol.cost):.6e}" in text and f"{float(sol.initial_cost):.6e}" in text
    assert Status(int(sol.status)).name in text and "Residuals" in text and "100" in text
    ys = noisy_data(17, size=3)
    batch = jaxnls.solve(curve_residual, jnp.ones((3, 4)), (T, ys), batched=True, args_axes=(None, 0))
    assert "Problems" in batch.summary() and "Termination" in batch.summary()


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_batch_answer_equals_solo_answers_property(seed):
    rng = np.random.default_rng(seed)
    t = np.linspace(0.0, 4.0, 30)
    truth = np.stack([rng.uniform(0.5, 2.0, 3), rng.uniform(-1.0, 1.0, 3), rng.uniform(0.1, 1.0, 3)], axis=1)
    ys = (truth[:, :1] + truth[:, 1:2] * t) / (1 + truth[:, 2:] * t) + 0.01 * rng.standard_normal((3, t.size))
    p0 = truth * (1 + 0.2 * rng.standard_normal(truth.shape))
    batch = jaxnls.solve(rational_residual, jnp.asarray(p0), (t, ys), batched=True, args_axes=(None, 0))
    for i in range(3):
        solo = jaxnls.solve(rational_residual, jnp.asarray(p0[i]), (t, ys[i]))
        np.testing.assert_allclose(batch.params[i], solo.params, rtol=1e-9, atol=1e-12)
        assert int(batch.status[i]) == int(solo.status)


def test_small_solves_compile_without_llvm_optimisation_and_agree_with_the_default_compile():
    """A solve whose batch Jacobian has < 2**16 entries is compiled at LLVM level 0 (compile-dominated);
    inside a caller's jit the defaults apply. Both give the same answer."""
    from jaxnls._driver import SMALL_JACOBIAN as _SMALL_JACOBIAN
    from jaxnls._solve import _residual_size

    ys = noisy_data(41, size=3)
    p0 = jnp.tile(jnp.asarray([1.5, 0.4, 0.4, 1.4]), (3, 1))
    from jaxnls._driver import compiled
    from jaxnls._solve import _solve_jit

    assert _residual_size(curve_residual, p0, (T, ys), True, (None, 0)) == T.size
    # 3 problems × 100 residuals × 4 parameters get the small-solve compile; 300 problems the default one
    small, large = (compiled(_solve_jit, nested=False, jacobian_entries=b * T.size * 4) for b in (3, 300))
    assert small is compiled(_solve_jit, nested=False, jacobian_entries=_SMALL_JACOBIAN - 1)
    assert large is compiled(_solve_jit, nested=False, jacobian_entries=_SMALL_JACOBIAN) and small is not large
    kwargs = dict(batched=True, args_axes=(None, 0), solver=jaxnls.LevenbergMarquardt(**TIGHT))
    direct = jaxnls.solve(curve_residual, p0, (T, ys), **kwargs)
    nested = jax.jit(lambda p: jaxnls.solve(curve_residual, p, (T, ys), **kwargs).params)(p0)
    np.testing.assert_allclose(direct.params, nested, rtol=1e-10)


_UNDER_XLA_DEFAULTS = """
import json, sys
import jax, jax.numpy as jnp, numpy as np
jax.config.update("jax_enable_x64", True)
sys.path.insert(0, sys.argv[1])
from test_solve import P_TRUE, T, TIGHT, curve_residual, noisy_data
import jaxnls

y = jnp.asarray(noisy_data(43))
solver = jaxnls.LevenbergMarquardt(**TIGHT)
params = jax.jit(lambda p: jaxnls.solve(curve_residual, p, (T, y), solver=solver).params)(jnp.asarray(P_TRUE))
gradient = jax.grad(lambda y: jnp.sum(jaxnls.solve(curve_residual, jnp.asarray(P_TRUE), (T, y), solver=solver).params))(y)
print(json.dumps({"params": np.asarray(params).tolist(), "gradient": np.asarray(gradient).tolist()}))
"""


# (slow: ~12 s: a fresh process; moved out of the default set to keep it within 10 minutes on 2 cores,
# benchmarks/README.md (at); CI runs the slow set)
@pytest.mark.slow
def test_nested_solve_under_xla_defaults():
    """The suite compiles with XLA:CPU's classic emitters and no LLVM optimisation (conftest.py); a user's nested
    solve compiles with XLA's defaults. Run one nested solve and one gradient through a solve in a process without
    those flags: the same answer, and a gradient that central differences confirm."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    # (imported here: the fresh process imports this module, and importing conftest would set the flags again)
    from conftest import SUITE_XLA_FLAGS

    env = dict(os.environ)
    flags = " ".join(flag for flag in env.get("XLA_FLAGS", "").split() if flag not in SUITE_XLA_FLAGS)
    if flags:
        env["XLA_FLAGS"] = flags
    else:
        env.pop("XLA_FLAGS", None)
    out = subprocess.run(
        [sys.executable, "-c", _UNDER_XLA_DEFAULTS, str(Path(__file__).parent)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    y = noisy_data(43)
    solver = jaxnls.LevenbergMarquardt(**TIGHT)
    here = jaxnls.solve(curve_residual, jnp.asarray(P_TRUE), (T, jnp.asarray(y)), solver=solver).params
    np.testing.assert_allclose(result["params"], here, rtol=1e-10)
    direction = np.random.default_rng(44).standard_normal(y.shape)
    from conftest import directional_difference

    def total(t):
        sol = jaxnls.solve(curve_residual, jnp.asarray(P_TRUE), (T, jnp.asarray(y + t * direction)), solver=solver)
        return float(jnp.sum(sol.params))

    np.testing.assert_allclose(
        np.dot(result["gradient"], direction), directional_difference(total, 0.0, 1.0), rtol=1e-6
    )


def test_a_build_of_xla_that_refuses_the_compiler_options_solves_with_its_defaults(monkeypatch):
    """The top-level solves' XLA options are checked on first use; an XLA that does not know one of them
    ("No such compile option") solves with its defaults, the same answer."""
    from jaxnls import _driver

    y = noisy_data(45)
    solver = jaxnls.LevenbergMarquardt(**TIGHT)
    expected = jaxnls.solve(curve_residual, jnp.asarray(P_TRUE), (T, y), solver=solver).params
    unknown = {"xla_option_this_xla_does_not_know": False}
    monkeypatch.setattr(_driver, "_options", lambda small, graph: unknown)
    for cache in (_driver._knows_compiler_options, _driver._top_level):
        cache.cache_clear()
    try:
        assert _driver.top_level_compiler_options(jacobian_entries=1, graph=False) == {}
        refused = jaxnls.solve(curve_residual, jnp.asarray(P_TRUE), (T, y), solver=solver).params
        np.testing.assert_allclose(refused, expected, rtol=1e-10)
    finally:
        for cache in (_driver._knows_compiler_options, _driver._top_level):
            cache.cache_clear()


def test_top_level_solves_compile_in_one_code_generation_part_per_core_at_most_32(monkeypatch):
    """XLA:CPU splits a program's machine code into parts compiled in parallel (32 by default); a top-level solve asks
    for one per core the process may use (its CPU affinity, not the machine's count), never more than 32
    (benchmarks/README.md (au)), and a graph solve the same."""
    import os

    from jaxnls import _driver

    parts = _driver.top_level_compiler_options(jacobian_entries=None, graph=False)[
        "xla_cpu_parallel_codegen_split_count"
    ]
    assert parts == min(32, len(os.sched_getaffinity(0)))
    assert (
        _driver.top_level_compiler_options(jacobian_entries=1, graph=True)["xla_cpu_parallel_codegen_split_count"]
        == parts
    )
    for cores, expected in [({0}, 1), ({0, 1, 2}, 3), (set(range(64)), 32)]:
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid, cores=cores: cores)
        monkeypatch.setattr(os, "cpu_count", lambda: 1000)  # (the machine's count is not the process's)
        assert _driver._codegen_parts() == expected


def test_large_dense_solves_compile_at_llvm_level_2_unless_the_process_names_a_level(monkeypatch):
    """A top-level dense solve at or above SMALL_JACOBIAN batch Jacobian entries compiles at LLVM level 2 (instead of
    XLA's 3; measured in benchmarks/README.md (av)); a small one at 0; a graph solve keeps XLA's level; a level the
    process's XLA_FLAGS names (the suite's) is kept. A batch solved at level 2 (which the suite's flags otherwise
    never reach) ends where scipy's MINPACK does and where the same batch ends under the suite's level 0."""
    from jaxnls import _driver

    large = _driver.SMALL_JACOBIAN
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_use_fusion_emitters=false")
    assert (
        _driver.top_level_compiler_options(jacobian_entries=large, graph=False)["xla_backend_optimization_level"] == 2
    )
    assert (
        _driver.top_level_compiler_options(jacobian_entries=large - 1, graph=False)["xla_backend_optimization_level"]
        == 0
    )
    assert "xla_backend_optimization_level" not in _driver.top_level_compiler_options(
        jacobian_entries=large, graph=True
    )
    monkeypatch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=1")
    assert "xla_backend_optimization_level" not in _driver.top_level_compiler_options(
        jacobian_entries=large, graph=False
    )

    batch = 200  # 200 problems x 100 residuals x 4 parameters = 80,000 entries
    assert batch * 100 * 4 >= large
    y = noisy_data(46, batch)
    p0 = np.tile(P_TRUE * 1.1, (batch, 1))
    solver = jaxnls.LevenbergMarquardt(**TIGHT)

    def solve_batch():
        # a fresh residual: a program of its own, compiled with the options in force
        residual = lambda p, args: curve_residual(p, args)
        return jaxnls.solve(
            residual, jnp.asarray(p0), (T, jnp.asarray(y)), solver=solver, batched=True, args_axes=(None, 0)
        )

    at_level_of_the_process = solve_batch()
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_use_fusion_emitters=false")
    _driver._top_level.cache_clear()
    try:
        at_level_2 = solve_batch()
    finally:
        _driver._top_level.cache_clear()
    assert np.all(np.asarray(at_level_2.converged)) and np.all(np.asarray(at_level_of_the_process.converged))
    for i in (0, 99, 199):
        np.testing.assert_allclose(at_level_2.params[i], scipy_fit(p0[i], y[i])[0], rtol=1e-7)
    np.testing.assert_allclose(at_level_2.params, at_level_of_the_process.params, rtol=1e-9)
