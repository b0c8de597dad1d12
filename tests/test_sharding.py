"""Data-parallel solve over a batch sharded across (virtual CPU) devices."""

import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np
    jax.config.update("jax_enable_x64", True)
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import jaxnls

    assert len(jax.devices()) == 4, jax.devices()

    def residual(p, args):
        t, y = args
        return p[0] * jnp.exp(-p[1] * t) + p[2] - y

    rng = np.random.default_rng(0)
    batch = 64
    t = np.linspace(0, 5, 50)
    truth = np.stack([rng.uniform(1, 2, batch), rng.uniform(0.2, 1, batch), rng.uniform(-1, 1, batch)], 1)
    y = truth[:, :1] * np.exp(-truth[:, 1:2] * t) + truth[:, 2:] + 0.01 * rng.standard_normal((batch, 50))
    p0 = truth * 1.2

    mesh = Mesh(np.array(jax.devices()), ("batch",))
    rows = NamedSharding(mesh, P("batch"))
    p0_sharded = jax.device_put(p0, rows)
    y_sharded = jax.device_put(y, rows)

    solve = jax.jit(lambda p, y: jaxnls.solve(residual, p, (t, y), batched=True, args_axes=(None, 0)))
    hlo = solve.lower(p0_sharded, y_sharded).compile().as_text()
    sharded = solve(p0_sharded, y_sharded)
    reference = jaxnls.solve(residual, jnp.asarray(p0), (t, jnp.asarray(y)), batched=True, args_axes=(None, 0))

    # the answer stays split across the 4 devices, each holding its quarter of the batch
    assert sharded.params.sharding.is_equivalent_to(rows, 2), sharded.params.sharding
    assert sharded.cost.sharding.is_equivalent_to(NamedSharding(mesh, P("batch")), 1)
    assert {s.data.shape for s in sharded.params.addressable_shards} == {(batch // 4, 3)}
    # no batch-sized array is gathered onto one device: the only collective is the tiny "any running" reduce
    assert "all-gather" not in hlo and "all-to-all" not in hlo, "unexpected gather in the compiled solve"
    np.testing.assert_allclose(np.asarray(sharded.params), np.asarray(reference.params), rtol=1e-10)
    np.testing.assert_array_equal(np.asarray(sharded.status), np.asarray(reference.status))
    print("SHARDED-OK")
    """
)


def test_sharded_batch_solves_data_parallel():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "SHARDED-OK" in result.stdout


ONE_GRAPH = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np, equinox as eqx
    jax.config.update("jax_enable_x64", True)
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import jaxnls
    from jaxnls import graph as jg
    from jaxnls.io import read_pose_graph
    from jaxnls.graph import pose_graph_problem

    assert len(jax.devices()) == 4, jax.devices()
    graph = pose_graph_problem(read_pose_graph(PATH))
    cost = graph.costs[0]
    assert cost.num_terms % 4 == 0
    mesh = Mesh(np.array(jax.devices()), ("terms",))
    terms = NamedSharding(mesh, P("terms"))
    # one graph across the devices: its cost terms (measurements, information) split along the term axis
    sharded = eqx.tree_at(lambda g: (g.costs[0].data, g.costs[0].sqrt_information), graph,
                          (jax.tree_util.tree_map(lambda a: jax.device_put(a, terms), cost.data),
                           jax.device_put(cost.sqrt_information, terms)))
    assert {s.data.shape[0] for s in sharded.costs[0].sqrt_information.addressable_shards} == {cost.num_terms // 4}
    solver = jaxnls.LevenbergMarquardt(rtol=1e-10, atol=1e-10, linear_solver=jg.PCG(rtol=1e-13))
    solve = jax.jit(lambda g: jg.solve(g, solver=solver))
    hlo = solve.lower(sharded).compile().as_text()
    distributed = solve(sharded)
    alone = jg.solve(graph, solver=solver)
    # the matrix-free products J v and Jᵀu run where the terms are and are summed across the devices
    assert "all-reduce" in hlo, "no cross-device reduction in the compiled solve"
    assert bool(distributed.converged) and bool(alone.converged)
    np.testing.assert_allclose(float(distributed.cost), float(alone.cost), rtol=1e-8)
    # The converged poses agree in the metric of the problem's own curvature: ½ dᵀ H d, d the tangent difference
    # (b = a ⊕ d), is the cost one answer is above the other's quadratic model, and must be within the costs'
    # agreement. (Not coordinate by coordinate: w100's softest mode has a marginal variance of ~2e3, so
    # moving 1e-3 along it costs 4e-10, the size of the rounding-driven wander of the last steps, and the
    # devices order their sums differently.)
    n = graph.variables["pose"].parameters().shape[0]
    d = np.asarray(jax.vmap(lambda x, y: (y.inverse() @ x).log())(distributed.params["pose"], alone.params["pose"]))
    at_solution = eqx.tree_at(lambda g: g.variables, graph, alone.params)
    covariance = np.asarray(jg.marginal_covariance(at_solution, [("pose", i) for i in range(1, n)]))  # pose 0 fixed
    assert np.all(d[0] == 0.0)
    gap = 0.5 * d[1:].ravel() @ np.linalg.solve(covariance, d[1:].ravel())
    assert gap <= 1e-8 * float(alone.cost), (gap, float(alone.cost))
    print("ONE-GRAPH-OK")
    """
)


# (slow: ~16 s of compiling; moved out of the default set when every dense LevenbergMarquardt program began to
# compile ~20% longer with its long first trial, benchmarks/README.md (as); CI runs the slow set)
@pytest.mark.slow
def test_one_graph_sharded_across_devices_equals_the_single_device_solve():
    """w100's 300 cost terms split over 4 (virtual CPU) devices, matrix-free PCG: the same answer as on one device,
    with the products reduced across devices (an all-reduce in the compiled program)."""
    from pathlib import Path

    path = Path(__file__).parent / "data" / "graphs" / "w100.graph"
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    script = ONE_GRAPH.replace("PATH", repr(str(path)))
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "ONE-GRAPH-OK" in result.stdout
