"""jaxnls.losses: ρ, ρ', ρ'' against the closed forms written out independently here and against
autodiff of ρ; the ratio ρ(s)/s and the whitened residual's cost; Triggs' correction against its defining
identities (gradient ρ'Jᵀr, Gauss-Newton Hessian ρ'JᵀJ + 2ρ''JᵀrrᵀJ where ρ'' > 0) and against Ceres'
rule α = 0 where ρ'' ≤ 0; scale validation and differentiability in the scale."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import directional_difference

from jaxnls.losses import AbstractRobustLoss, Arctan, Cauchy, Huber, SoftL1, Tukey

A = 1.7
S = np.array([0.0, 1e-12, 1e-6, 0.3, A**2 * 0.999, A**2 * 1.001, 4.0, 50.0, 1e4])

# written out from the usual definitions (Ceres' loss_function.h documentation), per element
CLOSED_FORMS = {
    Huber: lambda s: s if s <= A**2 else 2 * A * np.sqrt(s) - A**2,
    SoftL1: lambda s: 2 * A**2 * (np.sqrt(1 + s / A**2) - 1),
    Cauchy: lambda s: A**2 * np.log1p(s / A**2),
    Arctan: lambda s: A * np.arctan(s / A),
    Tukey: lambda s: A**2 / 3 * (1 - (1 - s / A**2) ** 3) if s <= A**2 else A**2 / 3,
}
LOSSES = list(CLOSED_FORMS)


@pytest.mark.parametrize("loss_cls", LOSSES)
def test_values_and_derivatives_against_closed_forms_and_autodiff(loss_cls):
    loss = loss_cls(A)
    value, d1, d2 = loss.rho(jnp.asarray(S))
    np.testing.assert_allclose(value, [CLOSED_FORMS[loss_cls](s) for s in S], rtol=1e-13, atol=1e-300)
    first = jax.vmap(jax.grad(lambda s: loss.rho(s)[0]))(jnp.asarray(S))
    second = jax.vmap(jax.grad(jax.grad(lambda s: loss.rho(s)[0])))(jnp.asarray(S))
    np.testing.assert_allclose(d1, first, rtol=1e-12)
    np.testing.assert_allclose(d2, second, rtol=1e-10, atol=1e-14)
    # and against central differences away from the kinks at s = a² (Huber, Tukey) and 0
    for s in [0.3, 4.0, 50.0]:
        h = 1e-6 * s
        fd = (CLOSED_FORMS[loss_cls](s + h) - CLOSED_FORMS[loss_cls](s - h)) / (2 * h)
        np.testing.assert_allclose(loss.rho(jnp.asarray(s))[1], fd, rtol=1e-7)
    # Ceres' normalisation: ρ(0) = 0, ρ'(0) = 1
    assert float(value[0]) == 0.0 and float(d1[0]) == 1.0


@pytest.mark.parametrize("loss_cls", LOSSES)
def test_ratio_and_whitened_cost(loss_cls):
    loss = loss_cls(A)
    # where the closed form itself has no cancellation (s >= 1e-3: relative error below 1e-12)
    s = S[S >= 1e-3]
    np.testing.assert_allclose(loss.ratio(jnp.asarray(s)), [CLOSED_FORMS[loss_cls](v) / v for v in s], rtol=1e-12)
    # near 0: ρ(s)/s = ρ'(0) + O(s) = 1 + O(s)
    assert float(loss.ratio(jnp.asarray(0.0))) == 1.0
    for tiny in [1e-12, 1e-6]:
        assert abs(float(loss.ratio(jnp.asarray(tiny))) - 1.0) < 2 * tiny / A**2 + 1e-15
    r = jnp.asarray([0.4, -2.0, 1.1])
    np.testing.assert_allclose(
        0.5 * jnp.sum(loss.whiten(r) ** 2), 0.5 * CLOSED_FORMS[loss_cls](float(r @ r)), rtol=1e-13
    )
    # whitening is differentiable at r = 0 (a converged term) with the plain least-squares Jacobian
    np.testing.assert_allclose(jax.jacfwd(loss.whiten)(jnp.zeros(3)), np.eye(3), atol=1e-12)


@pytest.mark.parametrize("loss_cls", LOSSES)
@pytest.mark.parametrize("scale_of_r", [0.1, 1.0, 3.0])
def test_triggs_correction_identities(loss_cls, scale_of_r):
    loss = loss_cls(A)
    rng = np.random.default_rng(0)
    r = jnp.asarray(scale_of_r * rng.standard_normal(3))
    J = jnp.asarray(rng.standard_normal((3, 4)))
    s = float(r @ r)
    _, d1, d2 = (float(v) for v in loss.rho(jnp.asarray(s)))
    rc, Jc = loss.correct(r, J)
    np.testing.assert_allclose(Jc.T @ rc, d1 * (J.T @ r), rtol=1e-12, atol=1e-14)  # exact gradient
    # ρ'' <= 0 everywhere for these losses: Ceres' α = 0, plain reweighting by √ρ'
    assert d2 <= 0
    np.testing.assert_allclose(Jc, np.sqrt(d1) * J, rtol=1e-13)
    np.testing.assert_allclose(rc, np.sqrt(d1) * r, rtol=1e-13)


class _Convex(AbstractRobustLoss):
    """ρ(s) = s + s²/(2a²): ρ'' > 0, so the correction's second-order branch is exercised."""

    def rho(self, s):
        a2 = self.scale**2
        return s + s**2 / (2 * a2), 1 + s / a2, 1 / a2 + 0 * s

    def ratio(self, s):
        return 1 + s / (2 * self.scale**2)


def test_triggs_second_order_branch_reproduces_the_gauss_newton_hessian_of_rho():
    loss = _Convex(A)
    rng = np.random.default_rng(1)
    r, J = jnp.asarray(rng.standard_normal(3)), jnp.asarray(rng.standard_normal((3, 4)))
    s = r @ r
    _, d1, d2 = loss.rho(s)
    rc, Jc = loss.correct(r, J)
    np.testing.assert_allclose(Jc.T @ rc, d1 * J.T @ r, rtol=1e-12)
    expected = d1 * J.T @ J + 2 * d2 * jnp.outer(J.T @ r, J.T @ r)
    np.testing.assert_allclose(Jc.T @ Jc, expected, rtol=1e-12)


def test_scale_validation():
    for bad in [0.0, -1.0, np.inf, np.nan]:
        with pytest.raises(ValueError, match="scale"):
            Cauchy(bad)


@pytest.mark.parametrize("loss_cls", LOSSES)
def test_cost_is_differentiable_in_the_scale(loss_cls):
    r = jnp.asarray([0.9, -2.5])

    def cost(a):
        return 0.5 * jnp.sum(loss_cls(a).whiten(r) ** 2)

    a = jnp.asarray(1.3)
    np.testing.assert_allclose(jax.grad(cost)(a), directional_difference(cost, a, jnp.asarray(1.0)), rtol=1e-7)


# -- robust losses in a solve --------------------------------------------------------------------------


def _line_with_outliers():
    rng = np.random.default_rng(3)
    t = np.linspace(-2, 2, 40)
    y = 1.5 * t - 0.5 + 0.05 * rng.standard_normal(40)
    y[::8] += rng.choice([-1, 1], 5) * rng.uniform(3, 6, 5)  # five gross outliers
    return t, y


def _line_graph(t, y, loss):
    from jaxnls import graph

    def residual(x, data):
        return jnp.atleast_1d(x[0] * data[0] + x[1] - data[1])

    return graph.FactorGraph(
        {"line": jnp.zeros((1, 2))},
        [graph.CostGroup(residual, "line", np.zeros(len(t), int), jnp.stack([t, y], axis=1), loss=loss)],
    )


@pytest.mark.parametrize(
    "loss_cls, scipy_name, scale_of",
    [
        (Huber, "huber", lambda c: c),
        (SoftL1, "soft_l1", lambda c: c),
        (Cauchy, "cauchy", lambda c: c),
        (Arctan, "arctan", lambda c: c**2),
    ],
)
def test_graph_solve_with_a_robust_loss_equals_scipys_robust_least_squares(loss_cls, scipy_name, scale_of):
    """scipy.optimize.least_squares(loss=name, f_scale=C) minimises ½C²Σρ₀(r²/C²), which is our loss
    with a = C (Huber, SoftL1, Cauchy) or a = C² (Arctan)."""
    from scipy.optimize import least_squares

    from jaxnls import Dogleg, graph

    t, y = _line_with_outliers()
    c = 0.7
    reference = least_squares(
        lambda x: x[0] * t + x[1] - y,
        np.zeros(2),
        loss=scipy_name,
        f_scale=c,
        xtol=1e-15,
        ftol=1e-15,
        gtol=1e-15,
        max_nfev=10000,
    )
    sol = graph.solve(
        _line_graph(t, y, loss_cls(scale_of(c))),
        solver=Dogleg(linear_solver=graph.SparseDirect(), ftol=1e-15, gtol=1e-15),
        max_steps=500,
    )
    np.testing.assert_allclose(np.asarray(sol.params["line"][0]), reference.x, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(float(sol.cost), reference.cost, rtol=1e-9)
    # and the outliers did pull a plain least-squares fit away
    plain = np.polyfit(t, y, 1)
    assert np.abs(plain - np.array([1.5, -0.5])).max() > 5 * np.abs(reference.x - np.array([1.5, -0.5])).max()


def test_graph_solve_with_tukey_equals_a_direct_minimisation():
    from scipy.optimize import minimize

    from jaxnls import Dogleg, graph

    t, y = _line_with_outliers()
    a = 1.0

    def objective(x):
        s = (x[0] * t + x[1] - y) ** 2
        return 0.5 * np.sum(np.where(s <= a**2, a**2 / 3 * (1 - (1 - s / a**2) ** 3), a**2 / 3))

    start = np.polyfit(t[1::8], y[1::8], 1)  # Tukey is not convex: both start inside the inlier basin
    reference = minimize(objective, start, method="Nelder-Mead", options=dict(xatol=1e-12, fatol=1e-15, maxiter=20000))
    problem = _line_graph(t, y, Tukey(a))
    problem = graph.FactorGraph({"line": jnp.asarray(start)[None]}, problem.costs)
    sol = graph.solve(problem, solver=Dogleg(linear_solver=graph.SparseDirect(), ftol=1e-15, gtol=1e-15), max_steps=500)
    np.testing.assert_allclose(np.asarray(sol.params["line"][0]), reference.x, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(float(sol.cost), reference.fun, rtol=1e-9)


def _line_residual(x, data):
    t, y = data
    return x[0] * t + x[1] - y


def test_dense_solve_with_a_robust_loss_equals_scipy_and_its_gradients_match_central_differences():
    from scipy.optimize import least_squares

    import jaxnls

    t, y = _line_with_outliers()
    c = 0.7
    reference = least_squares(
        lambda x: x[0] * t + x[1] - y,
        np.zeros(2),
        loss="cauchy",
        f_scale=c,
        xtol=1e-15,
        ftol=1e-15,
        gtol=1e-15,
        max_nfev=10000,
    )
    # converged to the parameter test alone, so that central differences of the solution resolve 1e-7
    solver = jaxnls.LevenbergMarquardt(ftol=0.0, gtol=0.0, rtol=1e-14, atol=0.0)
    data = (jnp.asarray(t), jnp.asarray(y))
    sol = jaxnls.solve(_line_residual, jnp.zeros(2), data, solver=solver, loss=Cauchy(c), max_steps=500)
    np.testing.assert_allclose(sol.params, reference.x, rtol=1e-7)
    np.testing.assert_allclose(float(sol.cost), reference.cost, rtol=1e-10)

    # d(slope)/d(scale) and d(slope)/d(y) through the implicit adjoint, against central differences
    def slope(scale, y_values, adjoint=jaxnls.Implicit()):
        out = jaxnls.solve(
            _line_residual,
            jnp.asarray(reference.x),
            (data[0], y_values),
            solver=solver,
            loss=Cauchy(scale),
            max_steps=500,
            adjoint=adjoint,
        )
        return out.params[0]

    scale = jnp.asarray(c)
    grad_scale, grad_y = jax.grad(slope, argnums=(0, 1))(scale, data[1])
    np.testing.assert_allclose(
        grad_scale, directional_difference(lambda s: slope(s, data[1]), scale, 1.0, 1e-4), rtol=1e-6
    )
    direction = jnp.asarray(np.random.default_rng(4).standard_normal(len(t)))
    np.testing.assert_allclose(
        grad_y @ direction, directional_difference(lambda v: slope(scale, v), data[1], direction, 1e-4), rtol=1e-6
    )
    # forward mode through the same rule
    _, tangent = jax.jvp(lambda s: slope(s, data[1]), (scale,), (jnp.asarray(1.0),))
    np.testing.assert_allclose(tangent, grad_scale, rtol=1e-10)
    # and the unrolled iterations agree with the implicit rule at convergence
    unrolled = jax.grad(lambda s: slope(s, data[1], jaxnls.Unroll()))(scale)
    np.testing.assert_allclose(unrolled, grad_scale, rtol=1e-6)
    # direct loss minimisation with the loss: its estimate tends to the Gauss-Newton implicit derivative
    # (bias ∝ ε; tests/test_adjoint.py checks that rule itself)
    gauss_newton = jax.grad(slope, argnums=(0, 1))(scale, data[1], jaxnls.Implicit(hessian="gauss_newton"))
    for epsilon, tolerance in [(1e-2, None), (1e-6, 1e-4)]:
        estimate = jax.grad(slope, argnums=(0, 1))(scale, data[1], jaxnls.DirectLossMinimization(epsilon))
        errors = [float(jnp.max(jnp.abs(e - g)) / jnp.max(jnp.abs(g))) for e, g in zip(estimate, gauss_newton)]
        if tolerance is None:
            coarse = max(errors)
        else:
            assert max(errors) < tolerance and max(errors) < 1e-2 * coarse


def test_dense_solve_rejects_a_non_loss():
    import jaxnls

    with pytest.raises(TypeError, match="loss"):
        jaxnls.solve(_line_residual, jnp.zeros(2), (jnp.ones(3), jnp.ones(3)), loss=lambda s: s)
