"""Residual + Jacobian evaluation: forward and reverse mode agree with central differences."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from conftest import central_difference
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxnls._jacobian import flat_residual_fn, residual_and_jacobian


def residual(x, args):
    w = args
    return jnp.concatenate([jnp.sin(w @ x), jnp.exp(0.1 * x) * x[::-1], jnp.atleast_1d(jnp.prod(jnp.cos(x)))])


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 6), k=st.integers(1, 8))
def test_forward_and_reverse_jacobians_match_central_differences(seed, n, k):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1.5, 1.5, n)
    w = rng.standard_normal((k, n))
    m = k + n + 1
    # compiled, as the solve loop runs them (and ~5x faster than tracing them op by op)
    forward = jax.jit(functools.partial(residual_and_jacobian, residual, num_residuals=m))  # m >= n: forward
    reverse = jax.jit(functools.partial(residual_and_jacobian, residual, num_residuals=0))  # forces reverse
    r_fwd, j_fwd = forward(jnp.asarray(x), w)
    r_rev, j_rev = reverse(jnp.asarray(x), w)
    numeric = central_difference(lambda z: residual(jnp.asarray(z), w), x)
    # residuals are O(1); near a zero of sin the relative error of one rounding is unbounded
    np.testing.assert_allclose(r_fwd, residual(x, w), rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(r_rev, r_fwd, rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(j_fwd, j_rev, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(j_fwd, numeric, rtol=1e-6, atol=1e-8)


def test_pytree_residuals_are_flattened_in_the_working_dtype():
    def pytree_residual(p, args):
        return {"a": p["u"] ** 2, "b": (jnp.sum(p["v"]).astype(jnp.float32)[None], p["v"] - 1.0)}

    params = {"u": jnp.array([1.0, 2.0]), "v": jnp.array([[0.5, 0.25]])}
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    fn = flat_residual_fn(pytree_residual, unravel, jnp.float64)
    r = fn(flat, None)
    assert r.dtype == jnp.float64 and r.shape == (5,)
    np.testing.assert_allclose(r, [1.0, 4.0, 0.75, -0.5, -0.75])
