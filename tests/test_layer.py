"""NLLSLayer: a learnable residual trained through the solver with optax."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

import jaxnls
from jaxnls.nn import NLLSLayer

T = jnp.linspace(0.0, 3.0, 30)


class WeightedDecay(eqx.Module):
    """Residuals of y = a·exp(-b t) with a learnable log-weight per point."""

    log_weights: jax.Array

    def __call__(self, p, y):
        return jnp.exp(self.log_weights) * (p[0] * jnp.exp(-p[1] * T) - y)


def outliers_data(seed, batch):
    """Decays with the same outlier-corrupted points in every problem: learning to down-weight them
    recovers the true parameters."""
    rng = np.random.default_rng(seed)
    truth = np.stack([rng.uniform(1.0, 2.0, batch), rng.uniform(0.5, 1.5, batch)], axis=1)
    y = truth[:, :1] * np.exp(-truth[:, 1:] * np.asarray(T)) + 0.005 * rng.standard_normal((batch, T.size))
    y[:, [3, 11, 20]] += 0.8
    return jnp.asarray(truth), jnp.asarray(y)


def test_layer_gradient_matches_central_differences_and_training_reduces_the_loss():
    truth, y = outliers_data(0, 8)
    layer = NLLSLayer(
        WeightedDecay(jnp.zeros(T.size)),
        solver=jaxnls.LevenbergMarquardt(rtol=1e-12, atol=1e-12, ftol=0.0),
        batched=True,
        args_axes=0,
    )
    p0 = jnp.ones_like(truth)

    def loss(layer):
        return jnp.mean((layer(p0, y).params - truth) ** 2)

    value, grads = eqx.filter_value_and_grad(loss)(layer)
    direction = jnp.asarray(np.random.default_rng(1).standard_normal(T.size))

    def along(step):
        return eqx.tree_at(lambda m: m.residual_fn.log_weights, layer, layer.residual_fn.log_weights + step * direction)

    fd = (loss(along(1e-5)) - loss(along(-1e-5))) / 2e-5
    np.testing.assert_allclose(jnp.sum(grads.residual_fn.log_weights * direction), fd, rtol=1e-5)

    optimiser = optax.adam(0.1)
    state = optimiser.init(eqx.filter(layer, eqx.is_array))

    @eqx.filter_jit
    def train_step(layer, state):
        value, grads = eqx.filter_value_and_grad(loss)(layer)
        updates, state = optimiser.update(grads, state)
        return eqx.apply_updates(layer, updates), state, value

    for _ in range(40):
        layer, state, _ = train_step(layer, state)
    assert loss(layer) < 0.05 * value
    # the outlier points are the ones learned to be down-weighted
    weights = np.exp(np.asarray(layer.residual_fn.log_weights))
    assert set(np.argsort(weights)[:3]) == {3, 11, 20}
