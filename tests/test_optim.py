"""jaxnls.optim: observed orders of accuracy against the exact gradient flow of a quadratic,
θ(t) = expm(-tQ) θ₀ (scipy), Euler == optax.sgd bit for bit, composition with optax, jit/vmap, float32."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.linalg

from jaxnls.optim import adams_bashforth, bogacki_shampine, euler, heun, heun_euler, midpoint, rk4, taylor2

rng = np.random.default_rng(0)
_B = rng.standard_normal((4, 4))
Q = _B @ _B.T / 4 + 0.5 * np.eye(4)
THETA0 = rng.standard_normal(4)


def loss(theta):
    return 0.5 * theta @ (jnp.asarray(Q) @ theta)


grad_fn = jax.grad(loss)


def one_step(transform, h, theta=THETA0):
    opt = transform(h)
    theta = jnp.asarray(theta)
    state = opt.init(theta)
    updates, _ = opt.update(grad_fn(theta), state, theta, grad_fn=grad_fn)
    return np.asarray(optax.apply_updates(theta, updates))


def observed_order(errors, steps):
    return np.polyfit(np.log(steps), np.log(errors), 1)[0]


@pytest.mark.parametrize(
    "name, transform, local_order",
    [("euler", None, 2), ("heun", heun, 3), ("midpoint", midpoint, 3), ("rk4", rk4, 5), ("taylor2", taylor2, 3)],
)
def test_local_error_order_against_the_exact_flow(name, transform, local_order):
    steps = np.array([0.1, 0.05, 0.025])
    errors = []
    for h in steps:
        exact = scipy.linalg.expm(-h * Q) @ THETA0
        if transform is None:
            opt = euler(h)
            theta = jnp.asarray(THETA0)
            updates, _ = opt.update(grad_fn(theta), opt.init(theta), theta)
            approx = np.asarray(optax.apply_updates(theta, updates))
        else:
            approx = one_step(transform, h)
        errors.append(np.linalg.norm(approx - exact))
    assert abs(observed_order(errors, steps) - local_order) < 0.15


def test_adams_bashforth_2_global_error_falls_fourfold_when_h_halves():
    """Integrate to t = 1 (Euler start-up step included): global error O(h²)."""
    errors, steps = [], np.array([0.02, 0.01, 0.005])
    exact = scipy.linalg.expm(-1.0 * Q) @ THETA0
    for h in steps:
        opt = adams_bashforth(h, order=2)
        theta = jnp.asarray(THETA0)
        state = opt.init(theta)
        for _ in range(round(1.0 / h)):
            updates, state = opt.update(grad_fn(theta), state, theta)
            theta = optax.apply_updates(theta, updates)
        errors.append(np.linalg.norm(np.asarray(theta) - exact))
    assert abs(observed_order(errors, steps) - 2) < 0.2
    assert 3.5 < errors[0] / errors[1] < 4.5


@pytest.mark.parametrize("order", [2, 3])
def test_adams_bashforth_local_error_from_an_exact_history(order):
    """With the past gradients taken on the exact flow (θ(-h), θ(-2h) = expm(hQ)θ₀, expm(2hQ)θ₀), one step's
    error is O(h^(order+1)); the lower-order start-up steps are what limit AB3's global order to 2."""
    from jaxnls.optim._integrators import _MultistepState

    steps = np.array([0.1, 0.05, 0.025])
    errors = []
    for h in steps:
        past = tuple(jnp.asarray(Q @ (scipy.linalg.expm(k * h * Q) @ THETA0)) for k in range(1, order))
        opt = adams_bashforth(h, order=order)
        theta = jnp.asarray(THETA0)
        updates, _ = opt.update(grad_fn(theta), _MultistepState(jnp.asarray(order, jnp.int32), past), theta)
        errors.append(
            np.linalg.norm(np.asarray(optax.apply_updates(theta, updates)) - scipy.linalg.expm(-h * Q) @ THETA0)
        )
    assert abs(observed_order(errors, steps) - (order + 1)) < 0.2


def test_euler_equals_optax_sgd_bit_for_bit_with_a_schedule():
    schedule = optax.exponential_decay(0.1, transition_steps=3, decay_rate=0.5)
    params = {"w": jnp.asarray(THETA0), "b": jnp.asarray(0.3)}
    f = lambda p: loss(p["w"]) + p["b"] ** 2
    ours, theirs = euler(schedule), optax.sgd(schedule)
    p1, p2, s1, s2 = params, params, ours.init(params), theirs.init(params)
    for _ in range(7):
        u1, s1 = ours.update(jax.grad(f)(p1), s1, p1)
        u2, s2 = theirs.update(jax.grad(f)(p2), s2, p2)
        p1, p2 = optax.apply_updates(p1, u1), optax.apply_updates(p2, u2)
    for a, b in zip(jax.tree_util.tree_leaves(p1), jax.tree_util.tree_leaves(p2)):
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_runge_kutta_composes_with_optax_chains_jit_and_vmap():
    opt = optax.chain(optax.clip_by_global_norm(10.0), rk4(optax.linear_schedule(0.1, 0.05, 10)))

    @jax.jit
    def step(theta, state):
        updates, state = opt.update(grad_fn(theta), state, theta, grad_fn=grad_fn)
        return optax.apply_updates(theta, updates), state

    theta, state = jnp.asarray(THETA0), opt.init(jnp.asarray(THETA0))
    for _ in range(50):
        theta, state = step(theta, state)
    assert float(loss(theta)) < 1e-2 * float(loss(jnp.asarray(THETA0)))
    # vmap over starting points
    starts = jnp.asarray(rng.standard_normal((3, 4)))
    batched = jax.vmap(_heun_step)(starts)
    np.testing.assert_allclose(batched[1], one_step(heun, 0.1, np.asarray(starts[1])), rtol=1e-12)


def _heun_step(theta):
    opt = heun(0.1)
    updates, _ = opt.update(grad_fn(theta), opt.init(theta), theta, grad_fn=grad_fn)
    return optax.apply_updates(theta, updates)


def test_float32_and_clear_errors():
    theta = jnp.asarray(THETA0, jnp.float32)
    f32 = lambda t: 0.5 * t @ (jnp.asarray(Q, jnp.float32) @ t)
    for transform in (heun, midpoint, rk4, taylor2):
        opt = transform(0.1)
        updates, _ = opt.update(jax.grad(f32)(theta), opt.init(theta), theta, grad_fn=jax.grad(f32))
        assert updates.dtype == jnp.float32 and np.all(np.isfinite(np.asarray(updates)))
    with pytest.raises(ValueError, match="grad_fn"):
        rk4(0.1).update(grad_fn(jnp.asarray(THETA0)), rk4(0.1).init(jnp.asarray(THETA0)), jnp.asarray(THETA0))
    with pytest.raises(ValueError, match="order"):
        adams_bashforth(0.1, order=4)


# --------------------------------------------------------------------------------------------------
# Adaptive steps: the embedded pairs' error control
# --------------------------------------------------------------------------------------------------


def _attempts(opt, count, theta=THETA0):
    """``count`` attempts from ``theta``: the parameters and flow time after each accepted one, the last state."""

    @jax.jit
    def step(theta, state):
        updates, state = opt.update(grad_fn(theta), state, theta, grad_fn=grad_fn)
        return optax.apply_updates(theta, updates), state

    theta = jnp.asarray(theta)
    state = opt.init(theta)
    times, thetas = [], []
    for _ in range(count):
        before = theta
        theta, state = step(theta, state)
        if bool(state.accepted):
            times.append(float(state.flow_time))
            thetas.append(np.asarray(theta))
        else:
            assert np.array_equal(np.asarray(theta), np.asarray(before))  # a rejected attempt changes nothing
    return np.array(times), np.array(thetas), state


def test_bogacki_shampine_takes_the_steps_of_scipy_rk23():
    """The same pair, norm and controller as scipy's ``solve_ivp(method="RK23")``: from the same first step
    (too long: rejected, then shrunk, and not grown again before a step is taken) the accepted times and points
    are scipy's, to rounding."""
    import scipy.integrate

    times, thetas, state = _attempts(bogacki_shampine(1.0, rtol=1e-3, atol=1e-7), 40)
    peer = scipy.integrate.solve_ivp(
        lambda t, y: -Q @ y, (0.0, 50.0), THETA0, method="RK23", first_step=1.0, rtol=1e-3, atol=1e-7
    )
    assert int(state.rejections) > 0 and len(times) == 40 - int(state.rejections)
    np.testing.assert_allclose(times, peer.t[1 : len(times) + 1], rtol=1e-12)
    np.testing.assert_allclose(thetas, peer.y[:, 1 : len(times) + 1].T, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("transform, error_order", [(bogacki_shampine, 2), (heun_euler, 1)])
def test_adaptive_global_error_tracks_the_tolerance(transform, error_order):
    """Integrated to flow time 3 on the quadratic, the global error against expm(-tQ)θ₀ falls in proportion
    to the tolerance (a decade per decade), and the attempts needed grow like tol^(-1/(q+1))."""
    tolerances = np.array([1e-3, 1e-4, 1e-5, 1e-6, 1e-7])
    errors, attempts = [], []
    for tol in tolerances:
        opt = transform(0.01, rtol=tol, atol=tol)

        @jax.jit
        def integrate(theta, opt=opt):
            def body(carry):
                theta, state = carry
                updates, state = opt.update(grad_fn(theta), state, theta, grad_fn=grad_fn)
                return optax.apply_updates(theta, updates), state

            return jax.lax.while_loop(lambda c: c[1].flow_time < 3.0, body, (theta, opt.init(theta)))

        theta, state = integrate(jnp.asarray(THETA0))
        exact = scipy.linalg.expm(-float(state.flow_time) * Q) @ THETA0
        errors.append(np.linalg.norm(np.asarray(theta) - exact))
        attempts.append(int(state.count))
        assert errors[-1] < 10 * tol * np.linalg.norm(THETA0)
    assert abs(np.polyfit(np.log(tolerances), np.log(errors), 1)[0] - 1.0) < 0.15
    assert abs(np.polyfit(np.log(tolerances), np.log(attempts), 1)[0] + 1 / (error_order + 1)) < 0.1


def test_adaptive_rejection_max_step_float32_vmap_and_clear_errors():
    """A step far too long is rejected (zero update, shorter next step, no flow time); ``max_step`` caps the
    controller; float32 stays float32; the transformation vmaps over starting points; options are checked."""
    opt = bogacki_shampine(100.0)
    theta = jnp.asarray(THETA0)
    updates, state = opt.update(grad_fn(theta), opt.init(theta), theta, grad_fn=grad_fn)
    assert not bool(state.accepted) and float(state.flow_time) == 0.0 and float(state.error) > 1
    assert np.all(np.asarray(updates) == 0) and 20.0 <= float(state.step_size) < 100.0
    times, _, state = _attempts(heun_euler(0.01, rtol=1e-2, atol=1e-2, max_step=0.05), 30)
    assert np.all(np.diff(np.concatenate([[0.0], times])) <= 0.05 + 1e-15) and float(state.step_size) <= 0.05

    f32 = lambda t: 0.5 * t @ (jnp.asarray(Q, jnp.float32) @ t)
    theta32 = jnp.asarray(THETA0, jnp.float32)
    for transform in (bogacki_shampine, heun_euler):
        opt = transform(0.1)
        updates, state = opt.update(jax.grad(f32)(theta32), opt.init(theta32), theta32, grad_fn=jax.grad(f32))
        assert updates.dtype == jnp.float32 and state.step_size.dtype == jnp.float32

    def first_update(theta):
        opt = bogacki_shampine(0.1)
        return opt.update(grad_fn(theta), opt.init(theta), theta, grad_fn=grad_fn)[0]

    starts = jnp.asarray(rng.standard_normal((3, 4)))
    np.testing.assert_allclose(jax.vmap(first_update)(starts)[2], first_update(starts[2]), rtol=1e-12)

    for bad, match in [
        (dict(initial_step=0.0), "initial_step"),
        (dict(initial_step=0.1, rtol=-1.0), "rtol"),
        (dict(initial_step=0.1, rtol=0.0, atol=0.0), "both be 0"),
        (dict(initial_step=0.1, max_step=0.0), "max_step"),
    ]:
        with pytest.raises(ValueError, match=match):
            bogacki_shampine(**bad)
    with pytest.raises(ValueError, match="grad_fn"):
        heun_euler(0.1).update(grad_fn(theta), heun_euler(0.1).init(theta), theta)
