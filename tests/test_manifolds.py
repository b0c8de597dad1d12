"""Lie-group parameters in jaxnls.solve: retraction, tangent-space Jacobians, solves and adjoints.

Truth: jaxlie's own group operations, central finite differences on the manifold (float64), closed-form
optima (a rigid alignment with exact data).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

jaxlie = pytest.importorskip("jaxlie")

from conftest import directional_difference  # noqa: E402

import jaxnls  # noqa: E402
from jaxnls import manifolds  # noqa: E402

GROUPS = [jaxlie.SO2, jaxlie.SE2, jaxlie.SO3, jaxlie.SE3]


def _random(group, key, batch=()):
    tangent = 0.7 * jax.random.normal(key, batch + (group.tangent_dim,))
    # (vmapped: jaxlie's own broadcasting needs NumPy rank promotion, which conftest forbids)
    return jax.vmap(group.exp)(tangent) if batch else group.exp(tangent)


@pytest.mark.parametrize("group", GROUPS, ids=lambda g: g.__name__)
def test_parameter_array_is_jaxlies_parameters_without_computing(group):
    """The very array the group stores (no JAX operation, so nothing to compile: jaxlie's jitted
    ``parameters()`` compiles a program per new shape), equal to what ``parameters()`` returns."""
    stacked = _random(group, jax.random.PRNGKey(3), (5,))
    array = manifolds.parameter_array(stacked)
    assert array is jax.tree_util.tree_leaves(stacked)[0]
    np.testing.assert_array_equal(array, stacked.parameters())
    x = jnp.arange(3.0)
    assert manifolds.parameter_array(x) is x


@pytest.mark.parametrize("group", GROUPS, ids=lambda g: g.__name__)
def test_retract_and_local_against_jaxlie(group):
    key1, key2 = jax.random.split(jax.random.PRNGKey(3))
    x = _random(group, key1, (4,))
    delta = 0.3 * jax.random.normal(key2, (4, group.tangent_dim))
    moved = manifolds.retract(x, delta.ravel())
    np.testing.assert_allclose(moved.parameters(), jax.vmap(jaxlie.manifold.rplus)(x, delta).parameters(), atol=1e-14)
    np.testing.assert_allclose(manifolds.local(x, moved), delta, atol=1e-12)
    assert manifolds.tangent_size(x) == 4 * group.tangent_dim


@pytest.mark.parametrize("group", GROUPS, ids=lambda g: g.__name__)
def test_tangent_jacobian_matches_finite_differences_on_the_manifold(group):
    """The solve's Jacobian is d r(X Exp(δ)) / dδ at 0; check it column by column against
    central differences of the residual along retraction curves."""
    key1, key2 = jax.random.split(jax.random.PRNGKey(7))
    x = _random(group, key1)
    points = jax.random.normal(key2, (5, 2 if group in (jaxlie.SO2, jaxlie.SE2) else 3))

    def residual(params, pts):
        return jnp.ravel(jax.vmap(params.apply)(pts))

    space = manifolds.ProductSpace(x)
    flat = jax.flatten_util.ravel_pytree(x)[0]
    jac = jax.jacfwd(lambda d: residual(space.unravel(space.retract_one(flat, d)), points))(
        jnp.zeros(space.tangent_size)
    )
    for j in range(group.tangent_dim):
        e = jnp.zeros(group.tangent_dim).at[j].set(1.0)
        fd = directional_difference(
            lambda t: residual(manifolds.retract(x, t), points), jnp.zeros(group.tangent_dim), e
        )
        np.testing.assert_allclose(jac[:, j], fd, rtol=1e-7, atol=1e-9)


def _alignment(n=12, seed=0):
    key1, key2 = jax.random.split(jax.random.PRNGKey(seed))
    truth = jaxlie.SE3.exp(jnp.array([0.4, -0.3, 0.2, 0.9, -0.5, 0.3]))
    points = jax.random.normal(key1, (n, 3))
    return truth, points, jax.vmap(truth.apply)(points) + 0.01 * jax.random.normal(key2, (n, 3))


def _align_residual(params, args):
    points, observed = args
    moved = jax.vmap(params["pose"].apply)(points)
    return jnp.concatenate([jnp.ravel(moved - observed), params["offset"] - 1.0])


@pytest.mark.parametrize(
    "solver", [jaxnls.LevenbergMarquardt(), jaxnls.Dogleg(), jaxnls.GaussNewton()], ids=lambda s: type(s).__name__
)
def test_se3_alignment_solves_to_the_procrustes_optimum(solver):
    _truth, points, observed = _alignment()
    params0 = {"pose": jaxlie.SE3.identity(), "offset": jnp.zeros(2)}
    sol = jaxnls.solve(_align_residual, params0, (points, observed), solver=solver)
    assert sol.converged and sol.num_params == 8  # 6 tangent + 2 Euclidean, no quaternion column
    # closed form (Kabsch) for the same least-squares problem
    points, observed = np.asarray(points), np.asarray(observed)
    pc, oc = points.mean(0), observed.mean(0)
    u, _, vt = np.linalg.svd((observed - oc).T @ (points - pc))
    rotation = u @ np.diag([1, 1, np.linalg.det(u @ vt)]) @ vt
    np.testing.assert_allclose(sol.params["pose"].rotation().as_matrix(), rotation, atol=1e-8)
    np.testing.assert_allclose(sol.params["pose"].translation(), oc - rotation @ pc, atol=1e-8)
    np.testing.assert_allclose(sol.params["offset"], 1.0, atol=1e-10)
    assert isinstance(sol.params["pose"], jaxlie.SE3)
    np.testing.assert_allclose(jnp.linalg.norm(sol.params["pose"].rotation().wxyz), 1.0, atol=1e-12)


def test_batched_manifold_solve_isolates_a_bad_problem():
    _truth, points, observed = _alignment()
    observed = jnp.stack([observed, observed.at[0, 0].set(jnp.nan), observed + 0.1])
    params0 = {"pose": jaxlie.SE3(jnp.tile(jaxlie.SE3.identity().wxyz_xyz, (3, 1))), "offset": jnp.zeros((3, 2))}
    sols = jaxnls.solve(_align_residual, params0, (points, observed), batched=True, args_axes=(None, 0))
    single = jaxnls.solve(_align_residual, jax.tree_util.tree_map(lambda leaf: leaf[2], params0), (points, observed[2]))
    assert bool(sols.converged[0]) and bool(sols.converged[2]) and not bool(sols.converged[1])
    np.testing.assert_allclose(sols.params["pose"].wxyz_xyz[2], single.params["pose"].wxyz_xyz, atol=1e-12)


@pytest.mark.parametrize(
    "adjoint",
    [
        jaxnls.Implicit(),
        pytest.param(jaxnls.Implicit(hessian="gauss_newton"), marks=pytest.mark.slow),
        pytest.param(jaxnls.Truncated(20), marks=pytest.mark.slow),
    ],
    ids=["implicit", "implicit-gn", "truncated"],
)
def test_gradient_through_a_manifold_solve_matches_finite_differences(adjoint):
    _truth, points, observed = _alignment()
    params0 = {"pose": jaxlie.SE3.identity(), "offset": jnp.zeros(2)}
    direction = jax.random.normal(jax.random.PRNGKey(11), observed.shape)

    def outer(obs):
        sol = jaxnls.solve(
            _align_residual,
            params0,
            (points, obs),
            adjoint=adjoint,
            solver=jaxnls.LevenbergMarquardt(rtol=1e-14, atol=1e-14, ftol=0, gtol=0),
        )
        pose = sol.params["pose"]
        return jnp.sum(pose.translation() * jnp.array([1.0, -2.0, 0.5])) + jnp.sum(pose.log()[3:]) + sol.cost

    grad = jax.grad(outer)(observed)
    fd = directional_difference(outer, observed, direction, step=1e-6)
    tol = 2e-3 if adjoint == jaxnls.Implicit(hessian="gauss_newton") else 1e-6
    np.testing.assert_allclose(jnp.sum(grad * direction), fd, rtol=tol)


def test_indirect_lm_rejects_groups():
    _truth, points, observed = _alignment()
    with pytest.raises(NotImplementedError, match="Lie-group"):
        jaxnls.solve(
            _align_residual,
            {"pose": jaxlie.SE3.identity(), "offset": jnp.zeros(2)},
            (points, observed),
            solver=jaxnls.IndirectLevenbergMarquardt(),
        )
