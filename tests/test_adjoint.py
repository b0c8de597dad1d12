"""Derivatives of the solution (``adjoint=Implicit()``) against central differences of re-solved problems
and against the implicit-function-theorem formula evaluated independently in the test."""

from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import directional_difference

import jaxnls
from jaxnls import Status
from jaxnls.io import read_nist

# Re-solves for finite differences must land on the minimiser to far better than the FD step.
TIGHT = jaxnls.LevenbergMarquardt(rtol=1e-14, atol=1e-14, ftol=0.0, gtol=0.0)
T = np.linspace(0.0, 10.0, 40)
P_TRUE = np.array([2.0, 0.3, 0.5, 1.5])
NIST = Path(__file__).parent / "data" / "nist"


def weighted_curve_residual(p, args):
    """Curve-fit residuals with a learnable weight per point: w·(a e^{-bt} + c sin(dt) − y)."""
    t, y, weights = args
    return weights * (p[0] * jnp.exp(-p[1] * t) + p[2] * jnp.sin(p[3] * t) - y)


def curve_data(seed, size):
    rng = np.random.default_rng(seed)
    clean = P_TRUE[0] * np.exp(-P_TRUE[1] * T) + P_TRUE[2] * np.sin(P_TRUE[3] * T)
    y = clean + 0.2 * rng.standard_normal((size, T.size))  # large noise: residual curvature matters
    p0 = P_TRUE * (1 + 0.05 * rng.standard_normal((size, 4)))
    weights = 1.0 + 0.5 * rng.random(T.size)
    return jnp.asarray(y), jnp.asarray(p0), jnp.asarray(weights)


def test_batched_gradient_matches_central_differences():
    """Outer loss of a batch of solutions; gradients w.r.t. batched data and shared weights."""
    y, p0, weights = curve_data(0, 3)

    def outer(y, weights):
        sol = jaxnls.solve(
            weighted_curve_residual, p0, (T, y, weights), solver=TIGHT, batched=True, args_axes=(None, 0, None)
        )
        return jnp.sum(jnp.sin(sol.params)) + jnp.sum(sol.cost)

    grad_y, grad_w = jax.grad(outer, argnums=(0, 1))(y, weights)
    rng = np.random.default_rng(1)
    dy, dw = jnp.asarray(rng.standard_normal(y.shape)), jnp.asarray(rng.standard_normal(weights.shape))
    fd_y = directional_difference(lambda v: outer(v, weights), y, dy)
    fd_w = directional_difference(lambda v: outer(y, v), weights, dw)
    np.testing.assert_allclose(jnp.sum(grad_y * dy), fd_y, rtol=1e-6)
    np.testing.assert_allclose(jnp.sum(grad_w * dw), fd_w, rtol=1e-6)


def _rat43():
    problem = read_nist(NIST / "Rat43.dat")
    x, y = (jnp.asarray(a) for a in problem.args)
    return problem, x, y


def test_exact_adjoint_is_the_implicit_function_theorem_and_gauss_newton_is_not():
    """NIST Rat43 (a nonzero-residual fit): dβ*/dy from the solver equals -H⁻¹ ∂²c/∂β∂y with the full
    Hessian, computed here by nested autodiff of the cost; the Gauss-Newton adjoint is measurably off."""
    problem, x, y = _rat43()
    start = jnp.asarray(problem.starts[1])

    def solution(y, adjoint):
        return jaxnls.solve(problem.residual_fn, start, (x, y), solver=TIGHT, adjoint=adjoint).params

    beta = solution(y, jaxnls.Implicit())
    np.testing.assert_allclose(beta, problem.certified_values, rtol=1e-7)

    def cost(b, y):
        return 0.5 * jnp.sum(problem.residual_fn(b, (x, y)) ** 2)

    hessian = jax.hessian(cost)(beta, y)
    mixed = jax.jacfwd(jax.grad(cost), argnums=1)(beta, y)
    exact = -np.linalg.solve(np.asarray(hessian), np.asarray(mixed))
    implicit = jax.jacrev(lambda v: solution(v, jaxnls.Implicit()))(y)
    np.testing.assert_allclose(implicit, exact, rtol=1e-8, atol=1e-8 * np.max(np.abs(exact)))

    forward = jax.jacfwd(lambda v: solution(v, jaxnls.Implicit()))(y)
    np.testing.assert_allclose(forward, implicit, rtol=1e-10, atol=1e-12 * np.max(np.abs(exact)))

    direction = jnp.asarray(np.random.default_rng(2).standard_normal(y.shape))
    fd = directional_difference(lambda v: solution(v, jaxnls.Implicit()), y, direction, step=1e-4)
    np.testing.assert_allclose(implicit @ direction, fd, rtol=1e-5)

    gauss_newton = jax.jacrev(lambda v: solution(v, jaxnls.Implicit(hessian="gauss_newton")))(y)
    relative_error = np.max(np.abs(gauss_newton - exact)) / np.max(np.abs(exact))
    assert relative_error > 1e-3  # drops Σ rᵢ∇²rᵢ: off at a nonzero residual


def test_jvp_and_vjp_agree():
    y, p0, weights = curve_data(3, 2)

    def params(y):
        return jaxnls.solve(
            weighted_curve_residual, p0, (T, y, weights), solver=TIGHT, batched=True, args_axes=(None, 0, None)
        ).params

    rng = np.random.default_rng(4)
    v = jnp.asarray(rng.standard_normal(y.shape))
    u = jnp.asarray(rng.standard_normal(p0.shape))
    _, jv = jax.jvp(params, (y,), (v,))
    _, pullback = jax.vjp(params, y)
    (ju,) = pullback(u)
    np.testing.assert_allclose(jnp.sum(u * jv), jnp.sum(ju * v), rtol=1e-10)


def rational_residual(p, args):
    t, y, weights = args
    return weights * ((p[0] + p[1] * t) / (1 + p[2] * t) - y)


def test_hessian_of_an_outer_loss_matches_differences_of_its_gradient():
    rng = np.random.default_rng(5)
    t = jnp.linspace(0.0, 4.0, 8)
    y = (1.0 + 0.5 * t) / (1 + 0.3 * t) + 0.05 * jnp.asarray(rng.standard_normal(8))
    p0 = jnp.array([1.0, 0.5, 0.3])

    def outer(weights):
        sol = jaxnls.solve(rational_residual, p0, (t, y, weights), solver=TIGHT)
        return jnp.sum(sol.params**2) + sol.cost

    weights = jnp.asarray(1.0 + 0.3 * rng.random(8))
    hessian = jax.hessian(outer)(weights)
    gradient = jax.grad(outer)
    columns = [directional_difference(gradient, weights, e, step=1e-4) for e in jnp.eye(8)]
    np.testing.assert_allclose(hessian, np.stack(columns, axis=1), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(hessian, hessian.T, rtol=1e-8, atol=1e-12)


class Offset(eqx.Module):
    """A small MLP inside the residual: a learned, smooth per-time offset."""

    mlp: eqx.nn.MLP

    def __call__(self, t):
        return jax.vmap(lambda s: self.mlp(s[None])[0])(t)


def test_equinox_module_in_args_gets_gradients_for_its_arrays():
    y, p0, _ = curve_data(6, 1)
    offset = Offset(eqx.nn.MLP(1, 1, 8, 2, activation=jnp.tanh, key=jax.random.PRNGKey(0)))

    def residual(p, args):
        t, y, model = args
        return p[0] * jnp.exp(-p[1] * t) + p[2] * jnp.sin(p[3] * t) + 0.1 * model(t) - y

    @eqx.filter_grad
    def outer_grad(model):
        return outer(model)

    def outer(model):
        sol = jaxnls.solve(residual, p0[0], (T, y[0], model), solver=TIGHT)
        return jnp.sum(sol.params**2)

    grads = outer_grad(offset)
    leaves, treedef = jax.tree_util.tree_flatten(eqx.filter(offset, eqx.is_array))
    rng = np.random.default_rng(7)
    direction = [jnp.asarray(rng.standard_normal(leaf.shape)) for leaf in leaves]
    along = jax.tree_util.tree_unflatten(treedef, direction)

    def moved(step):
        return eqx.apply_updates(offset, jax.tree_util.tree_map(lambda d: step * d, along))

    fd = (outer(moved(1e-5)) - outer(moved(-1e-5))) / 2e-5
    analytic = sum(
        jnp.sum(g * d) for g, d in zip(jax.tree_util.tree_leaves(eqx.filter(grads, eqx.is_array)), direction)
    )
    np.testing.assert_allclose(analytic, fd, rtol=1e-5)


class WeightedCurve(eqx.Module):
    """The residual itself an Equinox module: its weights are differentiated like args."""

    weights: jax.Array

    def __call__(self, p, args):
        return weighted_curve_residual(p, (*args, self.weights))


@pytest.mark.parametrize(
    "adjoint",
    [jaxnls.Implicit(), pytest.param(jaxnls.Truncated(20), marks=pytest.mark.slow)],  # (truncated: 8 s of compiling)
    ids=["implicit", "truncated"],
)
def test_a_residual_module_or_closure_gets_derivatives_for_its_arrays(adjoint):
    """The weights held by a residual module, or closed over by a residual function, get the same derivative
    as when they travel in args — reverse and forward, at top level and inside a caller's jit — against central
    differences. (They were taken as constants: an implicit derivative of 0, a truncated one doubled.)"""
    y, p0, weights = curve_data(11, 1)
    direction = jnp.asarray(np.random.default_rng(3).standard_normal(T.size))
    probe = jnp.asarray(np.random.default_rng(4).standard_normal(4))

    def through_module(w):
        return jaxnls.solve(WeightedCurve(w), p0[0], (T, y[0]), solver=TIGHT, adjoint=adjoint).params @ probe

    def through_closure(w):
        residual = lambda p, args: weighted_curve_residual(p, (*args, w))
        return jaxnls.solve(residual, p0[0], (T, y[0]), solver=TIGHT, adjoint=adjoint).params @ probe

    expected = directional_difference(through_module, weights, direction)
    for fn in (through_module, through_closure):
        np.testing.assert_allclose(jax.grad(fn)(weights) @ direction, expected, rtol=1e-6)
        np.testing.assert_allclose(jax.jvp(jax.jit(fn), (weights,), (direction,))[1], expected, rtol=1e-6)
    module_grad = eqx.filter_grad(
        lambda m: jaxnls.solve(m, p0[0], (T, y[0]), solver=TIGHT, adjoint=adjoint).params @ probe
    )
    np.testing.assert_allclose(module_grad(WeightedCurve(weights)).weights @ direction, expected, rtol=1e-6)


def test_a_solve_inside_a_callers_jit_with_only_options_traced_or_nothing_traced():
    """A caller's jit stages the solve even when none of its inputs is traced, or only the bounds, ``fixed`` or a
    solver option is: each runs (no compiler options on the nested jit) and agrees with the solve outside it."""
    y, p0, weights = curve_data(12, 1)
    start, data = p0[0], (T, y[0], weights)  # (sliced here: a slice inside the jit would be traced)
    outside = jaxnls.solve(weighted_curve_residual, start, data, solver=TIGHT)
    inside = jax.jit(lambda: jaxnls.solve(weighted_curve_residual, start, data, solver=TIGHT))()
    np.testing.assert_allclose(inside.params, outside.params, rtol=1e-12)
    upper = jnp.full(4, jnp.inf).at[0].set(start[0])  # (the start on the bound)
    bounded = jaxnls.solve(weighted_curve_residual, start, data, solver=TIGHT, bounds=(None, upper))
    traced_bound = jax.jit(lambda u: jaxnls.solve(weighted_curve_residual, start, data, solver=TIGHT, bounds=(None, u)))
    np.testing.assert_allclose(traced_bound(upper).params, bounded.params, rtol=1e-12)
    frozen = jnp.array([False, False, True, False])
    held = jaxnls.solve(weighted_curve_residual, start, data, solver=TIGHT, fixed=frozen)
    traced_mask = jax.jit(lambda m: jaxnls.solve(weighted_curve_residual, start, data, solver=TIGHT, fixed=m))
    np.testing.assert_allclose(traced_mask(frozen).params, held.params, rtol=1e-12)
    solver = lambda r: jaxnls.LevenbergMarquardt(rtol=r, atol=1e-14, ftol=0.0, gtol=0.0)
    traced_option = jax.jit(lambda r: jaxnls.solve(weighted_curve_residual, start, data, solver=solver(r)))
    np.testing.assert_allclose(traced_option(1e-14).params, outside.params, rtol=1e-12)


def test_a_nan_start_gets_zero_gradient_and_leaves_the_others_exact():
    y, p0, weights = curve_data(8, 3)
    bad = p0.at[1].set(jnp.nan)

    def params(y, p0):
        return jaxnls.solve(
            weighted_curve_residual, p0, (T, y, weights), solver=TIGHT, batched=True, args_axes=(None, 0, None)
        ).params

    jac_clean = jax.jacrev(lambda v: params(v, p0)[0])(y)
    jac_mixed = jax.jacrev(lambda v: params(v, bad))(y)
    assert np.all(np.isfinite(jac_mixed))
    np.testing.assert_array_equal(jac_mixed[1], 0.0)
    np.testing.assert_allclose(jac_mixed[0], jac_clean, rtol=1e-12, atol=1e-15)
    status = jaxnls.solve(
        weighted_curve_residual, bad, (T, y, weights), solver=TIGHT, batched=True, args_axes=(None, 0, None)
    ).status
    assert int(status[1]) == Status.NONFINITE_START


def test_rank_deficient_problem_gives_finite_gradients_of_the_identifiable_part():
    """Only p0 + p1 is determined by the data; the derivative of the identifiable combination is exact."""
    t = jnp.linspace(0.0, 1.0, 12)
    y = jnp.exp(-0.7 * t) + 0.01 * jnp.asarray(np.random.default_rng(9).standard_normal(12))

    def residual(p, args):
        t, y = args
        return jnp.exp(-(p[0] + p[1]) * t) - y

    def identifiable(y):
        sol = jaxnls.solve(residual, jnp.array([0.3, 0.3]), (t, y), solver=TIGHT)
        return sol.params[0] + sol.params[1]

    gradient = jax.grad(identifiable)(y)
    assert np.all(np.isfinite(gradient))
    direction = jnp.asarray(np.random.default_rng(10).standard_normal(12))
    np.testing.assert_allclose(gradient @ direction, directional_difference(identifiable, y, direction), rtol=1e-5)


def test_the_starting_point_gets_no_gradient():
    y, p0, weights = curve_data(11, 1)
    grad = jax.grad(
        lambda p: jnp.sum(jaxnls.solve(weighted_curve_residual, p, (T, y[0], weights), solver=TIGHT).params)
    )(p0[0])
    np.testing.assert_array_equal(grad, 0.0)


def test_float32_gradients_are_finite_and_close_to_float64():
    y, p0, weights = curve_data(12, 1)

    def outer(y, dtype):
        sol = jaxnls.solve(
            weighted_curve_residual,
            p0[0].astype(dtype),
            (T.astype(dtype), y, weights.astype(dtype)),
            solver=jaxnls.LevenbergMarquardt(rtol=1e-6, atol=1e-6),
        )
        return jnp.sum(sol.params)

    g32 = jax.grad(outer)(y[0].astype(jnp.float32), jnp.float32)
    g64 = jax.grad(outer)(y[0], jnp.float64)
    assert g32.dtype == jnp.float32 and np.all(np.isfinite(g32))
    np.testing.assert_allclose(g32, g64, rtol=2e-2, atol=1e-3 * np.max(np.abs(g64)))


def test_bad_adjoint_arguments_raise():
    with pytest.raises(ValueError, match="hessian"):
        jaxnls.Implicit(hessian="newton")
    with pytest.raises(TypeError, match="adjoint must be"):
        jaxnls.solve(lambda p, a: p - a, jnp.zeros(2), jnp.ones(2), adjoint="implicit")


TIGHT_SOLVERS = [
    TIGHT,
    jaxnls.Dogleg(rtol=1e-14, atol=1e-14, ftol=0.0, gtol=0.0),
    jaxnls.GaussNewton(rtol=1e-14, atol=1e-14, ftol=0.0, gtol=0.0),
    jaxnls.LevenbergMarquardt(rtol=1e-14, atol=1e-14, ftol=0.0, gtol=0.0, linear_solver=jaxnls.QR()),
    jaxnls.IndirectLevenbergMarquardt(rtol=1e-14, atol=1e-14, ftol=0.0, gtol=0.0, linear_solver=jaxnls.QR()),
]


@pytest.mark.parametrize(
    "solver",
    # (the first in the default run; the other strategies, ~40 s of compilation, with -m slow)
    [TIGHT_SOLVERS[0], *(pytest.param(s, marks=pytest.mark.slow) for s in TIGHT_SOLVERS[1:])],
    ids=lambda s: f"{type(s).__name__}-{type(s.linear_solver).__name__ if s.linear_solver else 'default'}",
)
def test_unrolled_iterations_reach_the_implicit_derivative_at_convergence(solver):
    y, p0, weights = curve_data(13, 1)

    def jacobian(adjoint):
        return jax.jacrev(
            lambda v: (
                jaxnls.solve(
                    weighted_curve_residual, p0[0], (T, v, weights), solver=solver, adjoint=adjoint, max_steps=60
                ).params
            )
        )(y[0])

    implicit, unrolled = jacobian(jaxnls.Implicit()), jacobian(jaxnls.Unroll())
    assert np.all(np.isfinite(unrolled))
    np.testing.assert_allclose(unrolled, implicit, rtol=1e-8, atol=1e-9 * np.max(np.abs(implicit)))


def test_unrolled_derivative_of_a_few_iterations_matches_central_differences():
    """Three iterations from a poor start (far from converged): the derivative of those iterates, w.r.t.
    the data and w.r.t. the starting point, forward and reverse."""
    y, p0, weights = curve_data(14, 1)
    start = p0[0] * 1.3

    def three_steps(y, start):
        return jaxnls.solve(
            weighted_curve_residual, start, (T, y, weights), solver=TIGHT, adjoint=jaxnls.Unroll(), max_steps=3
        ).params

    rng = np.random.default_rng(15)
    dy, dstart = jnp.asarray(rng.standard_normal(T.size)), jnp.asarray(rng.standard_normal(4))
    _, forward = jax.jvp(three_steps, (y[0], start), (dy, dstart))
    fd = directional_difference(lambda s: three_steps(y[0] + s * dy, start + s * dstart), 0.0, 1.0, step=1e-6)
    np.testing.assert_allclose(forward, fd, rtol=1e-5, atol=1e-8)
    u = jnp.asarray(rng.standard_normal(4))
    _, pullback = jax.vjp(three_steps, y[0], start)
    ct_y, ct_start = pullback(u)
    np.testing.assert_allclose(u @ forward, ct_y @ dy + ct_start @ dstart, rtol=1e-10)
    assert np.max(np.abs(ct_start)) > 0  # unlike Implicit, the start gets a gradient


@pytest.mark.slow  # (8 s; Truncated stays in the default set beside a NaN neighbour and on an MLP; benchmarks/README.md (av))
def test_truncated_steps_go_from_the_gauss_newton_to_the_exact_implicit_derivative():
    y, p0, weights = curve_data(16, 1)

    def jacobian(adjoint):
        return jax.jacrev(
            lambda v: (
                jaxnls.solve(weighted_curve_residual, p0[0], (T, v, weights), solver=TIGHT, adjoint=adjoint).params
            )
        )(y[0])

    exact, gauss_newton = jacobian(jaxnls.Implicit()), jacobian(jaxnls.Implicit(hessian="gauss_newton"))
    scale = np.max(np.abs(exact))
    assert np.max(np.abs(exact - gauss_newton)) > 1e-3 * scale  # the two differ on this noisy fit
    np.testing.assert_allclose(jacobian(jaxnls.Truncated(1)), gauss_newton, rtol=1e-9, atol=1e-10 * scale)
    np.testing.assert_allclose(jacobian(jaxnls.Truncated(40)), exact, rtol=1e-8, atol=1e-9 * scale)
    # the values are the solve's own
    plain = jaxnls.solve(weighted_curve_residual, p0[0], (T, y[0], weights), solver=TIGHT)
    truncated = jaxnls.solve(
        weighted_curve_residual, p0[0], (T, y[0], weights), solver=TIGHT, adjoint=jaxnls.Truncated(3)
    )
    np.testing.assert_array_equal(truncated.params, plain.params)
    np.testing.assert_array_equal(truncated.cost, plain.cost)
    with pytest.raises(ValueError, match="num_steps"):
        jaxnls.Truncated(0)


def test_direct_loss_minimisation_tends_to_the_gauss_newton_implicit_derivative():
    """Batched data and shared sample times: DLM's difference quotient converges (bias ∝ ε) to
    -Mᵀ(JᵀJ)⁻¹v, the Gauss-Newton implicit derivative."""
    y, p0, weights = curve_data(17, 3)

    def outer(y, weights, adjoint):
        sol = jaxnls.solve(
            weighted_curve_residual,
            p0,
            (T, y, weights),
            solver=TIGHT,
            batched=True,
            args_axes=(None, 0, None),
            adjoint=adjoint,
        )
        return jnp.sum(jnp.sin(sol.params)) + jnp.sum(sol.cost)

    reference = jax.grad(outer, argnums=(0, 1))(y, weights, jaxnls.Implicit(hessian="gauss_newton"))

    def error(epsilon):
        grads = jax.grad(outer, argnums=(0, 1))(y, weights, jaxnls.DirectLossMinimization(epsilon))
        return max(float(np.max(np.abs(g - r)) / np.max(np.abs(r))) for g, r in zip(grads, reference))

    coarse, fine = error(1e-2), error(1e-5)
    assert fine < 1e-5 and fine < 3e-3 * coarse
    with pytest.raises(ValueError, match="epsilon"):
        jaxnls.DirectLossMinimization(0.0)


@pytest.mark.parametrize(
    "adjoint",
    [jaxnls.Implicit(), jaxnls.Unroll(), jaxnls.Truncated(40), jaxnls.DirectLossMinimization(1e-7)],
    ids=lambda a: type(a).__name__,
)
def test_every_adjoint_matches_central_differences_beside_a_nan_neighbour(adjoint):
    """A batch of three fits (small residuals, so the Gauss-Newton-based DLM is exact too) whose middle
    problem starts at NaN: the loss of the outer two has the finite-difference gradient w.r.t. their data
    and the shared weights, the NaN problem's row is zero, and nothing is NaN."""
    rng = np.random.default_rng(18)
    clean = P_TRUE[0] * np.exp(-P_TRUE[1] * T) + P_TRUE[2] * np.sin(P_TRUE[3] * T)
    y = jnp.asarray(clean + 1e-6 * rng.standard_normal((3, T.size)))
    weights = jnp.asarray(1.0 + 0.5 * rng.random(T.size))
    p0 = jnp.asarray(P_TRUE * (1 + 0.05 * rng.standard_normal((3, 4)))).at[1].set(jnp.nan)

    def outer(y, weights):
        sol = jaxnls.solve(
            weighted_curve_residual,
            p0,
            (T, y, weights),
            solver=TIGHT,
            batched=True,
            args_axes=(None, 0, None),
            adjoint=adjoint,
            max_steps=60,
        )
        return jnp.sum(jnp.sin(sol.params[0])) + jnp.sum(jnp.sin(sol.params[2]))

    grad_y, grad_w = jax.grad(outer, argnums=(0, 1))(y, weights)
    assert np.all(np.isfinite(grad_y)) and np.all(np.isfinite(grad_w))
    np.testing.assert_array_equal(grad_y[1], 0.0)
    dy = jnp.asarray(rng.standard_normal(y.shape)).at[1].set(0.0)
    dw = jnp.asarray(rng.standard_normal(weights.shape))
    np.testing.assert_allclose(
        jnp.sum(grad_y * dy), directional_difference(lambda v: outer(v, weights), y, dy), rtol=1e-5
    )
    if isinstance(adjoint, jaxnls.DirectLossMinimization):
        # its difference quotient loses ~|∂θc|·ε_mach/ε to cancellation, more than this tiny weight
        # derivative; DLM's weight gradients are checked on a large-residual fit above
        return
    # with residuals of 1e-6 the weights barely move the solution (|∂L/∂w·dw| ~ 1e-6): central differences of an
    # O(1) loss resolve it only to ε·|L|/h ≈ 4e-11 absolute
    np.testing.assert_allclose(
        grad_w @ dw, directional_difference(lambda v: outer(y, v), weights, dw), rtol=1e-5, atol=1e-10
    )


ITERATING_ADJOINTS = [jaxnls.Unroll(), jaxnls.Truncated(40)]


@pytest.mark.parametrize("adjoint", ITERATING_ADJOINTS, ids=lambda a: type(a).__name__)
def test_iterating_adjoints_on_nist_rat43_match_central_differences(adjoint):
    """The differentiated iterations on a NIST problem (Unroll through 60 LM steps, Truncated through 40
    Gauss-Newton steps) against central differences of re-solved fits."""
    problem, x, y = _rat43()
    start = jnp.asarray(problem.starts[1])

    def solution(y):
        return jaxnls.solve(problem.residual_fn, start, (x, y), solver=TIGHT, adjoint=adjoint, max_steps=60).params

    direction = jnp.asarray(np.random.default_rng(19).standard_normal(y.shape))
    _, forward = jax.jvp(solution, (y,), (direction,))
    np.testing.assert_allclose(forward, directional_difference(solution, y, direction, step=1e-4), rtol=1e-5)


# (Truncated, ~8 s: moved out of the default set to keep it within 10 minutes on 2 cores, benchmarks/README.md (at);
# CI runs the slow set)
@pytest.mark.parametrize(
    "adjoint",
    [ITERATING_ADJOINTS[0], pytest.param(ITERATING_ADJOINTS[1], marks=pytest.mark.slow)],
    ids=lambda a: type(a).__name__,
)
def test_iterating_adjoints_with_an_mlp_and_on_a_rank_deficient_problem(adjoint):
    y, p0, _ = curve_data(20, 1)
    offset = Offset(eqx.nn.MLP(1, 1, 8, 2, activation=jnp.tanh, key=jax.random.PRNGKey(1)))

    def residual(p, args):
        t, y, model = args
        return p[0] * jnp.exp(-p[1] * t) + p[2] * jnp.sin(p[3] * t) + 0.1 * model(t) - y

    def outer(model):
        return jnp.sum(
            jaxnls.solve(residual, p0[0], (T, y[0], model), solver=TIGHT, adjoint=adjoint, max_steps=60).params ** 2
        )

    grads = eqx.filter_grad(outer)(offset)
    leaves, treedef = jax.tree_util.tree_flatten(eqx.filter(offset, eqx.is_array))
    direction = [jnp.asarray(d) for d in (np.random.default_rng(21).standard_normal(leaf.shape) for leaf in leaves)]
    along = jax.tree_util.tree_unflatten(treedef, direction)
    moved = lambda step: eqx.apply_updates(offset, jax.tree_util.tree_map(lambda d: step * d, along))
    analytic = sum(
        jnp.sum(g * d) for g, d in zip(jax.tree_util.tree_leaves(eqx.filter(grads, eqx.is_array)), direction)
    )
    np.testing.assert_allclose(analytic, (outer(moved(1e-5)) - outer(moved(-1e-5))) / 2e-5, rtol=1e-5)

    t = jnp.linspace(0.0, 1.0, 12)
    data = jnp.exp(-0.7 * t) + 0.01 * jnp.asarray(np.random.default_rng(22).standard_normal(12))

    def identifiable(data):
        sol = jaxnls.solve(
            lambda p, a: jnp.exp(-(p[0] + p[1]) * a[0]) - a[1],
            jnp.array([0.3, 0.3]),
            (t, data),
            solver=TIGHT,
            adjoint=adjoint,
            max_steps=60,
        )
        return sol.params[0] + sol.params[1]

    gradient = jax.grad(identifiable)(data)
    assert np.all(np.isfinite(gradient))
    direction = jnp.asarray(np.random.default_rng(23).standard_normal(12))
    np.testing.assert_allclose(gradient @ direction, directional_difference(identifiable, data, direction), rtol=1e-5)
