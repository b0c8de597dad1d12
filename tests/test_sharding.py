"""Data-parallel solve over a batch sharded across (virtual CPU) devices."""

import os
import subprocess
import sys
import textwrap

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
