"""jaxnls.covariance against truth we did not produce: scipy's curve_fit covariance (weighted, both sigma
conventions), a reparametrised model for a rank-deficient one, central differences for its derivatives, the
explicit chart for a Lie-group parameter. (NIST's certified standard deviations: tests/test_nist.py.)"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxnls

T = np.linspace(0.0, 4.0, 30)
RNG = np.random.default_rng(3)
SIGMA = 0.05 + 0.1 * RNG.random(T.size)
Y = 2.0 * np.exp(-0.8 * T) + 0.3 + SIGMA * RNG.standard_normal(T.size)


def model(t, a, b, c):
    return a * np.exp(-b * t) + c


def model_jacobian(t, a, b, c):
    """Exact, so that curve_fit's covariance carries no finite-difference error."""
    e = np.exp(-b * t)
    return np.stack([e, -a * t * e, np.ones_like(t)], axis=1)


def weighted_residual(p, args):
    t, y, sigma = args
    return (p[0] * jnp.exp(-p[1] * t) + p[2] - y) / sigma


ARGS = (jnp.asarray(T), jnp.asarray(Y), jnp.asarray(SIGMA))


@pytest.mark.parametrize("absolute_sigma", [False, True])
def test_weighted_fit_matches_scipy_curve_fit(absolute_sigma):
    optimize = pytest.importorskip("scipy.optimize")
    popt, pcov = optimize.curve_fit(
        model,
        T,
        Y,
        p0=[1.0, 1.0, 0.0],
        sigma=SIGMA,
        absolute_sigma=absolute_sigma,
        jac=model_jacobian,
        xtol=1e-14,
        ftol=1e-14,
        gtol=1e-14,
    )
    sol = jaxnls.solve(
        weighted_residual, jnp.asarray([1.0, 1.0, 0.0]), ARGS, solver=jaxnls.LevenbergMarquardt(rtol=1e-13, atol=1e-13)
    )
    assert bool(sol.converged)
    np.testing.assert_allclose(sol.params, popt, rtol=1e-7)
    at_scipy = jaxnls.covariance(weighted_residual, jnp.asarray(popt), ARGS, absolute_sigma=absolute_sigma)
    np.testing.assert_allclose(at_scipy.covariance, pcov, rtol=1e-8)
    ours = jaxnls.covariance(weighted_residual, sol.params, ARGS, absolute_sigma=absolute_sigma)
    np.testing.assert_allclose(ours.covariance, pcov, rtol=1e-6)
    np.testing.assert_allclose(ours.standard_errors, np.sqrt(np.diag(pcov)), rtol=1e-6)
    expected_correlation = pcov / np.sqrt(np.outer(np.diag(pcov), np.diag(pcov)))
    np.testing.assert_allclose(ours.correlation, expected_correlation, rtol=1e-6, atol=1e-12)
    assert int(ours.rank) == 3 and bool(ours.full_rank)
    m, n = T.size, 3
    chi2 = float(np.sum(((model(T, *popt) - Y) / SIGMA) ** 2))
    assert float(ours.residual_variance) == pytest.approx(1.0 if absolute_sigma else chi2 / (m - n), rel=1e-6)


def sum_only_residual(p, args):
    """(p0 + p1)·exp(-p2 t) + p3 - y: only the sum p0 + p1 is determined."""
    t, y = args
    return (p[0] + p[1]) * jnp.exp(-p[2] * t) + p[3] - y


def test_rank_deficient_jacobian_gives_a_finite_pseudo_inverse_and_its_rank():
    """Rank 3 of 4, every entry finite; the variances the data do determine (the sum p0 + p1, the decay, the
    offset) equal those of the identifiable model q·exp(-p2 t) + p3 fitted by scipy's curve_fit; the result is
    a generalised inverse of JᵀJ (A C A = s² A)."""
    optimize = pytest.importorskip("scipy.optimize")
    y = model(T, 2.0, 0.8, 0.3) + 0.02 * RNG.standard_normal(T.size)
    popt, pcov = optimize.curve_fit(
        model, T, y, p0=[1.0, 1.0, 0.0], jac=model_jacobian, xtol=1e-14, ftol=1e-14, gtol=1e-14
    )
    # the same fit, its sum split unevenly between two parameters
    params = jnp.asarray([0.25 * popt[0], 0.75 * popt[0], popt[1], popt[2]])
    args = (jnp.asarray(T), jnp.asarray(y))
    cov = jaxnls.covariance(sum_only_residual, params, args)
    assert int(cov.rank) == 3 and not bool(cov.full_rank)
    c = np.asarray(cov.covariance)
    assert np.all(np.isfinite(c)) and np.all(np.isfinite(cov.correlation))
    # s² of the 4-parameter problem is ‖r‖²/(m - 4); curve_fit's identifiable model uses m - 3
    rescale = (T.size - 3) / (T.size - 4)
    to_identifiable = np.array([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    np.testing.assert_allclose(to_identifiable @ c @ to_identifiable.T, pcov * rescale, rtol=1e-7)
    jac = np.asarray(jax.jacfwd(sum_only_residual)(params, args))
    normal = jac.T @ jac
    np.testing.assert_allclose(
        normal @ c @ normal, float(cov.residual_variance) * normal, rtol=1e-7, atol=1e-9 * np.abs(normal).max()
    )


def test_zero_jacobian_column_has_zero_error_and_no_nan():
    def residual(p, args):
        return p[0] * args - 1.0 + 0.0 * p[1]

    cov = jaxnls.covariance(residual, jnp.asarray([1.0, 5.0]), jnp.linspace(1.0, 2.0, 5))
    assert int(cov.rank) == 1
    assert float(cov.standard_errors[1]) == 0.0
    assert np.all(np.isfinite(cov.covariance)) and np.all(np.isfinite(cov.correlation))
    assert float(cov.correlation[0, 0]) == 1.0 and float(cov.correlation[1, 1]) == 0.0


def _central_difference(f, x, direction, h=1e-6):
    return (f(x + h * direction) - f(x - h * direction)) / (2 * h)


@pytest.mark.parametrize("mode", ["reverse", "forward"])
def test_standard_errors_through_a_solve_match_central_differences(mode):
    """d(standard errors)/d(data) through solve (implicit derivative of the estimate) and the covariance's own
    dependence on the data, in float64."""
    start = jnp.asarray([1.0, 1.0, 0.0])
    solver = jaxnls.LevenbergMarquardt(rtol=1e-14, atol=1e-14)

    def errors(y):
        args = (ARGS[0], y, ARGS[2])
        sol = jaxnls.solve(weighted_residual, start, args, solver=solver)
        return jaxnls.covariance(weighted_residual, sol.params, args).standard_errors

    direction = jnp.asarray(RNG.standard_normal(T.size))
    expected = np.asarray(_central_difference(errors, ARGS[1], direction))
    if mode == "forward":
        derivative = jax.jvp(errors, (ARGS[1],), (direction,))[1]
    else:
        derivative = jax.jacrev(errors)(ARGS[1]) @ direction
    np.testing.assert_allclose(derivative, expected, rtol=1e-6, atol=1e-10)


def test_rank_deficient_covariance_derivative_matches_central_differences():
    """At fixed rank the pseudo-inverse is smooth: its derivative (Golub-Pereyra) against central differences."""
    y0 = jnp.asarray(model(T, 2.0, 0.8, 0.3) + 0.02 * RNG.standard_normal(T.size))
    params = jnp.asarray([0.5, 1.4, 0.8, 0.3])

    def flat_covariance(y):
        return jnp.ravel(jaxnls.covariance(sum_only_residual, params, (jnp.asarray(T), y)).covariance)

    direction = jnp.asarray(RNG.standard_normal(T.size))
    expected = np.asarray(_central_difference(flat_covariance, y0, direction))
    forward = jax.jvp(flat_covariance, (y0,), (direction,))[1]
    reverse = jax.jacrev(flat_covariance)(y0) @ direction
    np.testing.assert_allclose(forward, expected, rtol=1e-6, atol=1e-10)
    np.testing.assert_allclose(reverse, expected, rtol=1e-6, atol=1e-10)


def test_a_batch_equals_its_problems_one_by_one():
    starts = jnp.asarray([[1.0, 1.0, 0.0], [2.0, 0.5, 0.5], [1.5, 0.9, 0.2]])
    ys = jnp.stack([ARGS[1], ARGS[1] * 1.1, ARGS[1] + 0.05])
    args = (ARGS[0], ys, ARGS[2])
    sol = jaxnls.solve(weighted_residual, starts, args, batched=True, args_axes=(None, 0, None))
    batch = jaxnls.covariance(weighted_residual, sol.params, args, batched=True, args_axes=(None, 0, None))
    for i in range(3):
        alone = jaxnls.covariance(weighted_residual, sol.params[i], (ARGS[0], ys[i], ARGS[2]))
        np.testing.assert_allclose(batch.covariance[i], alone.covariance, rtol=1e-12)
        assert int(batch.rank[i]) == int(alone.rank)


def test_lie_group_parameters_get_the_covariance_of_their_tangent_perturbation():
    """An SO(2) rotation fitted to noisy rotated points: the covariance equals that of the right-perturbation
    chart δ ↦ R·Exp(δ) written out by hand as a Euclidean problem at δ = 0."""
    jaxlie = pytest.importorskip("jaxlie")
    points = jnp.asarray(RNG.standard_normal((12, 2)))
    truth = jaxlie.SO2.from_radians(0.7)
    observed = jax.vmap(truth.apply)(points) + 0.01 * jnp.asarray(RNG.standard_normal((12, 2)))

    def residual(params, args):
        rotation, shift = params["rotation"], params["shift"]
        return jax.vmap(rotation.apply)(args[0]) + shift[None, :] - args[1]

    sol = jaxnls.solve(residual, {"rotation": jaxlie.SO2.identity(), "shift": jnp.zeros(2)}, (points, observed))
    estimate = sol.params
    on_group = jaxnls.covariance(residual, estimate, (points, observed))

    def chart(delta, args):
        return residual(
            {"rotation": estimate["rotation"] @ jaxlie.SO2.exp(delta[:1]), "shift": estimate["shift"] + delta[1:]}, args
        )

    in_chart = jaxnls.covariance(chart, jnp.zeros(3), (points, observed))
    assert on_group.num_params == 3
    np.testing.assert_allclose(on_group.covariance, in_chart.covariance, rtol=1e-10)


def test_more_parameters_than_residuals_has_infinite_variance_unless_absolute():
    def residual(p, args):
        return p - args

    relative = jaxnls.covariance(residual, jnp.ones(3), jnp.zeros(3))
    assert np.isinf(float(relative.residual_variance))
    absolute = jaxnls.covariance(residual, jnp.ones(3), jnp.zeros(3), absolute_sigma=True)
    np.testing.assert_allclose(absolute.covariance, np.eye(3))
    # no NaN where s² is inf (it was inf·0 off the diagonal): ±inf where (JᵀJ)⁺ is not 0, 0 where it is, and the
    # correlations of (JᵀJ)⁺ (computed here by NumPy), which s² does not change; a parameter the residuals do not
    # see keeps the pseudo-inverse's 0
    jacobian = np.array([[1.0, 2.0, 0.0], [0.5, -1.0, 0.0]])  # two residuals, three parameters, one unseen

    def linear(p, args):
        return jnp.asarray(jacobian) @ p - args

    cov = jaxnls.covariance(linear, jnp.ones(3), jnp.zeros(2))
    pinv = np.linalg.pinv(jacobian.T @ jacobian)
    for field in (cov.covariance, cov.standard_errors, cov.correlation):
        assert not np.isnan(np.asarray(field)).any()
    np.testing.assert_array_equal(np.asarray(cov.covariance), np.where(pinv == 0, 0.0, np.copysign(np.inf, pinv)))
    np.testing.assert_array_equal(np.asarray(cov.standard_errors), [np.inf, np.inf, 0.0])
    d = np.sqrt(np.diag(pinv)[:2])
    np.testing.assert_allclose(np.asarray(cov.correlation)[:2, :2], pinv[:2, :2] / np.outer(d, d), rtol=1e-12)


def test_bad_input_is_named():
    with pytest.raises(TypeError, match="absolute_sigma must be a bool"):
        jaxnls.covariance(weighted_residual, jnp.ones(3), ARGS, absolute_sigma="yes")
    with pytest.raises(ValueError, match="rcond must be a number in"):
        jaxnls.covariance(weighted_residual, jnp.ones(3), ARGS, rcond=-1.0)
    with pytest.raises(TypeError, match=r"params.*dtype int"):
        jaxnls.covariance(weighted_residual, jnp.ones(3, int), ARGS)
    with pytest.raises(ValueError, match="args_axes"):
        jaxnls.covariance(weighted_residual, jnp.ones((2, 3)), ARGS, batched=True)


def test_summary_shows_the_parameter_table_and_high_correlations():
    """The lmfit-style table: the values and standard errors of the Solution and its covariance, named by the
    params pytree, and the one correlation above the threshold."""
    start = {"amplitude": jnp.asarray(1.0), "rate_offset": jnp.asarray([1.0, 0.0])}

    def residual(p, args):
        return weighted_residual(jnp.concatenate([p["amplitude"][None], p["rate_offset"]]), args)

    sol = jaxnls.solve(residual, start, ARGS)
    cov = jaxnls.covariance(residual, sol.params, ARGS)
    text = sol.summary(covariance=cov, min_correlation=0.0)
    values = [float(sol.params["amplitude"]), *map(float, sol.params["rate_offset"])]
    for name, value, error in zip(
        ["['amplitude']", "['rate_offset'][0]", "['rate_offset'][1]"], values, np.asarray(cov.standard_errors)
    ):
        row = next(line.split() for line in text.splitlines() if line.strip().startswith(name + " "))
        assert float(row[1]) == pytest.approx(value, rel=1e-9) and float(row[2]) == pytest.approx(error, rel=1e-6)
    correlations = [line for line in text.splitlines() if line.strip().startswith("(")]
    assert len(correlations) == 3
    assert "rank 3/3" in text
    with pytest.raises(ValueError, match="2 names for 3 parameters"):
        sol.summary(covariance=cov, names=["a", "b"])


def test_fixed_coordinates_are_known_exactly_and_the_rest_is_the_reduced_fit():
    """fixed=[False, True, False]: the covariance of (a, b) equals curve_fit's for the model with the rate written
    in (degrees of freedom m - 2), the rate's rows and columns are zero; a batch with per-problem masks agrees."""
    optimize = pytest.importorskip("scipy.optimize")
    rate = 0.8

    def reduced_model(t, a, c):
        return a * np.exp(-rate * t) + c

    def reduced_jacobian(t, a, c):
        return np.stack([np.exp(-rate * t), np.ones_like(t)], axis=1)

    popt, pcov = optimize.curve_fit(
        reduced_model, T, Y, p0=[1.0, 0.0], sigma=SIGMA, jac=reduced_jacobian, xtol=1e-14, ftol=1e-14, gtol=1e-14
    )
    params = jnp.asarray([popt[0], rate, popt[1]])
    mask = jnp.asarray([False, True, False])
    cov = jaxnls.covariance(weighted_residual, params, ARGS, fixed=mask)
    assert int(cov.num_free) == 2 and int(cov.rank) == 2 and bool(cov.full_rank)
    np.testing.assert_allclose(np.asarray(cov.covariance)[np.ix_([0, 2], [0, 2])], pcov, rtol=1e-8)
    np.testing.assert_array_equal(np.asarray(cov.covariance)[1], 0.0)
    np.testing.assert_array_equal(np.asarray(cov.covariance)[:, 1], 0.0)
    assert float(cov.standard_errors[1]) == 0.0
    batch = jaxnls.covariance(
        weighted_residual,
        jnp.stack([params, params]),
        ARGS,
        batched=True,
        args_axes=None,
        fixed=jnp.stack([mask, jnp.zeros(3, bool)]),
    )
    np.testing.assert_allclose(batch.covariance[0], cov.covariance, rtol=1e-12)
    free = jaxnls.covariance(weighted_residual, params, ARGS)
    np.testing.assert_allclose(batch.covariance[1], free.covariance, rtol=1e-12)
