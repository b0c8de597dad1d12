"""jaxnls.graph.SchurPCG: its step equals the dense solution of the damped normal equations of a small
bundle adjustment problem (dense Jacobian by jacfwd, for the test only), a full solve with it ends
where the sparse direct solver's does, and misuse is rejected clearly."""

from __future__ import annotations

from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnls import LevenbergMarquardt
from jaxnls import graph as jg
from jaxnls.graph import bal_graph_problem, bal_reprojection
from jaxnls.graph._graph import residual_size, term_evaluator, validate
from jaxnls.io import BALProblem


def _problem(num_cameras=4, num_points=20, seed=1):
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
    # every point in three of the four cameras: sparse visibility, 120 residuals for 96 unknowns
    pairs = [(c, p) for p in range(num_points) for c in (p % num_cameras, (p + 1) % num_cameras, (p + 2) % num_cameras)]
    camera_index, point_index = (np.array(v) for v in zip(*pairs))
    observed = np.asarray(
        jax.jit(jax.vmap(bal_reprojection))(cameras[camera_index], points[point_index], np.zeros((len(pairs), 2)))
    ) + rng.normal(scale=0.5, size=(len(pairs), 2))
    start = BALProblem(
        cameras=cameras
        + np.concatenate([rng.normal(scale=0.01, size=(num_cameras, 6)), np.zeros((num_cameras, 3))], axis=1),
        points=points + rng.normal(scale=0.05, size=points.shape),
        camera_index=camera_index,
        point_index=point_index,
        observations=observed,
    )
    return bal_graph_problem(start)


def _linearization(graph, solver_cls=jg.SchurPCG, **options):
    structure = validate(graph, False)
    cost = graph.costs[0]
    variables = [graph.variables[k][c] for k, c in zip(cost.kinds, cost.indices.array.T)]
    k = residual_size(graph, False)[0]
    # (the test's helpers compiled: run op by op they took seconds per problem size)
    r, jac, _ = jax.jit(term_evaluator(cost, structure.groups[0], jnp.float64, k))(variables, cost.data, None, None)
    solver = solver_cls(structure=structure, **options)
    return solver, solver.linearize(jnp.ravel(r), (jac,)), structure


def _dense(graph):
    cost = graph.costs[0]
    cams, pts = graph.variables["camera"], graph.variables["point"]
    ci, pi = cost.indices.array.T

    def residual(x):  # kinds in sorted order: camera then point
        c = x[: cams.size].reshape(cams.shape)
        p = x[cams.size :].reshape(pts.shape)
        return jnp.ravel(jax.vmap(bal_reprojection)(c[ci], p[pi], cost.data))

    x = jnp.concatenate([jnp.ravel(cams), jnp.ravel(pts)])
    return jax.jit(jax.jacfwd(residual))(x), jax.jit(residual)(x)


@pytest.mark.parametrize(
    "solver_cls,options,rtol",
    [
        # (SchurPCG, ~7 s: moved out of the default set to keep it within 10 minutes on 2 cores, benchmarks/README.md
        # (at); SchurPCG's solve against SparseDirect's stays in it)
        pytest.param(jg.SchurPCG, dict(rtol=1e-14, max_steps=1000), 1e-7, marks=pytest.mark.slow),
        (jg.SchurDirect, dict(chunk=7), 1e-8),  # several chunks of pairs, a padded last one
    ],
    ids=["SchurPCG", "SchurDirect"],
)
def test_schur_step_equals_the_dense_damped_solve(solver_cls, options, rtol):
    graph = _problem()
    dense, residual = _dense(graph)
    solver, lin, _structure = _linearization(graph, solver_cls, **options)
    np.testing.assert_allclose(lin.gradient, dense.T @ residual, rtol=1e-10, atol=1e-8)
    damping = 1e-3 * jnp.diag(dense.T @ dense) + 1e-6
    expected = -jnp.linalg.solve(dense.T @ dense + jnp.diag(damping), dense.T @ residual)
    step = eqx.filter_jit(lambda lin, d: solver.solve(lin, d))(lin, damping)
    np.testing.assert_allclose(step, expected, rtol=rtol, atol=rtol * 1e-2 * float(jnp.max(jnp.abs(expected))))


@pytest.mark.parametrize(
    "schur,rtol", [(jg.SchurPCG(), 1e-7), (jg.SchurDirect(), 1e-9)], ids=["SchurPCG", "SchurDirect"]
)
def test_solve_with_schur_matches_sparse_direct(schur, rtol):
    graph = _problem()
    direct = jg.solve(graph, solver=LevenbergMarquardt(linear_solver=jg.SparseDirect()), max_steps=200)
    solved = jg.solve(graph, solver=LevenbergMarquardt(linear_solver=schur), max_steps=200)
    assert bool(direct.converged) and bool(solved.converged)
    np.testing.assert_allclose(float(solved.cost), float(direct.cost), rtol=rtol)


def test_misuse_is_rejected():
    graph = _problem()
    with pytest.raises(ValueError, match="no variable kind"):
        jg.solve(graph, solver=LevenbergMarquardt(linear_solver=jg.SchurPCG(eliminate="landmark")))
    between = jg.FactorGraph(
        {"point": jnp.zeros((3, 3))}, [jg.CostGroup(jg.between, ("point", "point"), [[0, 1], [1, 2]], jnp.ones((2, 3)))]
    )
    with pytest.raises(ValueError, match=r"second variable kind|connects two"):
        jg.solve(between, solver=LevenbergMarquardt(linear_solver=jg.SchurPCG()))


# -- SchurDirect: the reduced camera system factored densely ---------------------------------------


def test_schur_direct_reduced_matrix_equals_the_dense_schur_complement():
    """S = A_cc - A_cp A_pp⁻¹ A_pc from the dense Jacobian (numpy, in the test)."""
    from jaxnls.graph._linear import NormalOperator
    from jaxnls.graph._schur import _Elimination, _reduced_camera_matrix

    graph = _problem(num_cameras=3, num_points=11)
    dense, _ = _dense(graph)
    _solver, lin, structure = _linearization(graph, jg.SchurDirect)
    damping = jnp.full((structure.n,), 0.5)
    operator = NormalOperator(structure=structure, jacobians=lin.blocks, products=None, damping=damping)
    # (compiled: run op by op, the assembly's scan takes ~10 s)
    reduced = np.asarray(
        eqx.filter_jit(lambda op: _reduced_camera_matrix(op, _Elimination(op, "point", "test"), chunk=5))(operator)
    )
    a = np.asarray(dense.T @ dense) + 0.5 * np.eye(structure.n)
    c = structure.count["camera"] * structure.dim["camera"]
    expected = a[:c, :c] - a[:c, c:] @ np.linalg.solve(a[c:, c:], a[c:, :c])
    np.testing.assert_allclose(reduced, expected, rtol=1e-9, atol=1e-9 * np.abs(expected).max())


def test_a_solve_with_schur_direct_differentiates_like_central_differences():
    """The implicit adjoint's exact-Hessian solves go through SchurDirect too (an indefinite S is allowed)."""
    graph = _problem()

    def cost(observations):
        changed = eqx.tree_at(lambda g: g.costs[0].data, graph, observations)
        return jg.solve(changed, solver=LevenbergMarquardt(linear_solver=jg.SchurDirect()), max_steps=200).cost

    observations = graph.costs[0].data
    direction = jnp.asarray(np.random.default_rng(0).standard_normal(observations.shape))
    derivative = jax.jvp(cost, (observations,), (direction,))[1]
    h = 1e-6
    central = (cost(observations + h * direction) - cost(observations - h * direction)) / (2 * h)
    np.testing.assert_allclose(float(derivative), float(central), rtol=1e-6)


def _mixed_graph(seed=3):
    """Three kinds of different widths (camera 6, lens 3, point 3) with the point eliminated: reprojection-like
    terms over (camera, lens, point), a term between two cameras (two kept arguments of one kind), a lens
    prior (no eliminated argument) and camera 0 held fixed."""
    rng = np.random.default_rng(seed)
    cameras, lenses, points = 4, 2, 9

    def observe(camera, lens, point, data):
        moved = jnp.tanh(camera[:3]) * point + camera[3:] + lens[0] * jnp.sin(point)
        return jnp.stack([moved[0] / (2.0 + moved[2] ** 2), moved[1] * lens[1] + lens[2] * moved[0]]) - data

    def tie(a, b, data):
        return a - 0.9 * b - data

    def prior(lens, data):
        return lens - data

    seen = np.array([(c, c % lenses, p) for p in range(points) for c in range(cameras) if (p + c) % 3 != 0])
    ties = np.array([(c, c + 1) for c in range(cameras - 1)])
    truth = {
        "camera": rng.normal(scale=0.5, size=(cameras, 6)),
        "lens": rng.normal(scale=0.5, size=(lenses, 3)),
        "point": rng.normal(size=(points, 3)),
    }

    def measured(fn, indices, kinds):
        clean = jax.vmap(lambda *args: fn(*args, 0.0))(*(jnp.asarray(truth[k][i]) for k, i in zip(kinds, indices.T)))
        return clean + 0.01 * rng.normal(size=clean.shape)

    kinds = (("camera", "lens", "point"), ("camera", "camera"), ("lens",))
    indices = (seen, ties, np.arange(lenses)[:, None])
    functions = (observe, tie, prior)
    return jg.FactorGraph(
        {kind: jnp.asarray(value + 0.05 * rng.normal(size=value.shape)) for kind, value in truth.items()},
        [
            jg.CostGroup(fn, kind, index, jnp.asarray(measured(fn, index, kind)))
            for fn, kind, index in zip(functions, kinds, indices)
        ],
        fixed={"camera": [0]},
    )


@pytest.mark.parametrize("given", ["jacobians", "products"])
def test_schur_direct_reduced_matrix_with_mixed_kinds_equals_the_dense_schur_complement(given):
    """Kept kinds of different widths, kept-kept terms of one and of two kinds, a fixed variable, and the
    operator given as Jacobians (steps) or as symmetric blocks (the implicit adjoint): S against numpy's dense
    Schur complement of the full matrix assembled here from jacfwd of the whole residual."""
    from jaxnls.graph._linear import NormalOperator, block_products
    from jaxnls.graph._schur import _Elimination, _reduced_camera_matrix

    graph = _mixed_graph()
    structure = validate(graph, False)
    blocks = []
    for cost, group, size in zip(graph.costs, structure.groups, residual_size(graph, False)):
        variables = [graph.variables[k][c] for k, c in zip(cost.kinds, cost.indices.array.T)]
        blocks.append(jax.jit(term_evaluator(cost, group, jnp.float64, size))(variables, cost.data, None, None)[1])
    damping = jnp.asarray(np.random.default_rng(0).uniform(0.1, 1.0, structure.n))
    if given == "jacobians":
        operator = NormalOperator(structure=structure, jacobians=tuple(blocks), products=None, damping=damping)
    else:
        products = tuple(block_products(jac, jac) for jac in blocks)
        operator = NormalOperator(structure=structure, jacobians=None, products=products, damping=damping)
    # (compiled: run op by op, the assembly's scan takes ~10 s)
    reduced = np.asarray(
        eqx.filter_jit(lambda op: _reduced_camera_matrix(op, _Elimination(op, "point", "test"), chunk=5))(operator)
    )

    # the dense matrix, in the structure's coordinates (kinds sorted: camera, lens, point)
    def residual(x):
        parts = structure.flat_to_kinds(x)
        out = []
        for cost in graph.costs:
            args = [parts[k][c] for k, c in zip(cost.kinds, cost.indices.array.T)]
            out.append(jnp.ravel(jax.vmap(cost.residual_fn)(*args, cost.data)))
        return jnp.concatenate(out)

    x = structure.kinds_to_flat(dict(graph.variables))
    jac = np.array(jax.jit(jax.jacfwd(residual))(x))
    jac[:, structure.fixed_diagonal > 0] = 0.0  # fixed coordinates: zero columns, an identity in A
    a = jac.T @ jac + np.diag(np.asarray(damping) + structure.fixed_diagonal)
    kept = structure.offset["point"]
    expected = a[:kept, :kept] - a[:kept, kept:] @ np.linalg.solve(a[kept:, kept:], a[kept:, :kept])
    np.testing.assert_allclose(reduced, expected, rtol=1e-10, atol=1e-12 * np.abs(expected).max())


def test_schur_direct_solves_the_mixed_graph_like_sparse_direct():
    graph = _mixed_graph()
    direct = jg.solve(graph, solver=LevenbergMarquardt(linear_solver=jg.SparseDirect()), max_steps=200)
    schur = jg.solve(graph, solver=LevenbergMarquardt(linear_solver=jg.SchurDirect()), max_steps=200)
    assert bool(direct.converged) and bool(schur.converged)
    np.testing.assert_allclose(float(schur.cost), float(direct.cost), rtol=1e-9)


# -- the default linear solver ------------------------------------------------------------------------


def test_default_linear_solver_eliminates_points_in_bundle_adjustment_and_not_in_pose_graphs():
    from jaxnls.io import read_pose_graph

    data = Path(__file__).parent / "data" / "graphs"
    assert jg.default_linear_solver(_problem()) == jg.SchurDirect(eliminate="point")
    # the kind with the most variables among those no term connects twice: points (9) over lenses (2)
    assert jg.default_linear_solver(_mixed_graph()) == jg.SchurDirect(eliminate="point")
    poses = jg.pose_graph_problem(read_pose_graph(data / "w100.graph"))
    assert jg.default_linear_solver(poses) == jg.SparseDirect()

    # whichever kind has more variables is eliminated (cameras too are never connected to each other) ...
    def shape_only(cameras, points):
        pairs = [(c, (3 * c + k) % points) for c in range(cameras) for k in range(3)]
        variables = {"camera": jnp.zeros((cameras, 9)), "point": jnp.ones((points, 3))}
        return jg.FactorGraph(
            variables, [jg.CostGroup(bal_reprojection, ("camera", "point"), pairs, jnp.zeros((len(pairs), 2)))]
        )

    assert jg.default_linear_solver(shape_only(300, 20)) == jg.SchurDirect(eliminate="camera")
    # ... unless the rest keeps more than SCHUR_KEPT_MAX unknowns: the dense reduced system would be too large
    assert jg.default_linear_solver(shape_only(300, 1000)) == jg.SparseDirect()  # 2,700 camera unknowns kept
    # counted in variables, not unknowns (Ceres' rule): dubrovnik-3-7's 7 points of 3 unknowns are eliminated, not its
    # 3 cameras of 9, whose blocks are far worse conditioned
    from jaxnls.io import read_bal

    dubrovnik = jg.bal_graph_problem(read_bal(data / "dubrovnik-3-7-pre.txt"))
    assert jg.default_linear_solver(dubrovnik) == jg.SchurDirect(eliminate="point")
    # a solve without a solver uses it
    solved = jg.solve(_problem(), max_steps=50)
    assert solved.method == "Dogleg, SchurDirect"


def test_the_command_line_eliminates_the_points_of_a_bal_file_by_default(capsys):
    import json

    from jaxnls.__main__ import main

    path = Path(__file__).parent / "data" / "graphs" / "dubrovnik-3-7-pre.txt"
    reports = {}
    for choice in ("auto", "direct"):
        assert main(["solve", str(path), "--json", "--linear-solver", choice]) == 0
        reports[choice] = json.loads(capsys.readouterr().out)
    assert reports["auto"]["linear_solver"] == "SchurDirect"
    assert reports["direct"]["linear_solver"] == "SparseDirect"
    # (the file's minimum is an exact fit: both reach rounding level from an initial cost of ~1e3)
    assert reports["auto"]["final_cost"] < 1e-20 and reports["direct"]["final_cost"] < 1e-20


def test_the_reduced_systems_lu_matches_numpy_on_indefinite_matrices_that_need_pivoting():
    """``lu_solve`` (SchurDirect's factorisation up to 256 unknowns): partial pivoting is exercised by a zero
    leading entry, and symmetric indefinite matrices (the implicit adjoint's exact Hessian) are solved."""
    from jaxnls.linear._dense import lu_solve

    rng = np.random.default_rng(4)
    solve = jax.jit(lu_solve)
    for n in (1, 2, 7, 40):
        a = rng.standard_normal((n, n))
        a = a + a.T  # symmetric, indefinite
        if n > 1:
            a[0, 0] = 0.0  # no factorisation without a row exchange
        b = rng.standard_normal(n)
        expected = np.linalg.solve(a, b)
        np.testing.assert_allclose(solve(jnp.asarray(a), jnp.asarray(b)), expected, rtol=1e-9, atol=1e-12)


# (slow: ~12 s; moved out of the default set to keep it within 10 minutes on 2 cores, benchmarks/README.md (at); CI runs
# the slow set)
@pytest.mark.slow
def test_the_schur_plan_passed_in_gives_the_solve_it_builds_itself():
    """At the top level graph.solve passes SchurDirect's reduction plan into the compiled program as arguments;
    inside a caller's jit the structure's plan enters as constants (a plan given by the caller is not used there).
    Both give the same solve."""
    from jaxnls.graph._graph import validate
    from jaxnls.graph._schur import reduction_plan_arrays

    # two cameras fixed: without them the problem's gauge freedom (a similarity of the whole scene) leaves the
    # steps' component along it to rounding, which the two programs' different compiler options do differently
    free = _problem()
    graph = jg.FactorGraph(free.variables, free.costs, fixed={"camera": np.array([0, 1])})
    solver = LevenbergMarquardt(linear_solver=jg.SchurDirect())
    first = jg.solve(graph, solver=solver, max_steps=1)
    first_built = jax.jit(lambda g: jg.solve(g, solver=solver, max_steps=1))(graph)
    for kind in ("point", "camera"):
        np.testing.assert_allclose(
            np.asarray(first.params[kind]), np.asarray(first_built.params[kind]), rtol=1e-11, atol=1e-11
        )
    passed = jg.solve(graph, solver=solver, max_steps=50)
    built = jax.jit(lambda g: jg.solve(g, solver=solver, max_steps=50))(graph)
    assert int(passed.num_steps) == int(built.num_steps) and bool(passed.converged) and bool(built.converged)
    np.testing.assert_allclose(float(passed.cost), float(built.cost), rtol=1e-12)
    for kind in ("point", "camera"):
        np.testing.assert_allclose(
            np.asarray(passed.params[kind]), np.asarray(built.params[kind]), rtol=1e-10, atol=1e-10
        )
    # another graph's plan (other pairs of terms, another tree of arrays) is replaced, never used
    other = _problem(num_cameras=3, num_points=12, seed=5)
    foreign = reduction_plan_arrays(validate(other, False), jg.SchurDirect())
    mistaken = LevenbergMarquardt(linear_solver=jg.SchurDirect(plan=foreign))
    inside = jax.jit(lambda g: jg.solve(g, solver=mistaken, max_steps=50))(graph)
    np.testing.assert_array_equal(np.asarray(inside.params["point"]), np.asarray(built.params["point"]))
    alone = jg.solve(graph, solver=mistaken, max_steps=50)
    np.testing.assert_array_equal(np.asarray(alone.params["point"]), np.asarray(passed.params["point"]))


@pytest.mark.parametrize(("condition", "rtol", "max_steps"), [(1e4, 1e-10, 500), (1e8, 1e-15, 50)])
def test_conjugate_gradient_iterates_as_lineax_cg(condition, rtol, max_steps):
    """PCG's and SchurPCG's conjugate gradients take lineax's CG iterations (residual recomputed every tenth,
    the same stopping test): converged, and stopped by the count without drift, the result is lineax's. (Where
    rounding makes the iterate drift, it returns the iterate of lowest model value instead:
    test_graph_adjoint's SchurPCG gradient check.)"""
    import lineax as lx

    from jaxnls.graph._linear import conjugate_gradient

    rng = np.random.default_rng(3)
    n = 40
    basis, _ = np.linalg.qr(rng.normal(size=(n, n)))
    matrix = jnp.asarray(basis @ np.diag(np.logspace(0, -np.log10(condition), n)) @ basis.T)
    rhs = jnp.asarray(rng.normal(size=n))
    jacobi = 1.0 / jnp.diagonal(matrix)
    structure = jax.ShapeDtypeStruct(rhs.shape, rhs.dtype)
    peer = lx.linear_solve(
        lx.FunctionLinearOperator(lambda v: matrix @ v, structure, tags=lx.positive_semidefinite_tag),
        rhs,
        lx.CG(rtol=0.0, atol=rtol * jnp.linalg.norm(rhs), norm=jnp.linalg.norm, max_steps=max_steps),
        options={
            "preconditioner": lx.FunctionLinearOperator(
                lambda v: jacobi * v, structure, tags=lx.positive_semidefinite_tag
            )
        },
        throw=False,
    )
    ours = conjugate_gradient(lambda v: matrix @ v, lambda v: jacobi * v, rhs, rtol, max_steps)
    np.testing.assert_allclose(ours, peer.value, rtol=1e-12, atol=1e-12 * float(jnp.max(jnp.abs(peer.value))))
