"""jaxnls.linalg: symmetric matrix functions against scipy (values) and central differences (derivatives)
at random SPD matrices, exact ties (I, diag(1, 1, 2)) and 1e-9 ties; jvp/vjp consistency; float32 at ties."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from jaxnls.linalg import expm_sym, logm_spd, powm_spd, sqrtm_spd

from conftest import directional_difference

FUNCTIONS = {
    "logm": (logm_spd, lambda a: scipy.linalg.logm(a).real),
    "sqrtm": (sqrtm_spd, lambda a: scipy.linalg.sqrtm(a).real),
    "expm": (expm_sym, scipy.linalg.expm),
    "powm(0.3)": (lambda a: powm_spd(a, 0.3), lambda a: scipy.linalg.fractional_matrix_power(a, 0.3).real),
    "powm(-1.5)": (lambda a: powm_spd(a, -1.5), lambda a: scipy.linalg.fractional_matrix_power(a, -1.5).real),
}


def random_spd(seed, n=4):
    rng = np.random.default_rng(seed)
    b = rng.standard_normal((n, n))
    return b @ b.T + 0.5 * np.eye(n)


def tied(rng_seed=0):
    q, _ = np.linalg.qr(np.random.default_rng(rng_seed).standard_normal((3, 3)))
    return {
        "identity": np.eye(3),
        "diag(1,1,2)": np.diag([1.0, 1.0, 2.0]),
        "rotated diag(1,1,2)": q @ np.diag([1.0, 1.0, 2.0]) @ q.T,
        "1e-9 tie": q @ np.diag([1.0, 1.0 + 1e-9, 2.5]) @ q.T,
        "random SPD": random_spd(3, 3),
    }


def symmetric_direction(seed, n):
    e = np.random.default_rng(seed).standard_normal((n, n))
    return e + e.T


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_values_match_scipy(name):
    ours, reference = FUNCTIONS[name]
    for a in [random_spd(1), random_spd(2, 6), np.eye(3), np.diag([1.0, 1.0, 2.0])]:
        np.testing.assert_allclose(ours(jnp.asarray(a)), reference(a), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
@pytest.mark.parametrize("point", sorted(tied()))
def test_derivatives_match_central_differences_at_ties(name, point):
    ours, _ = FUNCTIONS[name]
    a = tied()[point]
    direction = symmetric_direction(7, a.shape[0])
    _, forward = jax.jvp(ours, (jnp.asarray(a),), (jnp.asarray(direction),))
    assert np.all(np.isfinite(forward))
    fd = directional_difference(lambda s: np.asarray(ours(jnp.asarray(a + s * direction))), 0.0, 1.0, step=1e-5)
    scale = np.max(np.abs(fd))
    assert np.max(np.abs(np.asarray(forward) - fd)) <= 1e-7 * scale
    # reverse mode is the transpose: <u, J v> == <J^T u, v>
    u = symmetric_direction(8, a.shape[0])
    _, pullback = jax.vjp(ours, jnp.asarray(a))
    (cotangent,) = pullback(jnp.asarray(u))
    np.testing.assert_allclose(np.sum(cotangent * direction), np.sum(u * np.asarray(forward)), rtol=1e-10)


def test_gradient_of_a_scalar_loss_through_logm_is_finite_where_eigh_composition_is_nan():
    def naive_logm(a):
        lam, u = jnp.linalg.eigh(a)
        return (u * jnp.log(lam)[None, :]) @ u.T

    loss = lambda f: (lambda a: jnp.sum(f(a) ** 2) + jnp.sum(f(a)))
    a = jnp.diag(jnp.array([1.0, 1.0, 2.0]))
    assert not np.all(np.isfinite(jax.grad(loss(naive_logm))(a)))  # the failure this module exists for
    g = jax.grad(loss(logm_spd))(a)
    direction = symmetric_direction(9, 3)
    fd = directional_difference(lambda s: float(loss(logm_spd)(a + s * direction)), 0.0, 1.0, step=1e-5)
    np.testing.assert_allclose(float(jnp.sum(g * direction)), fd, rtol=1e-8)


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_float32_derivatives_are_finite_at_ties(name):
    ours, _ = FUNCTIONS[name]
    for a in (np.eye(3), np.diag([1.0, 1.0, 2.0])):
        a32 = jnp.asarray(a, jnp.float32)
        _, forward = jax.jvp(ours, (a32,), (jnp.asarray(symmetric_direction(3, 3), jnp.float32),))
        g = jax.grad(lambda m: jnp.sum(ours(m)))(a32)
        assert forward.dtype == jnp.float32 and np.all(np.isfinite(forward)) and np.all(np.isfinite(g))


def test_batched_and_bad_input():
    batch = jnp.stack([jnp.asarray(random_spd(s)) for s in range(3)])
    np.testing.assert_allclose(logm_spd(batch)[1], logm_spd(batch[1]), rtol=1e-12)
    with pytest.raises(ValueError, match="square"):
        logm_spd(jnp.ones((3, 4)))
    with pytest.raises(ValueError, match="floating"):
        logm_spd(jnp.eye(3, dtype=jnp.int32))
