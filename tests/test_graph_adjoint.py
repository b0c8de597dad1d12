"""Derivatives of jaxnls.graph.solve: every adjoint against central differences of the solve itself.

The inputs are what a user learns through a factor graph: the measurements (moved on the manifold,
Z·Exp(ξ)), the information (a scale on the square root information), a robust loss's scale and the value
of a fixed (anchoring) variable. Truth is the central difference of the whole solve (float64, tight
tolerances); the direct-loss-minimisation estimate is checked against the Gauss-Newton implicit derivative
it approximates.
"""

from __future__ import annotations

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import directional_difference

jaxlie = pytest.importorskip("jaxlie")

import jaxnls  # noqa: E402
from jaxnls import graph as jg  # noqa: E402
from jaxnls.graph import bal_reprojection  # noqa: E402

NUM_POSES = 6
EDGES = np.array([(i, i + 1) for i in range(NUM_POSES - 1)] + [(0, 3), (1, 4), (2, 5)])


def _tight(linear_solver):
    return jaxnls.Dogleg(linear_solver=linear_solver, rtol=1e-14, atol=1e-14, ftol=0.0, gtol=1e-14)


def _pose_graph_data(seed=0):
    rng = np.random.default_rng(seed)
    truth = jaxlie.SE2.exp(jnp.asarray(rng.normal(size=(NUM_POSES, 3))))
    relative = jax.vmap(lambda a, b: a.inverse() @ b)(
        jax.tree_util.tree_map(lambda leaf: leaf[EDGES[:, 0]], truth),
        jax.tree_util.tree_map(lambda leaf: leaf[EDGES[:, 1]], truth),
    )
    measured = jax.vmap(lambda z, xi: z @ jaxlie.SE2.exp(xi))(
        relative, jnp.asarray(rng.normal(scale=0.15, size=(len(EDGES), 3)))
    )
    start = jax.vmap(lambda x, xi: x @ jaxlie.SE2.exp(xi))(
        truth, jnp.asarray(rng.normal(scale=0.2, size=(NUM_POSES, 3)))
    )
    return measured, start


MEASURED, START = _pose_graph_data()
SQRT_INFORMATION = jnp.diag(jnp.array([1.0, 2.0, 3.0]))


def _pose_graph(theta, loss: bool):
    """θ = (ξ (E, 3) moving the measurements, information scale, loss scale, ξ₀ (3,) moving the fixed pose 0)."""
    xi, information_scale, loss_scale, anchor_xi = theta
    measured = jax.vmap(lambda z, x: z @ jaxlie.SE2.exp(x))(MEASURED, xi)
    anchor = jaxlie.SE2(START.parameters()[0]) @ jaxlie.SE2.exp(anchor_xi)
    start = START.parameters().at[0].set(anchor.parameters())
    return jg.FactorGraph(
        {"pose": jaxlie.SE2(start)},
        [
            jg.CostGroup(
                jg.between,
                ("pose", "pose"),
                EDGES,
                measured,
                information_scale * jnp.broadcast_to(SQRT_INFORMATION, (len(EDGES), 3, 3)),
                loss=jaxnls.losses.Cauchy(loss_scale) if loss else None,
            )
        ],
        fixed={"pose": [0]},
    )


def _theta():
    return (jnp.zeros((len(EDGES), 3)), jnp.asarray(1.3), jnp.asarray(0.4), jnp.zeros(3))


def _direction(seed=1):
    rng = np.random.default_rng(seed)
    return tuple(jnp.asarray(rng.normal(size=np.shape(leaf))) for leaf in _theta())


def _outer(theta, adjoint, linear_solver, loss=True):
    """A smooth function of the solution (positions, headings) and of the final cost."""
    sol = jg.solve(_pose_graph(theta, loss), solver=_tight(linear_solver), max_steps=300, adjoint=adjoint)
    poses = sol.params["pose"].parameters()
    weights = jnp.arange(1.0, 2 * NUM_POSES + 1).reshape(NUM_POSES, 2)
    return jnp.sum(poses[:, 2:] * weights) + jnp.sum(jnp.sin(poses[:, :2])) + sol.cost


def _along(theta, direction):
    return lambda t: tuple(a + t * d for a, d in zip(theta, direction))


def _central(fn, theta, direction):
    return directional_difference(lambda t: fn(_along(theta, direction)(t)), 0.0, 1.0)


@pytest.mark.parametrize(
    "adjoint, linear_solver, loss",
    [
        (jaxnls.Implicit(), jg.SparseDirect(), True),
        pytest.param(jaxnls.Implicit(), jg.PCG(rtol=1e-13), True, marks=pytest.mark.slow),
        pytest.param(jaxnls.Unroll(), jg.SparseDirect(), True, marks=pytest.mark.slow),  # (~18 s; the default set's
        # unrolled derivatives: tests/test_adjoint.py)
        pytest.param(jaxnls.Truncated(10), jg.PCG(rtol=1e-13), False, marks=pytest.mark.slow),
    ],
    ids=["implicit-direct", "implicit-pcg", "unroll-direct", "truncated-pcg"],
)
def test_reverse_mode_matches_central_differences(adjoint, linear_solver, loss):
    theta, direction = _theta(), _direction()
    gradient = jax.grad(lambda th: _outer(th, adjoint, linear_solver, loss))(theta)
    along = sum(jnp.sum(g * d) for g, d in zip(gradient, direction))
    expected = _central(lambda th: _outer(th, adjoint, linear_solver, loss), theta, direction)
    np.testing.assert_allclose(along, expected, rtol=1e-6)
    # each input on its own (the fixed pose's value and the loss scale enter only through the rule)
    for i in (1, 2, 3):
        alone = tuple(d if j == i else jnp.zeros_like(d) for j, d in enumerate(direction))
        expected = _central(lambda th: _outer(th, adjoint, linear_solver, loss), theta, alone)
        np.testing.assert_allclose(jnp.sum(gradient[i] * direction[i]), expected, rtol=1e-6, atol=1e-9)


def test_forward_mode_matches_central_differences():
    theta, direction = _theta(), _direction(2)
    _, tangent = jax.jvp(lambda th: _outer(th, jaxnls.Implicit(), jg.SparseDirect()), (theta,), (direction,))
    np.testing.assert_allclose(
        tangent, _central(lambda th: _outer(th, jaxnls.Implicit(), jg.SparseDirect()), theta, direction), rtol=1e-6
    )


@pytest.mark.slow
def test_gauss_newton_hessian_differs_and_direct_loss_minimisation_tends_to_it():
    """With a Cauchy loss the Gauss-Newton derivative is not the exact one (the loss's curvature is
    dropped); DLM's difference quotient converges to the Gauss-Newton derivative as ε → 0."""
    theta = _theta()
    solver = jg.SparseDirect()
    exact = jax.grad(lambda th: _outer(th, jaxnls.Implicit(), solver))(theta)
    gauss_newton = jax.grad(lambda th: _outer(th, jaxnls.Implicit(hessian="gauss_newton"), solver))(theta)
    gap = float(np.max(np.abs(gauss_newton[0] - exact[0])) / np.max(np.abs(exact[0])))
    assert gap > 1e-2

    def error(epsilon):
        dlm = jax.grad(lambda th: _outer(th, jaxnls.DirectLossMinimization(epsilon), solver))(theta)
        return max(float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12)) for a, b in zip(dlm, gauss_newton))

    coarse, fine = error(1e-4), error(1e-8)
    assert fine < 1e-4 and fine < 1e-2 * coarse


def _bundle(observation_shift, seed=3, num_cameras=4, num_points=12):
    """A small bundle adjustment problem with cameras 0 and 1 fixed (no gauge freedom left)."""
    rng = np.random.default_rng(seed)
    cameras = np.array(
        [
            np.concatenate(
                [rng.normal(scale=0.1, size=3), [rng.normal(), rng.normal(), -10.0], [400.0 + 10 * c, 1e-3, 1e-5]]
            )
            for c in range(num_cameras)
        ]
    )
    points = rng.normal(scale=2.0, size=(num_points, 3))
    pairs = np.array([(c, p) for p in range(num_points) for c in range(num_cameras) if (p + c) % 4 != 3])
    observed = np.stack(
        [np.asarray(bal_reprojection(jnp.asarray(cameras[c]), jnp.asarray(points[p]), jnp.zeros(2))) for c, p in pairs]
    ) + rng.normal(scale=0.5, size=(len(pairs), 2))
    start_cameras = cameras + np.concatenate(
        [rng.normal(scale=1e-3, size=(num_cameras, 6)), np.zeros((num_cameras, 3))], axis=1
    )
    start_cameras[:2] = cameras[:2]
    return jg.FactorGraph(
        {
            "camera": jnp.asarray(start_cameras),
            "point": jnp.asarray(points + rng.normal(scale=0.05, size=points.shape)),
        },
        [jg.CostGroup(bal_reprojection, ("camera", "point"), pairs, jnp.asarray(observed) + observation_shift)],
        fixed={"camera": [0, 1]},
    )


@pytest.mark.slow
def test_schur_implicit_derivative_matches_central_differences():
    """Bundle adjustment: d(points, free cameras, cost)/d(observations) through SchurPCG's reduced solves,
    against central differences (of solves with the sparse direct solver)."""
    shift0 = jnp.zeros_like(_bundle(0.0).costs[0].data)
    direction = jnp.asarray(np.random.default_rng(4).normal(size=shift0.shape))

    def outer(shift, linear_solver):
        sol = jg.solve(_bundle(shift), solver=_tight(linear_solver), max_steps=300)
        return jnp.sum(jnp.sin(sol.params["point"])) + jnp.sum(sol.params["camera"][2:, :6]) + 1e-3 * sol.cost

    expected = directional_difference(lambda t: outer(shift0 + t * direction, jg.SparseDirect()), 0.0, 1.0)
    gradient = jax.grad(outer)(shift0, jg.SchurPCG(rtol=1e-13))
    np.testing.assert_allclose(jnp.sum(gradient * direction), expected, rtol=1e-6)


# (slow: ~16 s of compiling; moved out of the default set when every dense LevenbergMarquardt program began to
# compile ~20% longer with its long first trial, benchmarks/README.md (as); CI runs the slow set)
@pytest.mark.slow
def test_batch_with_a_nonfinite_start_reports_it_and_leaves_the_others_exact():
    """Three graphs of one structure, the middle one starting at NaN: it is reported NONFINITE_START
    (no exception), the others' solutions and gradients equal their own unbatched solves'."""
    # the batch shares its loss (a loss's scale is shared by a batch); the rest differs per graph
    thetas = [tuple(a + shift if i != 2 else a for i, a in enumerate(_theta())) for shift in (0.0, 0.01, -0.02)]
    graphs = [_pose_graph(theta, True) for theta in thetas]
    start = graphs[1].variables["pose"].parameters().at[3, 2].set(jnp.nan)
    graphs[1] = jg.FactorGraph({"pose": jaxlie.SE2(start)}, graphs[1].costs, fixed={"pose": [0]})

    def stack(leaves):
        return jnp.stack(leaves)

    def batched_outer(scales):
        costs = [
            jg.CostGroup(
                jg.between,
                ("pose", "pose"),
                EDGES,
                jax.tree_util.tree_map(lambda *l: stack(l), *[g.costs[0].data for g in graphs]),
                stack([g.costs[0].sqrt_information for g in graphs]) * scales[:, None, None, None],
                loss=graphs[0].costs[0].loss,
            )
        ]
        graph = jg.FactorGraph(
            {"pose": jax.tree_util.tree_map(lambda *l: stack(l), *[g.variables["pose"] for g in graphs])},
            costs,
            fixed={"pose": [0]},
        )
        sol = jg.solve(graph, solver=_tight(jg.SparseDirect()), max_steps=300, batched=True)
        return jnp.where(jnp.isfinite(sol.cost), sol.cost, 0.0), sol

    scales = jnp.ones(3)
    (costs, sol) = batched_outer(scales)
    assert [jaxnls.Status(int(s)) for s in sol.status][1] == jaxnls.Status.NONFINITE_START
    gradient = jax.grad(lambda s: jnp.sum(batched_outer(s)[0]))(scales)
    assert np.all(np.isfinite(gradient)) and gradient[1] == 0.0
    for b in (0, 2):

        def alone(scale, b=b):
            graph = graphs[b]
            cost = graph.costs[0]
            scaled = jg.CostGroup(
                cost.residual_fn, cost.kinds, cost.indices.array, cost.data, cost.sqrt_information * scale, cost.loss
            )
            return jg.solve(
                jg.FactorGraph(graph.variables, [scaled], fixed={"pose": [0]}),
                solver=_tight(jg.SparseDirect()),
                max_steps=300,
            ).cost

        np.testing.assert_allclose(costs[b], alone(1.0), rtol=1e-12)
        np.testing.assert_allclose(gradient[b], jax.grad(alone)(1.0), rtol=1e-9)
        np.testing.assert_allclose(gradient[b], directional_difference(alone, 1.0, 1.0), rtol=1e-6)


def test_unbatched_nonfinite_start_still_raises_and_bad_adjoint_is_rejected():
    graph = _pose_graph(_theta(), False)
    bad = jg.FactorGraph(
        {"pose": jaxlie.SE2(graph.variables["pose"].parameters().at[2, 0].set(jnp.inf))},
        graph.costs,
        fixed={"pose": [0]},
    )
    with pytest.raises(ValueError, match="non-finite starting value"):
        jg.solve(bad)
    with pytest.raises(TypeError, match="adjoint"):
        jg.solve(graph, adjoint="implicit")


# a small Euclidean graph whose edge residual has parameters θ (2,) of its own: held by an Equinox module, closed
# over by a function or bound by functools.partial, rather than passed in a cost group's data
CHAIN = np.array([(0, 1), (1, 2), (2, 3), (0, 2), (1, 3)])
_rng = np.random.default_rng(5)
CHAIN_DATA, CHAIN_START = jnp.asarray(_rng.normal(size=(len(CHAIN), 2))), jnp.asarray(_rng.normal(size=(4, 2)))
CHAIN_PRIOR, CHAIN_WEIGHTS = jnp.asarray(_rng.normal(size=(1, 2))), jnp.asarray(_rng.normal(size=(4, 2)))


def _edge(a, b, z, theta):
    d = b - a
    return d + 0.3 * theta * jnp.sin(d) - theta[::-1] * z


class _Edge(eqx.Module):
    theta: jax.Array

    def __call__(self, a, b, z):
        return _edge(a, b, z, self.theta)


def _chain_outer(residual_fn, adjoint: jaxnls.adjoint.AbstractAdjoint = jaxnls.Implicit()):
    graph = jg.FactorGraph(
        {"x": CHAIN_START},
        [
            jg.CostGroup(residual_fn, ("x", "x"), CHAIN, CHAIN_DATA),
            jg.CostGroup(jg.prior, "x", np.array([0]), CHAIN_PRIOR),
        ],
    )
    # (Gauss-Newton: of the strategies, the quickest to compile; every converted closure is a new program)
    solver = jaxnls.GaussNewton(linear_solver=jg.SparseDirect(), rtol=1e-14, atol=1e-14, ftol=0.0, gtol=1e-14)
    sol = jg.solve(graph, solver=solver, max_steps=100, adjoint=adjoint)
    return jnp.sum(sol.params["x"] * CHAIN_WEIGHTS) + sol.cost


@pytest.mark.filterwarnings("error:A JAX array is being set as static")
def test_a_residual_module_or_closure_gets_derivatives_for_its_arrays():
    """The parameters held by a cost group's residual module, or closed over by its function (a closure, a
    ``functools.partial``), are differentiated — reverse and forward, at the top level and inside a caller's jit —
    against central differences. A residual function is a static field of its cost group: they were constants of
    the compiled solve — an implicit derivative of exactly 0 under a caller's ``jit(grad)``, a truncated one off by
    the iterations' tangent under its ``jit(jvp)`` — or a failure (a module's tracers compared as static values,
    a closed-over tracer handed to the top-level program)."""
    theta, direction = jnp.asarray([0.7, 1.3]), jnp.asarray([0.6, -0.8])

    def closure(t, adjoint: jaxnls.adjoint.AbstractAdjoint = jaxnls.Implicit()):
        return _chain_outer(lambda a, b, z: _edge(a, b, z, t), adjoint)

    expected = directional_difference(lambda t: _chain_outer(_Edge(t)), theta, direction)
    along = {
        "module, grad": jax.grad(lambda t: _chain_outer(_Edge(t)))(theta) @ direction,
        "module, filter_grad": eqx.filter_grad(_chain_outer)(_Edge(theta)).theta @ direction,
        "closure, jit(grad)": jax.jit(jax.grad(closure))(theta) @ direction,
        "partial, jvp": jax.jvp(lambda t: _chain_outer(functools.partial(_edge, theta=t)), (theta,), (direction,))[1],
        "closure, Truncated, jit(jvp)": jax.jit(
            lambda t, d: jax.jvp(lambda t: closure(t, jaxnls.Truncated(20)), (t,), (d,))[1]
        )(theta, direction),
    }
    for name, value in along.items():
        np.testing.assert_allclose(value, expected, rtol=1e-6, err_msg=name)


@pytest.mark.filterwarnings("error:A JAX array is being set as static")
def test_a_residual_modules_arrays_are_arguments_of_the_compiled_solve():
    """Solving again with other values in the residual module compiles nothing (they were constants of the
    program, compared by value: one compilation per value)."""
    first, other = jnp.asarray([0.7, 1.3]), jnp.asarray([0.5, 1.1])
    _chain_outer(_Edge(first))
    lowered = []

    def listener(event, duration_secs, **kwargs):
        if event == "/jax/core/compile/jaxpr_to_mlir_module_duration":
            lowered.append(kwargs.get("fun_name"))

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        value = _chain_outer(_Edge(other))
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert lowered == []
    np.testing.assert_allclose(value, _chain_outer(lambda a, b, z: _edge(a, b, z, other)), rtol=1e-12)
