"""Factor graphs: GTSAM's factor errors and LM results as truth, the dense Jacobian of the flattened
problem for the block-sparse structure, independent solves for batches."""

import importlib.util
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

jaxlie = pytest.importorskip("jaxlie")

import jaxnls  # noqa: E402
from jaxnls import graph as jg  # noqa: E402
from jaxnls.io import sqrt_information  # noqa: E402

HAS_SPARSAX = importlib.util.find_spec("sparsax") is not None

SOLVERS = {
    "sparse-direct": jaxnls.LevenbergMarquardt(linear_solver=jg.SparseDirect()),
    "pcg": jaxnls.LevenbergMarquardt(linear_solver=jg.PCG(rtol=1e-10)),
}


# -- GTSAM files as arrays (until jaxnls.io ships its readers) -------------------------------------


def _pose2_row(p):
    return [np.cos(p.theta()), np.sin(p.theta()), p.x(), p.y()]


def _pose3_row(p):
    return np.asarray(jaxlie.SE3.from_matrix(jnp.asarray(p.matrix())).wxyz_xyz)


def _load(gtsam, name, is3d):
    path = gtsam.findExampleDataFile(name)
    factors, initial = gtsam.readG2o(path, True) if is3d else gtsam.load2D(path)
    row, group = (_pose3_row, jaxlie.SE3) if is3d else (_pose2_row, jaxlie.SE2)
    edges, measured, sqrt_info = [], [], []
    for i in range(factors.size()):
        factor = factors.at(i)
        edges.append(list(factor.keys()))
        measured.append(row(factor.measured()))
        sqrt_info.append(factor.noiseModel().R())
    keys = sorted(initial.keys())
    assert keys == list(range(len(keys)))
    at = initial.atPose3 if is3d else initial.atPose2
    poses = group(jnp.asarray(np.array([row(at(k)) for k in keys])))
    sqrt_info = np.stack(sqrt_info)
    if is3d:  # GTSAM's Pose3 tangent is (ω, v), jaxlie's (v, ω)
        sqrt_info = np.asarray(jg.from_gtsam_pose3(sqrt_info))
    return factors, initial, poses, np.array(edges), group(jnp.asarray(np.array(measured))), sqrt_info


def _anchored(gtsam, name, is3d, sigma=1e-6):
    """Our graph and GTSAM's, both with the same strong prior on pose 0 (gauge)."""
    factors, initial, poses, edges, measured, sqrt_info = _load(gtsam, name, is3d)
    d = 6 if is3d else 3
    prior = gtsam.PriorFactorPose3 if is3d else gtsam.PriorFactorPose2
    at = initial.atPose3 if is3d else initial.atPose2
    factors = gtsam.NonlinearFactorGraph(factors)
    factors.add(prior(0, at(0), gtsam.noiseModel.Diagonal.Sigmas(np.full(d, sigma))))
    anchor = jax.tree_util.tree_map(lambda leaf: leaf[:1], poses)
    graph = jg.FactorGraph(
        {"pose": poses},
        [
            jg.CostGroup(jg.between, ("pose", "pose"), edges, measured, sqrt_info),
            jg.CostGroup(jg.prior, ("pose",), [[0]], anchor, jnp.eye(d)[None] / sigma),
        ],
    )
    return graph, factors, initial


def _gtsam_lm(gtsam, factors, initial):
    params = gtsam.LevenbergMarquardtParams()
    params.setRelativeErrorTol(1e-14)
    params.setAbsoluteErrorTol(1e-14)
    params.setMaxIterations(200)
    return factors.error(gtsam.LevenbergMarquardtOptimizer(factors, initial, params).optimize())


# -- factor errors -------------------------------------------------------------------------------


@pytest.mark.parametrize("is3d", [False, True], ids=["pose2", "pose3"])
def test_between_and_prior_equal_gtsam_errors(is3d):
    gtsam = pytest.importorskip("gtsam")
    rng = np.random.default_rng(1)
    d = 6 if is3d else 3

    def random_pose():
        if is3d:
            return gtsam.Pose3(gtsam.Rot3.Expmap(rng.normal(size=3)), rng.normal(size=3))
        return gtsam.Pose2(*rng.normal(size=3))

    row, group = (_pose3_row, jaxlie.SE3) if is3d else (_pose2_row, jaxlie.SE2)
    for _ in range(5):
        a, b, z = random_pose(), random_pose(), random_pose()
        cov = np.cov(rng.normal(size=(d, 3 * d)))
        noise = gtsam.noiseModel.Gaussian.Covariance(cov)
        between = (gtsam.BetweenFactorPose3 if is3d else gtsam.BetweenFactorPose2)(0, 1, z, noise)
        prior = (gtsam.PriorFactorPose3 if is3d else gtsam.PriorFactorPose2)(0, z, noise)
        values = gtsam.Values()
        values.insert(0, a)
        values.insert(1, b)
        ga, gb, gz = (group(jnp.asarray(row(p))) for p in (a, b, z))
        ours = jg.between(ga, gb, gz)
        theirs = between.unwhitenedError(values)
        information = np.linalg.inv(cov)
        if is3d:  # compare in GTSAM's (ω, v) order
            ours = jnp.concatenate([ours[3:], ours[:3]])
        np.testing.assert_allclose(ours, theirs, atol=1e-10)
        root = sqrt_information(jg.from_gtsam_pose3(information) if is3d else information)
        whitened = root @ jg.between(ga, gb, gz)
        np.testing.assert_allclose(0.5 * whitened @ whitened, between.error(values), rtol=1e-9)
        ours_prior = root @ jg.prior(ga, gz)
        np.testing.assert_allclose(0.5 * ours_prior @ ours_prior, prior.error(values), rtol=1e-9)


def test_initial_cost_equals_gtsam_graph_error_on_a_file():
    gtsam = pytest.importorskip("gtsam")
    graph, factors, initial = _anchored(gtsam, "w100.graph", False)
    sol = jg.solve(graph, max_steps=0)
    np.testing.assert_allclose(float(sol.initial_cost), factors.error(initial), rtol=1e-9)


# -- solves against GTSAM's Levenberg-Marquardt ---------------------------------------------------


@pytest.mark.parametrize("name,is3d", [("w100.graph", False), ("pose3example.txt", True)], ids=["w100", "pose3"])
@pytest.mark.parametrize("linear", list(SOLVERS), ids=list(SOLVERS))
def test_pose_graph_final_cost_equals_gtsam(name, is3d, linear):
    gtsam = pytest.importorskip("gtsam")
    graph, factors, initial = _anchored(gtsam, name, is3d)
    sol = jg.solve(graph, solver=SOLVERS[linear])
    assert bool(sol.converged), jaxnls.Status(int(sol.status))
    np.testing.assert_allclose(float(sol.cost), _gtsam_lm(gtsam, factors, initial), rtol=1e-6)
    group = jaxlie.SE3 if is3d else jaxlie.SE2
    assert isinstance(sol.params["pose"], group)


@pytest.mark.parametrize("strategy", [jaxnls.LevenbergMarquardt, jaxnls.Dogleg, jaxnls.GaussNewton])
def test_a_strategy_without_a_linear_solver_gets_the_graphs_default(strategy):
    """A strategy constructed without a linear solver (its default, as for jaxnls.solve) solves a graph with
    default_linear_solver's choice: GTSAM's minimum, and bit for bit the solve with that choice given
    explicitly. A dense linear solver given explicitly is refused by name."""
    gtsam = pytest.importorskip("gtsam")
    graph, factors, initial = _anchored(gtsam, "w100.graph", False)
    assert strategy().linear_solver is None
    chosen = jg.solve(graph, solver=strategy())
    explicit = jg.solve(graph, solver=strategy(linear_solver=jg.default_linear_solver(graph)))
    assert bool(chosen.converged), jaxnls.Status(int(chosen.status))
    np.testing.assert_allclose(float(chosen.cost), _gtsam_lm(gtsam, factors, initial), rtol=1e-6)
    assert int(chosen.num_steps) == int(explicit.num_steps)
    np.testing.assert_array_equal(chosen.params["pose"].parameters(), explicit.params["pose"].parameters())
    with pytest.raises(TypeError, match="Cholesky, a dense solver"):
        jg.solve(graph, solver=strategy(linear_solver=jaxnls.Cholesky()))


def test_fixed_pose_instead_of_a_prior():
    gtsam = pytest.importorskip("gtsam")
    graph, factors, initial = _anchored(gtsam, "w100.graph", False)
    fixed = jg.FactorGraph(graph.variables, graph.costs[:1], fixed={"pose": [0]})
    sol = jg.solve(fixed)
    assert bool(sol.converged)
    np.testing.assert_array_equal(sol.params["pose"].parameters()[0], graph.variables["pose"].parameters()[0])
    np.testing.assert_allclose(float(sol.cost), _gtsam_lm(gtsam, factors, initial), rtol=1e-6)


@pytest.mark.parametrize("strategy", [jaxnls.LevenbergMarquardt, jaxnls.Dogleg, jaxnls.GaussNewton])
def test_a_graph_with_every_variable_held_returns_its_start_converged_as_the_dense_solve_does(strategy):
    """With no variable free, the start is the minimiser of the restricted problem (it was reported STALLED,
    its all-zero Jacobian taken for a plateau): converged at once, as ``jaxnls.solve`` says of the same
    residuals with every parameter fixed; the cost is ½Σr² at the start, computed here."""
    start = np.arange(8.0).reshape(4, 2)
    edges = np.array([[0, 1], [1, 2], [2, 3]])

    def difference(a, b, d):
        return a - b - d

    held = jg.FactorGraph(
        {"x": jnp.asarray(start)},
        [jg.CostGroup(difference, ("x", "x"), edges, jnp.ones((3, 2)))],
        fixed={"x": [0, 1, 2, 3]},
    )
    sol = jg.solve(held, solver=strategy())
    dense = jaxnls.solve(
        lambda x, _: jnp.ravel(x[edges[:, 0]] - x[edges[:, 1]] - 1.0),
        jnp.asarray(start),
        None,
        solver=strategy(),
        fixed=jnp.ones(start.shape, bool),
    )
    cost = 0.5 * np.sum((start[edges[:, 0]] - start[edges[:, 1]] - 1.0) ** 2)
    for solution in (sol, dense):
        assert jaxnls.Status(int(solution.status)) == jaxnls.Status.CONVERGED_GRADIENT
        assert int(solution.num_steps) == 0
        np.testing.assert_allclose(float(solution.cost), cost, rtol=1e-15)
    np.testing.assert_array_equal(np.asarray(sol.params["x"]), start)


# -- the block-sparse structure against the dense Jacobian ------------------------------------------


def observe(pose, landmark, seen):
    """A landmark seen in a pose's frame (a Euclidean variable kind next to SE2 poses)."""
    return pose.inverse().apply(landmark) - seen


def _tiny_graph(key=0, noise=0.1):
    """5 SE2 poses and 2 Euclidean landmarks: odometry, a loop closure, range-bearing-like offsets."""
    rng = np.random.default_rng(key)
    truth = [jaxlie.SE2.from_xy_theta(float(i), 0.2 * i, 0.3 * i) for i in range(5)]
    poses = jaxlie.SE2(jnp.stack([p.unit_complex_xy for p in truth]))
    noisy = jax.vmap(lambda p, t: p @ jaxlie.SE2.exp(t))(poses, jnp.asarray(noise * rng.normal(size=(5, 3))))
    edges = np.array([[0, 1], [1, 2], [2, 3], [3, 4], [4, 0]])
    measured = jax.vmap(lambda a, b: a.inverse() @ b)(
        jax.tree_util.tree_map(lambda leaf: leaf[edges[:, 0]], poses),
        jax.tree_util.tree_map(lambda leaf: leaf[edges[:, 1]], poses),
    )
    landmarks = jnp.asarray(rng.normal(size=(2, 2)) * 3)
    sightings = np.array([[0, 0], [1, 0], [3, 1], [4, 1]])

    seen = jnp.stack([truth[i].inverse().apply(landmarks[j]) for i, j in sightings])
    sqrt_info = jnp.asarray(np.triu(rng.normal(size=(5, 3, 3))) + 3 * np.eye(3))
    return jg.FactorGraph(
        {"pose": noisy, "landmark": landmarks + 0.2},
        [
            jg.CostGroup(jg.between, ("pose", "pose"), edges, measured, sqrt_info),
            jg.CostGroup(observe, ("pose", "landmark"), sightings, seen),
            jg.CostGroup(jg.prior, "pose", [0], jax.tree_util.tree_map(lambda leaf: leaf[:1], poses), 10 * jnp.eye(3)),
        ],
    )


# (slow: ~16 s of compiling; moved out of the default set when every dense LevenbergMarquardt program began to
# compile ~20% longer with its long first trial, benchmarks/README.md (as); CI runs the slow set)
@pytest.mark.slow
def test_block_sparse_linearization_equals_the_dense_jacobian():
    from jaxnls.graph._graph import residual_size, term_evaluator, validate
    from jaxnls.manifolds import ProductSpace

    graph = _tiny_graph()
    structure = validate(graph, False)
    space = ProductSpace(graph.variables)
    x = ravel_pytree(graph.variables)[0]

    def flat_residual(delta):  # the whole problem as one dense function of the tangent vector
        values = space.retract_params(graph.variables, delta)
        out = []
        for cost in graph.costs:
            args = [
                jax.tree_util.tree_map(lambda leaf, c=c: leaf[c], values[k])
                for k, c in zip(cost.kinds, cost.indices.array.T)
            ]
            r = jax.vmap(lambda *a: jnp.ravel(cost.residual_fn(*a[:-1], a[-1])))(*args, cost.data)
            if cost.sqrt_information is not None:
                L = jnp.broadcast_to(cost.sqrt_information, (r.shape[0],) + cost.sqrt_information.shape[-2:])
                r = jnp.einsum("eij,ej->ei", L, r)
            out.append(jnp.ravel(r))
        return jnp.concatenate(out)

    n = structure.n
    assert n == 5 * 3 + 2 * 2
    dense = jax.jit(jax.jacfwd(flat_residual))(jnp.zeros(n))
    residual = jax.jit(flat_residual)(jnp.zeros(n))

    @jax.jit
    def sparse(x):
        blocks, pieces = [], []
        values = space.unravel(x)
        for cost, group, size in zip(graph.costs, structure.groups, residual_size(graph, False)):
            variables = [
                jax.tree_util.tree_map(lambda leaf, c=c: leaf[c], values[k])
                for k, c in zip(cost.kinds, group["indices"].T)
            ]
            evaluate = term_evaluator(cost, group, x.dtype, size)
            r, jac, _ = evaluate(variables, cost.data, cost.sqrt_information, cost.loss)
            blocks.append(jac)
            pieces.append(jnp.ravel(r))
        return blocks, pieces

    blocks, pieces = sparse(x)
    np.testing.assert_allclose(jnp.concatenate(pieces), residual, atol=1e-12)
    solver = jg.PCG(structure=structure)
    lin = solver.linearize(jnp.concatenate(pieces), tuple(blocks))
    np.testing.assert_allclose(lin.gradient, dense.T @ residual, atol=1e-10)
    np.testing.assert_allclose(lin.diagonal(), jnp.sum(dense**2, axis=0), atol=1e-10)
    v = jax.random.normal(jax.random.PRNGKey(0), (n,))
    np.testing.assert_allclose(lin.curvature(v), jnp.sum((dense @ v) ** 2), rtol=1e-12)
    damping = jnp.linspace(0.1, 1.0, n)
    from_jacobians = jg.NormalOperator(structure=structure, jacobians=lin.blocks, products=None, damping=damping)
    from_products = jg.NormalOperator(
        structure=structure,
        jacobians=None,
        products=tuple(jnp.einsum("eka,ekb->eab", jac, jac) for jac in lin.blocks),
        damping=damping,
    )
    normal = dense.T @ dense + jnp.diag(damping)
    for operator in (from_jacobians, from_products):
        np.testing.assert_allclose(operator.times(v), normal @ v, atol=1e-10)
        diagonal_blocks = operator.block_diagonal()
        for kind in structure.kinds:
            for i in range(structure.count[kind]):
                at = structure.offset[kind] + i * structure.dim[kind] + np.arange(structure.dim[kind])
                np.testing.assert_allclose(diagonal_blocks[kind][i], normal[np.ix_(at, at)], atol=1e-10)
    expected = -jnp.linalg.solve(dense.T @ dense + jnp.diag(damping), dense.T @ residual)
    factorizations = ["cholmod", "qdldl"] if HAS_SPARSAX else ["qdldl"]
    for solver in (
        jg.PCG(rtol=1e-13, structure=structure),
        *[jg.SparseDirect(factorization=f, structure=structure) for f in factorizations],
    ):
        step = eqx.filter_jit(lambda lin, d, solver=solver: solver.solve(lin, d))(lin, damping)
        np.testing.assert_allclose(step, expected, rtol=1e-8)
    # systems of symmetric blocks (the implicit adjoint's Hessian, possibly indefinite) go to QDLDL under "auto"
    direct = jg.SparseDirect(structure=structure)
    rhs = -lin.gradient
    np.testing.assert_allclose(direct.solve_operator(from_products, rhs), np.linalg.solve(normal, rhs), rtol=1e-8)


@pytest.mark.skipif(not HAS_SPARSAX, reason="sparsax (CHOLMOD) is not installed on this platform")
def test_a_nonfinite_system_gives_cholmod_the_identity_and_the_step_the_scaled_right_hand_side():
    """A Jacobian entry that is NaN (a problem of a batch gone non-finite) makes the assembled matrix non-finite;
    CHOLMOD is then given the identity (it would stop the whole batch), and the solve returns the Jacobi-scaled
    right-hand side, x_j = b_j / A_jj where A_jj is finite and positive, else b_j: finite, computed here from the
    dense matrix. A finite system in the same compiled program is solved exactly."""
    from jaxnls.graph._graph import validate
    from jaxnls.graph._linear import NormalOperator

    edges = np.array([[0, 1], [1, 2], [2, 3], [3, 0], [0, 2]])
    cost = jg.CostGroup(lambda a, b, d: a - b - d, ("p", "p"), edges, jnp.ones((5, 2)), jnp.eye(2))
    graph = jg.FactorGraph({"p": jnp.zeros((4, 2))}, [cost])
    structure = validate(graph, False)
    rng = np.random.default_rng(3)
    blocks = jnp.asarray(rng.normal(size=(5, 2, 4)))
    damping = jnp.full(structure.n, 0.5)
    rhs = jnp.asarray(rng.normal(size=structure.n))
    solver = jg.SparseDirect(factorization="cholmod", structure=structure)
    solve = jax.jit(lambda blocks: solver.solve_system(NormalOperator(structure, (blocks,), None, damping), rhs))

    def dense_matrix(blocks):
        jacobian = np.zeros((10, structure.n))
        for e, (i, j) in enumerate(edges):
            jacobian[2 * e : 2 * e + 2, 2 * i : 2 * i + 2] = blocks[e][:, :2]
            jacobian[2 * e : 2 * e + 2, 2 * j : 2 * j + 2] = blocks[e][:, 2:]
        return jacobian.T @ jacobian + np.diag(np.asarray(damping))

    np.testing.assert_allclose(solve(blocks), np.linalg.solve(dense_matrix(blocks), rhs), rtol=1e-10)
    broken = blocks.at[1, 0, 3].set(jnp.nan)  # the second term's row 0 in variable 2's second coordinate
    diagonal = np.diag(dense_matrix(np.asarray(broken)))
    expected = np.where(np.isfinite(diagonal) & (diagonal > 0), rhs / np.where(diagonal > 0, diagonal, 1.0), rhs)
    assert np.isnan(diagonal).any() and not np.isnan(diagonal).all()
    np.testing.assert_allclose(solve(broken), expected, rtol=1e-12)


@pytest.mark.skipif(not HAS_SPARSAX, reason="sparsax (CHOLMOD) is not installed on this platform")
def test_cholmod_steps_stay_inside_the_compiled_program_and_options_are_checked():
    """With CHOLMOD the step solve lowers to sparsax's FFI call and no host callback (the program can be kept in
    JAX's persistent cache); with QDLDL to a host callback. An unknown factorisation is refused by name."""
    graph = _tiny_graph()
    x = {kind: value for kind, value in graph.variables.items()}

    def lowered(factorization):
        solver = jaxnls.LevenbergMarquardt(linear_solver=jg.SparseDirect(factorization=factorization))
        return jax.jit(lambda v: jg.solve(jg.FactorGraph(v, graph.costs, graph.fixed), solver=solver).cost).lower(x)

    cholmod, qdldl = lowered("cholmod").as_text(), lowered("qdldl").as_text()
    assert "sparsax_solve" in cholmod and "callback" not in cholmod
    assert "callback" in qdldl and "sparsax" not in qdldl
    with pytest.raises(ValueError, match="factorization must be one of 'auto', 'cholmod', 'qdldl', got 'superlu'"):
        jg.SparseDirect(factorization="superlu")
    # float32 problems are factored by QDLDL; asking for CHOLMOD there is refused, naming the dtype
    assert not jg.SparseDirect().uses_cholmod(jnp.float32) and jg.SparseDirect().uses_cholmod(jnp.float64)
    with pytest.raises(ValueError, match="a float64 problem \\(this one is float32\\)"):
        jg.SparseDirect(factorization="cholmod").uses_cholmod(jnp.float32)


@pytest.mark.skipif(not HAS_SPARSAX, reason="sparsax (CHOLMOD) is not installed on this platform")
@pytest.mark.parametrize("strategy", ["Dogleg", "LevenbergMarquardt", "GaussNewton"])
def test_cholmod_factors_once_per_step_and_not_the_first_iterations_placeholder(strategy):
    """CHOLMOD's own count of numeric factorisations equals the trial steps taken: the first iteration, which
    evaluates the start, proposes no step (it used to factor the all-zero placeholder system: sphere2500's
    70 ms, a seventh of its solve)."""
    import sparsax_cpp

    solver = getattr(jaxnls, strategy)(linear_solver=jg.SparseDirect(factorization="cholmod"))
    before = sparsax_cpp.factorization_count()
    solution = jax.block_until_ready(jg.solve(_tiny_graph(), solver=solver))
    assert jaxnls.Status(int(solution.status)).converged
    assert int(solution.num_steps) >= 2
    assert sparsax_cpp.factorization_count() - before == int(solution.num_steps)


@pytest.mark.skipif(not HAS_SPARSAX, reason="sparsax (CHOLMOD) is not installed on this platform")
def test_sparse_direct_steps_equal_the_dense_solve_when_a_term_names_one_variable_twice():
    """Terms naming one variable twice (their off-diagonal products land on its diagonal block twice), a
    variable no term touches, and two kinds of different sizes: SparseDirect's iterates (CHOLMOD and
    QDLDL), step for step, are those of jaxnls.solve on the same residual written densely."""

    def pair(a, b, d):
        return jnp.sin(a) + 2.0 * b[:2] * b[2] - d

    def single(b, d):
        return b - d

    x0 = jnp.asarray(np.random.default_rng(3).normal(size=(5, 2)))
    y0 = jnp.asarray(np.random.default_rng(4).normal(size=(3, 3)))
    pairs = np.array([[0, 1], [2, 2], [1, 1], [3, 0]])  # x4 and y... : kinds x (N, 2) and y (N, 3)
    data = jnp.asarray(np.random.default_rng(5).normal(size=(4, 2)))
    graph = jg.FactorGraph(
        {"x": x0, "y": y0},
        [
            jg.CostGroup(pair, ("x", "y"), pairs[:, [0, 1]] % [5, 3], data),
            jg.CostGroup(lambda a, b, d: a - b - d, ("x", "x"), np.array([[1, 1], [2, 3]]), jnp.ones((2, 2))),
            jg.CostGroup(single, "y", [[0], [2]], jnp.zeros((2, 3))),
        ],
    )
    cost_args = [(c.residual_fn, np.asarray(c.indices.array), c.kinds, c.data) for c in graph.costs]

    def dense_residual(params, _):
        out = []
        for fn, idx, kinds, d in cost_args:
            picked = [params[kind][idx[:, j]] for j, kind in enumerate(kinds)]
            out.append(jax.vmap(fn)(*picked, d).ravel())
        return jnp.concatenate(out)

    # the diagonal blocks of JᵀJ (the block-Jacobi preconditioner's) against the dense Jacobian's
    from jaxnls.graph._graph import validate
    from jaxnls.graph._linear import NormalOperator

    flat, unravel = ravel_pytree({"x": x0, "y": y0})
    dense_jacobian = jax.jacfwd(lambda v: dense_residual(unravel(v), None))(flat)
    normal = dense_jacobian.T @ dense_jacobian
    structure = validate(graph, False)
    blocks = [
        jax.vmap(jax.jacfwd(lambda *a, fn=fn: fn(*a[:-1], a[-1]), argnums=tuple(range(len(kinds)))))(
            *[jnp.asarray(graph.variables[kind])[idx[:, j]] for j, kind in enumerate(kinds)], d
        )
        for fn, idx, kinds, d in cost_args
    ]
    blocks = tuple(jnp.concatenate(b, axis=-1) for b in blocks)
    operator = NormalOperator(structure=structure, jacobians=blocks, products=None, damping=jnp.zeros(structure.n))
    for kind, block in operator.block_diagonal().items():
        start, dim = structure.offset[kind], structure.dim[kind]
        for v in range(structure.count[kind]):
            where = slice(start + v * dim, start + (v + 1) * dim)
            np.testing.assert_allclose(block[v], normal[where, where], rtol=1e-12, atol=1e-12, err_msg=f"{kind}{v}")

    options = dict(initial_damping=1e-2)
    # (the dense solve's long first trial, which graph solves do not take, off: the same algorithm on both sides)
    dense_solver = jaxnls.LevenbergMarquardt(**options, long_first_trial=False)
    dense = jaxnls.solve(dense_residual, {"x": x0, "y": y0}, None, solver=dense_solver, max_steps=4, throw=False)
    for factorization in ("cholmod", "qdldl"):
        if factorization == "cholmod" and not jg.SparseDirect(factorization="auto").uses_cholmod(jnp.float64):
            continue
        solver = jaxnls.LevenbergMarquardt(linear_solver=jg.SparseDirect(factorization=factorization), **options)
        sparse = jg.solve(graph, solver=solver, max_steps=4, throw=False)
        assert int(sparse.num_steps) == int(dense.num_steps)
        for kind in ("x", "y"):
            np.testing.assert_allclose(
                sparse.params[kind], dense.params[kind], rtol=1e-9, atol=1e-12, err_msg=factorization
            )


def test_the_sparsity_pattern_and_slots_equal_a_brute_force_assembly():
    """GraphStructure.pattern() (derived from the pairs of variables) against a dense assembly done term by
    term: CSR rows sorted, no duplicate entries, every pair of columns a term touches present plus each
    variable's whole diagonal block, and the slots sum every contribution where the dense sum puts it. A graph
    with two kinds of different sizes, a term naming one variable twice, a fixed and an untouched variable."""
    from jaxnls.graph._graph import validate

    rng = np.random.default_rng(7)
    graph = jg.FactorGraph(
        {"a": jnp.zeros((6, 2)), "b": jnp.zeros((4, 3))},
        [
            jg.CostGroup(
                lambda x, y, d: x - y[:2] - d, ("a", "b"), [[0, 1], [2, 1], [5, 3], [0, 0]], jnp.zeros((4, 2))
            ),
            jg.CostGroup(lambda x, y, d: x - y - d, ("a", "a"), [[1, 1], [2, 4], [4, 2]], jnp.zeros((3, 2))),
            jg.CostGroup(lambda y, d: y - d, "b", [[2]], jnp.zeros((1, 3))),
        ],
        fixed={"a": [4]},
    )
    structure = validate(graph, False)
    indptr, indices, rows, position, diagonal_at = structure.pattern()
    n = structure.n
    assert (
        indptr.shape == (n + 1,)
        and np.all(np.diff(indptr) >= 0)
        and np.array_equal(rows, np.repeat(np.arange(n), np.diff(indptr)))
    )
    for r in range(n):
        assert np.all(np.diff(indices[indptr[r] : indptr[r + 1]]) > 0)  # sorted, no duplicates
    expected = np.zeros((n, n), bool)
    for group in structure.groups:
        for columns in group["host_columns"]:
            expected[np.ix_(columns, columns)] = True
    for kind in structure.kinds:
        for v in range(structure.count[kind]):
            block = structure.offset[kind] + v * structure.dim[kind] + np.arange(structure.dim[kind])
            expected[np.ix_(block, block)] = True
    found = np.zeros((n, n), bool)
    found[rows, indices] = True
    np.testing.assert_array_equal(found, expected)
    # every contribution (vec(P_e) per term, then d) lands where the dense sum puts it
    sizes = [g["num_terms"] * g["columns"].shape[1] ** 2 for g in structure.groups]
    contributions = rng.normal(size=sum(sizes) + n)
    dense = np.zeros((n, n))
    start = 0
    for group, size in zip(structure.groups, sizes):
        d = group["columns"].shape[1]
        for columns, block in zip(group["host_columns"], contributions[start : start + size].reshape(-1, d, d)):
            np.add.at(dense, np.ix_(columns, columns), block)
        start += size
    dense[np.arange(n), np.arange(n)] += contributions[start:]
    summed = np.bincount(position, weights=contributions, minlength=indices.shape[0])
    np.testing.assert_allclose(summed, dense[rows, indices], rtol=1e-14, atol=1e-14)
    assert np.array_equal(rows[diagonal_at], indices[diagonal_at]) and np.array_equal(rows[diagonal_at], np.arange(n))


def test_the_cholmod_plan_passed_in_gives_the_solve_it_builds_itself():
    """At the top level graph.solve passes CHOLMOD's assembly plan into the compiled program as arguments
    (reused for a graph of the same structure); inside a caller's jit the plan enters the program as
    constants. Both give the same solve, and so does QDLDL, a different factorisation."""
    from jaxnls.graph._graph import validate
    from jaxnls.graph._linear import UpperAssembly, assembly_for

    graph = _tiny_graph()
    solver = jaxnls.LevenbergMarquardt(linear_solver=jg.SparseDirect(factorization="cholmod"))
    passed = jg.solve(graph, solver=solver)
    built = jax.jit(lambda g: jg.solve(g, solver=solver))(graph)
    qdldl = jg.solve(
        graph, solver=eqx.tree_at(lambda s: s.linear_solver, solver, jg.SparseDirect(factorization="qdldl"))
    )
    assert int(passed.num_steps) == int(built.num_steps) == int(qdldl.num_steps)
    flat = lambda solution: ravel_pytree(jax.tree_util.tree_map(jnp.asarray, solution.params))[0]
    np.testing.assert_allclose(flat(passed), flat(built), rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(flat(passed), flat(qdldl), rtol=1e-10, atol=1e-10)
    # the plan is that of the structure, and one graph's structures share it; another graph's differ
    first, again = validate(graph, False), validate(graph, False)
    assert assembly_for(first) is assembly_for(again)
    fresh = UpperAssembly.of(first)
    for field in ("segment", "repeat", "row", "column", "diagonal"):
        np.testing.assert_array_equal(getattr(assembly_for(first), field), getattr(fresh, field))
    other = jg.FactorGraph(graph.variables, graph.costs[:1], graph.fixed)
    foreign = assembly_for(validate(other, False))
    assert foreign is not assembly_for(first)
    # a plan made for another structure: graph.solve binds its own; a solve inside jit that keeps it refuses it
    mistaken = jaxnls.LevenbergMarquardt(linear_solver=jg.SparseDirect(factorization="cholmod", assembly=foreign))
    np.testing.assert_array_equal(flat(jg.solve(graph, solver=mistaken)), flat(passed))
    with pytest.raises(ValueError, match="assembly plan was made for another graph structure"):
        jax.jit(lambda g: jg.solve(g, solver=mistaken))(graph)


@pytest.mark.skipif(not HAS_SPARSAX, reason="sparsax (CHOLMOD) is not installed on this platform")
def test_a_cholmod_failure_is_retried_with_qdldl_and_said(monkeypatch):
    """sparsax stops the computation on a non-positive pivot; graph.solve then warns and solves with QDLDL,
    which gives what a QDLDL solve gives."""
    import sparsax

    graph = _tiny_graph()
    # tolerances no other test uses: a program compiled earlier in this process would not call the patched solve
    solver = jaxnls.LevenbergMarquardt(linear_solver=jg.SparseDirect(), rtol=1.25e-9, atol=1.25e-12)
    expected = jg.solve(
        graph, solver=eqx.tree_at(lambda s: s.linear_solver, solver, jg.SparseDirect(factorization="qdldl"))
    )
    real = sparsax.solve
    monkeypatch.setattr(sparsax, "solve", lambda rows, columns, values, rhs: real(rows, columns, -values, rhs))
    with pytest.warns(RuntimeWarning, match="numerically indefinite.*factorization='qdldl'"):
        sol = jg.solve(graph, solver=solver)
    np.testing.assert_array_equal(sol.params["landmark"], expected.params["landmark"])
    assert int(sol.num_steps) == int(expected.num_steps)


@pytest.mark.skipif(not HAS_SPARSAX, reason="needs sparsax (CHOLMOD)")
def test_a_callers_vmap_around_the_solve_takes_qdldl_and_a_graph_rebuilds_with_its_own_fixed():
    """Scaling every square-root information by s scales the cost by s² at the same minimiser: a caller's
    ``jax.vmap`` over s gives that (it failed inside CHOLMOD's FFI call, which the solve's own batch has already
    vmapped; "auto" takes QDLDL there, an explicit "cholmod" is refused naming the way out). The graph is rebuilt
    with the original's ``fixed`` (which the constructor refused as it was)."""
    graph = _tiny_graph()
    odometry, sightings = graph.costs[:2]
    noisy = sightings.data + 0.05 * jnp.asarray(np.random.default_rng(3).normal(size=sightings.data.shape))
    sightings = jg.CostGroup(sightings.residual_fn, sightings.kinds, sightings.indices.array, noisy)
    graph = jg.FactorGraph(graph.variables, [odometry, sightings], fixed={"pose": [0]})
    solver = jaxnls.LevenbergMarquardt(rtol=1e-12, atol=1e-12)

    def cost(s, factorization="auto"):
        costs = [
            jg.CostGroup(
                c.residual_fn,
                c.kinds,
                c.indices.array,
                c.data,
                s * (jnp.eye(2) if c.sqrt_information is None else c.sqrt_information),  # (observe: k = 2)
            )
            for c in graph.costs
        ]
        scaled = jg.FactorGraph(graph.variables, costs, fixed=graph.fixed)
        with_solver = eqx.tree_at(
            lambda t: t.linear_solver, solver, jg.SparseDirect(factorization=factorization), is_leaf=lambda x: x is None
        )
        return jg.solve(scaled, solver=with_solver).cost

    alone = float(cost(1.0))
    assert alone > 1e-3  # (noisy measurements: a minimum above zero)
    scales = jnp.array([0.5, 1.0, 3.0])
    np.testing.assert_allclose(jax.vmap(cost)(scales), alone * scales**2, rtol=1e-9)
    with pytest.raises(NotImplementedError, match=r"cannot run under a caller's jax\.vmap.*batched=True"):
        jax.vmap(lambda s: cost(s, "cholmod"))(scales)


# -- batches -------------------------------------------------------------------------------------------


def test_batched_graphs_solve_together_and_a_bad_one_does_not_poison_the_rest():
    graphs = [_tiny_graph(key=k) for k in range(3)]
    batch = jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *graphs)
    # problem 1's measurements blow up: its solve fails alone
    bad = batch.costs[1].data.at[1].set(jnp.nan)
    batch = jg.FactorGraph(
        batch.variables,
        [
            batch.costs[0],
            jg.CostGroup(batch.costs[1].residual_fn, ("pose", "landmark"), batch.costs[1].indices.array, bad),
            batch.costs[2],
        ],
    )
    solver = SOLVERS["sparse-direct"]
    sols = jg.solve(batch, solver=solver, batched=True)
    assert bool(sols.converged[0]) and bool(sols.converged[2])
    assert int(sols.status[1]) == jaxnls.Status.NONFINITE_START
    assert np.isnan(sols.gradient_norm[1]) and np.isfinite(np.asarray(sols.gradient_norm)[[0, 2]]).all()
    for k in (0, 2):
        single = jg.solve(graphs[k], solver=solver)
        np.testing.assert_allclose(sols.cost[k], single.cost, rtol=1e-8, atol=1e-20)  # (zero-residual fits)
        np.testing.assert_allclose(sols.params["landmark"][k], single.params["landmark"], atol=1e-10)


# -- bad input -------------------------------------------------------------------------------------------


def test_bad_inputs_give_clear_errors():
    graph = _tiny_graph()
    between = graph.costs[0]
    with pytest.raises(ValueError, match=r"indices\[:, 1\] has 7, outside \[0, 5\)"):
        jg.solve(
            jg.FactorGraph(
                graph.variables,
                [
                    jg.CostGroup(
                        jg.between, ("pose", "pose"), [[0, 7]], jax.tree_util.tree_map(lambda l: l[:1], between.data)
                    )
                ],
            )
        )
    with pytest.raises(ValueError, match="leading axes must be"):
        jg.solve(
            jg.FactorGraph(
                graph.variables,
                [
                    jg.CostGroup(
                        jg.between,
                        ("pose", "pose"),
                        [[0, 1], [1, 2]],
                        jax.tree_util.tree_map(lambda l: l[:1], between.data),
                    )
                ],
            )
        )
    with pytest.raises(ValueError, match=r"indices must have shape \(E, 2\)"):
        jg.CostGroup(jg.between, ("pose", "pose"), [[0, 1, 2]])
    with pytest.raises(ValueError, match="not among the variables"):
        jg.solve(jg.FactorGraph(graph.variables, [jg.CostGroup(jg.prior, "camera", [0], between.data)]))
    with pytest.raises(ValueError, match="sqrt_information must be"):
        jg.solve(
            jg.FactorGraph(
                graph.variables,
                [jg.CostGroup(jg.between, ("pose", "pose"), between.indices.array, between.data, jnp.eye(2))],
            )
        )
    poses = graph.variables["pose"]
    broken = jaxlie.SE2(poses.unit_complex_xy.at[3, 2].set(jnp.inf))
    with pytest.raises(ValueError, match=r"non-finite starting value at index \(3,\)"):
        jg.solve(jg.FactorGraph({**graph.variables, "pose": broken}, graph.costs))
    with pytest.raises(TypeError, match="Cholesky, a dense solver; factor graphs need a graph linear solver"):
        jg.solve(graph, solver=jaxnls.LevenbergMarquardt(linear_solver=jaxnls.Cholesky()))
    with pytest.raises(NotImplementedError, match="IndirectLevenbergMarquardt"):
        jg.solve(graph, solver=jaxnls.IndirectLevenbergMarquardt(linear_solver=jg.PCG()))
    with pytest.raises(NotImplementedError, match=r"long_first_trial=True\) is for jaxnls.solve's dense problems"):
        jg.solve(graph, solver=jaxnls.LevenbergMarquardt(long_first_trial=True))
    with pytest.raises(TypeError, match="batched must be True or False"):
        jg.solve(graph, batched="no")  # pyright: ignore[reportArgumentType]


# -- marginal covariances against GTSAM's Marginals ---------------------------------------------------


def _gtsam_order(block, is3d):
    """A jaxlie-ordered tangent covariance block in GTSAM's order (Pose3: (ω, v) instead of (v, ω))."""
    if not is3d:
        return block
    size = block.shape[0] // 6
    order = np.concatenate([6 * i + np.array([3, 4, 5, 0, 1, 2]) for i in range(size)])
    return block[np.ix_(order, order)]


def _values_as_rows(gtsam, values, is3d, count):
    row, group = (_pose3_row, jaxlie.SE3) if is3d else (_pose2_row, jaxlie.SE2)
    at = values.atPose3 if is3d else values.atPose2
    return {"pose": group(jnp.asarray(np.array([row(at(k)) for k in range(count)])))}


@pytest.mark.parametrize("name,is3d", [("w100.graph", False), ("pose3example.txt", True)], ids=["w100", "pose3"])
def test_marginal_covariances_equal_gtsam_marginals(name, is3d):
    """Single and joint marginals at GTSAM's LM optimum, same graph and prior (sigma 0.1 on pose 0, so that
    the system is well conditioned), to 1e-6 relative in GTSAM's tangent order."""
    gtsam = pytest.importorskip("gtsam")
    graph, factors, initial = _anchored(gtsam, name, is3d, sigma=0.1)
    params = gtsam.LevenbergMarquardtParams()
    params.setRelativeErrorTol(1e-14)
    params.setAbsoluteErrorTol(1e-14)
    optimum = gtsam.LevenbergMarquardtOptimizer(factors, initial, params).optimize()
    count = graph.variables["pose"].parameters().shape[0]
    at = _values_as_rows(gtsam, optimum, is3d, count)
    marginals = gtsam.Marginals(factors, optimum)
    for index in (0, count // 2, count - 1):
        ours = _gtsam_order(jg.marginal_covariance(graph, [("pose", index)], at=at), is3d)
        theirs = marginals.marginalCovariance(index)
        np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-9 * np.abs(theirs).max())
    pair = [1, count - 2]
    ours = _gtsam_order(jg.marginal_covariance(graph, [("pose", i) for i in pair], at=at), is3d)
    theirs = marginals.jointMarginalCovariance(gtsam.KeyVector(pair)).fullMatrix()
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-9 * np.abs(theirs).max())


def test_marginal_covariance_of_a_fixed_variable_is_zero_and_errors_are_named():
    graph = _tiny_graph()
    fixed = jg.FactorGraph(graph.variables, graph.costs, fixed={"pose": [0]})
    joint = jg.marginal_covariance(fixed, [("pose", 0), ("landmark", 1)])
    assert joint.shape == (5, 5)
    np.testing.assert_array_equal(joint[:3], 0.0)
    np.testing.assert_array_equal(joint[:, :3], 0.0)
    assert np.all(np.linalg.eigvalsh(joint[3:, 3:]) > 0)
    # the landmark's block equals the corresponding block of the dense inverse (small problem: dense truth)
    from jaxnls.graph._graph import validate

    structure = validate(fixed, False)
    dense = np.zeros((structure.n, structure.n))
    from jaxnls.graph._marginals import _term_products

    for product, group in zip(_term_products(fixed), structure.groups):
        for term, columns in zip(product, group["columns"]):
            dense[np.ix_(columns, columns)] += term
    free = structure.fixed_diagonal == 0
    inverse = np.zeros_like(dense)
    inverse[np.ix_(free, free)] = np.linalg.inv(dense[np.ix_(free, free)])
    landmark = structure.offset["landmark"] + 2 + np.arange(2)
    np.testing.assert_allclose(joint[3:, 3:], inverse[np.ix_(landmark, landmark)], rtol=1e-10)
    with pytest.raises(ValueError, match="no variable kind 'point'"):
        jg.marginal_covariance(fixed, [("point", 0)])
    with pytest.raises(ValueError, match="index 9 is outside"):
        jg.marginal_covariance(fixed, [("pose", 9)])
    free_gauge = jg.FactorGraph(graph.variables, graph.costs[:2])  # no prior, nothing fixed: SE2 gauge free
    with pytest.raises(ValueError, match="singular"):
        jg.marginal_covariance(free_gauge, [("pose", 1)])


class _Weighted(eqx.Module):
    """A residual module holding an array: the difference of two points, weighted."""

    weight: jax.Array

    def __call__(self, a, b, measured):
        return self.weight * (a - b - measured)


def test_the_marginals_of_a_residual_module_holding_arrays_compile_once_and_warn_nothing():
    """A module holding arrays is a documented residual function: the marginal covariances of another weight reuse
    the compiled program (its array was a constant of it: one program per value, and Equinox's warning that a JAX
    array is being set as static, from the program's own problem; building the group itself warns of nothing
    either: see ``CostGroup``). Closed form: weighting every residual by w scales JᵀJ by w², the covariance by
    1/w²."""
    import warnings

    import jax.monitoring

    edges = np.array([[0, 1], [1, 2], [2, 3], [3, 0], [0, 2]])
    start = jnp.asarray(np.random.default_rng(0).normal(size=(4, 2)))

    def graph(weight):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            group = jg.CostGroup(_Weighted(jnp.asarray(weight)), ("x", "x"), edges, jnp.ones((5, 2)))
        return jg.FactorGraph({"x": start}, [group], fixed={"x": [0]})

    unit_graph, weighted_graph = graph(1.0), graph(2.0)
    compiles = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda name, seconds, **_: compiles.append(name) if name.endswith("backend_compile_duration") else None
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        unit = jg.marginal_covariance(unit_graph, [("x", 1), ("x", 3)])
        compiles.clear()
        weighted = jg.marginal_covariance(weighted_graph, [("x", 1), ("x", 3)])
    assert not compiles, f"{len(compiles)} programs compiled for a new weight"
    np.testing.assert_allclose(weighted, unit / 4.0, rtol=1e-12)


# -- Levenberg-Marquardt on pose graphs: within 2x GTSAM's iterations ----------------------------------


def _lm_iterations_against_gtsam(name, is3d):
    gtsam = pytest.importorskip("gtsam")
    graph, factors, initial = _anchored(gtsam, name, is3d)
    optimizer = gtsam.LevenbergMarquardtOptimizer(factors, initial, gtsam.LevenbergMarquardtParams())
    gtsam_cost = factors.error(optimizer.optimize())
    sol = jg.solve(graph, solver=jaxnls.LevenbergMarquardt(linear_solver=jg.SparseDirect()), max_steps=200)
    where = (
        f"{name}: LM {int(sol.num_steps)} steps -> {float(sol.cost):.6f} "
        f"({jaxnls.Status(int(sol.status)).name}); GTSAM LM {optimizer.iterations()} -> {gtsam_cost:.6f}"
    )
    assert bool(sol.converged), where
    assert float(sol.cost) <= gtsam_cost * (1 + 1e-6), where
    assert int(sol.num_steps) <= 2 * max(optimizer.iterations(), 3), where


@pytest.mark.parametrize("name,is3d", [("w100.graph", False), ("pose3example.txt", True)], ids=["w100", "pose3"])
def test_levenberg_marquardt_on_pose_graphs_within_twice_gtsam_iterations(name, is3d):
    """The graph default initial damping (1e-8 relative to diag JᵀJ; 0.1, the dense default, crawls)."""
    _lm_iterations_against_gtsam(name, is3d)


@pytest.mark.slow
def test_levenberg_marquardt_on_w10000_from_odometry_within_twice_gtsam_iterations():
    """GTSAM's w10000 (10,000 poses) from its odometry start: 13 steps to GTSAM's minimum (GTSAM: 8); with the
    dense default damping 0.1 the same solver was at cost 978 after 200 steps."""
    _lm_iterations_against_gtsam("w10000.graph", False)


@pytest.mark.parametrize("group", ["SO2", "SE2", "SO3", "SE3"])
def test_between_linearization_equals_central_differences(group):
    """The closed-form Jacobian of ``between`` (jlog and the adjoint) against central differences of ``between``
    itself along the right retraction, in float64: random triples, a measurement equal to A⁻¹B (the error at the
    identity: jaxlie's small-angle branches) and one with a rotation error near π; the residual is ``between``'s."""
    from jaxnls.manifolds import retract

    kind = getattr(jaxlie, group)
    d = kind.tangent_dim
    rng = np.random.default_rng(7)

    def element(scale):
        return kind.exp(jnp.asarray(rng.normal(size=d) * scale))

    cases = [(element(2.0), element(2.0), element(2.0)) for _ in range(4)]
    a, b = element(1.0), element(1.0)
    cases.append((a, b, a.inverse() @ b))  # E = identity
    half_turn = np.zeros(d)  # (the rotation is the tangent's last coordinate in 2-D, its last three in 3-D)
    if group in ("SO2", "SE2"):
        half_turn[-1] = np.pi - 1e-3
    else:
        half_turn[-3:] = (np.pi - 1e-3) * np.array([0.6, 0.0, 0.8])
    cases.append((a, b, (a.inverse() @ b) @ kind.exp(jnp.asarray(-half_turn))))
    h = 1e-6
    for a, b, z in cases:
        r, jac = jg.between_linearization(a, b, z)
        np.testing.assert_array_equal(r, jg.between(a, b, z))
        columns = []
        for j in range(2 * d):
            step = np.zeros(2 * d)
            step[j] = h

            def moved(sign, step=step):
                return jg.between(retract(a, sign * step[:d]), retract(b, sign * step[d:]), z)

            columns.append((moved(1.0) - moved(-1.0)) / (2 * h))
        np.testing.assert_allclose(jac, np.stack(columns, axis=1), rtol=1e-6, atol=1e-7)
    stacked = jax.vmap(kind.exp)(jnp.zeros((2, d)))
    with pytest.raises(ValueError, match=r"single group elements \(vmap it over a stack\), got batch shape \(2,\)"):
        jg.between_linearization(stacked, stacked, stacked)
    with pytest.raises(TypeError, match="must be jaxlie group elements"):
        jg.between_linearization(jnp.zeros(d), jnp.zeros(d), jnp.zeros(d))


def test_a_graph_of_between_terms_solves_as_with_automatic_jacobians():
    """The solver's closed-form linearisation of ``between`` terms against the same graph whose residual function
    is a wrapper of ``between`` (another function: differentiated automatically): the same iterations, costs and
    poses, on a 3-D file with full information matrices."""
    from jaxnls.io import read_g2o

    problem = jg.pose_graph_problem(
        read_g2o(Path(__file__).parent / "data" / "graphs" / "pose3example-offdiagonal.txt")
    )
    (edges,) = [cost for cost in problem.costs if cost.residual_fn is jg.between]
    wrapped = jg.CostGroup(
        lambda a, b, z: jg.between(a, b, z),
        edges.kinds,
        edges.indices.array,
        edges.data,
        edges.sqrt_information,
    )
    automatic = jg.FactorGraph(
        problem.variables,
        [wrapped if cost is edges else cost for cost in problem.costs],
        fixed={kind: indices.array for kind, indices in problem.fixed},
    )
    closed, auto = jg.solve(problem), jg.solve(automatic)
    assert int(closed.num_steps) == int(auto.num_steps) and closed.status == auto.status
    np.testing.assert_allclose(closed.cost, auto.cost, rtol=1e-12)
    np.testing.assert_allclose(ravel_pytree(closed.params)[0], ravel_pytree(auto.params)[0], rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("group", ["SE2", "SE3"])
def test_between_linearization_differentiates_at_an_exact_fit(group):
    """The closed-form Jacobian's own derivative (what an unrolled adjoint differentiates) is finite where an edge
    fits exactly (E = identity: jaxlie's SE(3) formula divides by the angle there) and equals central differences
    of the Jacobian there and away from it, in float64."""
    from jaxnls.manifolds import retract

    kind = getattr(jaxlie, group)
    d = kind.tangent_dim
    rng = np.random.default_rng(3)
    a, b = kind.exp(jnp.asarray(rng.normal(size=d))), kind.exp(jnp.asarray(rng.normal(size=d)))
    weights = jnp.asarray(rng.normal(size=(d, 2 * d)))
    for z in (a.inverse() @ b, kind.exp(jnp.asarray(rng.normal(size=d)))):

        def weighted_jacobian(delta, z=z):
            return jnp.sum(weights * jg.between_linearization(retract(a, delta), b, z)[1])

        gradient = jax.grad(weighted_jacobian)(jnp.zeros(d))
        h = 1e-6
        central = [(weighted_jacobian(h * e) - weighted_jacobian(-h * e)) / (2 * h) for e in np.eye(d)]
        assert bool(jnp.all(jnp.isfinite(gradient)))
        np.testing.assert_allclose(gradient, np.array(central), rtol=1e-6, atol=1e-7)


def test_a_cost_group_of_a_residual_module_holding_arrays_warns_nothing_and_other_static_arrays_still_warn():
    """Equinox warns of a JAX array in a static field ("usually a mistake"). A cost group's residual function is
    static by design and may hold arrays, which the solve takes out (``split_residual_arrays``): building such a
    group warns nothing, and a static array anywhere else still gets Equinox's warning (the filter is the
    group's alone)."""
    import warnings

    class StaticArray(eqx.Module):
        value: jax.Array = eqx.field(static=True)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        jg.CostGroup(_Weighted(jnp.asarray(2.0)), ("x", "x"), np.array([[0, 1]]), jnp.ones((1, 2)))
    with pytest.warns(UserWarning, match="A JAX array is being set as static"):
        StaticArray(jnp.asarray(1.0))
