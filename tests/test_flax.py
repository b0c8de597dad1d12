"""The flax.nnx layer (runs when flax is installed: pip install "jaxnls[flax]")."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

nnx = pytest.importorskip("flax.nnx")

import jaxnls  # noqa: E402
from jaxnls.nn.flax import NLLSLayer  # noqa: E402

T = jnp.linspace(0.0, 3.0, 30)


class WeightedDecay(nnx.Module):
    def __init__(self):
        self.log_weights = nnx.Param(jnp.zeros(T.size))

    def __call__(self, p, y):
        return jnp.exp(self.log_weights[...]) * (p[0] * jnp.exp(-p[1] * T) - y)


def test_nnx_layer_gradient_matches_central_differences_and_trains():
    rng = np.random.default_rng(0)
    truth = jnp.asarray(np.stack([rng.uniform(1.0, 2.0, 8), rng.uniform(0.5, 1.5, 8)], axis=1))
    y = np.asarray(truth[:, :1] * jnp.exp(-truth[:, 1:] * T[None, :])) + 0.005 * rng.standard_normal((8, T.size))
    y[:, [3, 11, 20]] += 0.8
    y = jnp.asarray(y)
    layer = NLLSLayer(
        WeightedDecay(), solver=jaxnls.LevenbergMarquardt(rtol=1e-12, atol=1e-12, ftol=0.0), batched=True, args_axes=0
    )
    p0 = jnp.ones_like(truth)

    def loss(layer):
        return jnp.mean((layer(p0, y).params - truth) ** 2)

    grads = nnx.grad(loss)(layer)
    direction = jnp.asarray(rng.standard_normal(T.size))
    start = layer.residual_fn.log_weights[...]

    def along(step):
        layer.residual_fn.log_weights[...] = start + step * direction
        value = loss(layer)
        layer.residual_fn.log_weights[...] = start
        return value

    fd = (along(1e-5) - along(-1e-5)) / 2e-5
    np.testing.assert_allclose(jnp.sum(grads.residual_fn.log_weights[...] * direction), fd, rtol=1e-5)

    initial = loss(layer)
    optimizer = nnx.Optimizer(layer, optax.adam(0.1), wrt=nnx.Param)

    @nnx.jit
    def step(layer, optimizer):
        value, grads = nnx.value_and_grad(loss)(layer)
        optimizer.update(layer, grads)
        return value

    for _ in range(30):
        step(layer, optimizer)
    assert loss(layer) < 0.05 * initial
