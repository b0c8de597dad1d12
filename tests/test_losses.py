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
    np.testing.assert_allclose(0.5 * jnp.sum(loss.whiten(r) ** 2), 0.5 * CLOSED_FORMS[loss_cls](float(r @ r)), rtol=1e-13)
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
