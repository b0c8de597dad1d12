"""jaxnls.meta: mixed-mode (forward-over-reverse) meta-gradients against reverse mode and central
differences, compiled memory, truncation, misuse; implicit hypergradients against closed forms, central
differences and differentiation through jaxnls.solve."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import directional_difference

import jaxnls
from jaxnls.meta import implicit_hypergradient, unroll

NUM_STEPS, BATCH, WIDTH = 5, 16, 8


def init_mlp(key, sizes):
    params = []
    for k, (fan_in, fan_out) in zip(jax.random.split(key, len(sizes) - 1), itertools.pairwise(sizes)):
        params.append((jax.random.normal(k, (fan_in, fan_out)) / np.sqrt(fan_in), jnp.zeros((1, fan_out))))
    return params


def mlp(params, x):
    for w, b in params[:-1]:
        x = jnp.tanh(x @ w + b)
    w, b = params[-1]
    return (x @ w + b)[..., 0]


def inner_loss(theta, eta, batch):
    """Per-example weighted squared error; the weights (one per batch position) are meta-parameters."""
    x, y = batch
    return jnp.mean(jax.nn.softplus(eta["weights"]) * (mlp(theta, x) - y) ** 2)


def regression_data(key, num_steps=NUM_STEPS, batch=BATCH, dim=3):
    kx, kv = jax.random.split(key)
    target = lambda x: jnp.sin(2.0 * x[..., 0]) + 0.5 * x[..., 1] * x[..., 2]
    xs = jax.random.normal(kx, (num_steps, batch, dim))
    xv = jax.random.normal(kv, (64, dim))
    return (xs, target(xs)), (xv, target(xv))


OPTIMIZERS = {
    "sgd": lambda lr: optax.sgd(lr),
    "momentum": lambda lr: optax.sgd(lr, momentum=0.9),
    "adam": lambda lr: optax.adam(lr),
}


def make_optimizer_factory(name):
    def make_optimizer(eta):
        return optax.chain(optax.add_decayed_weights(jnp.exp(eta["log_wd"])), OPTIMIZERS[name](jnp.exp(eta["log_lr"])))

    return make_optimizer


def setup(name, num_steps=NUM_STEPS, batch=BATCH):
    theta0 = init_mlp(jax.random.PRNGKey(0), [3, WIDTH, WIDTH, 1])
    batches, (xv, yv) = regression_data(jax.random.PRNGKey(1), num_steps, batch)
    eta = {
        "log_lr": jnp.log(0.05 if name != "adam" else 0.01),
        "log_wd": jnp.log(1e-3),
        "weights": 0.3 * jax.random.normal(jax.random.PRNGKey(2), (batch,)),
    }

    def outer(mode, **kwargs):
        run = unroll(inner_loss, make_optimizer_factory(name), num_steps, mode=mode, **kwargs)
        return lambda eta: jnp.mean((mlp(run(theta0, eta, batches), xv) - yv) ** 2)

    return theta0, batches, eta, outer


def assert_trees_close(a, b, rtol):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        x, y = np.asarray(x), np.asarray(y)
        np.testing.assert_allclose(x, y, rtol=rtol, atol=rtol * np.max(np.abs(y)))


# (adam, ~11 s: moved out of the default set to keep it within 10 minutes on 2 cores, benchmarks/README.md (at); CI
# runs the slow set)
@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n == "adam" else n for n in sorted(OPTIMIZERS)]
)
def test_mixed_mode_equals_reverse_mode_and_central_differences(name):
    _, _, eta, outer = setup(name)
    mixed = jax.jit(jax.grad(outer("mixed")))(eta)
    reverse = jax.jit(jax.grad(outer("reverse")))(eta)
    assert_trees_close(mixed, reverse, rtol=1e-10)
    assert np.all(np.abs(np.asarray(mixed["weights"])) > 0)  # every meta-parameter is actually reached
    # central differences on each scalar meta-parameter and along one direction in the weights
    f = jax.jit(outer("reverse"))
    for key in ("log_lr", "log_wd"):
        fd = directional_difference(lambda s: f({**eta, key: eta[key] + s}), 0.0, 1.0, step=1e-5)
        np.testing.assert_allclose(float(mixed[key]), float(fd), rtol=1e-6)
    direction = jax.random.normal(jax.random.PRNGKey(3), eta["weights"].shape)
    fd = directional_difference(lambda s: f({**eta, "weights": eta["weights"] + s * direction}), 0.0, 1.0, step=1e-5)
    np.testing.assert_allclose(float(mixed["weights"] @ direction), float(fd), rtol=1e-6)


# (slow: ~10 s; moved out of the default set to keep it within 10 minutes on 2 cores, benchmarks/README.md (at); CI runs
# the slow set)
@pytest.mark.slow
def test_gradient_with_respect_to_the_initial_parameters_agrees():
    theta0, batches, eta, _ = setup("adam")
    _, (xv, yv) = regression_data(jax.random.PRNGKey(1))

    def loss(mode):
        run = unroll(inner_loss, make_optimizer_factory("adam"), NUM_STEPS, mode=mode)
        return lambda th: jnp.mean((mlp(run(th, eta, batches), xv) - yv) ** 2)

    assert_trees_close(jax.grad(loss("mixed"))(theta0), jax.grad(loss("reverse"))(theta0), rtol=1e-10)


def temp_bytes(fn, *args):
    # buffers are assigned before code generation: without LLVM optimisation the same sizes, sooner
    compiled = jax.jit(fn).lower(*args).compile(compiler_options={"xla_backend_optimization_level": 0})
    return compiled.memory_analysis().temp_size_in_bytes


def test_mixed_mode_uses_less_compiled_memory_and_the_saving_grows_with_batch_size():
    ratios = []
    for batch in (64, 512):
        _, _, eta, outer = setup("sgd", num_steps=4, batch=batch)
        mixed, reverse = temp_bytes(jax.grad(outer("mixed")), eta), temp_bytes(jax.grad(outer("reverse")), eta)
        assert mixed < reverse
        ratios.append(reverse / mixed)
    assert ratios[1] > ratios[0]


@pytest.mark.parametrize("mode", ["mixed", "reverse"])
def test_truncated_meta_gradient_differentiates_only_the_last_steps(mode):
    """With SGD (no optimiser state) the truncated meta-gradient is the gradient of k steps started from
    θ_{T-k} held constant."""
    theta0, (xs, ys), eta, _ = setup("sgd")
    _, (xv, yv) = regression_data(jax.random.PRNGKey(1))
    k = 2
    make = make_optimizer_factory("sgd")
    head = (xs[: NUM_STEPS - k], ys[: NUM_STEPS - k])
    tail = (xs[NUM_STEPS - k :], ys[NUM_STEPS - k :])
    theta_head = unroll(inner_loss, make, NUM_STEPS - k, mode="reverse")(theta0, eta, head)
    expected = jax.grad(
        lambda e: jnp.mean((mlp(unroll(inner_loss, make, k, mode="reverse")(theta_head, e, tail), xv) - yv) ** 2)
    )(eta)
    run = unroll(inner_loss, make, NUM_STEPS, mode=mode, truncate=k)
    truncated = jax.grad(lambda e: jnp.mean((mlp(run(theta0, e, (xs, ys)), xv) - yv) ** 2))(eta)
    assert_trees_close(truncated, expected, rtol=1e-10)
    full = unroll(inner_loss, make, NUM_STEPS, mode=mode, truncate=NUM_STEPS)
    untruncated = unroll(inner_loss, make, NUM_STEPS, mode=mode)
    g_full = jax.grad(lambda e: jnp.sum(jax.tree_util.tree_leaves(full(theta0, e, (xs, ys)))[0]))(eta)
    g_untr = jax.grad(lambda e: jnp.sum(jax.tree_util.tree_leaves(untruncated(theta0, e, (xs, ys)))[0]))(eta)
    assert_trees_close(g_full, g_untr, rtol=1e-12)


def test_closing_over_a_meta_parameter_fails_loudly_in_mixed_mode():
    theta0, batches, eta, _ = setup("sgd")

    def outer(log_scale):
        def leaky_loss(theta, eta, batch):  # the meta-parameter should have been passed in η
            return jnp.exp(log_scale) * inner_loss(theta, eta, batch)

        run = unroll(leaky_loss, make_optimizer_factory("sgd"), NUM_STEPS, mode="mixed")
        return jnp.sum(jax.tree_util.tree_leaves(run(theta0, eta, batches))[0])

    with pytest.raises(Exception, match=r"closed-over|closes over"):
        jax.grad(outer)(0.0)


def test_bad_arguments_raise_clear_errors():
    theta0, batches, eta, _ = setup("sgd")
    make = make_optimizer_factory("sgd")
    with pytest.raises(ValueError, match="mode"):
        unroll(inner_loss, make, NUM_STEPS, mode="forward")
    with pytest.raises(ValueError, match="truncate"):
        unroll(inner_loss, make, NUM_STEPS, truncate=0)
    with pytest.raises(ValueError, match="num_steps"):
        unroll(inner_loss, make, 0)
    with pytest.raises(ValueError, match=r"batches\[0\].*leading axis must be num_steps = 4"):
        unroll(inner_loss, make, 4)(theta0, eta, batches)


def test_float32_meta_gradient_is_finite_and_matches_reverse():
    theta0, batches, eta, _ = setup("adam")
    _, (xv, yv) = regression_data(jax.random.PRNGKey(1))
    to32 = lambda t: jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), t)
    theta0, batches, eta, xv, yv = map(to32, (theta0, batches, eta, xv, yv))

    def outer(mode):
        run = unroll(inner_loss, make_optimizer_factory("adam"), NUM_STEPS, mode=mode)
        return lambda e: jnp.mean((mlp(run(theta0, e, batches), xv) - yv) ** 2)

    mixed, reverse = jax.grad(outer("mixed"))(eta), jax.grad(outer("reverse"))(eta)
    assert all(leaf.dtype == jnp.float32 and np.all(np.isfinite(leaf)) for leaf in jax.tree_util.tree_leaves(mixed))
    assert_trees_close(mixed, reverse, rtol=1e-4)


# ------------------------------------------------------------------------------------------------
# implicit hypergradients
# ------------------------------------------------------------------------------------------------


def ridge_problem():
    rng = np.random.default_rng(5)
    x, xv = rng.standard_normal((40, 6)), rng.standard_normal((30, 6))
    w_true = rng.standard_normal(6)
    y, yv = x @ w_true + 0.3 * rng.standard_normal(40), xv @ w_true + 0.3 * rng.standard_normal(30)
    return x, y, xv, yv


def test_implicit_hypergradient_of_ridge_regression_matches_the_closed_form():
    """θ*(η) = (XᵀX + e^η I)⁻¹Xᵀy in closed form; the hypergradient of the validation error is checked
    against central differences of that closed form."""
    x, y, xv, yv = ridge_problem()

    def inner(theta, eta, batch):
        return 0.5 * jnp.sum((x @ theta - y) ** 2) + 0.5 * jnp.exp(eta["log_ridge"]) * jnp.sum(theta**2)

    def outer(theta, eta):
        return 0.5 * jnp.mean((xv @ theta - yv) ** 2)

    def closed_form(log_ridge):
        return np.linalg.solve(x.T @ x + np.exp(log_ridge) * np.eye(6), x.T @ y)

    eta = {"log_ridge": jnp.asarray(1.3)}
    theta_star = jnp.asarray(closed_form(1.3))
    hyper = implicit_hypergradient(inner, outer, theta_star, eta)
    fd = directional_difference(lambda s: float(outer(closed_form(1.3 + s), eta)), 0.0, 1.0, step=1e-5)
    np.testing.assert_allclose(float(hyper["log_ridge"]), float(fd), rtol=1e-7)


def test_implicit_hypergradient_through_a_jaxnls_solve_matches_its_implicit_adjoint():
    """Inner problem: a weighted exponential fit solved by jaxnls.solve; the hypergradient of a
    validation loss w.r.t. the log-weights equals jax.grad through jaxnls.solve (its Implicit adjoint)
    and central differences."""
    t = jnp.linspace(0.0, 3.0, 25)
    y = 2.0 * jnp.exp(-0.7 * t) + 0.05 * jnp.sin(9.0 * t)
    tv = jnp.linspace(0.1, 2.9, 11)
    yv = 2.0 * jnp.exp(-0.7 * tv)
    solver = jaxnls.LevenbergMarquardt(rtol=1e-14, atol=1e-14, ftol=0.0, gtol=0.0)

    def residual(p, args):
        log_w, y = args
        return jnp.exp(0.5 * log_w) * (p[0] * jnp.exp(-p[1] * t) - y)

    def solve(log_w):
        return jaxnls.solve(residual, jnp.array([1.0, 1.0]), (log_w, y), solver=solver).params

    def inner(theta, eta, batch):
        return 0.5 * jnp.sum(residual(theta, (eta, y)) ** 2)

    def outer(theta, eta):
        return jnp.mean((theta[0] * jnp.exp(-theta[1] * tv) - yv) ** 2) + 1e-3 * jnp.sum(eta**2)

    log_w = 0.2 * jnp.sin(jnp.arange(t.size, dtype=jnp.float64))
    hyper = implicit_hypergradient(inner, outer, solve(log_w), log_w)
    through_solve = jax.grad(lambda e: outer(solve(e), e))(log_w)
    np.testing.assert_allclose(hyper, through_solve, rtol=1e-8, atol=1e-12)
    direction = jnp.cos(jnp.arange(t.size, dtype=jnp.float64))
    fd = directional_difference(
        lambda s: outer(solve(log_w + s * direction), log_w + s * direction), 0.0, 1.0, step=1e-5
    )
    np.testing.assert_allclose(float(hyper @ direction), float(fd), rtol=1e-6)


def test_implicit_hypergradient_rejects_a_saddle_point():
    """At a saddle (H indefinite) conjugate gradients cannot be trusted: a clear error, not a number."""

    def inner(theta, eta, batch):
        return theta[0] ** 2 - theta[1] ** 2 + eta * theta[0]

    with pytest.raises(RuntimeError, match="strict minimum"):
        implicit_hypergradient(inner, lambda th, e: jnp.sum(th), jnp.array([-0.25, 0.0]), jnp.asarray(0.5))
