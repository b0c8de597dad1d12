"""jaxnls.linalg: symmetric matrix functions against scipy (values) and central differences (derivatives)
at random SPD matrices, exact ties (I, diag(1, 1, 2)) and 1e-9 ties; jvp/vjp consistency; float32 at ties;
second derivatives (jvp of grad, hessian, jacrev of grad, jvp of jvp) against differences of the exact first
derivative and a closed form."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from conftest import directional_difference

from jaxnls.linalg import expm_sym, logm_spd, powm_spd, sqrtm_spd

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

    loss = lambda f: lambda a: jnp.sum(f(a) ** 2) + jnp.sum(f(a))
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


# ------------------------------------------------------------------------------------------------
# second derivatives: forward over reverse, reverse over reverse, forward over forward
# ------------------------------------------------------------------------------------------------


def assert_close_relative(got, expected, rtol, what):
    error = np.max(np.abs(np.asarray(got) - expected))  # NaN fails too
    assert error <= rtol * np.max(np.abs(expected)), f"{what}: relative error {error / np.max(np.abs(expected)):.2e}"


def second_derivative_checker(loss, direction, first=None, reverse_over_reverse=True, step=1e-3, rtol=1e-7):
    """A check, at a point x, of the jvp of grad (forward over reverse), hessian (the same, full) and jacrev of
    grad (reverse over reverse, if ``reverse_over_reverse``) of ``loss`` along ``direction`` and, given
    ``first`` (x ↦ a first derivative of a matrix function), of its jvp (forward over forward), against central
    differences of the exact first derivatives (``jax.grad``, ``first``) at x ± t·direction with one Richardson
    step (error O(t⁴)). All compiled as one function, once for every point of one shape, at LLVM's lowest
    optimisation level (a quarter of the compile time, which is most of the test's)."""
    grad = jax.grad(loss)
    n = direction.ndim
    contract = lambda hessian: jnp.tensordot(hessian, direction, axes=n)

    @partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})
    def derivatives(x):
        out = {
            "grad": grad(x),
            "jvp(grad)": jax.jvp(grad, (x,), (direction,))[1],
            "hessian": contract(jax.hessian(loss)(x)),
        }
        if reverse_over_reverse:
            out["jacrev(grad)"] = contract(jax.jacrev(grad)(x))
        if first is not None:
            out["first"], out["jvp(jvp)"] = first(x), jax.jvp(first, (x,), (direction,))[1]
        return out

    def check(x):
        x = jnp.asarray(x)
        got = derivatives(x)
        shifted = {t: derivatives(x + t * direction) for t in (step, -step, step / 2, -step / 2)}
        central = lambda key, t: (np.asarray(shifted[t][key]) - np.asarray(shifted[-t][key])) / (2 * t)
        for key, modes in (("grad", ("jvp(grad)", "hessian", "jacrev(grad)")), ("first", ("jvp(jvp)",))):
            if key in got:
                expected = (4 * central(key, step / 2) - central(key, step)) / 3
                for mode in [mode for mode in modes if mode in got]:
                    assert_close_relative(got[mode], expected, rtol, mode)
        return got

    return check


def directions(n):
    """W, E, H: the weights of the losses below and the directions of their second derivatives."""
    return tuple(jnp.asarray(symmetric_direction(seed, n)) for seed in (30, 31, 32))


def matrix_function_checker(fn, n, **kwargs):
    """:func:`second_derivative_checker` for a scalar loss of F = ``fn`` of an n×n matrix, <W, F> + ‖F‖²/2,
    along E, with D²F[E, H] (:func:`directions`)."""
    weights, e, h = directions(n)
    loss = lambda m: jnp.sum(weights * fn(m)) + 0.5 * jnp.sum(fn(m) ** 2)
    return second_derivative_checker(loss, e, first=lambda m: jax.jvp(fn, (m,), (h,))[1], **kwargs)


SECOND_DERIVATIVES = {  # f'' of each function, for the closed form at c·I
    "logm": lambda c: -1.0 / c**2,
    "sqrtm": lambda c: -0.25 * c**-1.5,
    "expm": np.exp,
    "powm(0.3)": lambda c: 0.3 * (0.3 - 1.0) * c ** (0.3 - 2.0),
}


@pytest.mark.parametrize("name", sorted(SECOND_DERIVATIVES))
def test_second_derivatives_match_differences_of_the_exact_first_derivative_and_a_closed_form(name):
    """jvp of grad, hessian and jvp of jvp at exact ties (1.7·I, diag(1, 1, 2) and the same rotated), a 1e-9
    tie and distinct eigenvalues, against differences of the first derivative (exact at each). At c·I also
    against the closed form: F(cI + tE) = f(c)I + t f'(c)E + t² f''(c)E²/2 + ..., so D²F(cI)[E, H] =
    f''(c)(EH + HE)/2. eigh's own derivative inside the first-order rule gave NaN at the exact diagonal ties
    and O(1) errors at the rotated ones. (Reverse over reverse: the top-k and O2P tests.)"""
    ours, _ = FUNCTIONS[name]
    check = matrix_function_checker(ours, 3, reverse_over_reverse=False)
    c = 1.7
    _, e, h = directions(3)
    closed_form = 0.5 * SECOND_DERIVATIVES[name](c) * (e @ h + h @ e)
    np.testing.assert_allclose(check(c * np.eye(3))["jvp(jvp)"], closed_form, rtol=1e-12, atol=1e-12)
    for point in ("diag(1,1,2)", "rotated diag(1,1,2)", "1e-9 tie", "random SPD"):
        check(tied()[point])


def test_powm_differentiates_with_respect_to_a_traced_power():
    """d/dp A^p = A^p log A (closed form, SciPy's matrix logarithm), in reverse and forward mode and against
    central differences; inside jit the value is the eager one. A traced power raised an UnexpectedTracerError
    (the derivative rule closed over it)."""
    a = np.array([[2.0, 0.3, 0.1], [0.3, 1.0, -0.2], [0.1, -0.2, 0.7]])
    weights = np.arange(9.0).reshape(3, 3)

    def loss(p):
        return jnp.sum(weights * powm_spd(jnp.asarray(a), p))

    p = 0.37
    closed_form = np.sum(weights * (scipy.linalg.fractional_matrix_power(a, p).real @ scipy.linalg.logm(a).real))
    np.testing.assert_allclose(jax.grad(loss)(p), closed_form, rtol=1e-12)
    np.testing.assert_allclose(jax.jvp(loss, (p,), (1.0,))[1], closed_form, rtol=1e-12)
    np.testing.assert_allclose(closed_form, directional_difference(loss, p, 1.0), rtol=1e-8)
    np.testing.assert_allclose(jax.jit(loss)(p), loss(p), rtol=1e-14)


# ------------------------------------------------------------------------------------------------
# top-k projector, Newton-Schulz square root, O2P pooling, normalized cut
# ------------------------------------------------------------------------------------------------

from jaxnls.linalg import sqrtm_newton_schulz, top_k_projector  # noqa: E402
from jaxnls.nn import NormalizedCut, O2PPooling  # noqa: E402


def test_top_k_projector_value_and_derivative_with_ties_inside_the_groups():
    """Eigenvalues (1, 1, 3, 3): ties inside both groups, gap 2 between them. Value against numpy's
    eigenvectors; derivative against central differences."""
    q, _ = np.linalg.qr(np.random.default_rng(4).standard_normal((4, 4)))
    a = q @ np.diag([1.0, 1.0, 3.0, 3.0]) @ q.T
    np.testing.assert_allclose(top_k_projector(jnp.asarray(a), 2), q[:, 2:] @ q[:, 2:].T, atol=1e-12)
    direction = symmetric_direction(11, 4)
    _, forward = jax.jvp(lambda m: top_k_projector(m, 2), (jnp.asarray(a),), (jnp.asarray(direction),))
    fd = directional_difference(lambda s: np.asarray(top_k_projector(jnp.asarray(a + s * direction), 2)), 0.0, 1.0)
    assert np.max(np.abs(np.asarray(forward) - fd)) <= 1e-7 * np.max(np.abs(fd))
    with pytest.raises(ValueError, match="k must be"):
        top_k_projector(jnp.asarray(a), 5)


def test_top_k_projector_second_derivatives_with_ties_inside_the_top_group():
    """Eigenvalues (1, 2, 3, 3), k = 2: a tie inside the top group (exact on the diagonal, and rotated), and
    (1, 1, 3, 3), ties inside both groups. The projector is smooth there; its second derivatives match
    differences of its exact first derivative."""
    q, _ = np.linalg.qr(np.random.default_rng(4).standard_normal((4, 4)))
    check = matrix_function_checker(lambda m: top_k_projector(m, 2), 4)
    for eigenvalues in ([1.0, 2.0, 3.0, 3.0], [1.0, 1.0, 3.0, 3.0]):
        check(q @ np.diag(eigenvalues) @ q.T)
    check(np.diag([1.0, 2.0, 3.0, 3.0]))


def test_newton_schulz_square_root_matches_the_eigen_square_root_and_its_derivative():
    a = random_spd(12, 5) + 3.0 * np.eye(5)
    np.testing.assert_allclose(sqrtm_newton_schulz(jnp.asarray(a), 20), sqrtm_spd(jnp.asarray(a)), rtol=1e-10)
    direction = symmetric_direction(13, 5)
    _, ns = jax.jvp(lambda m: sqrtm_newton_schulz(m, 20), (jnp.asarray(a),), (jnp.asarray(direction),))
    _, eig = jax.jvp(sqrtm_spd, (jnp.asarray(a),), (jnp.asarray(direction),))
    np.testing.assert_allclose(ns, eig, rtol=1e-8, atol=1e-10)


def test_o2p_pooling_of_a_rank_deficient_feature_matrix():
    """N = 3 features in d = 6 dimensions, ε = 1e-3: FᵀF/N + εI has the eigenvalue ε three times. The
    gradient of a scalar loss agrees with central differences; the naive eigh composition's does not."""
    features = jnp.asarray(np.random.default_rng(14).standard_normal((3, 6)))
    target = jnp.asarray(np.random.default_rng(15).standard_normal(21))
    pool = O2PPooling(epsilon=1e-3)
    loss = lambda f: jnp.sum((pool(f) - target) ** 2)
    grad = jax.grad(loss)(features)
    direction = np.random.default_rng(16).standard_normal((3, 6))
    # FᵀF + perturbation stays rank 3, so the tied eigenvalues stay at ε and a large step is accurate;
    # below ~1e-5 the difference drowns in the eigensolver's rounding
    fd = directional_difference(lambda s: float(loss(features + s * direction)), 0.0, 1.0, step=1e-4)
    np.testing.assert_allclose(float(jnp.sum(grad * direction)), fd, rtol=1e-7)

    def naive(f):
        c = f.T @ f / 3 + 1e-3 * jnp.eye(6)
        lam, u = jnp.linalg.eigh(c)
        m = (u * jnp.log(lam)[None, :]) @ u.T
        rows, cols = jnp.triu_indices(6)
        return jnp.sum((m[rows, cols] * jnp.where(rows == cols, 1.0, jnp.sqrt(2.0)) - target) ** 2)

    naive_directional = float(jnp.sum(jax.grad(naive)(features) * direction))
    assert not np.isclose(naive_directional, fd, rtol=1e-3)  # finite but wrong: what O2PPooling fixes
    assert pool(features).shape == (21,) and O2PPooling(flatten=False)(features).shape == (6, 6)
    with pytest.raises(ValueError, match="feature matrix"):
        pool(jnp.ones(6))


def test_o2p_pooling_second_derivatives_of_a_rank_deficient_feature_matrix():
    """N = 2 features in d = 4 dimensions: FᵀF/N + εI has the eigenvalue ε twice, and keeps it along any
    perturbation of F. jvp of grad, hessian and jacrev of grad of a loss against differences of its exact
    gradient."""
    features = jnp.asarray(np.random.default_rng(14).standard_normal((2, 4)))
    target = jnp.asarray(np.random.default_rng(15).standard_normal(10))
    pool = O2PPooling(epsilon=1e-3)
    direction = jnp.asarray(np.random.default_rng(16).standard_normal((2, 4)))
    loss = lambda f: jnp.sum((pool(f) - target) ** 2)
    second_derivative_checker(loss, direction, step=1e-4)(features)


def test_normalized_cut_loss_gradient_matches_central_differences():
    """Two clusters of points; the affinity exp(-‖xi - xj‖²/σ²) depends on a learnable log σ. The loss
    against the true partition is differentiated through the top-2 projector."""
    rng = np.random.default_rng(17)
    points = np.concatenate([rng.normal(0.0, 0.3, (5, 2)), rng.normal(2.0, 0.3, (5, 2))])
    labels = jnp.asarray(np.repeat(np.eye(2), 5, axis=0))
    squared = np.sum((points[:, None, :] - points[None, :, :]) ** 2, axis=-1)
    cut = NormalizedCut(num_segments=2)

    def loss(log_sigma):
        return cut.loss(jnp.exp(-jnp.asarray(squared) / jnp.exp(2 * log_sigma)), labels)

    for log_sigma in (0.0, 0.7):
        grad = float(jax.grad(loss)(log_sigma))
        fd = directional_difference(lambda s: float(loss(s)), log_sigma, 1.0, step=1e-6)
        assert np.isfinite(grad)
        np.testing.assert_allclose(grad, fd, rtol=1e-6)
    # well-separated clusters: the relaxation recovers the partition (its projector is the target's)
    affinity = jnp.exp(-jnp.asarray(squared) / 0.5)
    np.testing.assert_allclose(cut(affinity), cut.target_projector(affinity, labels), atol=1e-3)
    with pytest.raises(ValueError, match="labels"):
        cut.loss(affinity, labels[:, :1])


# ------------------------------------------------------------------------------------------------
# eigh / svd with derivatives finite at repeated values
# ------------------------------------------------------------------------------------------------

from jaxnls.linalg import eigh, svd  # noqa: E402


@pytest.mark.parametrize("point", ["identity", "diag(1,1,2)", "rotated diag(1,1,2)", "random SPD"])
def test_eigh_derivatives_are_finite_and_exact_for_tie_invariant_quantities(point):
    """Σλ² (symmetric in a tied group) and, where the top eigenvalue is simple, its eigenprojector: exact
    against central differences; the eigenvector gradient is finite even at the identity."""
    a = jnp.asarray(tied()[point])
    lam, _u = eigh(a)
    np.testing.assert_allclose(lam, np.linalg.eigvalsh(np.asarray(a)), atol=1e-12)
    weights = jnp.arange(9.0).reshape(3, 3)
    simple_top = point != "identity"

    def invariant(m):
        lam, u = eigh(m)
        top = jnp.outer(u[:, -1], u[:, -1]) if simple_top else jnp.zeros((3, 3))
        return jnp.sum(lam**2) + jnp.sum(top * weights)

    g = jax.grad(invariant)(a)
    assert np.all(np.isfinite(g))
    direction = symmetric_direction(21, 3)
    fd = directional_difference(lambda s: float(invariant(a + s * direction)), 0.0, 1.0)
    np.testing.assert_allclose(float(jnp.sum(g * direction)), fd, rtol=1e-7)
    native = jax.grad(lambda m: jnp.sum(jnp.linalg.eigh(m)[1] * weights))(a)
    mine = jax.grad(lambda m: jnp.sum(eigh(m)[1] * weights))(a)
    assert np.all(np.isfinite(mine))
    if point == "identity":  # JAX's own rule divides by the zero gaps
        assert not np.all(np.isfinite(native))


@pytest.mark.parametrize("shape", [(3, 3), (5, 3), (3, 5)])
def test_svd_derivatives_are_finite_at_repeated_singular_values_and_exact_for_tie_invariant_quantities(shape):
    """Σs³, the top singular projector (simple top value) and the polar factor U Vᵀ: exact against central
    differences at a matrix with a repeated singular value and at a random one; finite at the identity."""
    rng = np.random.default_rng(22)
    k = min(shape)
    repeated = np.zeros(shape)
    repeated[np.arange(k), np.arange(k)] = [3.0] + [1.0] * (k - 1)
    weights = jnp.asarray(rng.standard_normal((shape[0], shape[1])))
    for a in map(jnp.asarray, [repeated, rng.standard_normal(shape)]):
        u, s, vt = svd(a)
        np.testing.assert_allclose((u * s[None, :]) @ vt, a, atol=1e-12)
        np.testing.assert_allclose(s, np.linalg.svd(np.asarray(a), compute_uv=False), atol=1e-12)

        def loss(m):
            u, s, vt = svd(m)
            return jnp.sum(s**3) + jnp.sum(jnp.outer(u[:, 0], u[:, 0])) + jnp.sum((u @ vt) * weights)

        g = jax.grad(loss)(a)
        assert np.all(np.isfinite(g))
        direction = rng.standard_normal(shape)
        fd = directional_difference(lambda t: float(loss(a + t * direction)), 0.0, 1.0)
        np.testing.assert_allclose(float(jnp.sum(g * direction)), fd, rtol=1e-7)
    identity = jnp.eye(3)
    native = jax.grad(lambda m: jnp.sum(jnp.linalg.svd(m)[0] * jnp.arange(9.0).reshape(3, 3)))(identity)
    assert not np.all(np.isfinite(native))  # the failure the wrapper exists for
    assert np.all(np.isfinite(jax.grad(lambda m: jnp.sum(svd(m)[0] * jnp.arange(9.0).reshape(3, 3)))(identity)))


@pytest.mark.parametrize("decomposition, values", [(eigh, 0), (svd, 1)])
def test_decompositions_run_inside_jit(decomposition, values):
    """The default tie tolerance is computed on the host: under a caller's jax.jit it used to be
    ``float()`` of a traced ``jnp.sqrt`` (a ConcretizationTypeError)."""
    a = jnp.asarray([[2.0, 1.0], [1.0, 3.0]])
    for got, expected in zip(jax.jit(decomposition)(a), decomposition(a)):
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    g = jax.jit(jax.grad(lambda m: jnp.sum(decomposition(m)[values] ** 3)))(a)
    np.testing.assert_allclose(g, jax.grad(lambda m: jnp.sum(decomposition(m)[values] ** 3))(a), rtol=1e-12)
