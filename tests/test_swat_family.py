"""jaxnls.swat MLP family: the padded forward pass against an independent NumPy evaluation of only the
active neurons, token round trip, masks, the softmax relaxation's limit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnls.swat import StraightThrough, decode, encode, forward, random_mlp
from jaxnls.swat._family import MAX_WIDTH, NUM_TOKENS, TOKEN_FEATURES

ACTIVATIONS = [lambda z: 1 / (1 + np.exp(-z)), np.tanh, lambda z: np.where(z > 0, z, 0.01 * z)]


def numpy_forward(spec, x):
    """Only the neurons that are on, layer by layer, with their arg-max activation."""
    w, b = np.asarray(spec.weights, np.float64), np.asarray(spec.biases, np.float64)
    logits, mask = np.asarray(spec.activation_logits), np.asarray(spec.neuron_mask)
    h, active = np.asarray(x, np.float64), [0, 1]  # the inputs
    for layer in range(int(spec.depth)):
        neurons = [j for j in range(MAX_WIDTH) if mask[layer, j] > 0]
        out = np.empty((x.shape[0], len(neurons)))
        for k, j in enumerate(neurons):
            pre = h @ w[layer, j, active] + b[layer, j]
            out[:, k] = ACTIVATIONS[int(np.argmax(logits[layer, j]))](pre)
        h, active = out, neurons
    return h @ np.asarray(spec.output_weights, np.float64)[active] + float(spec.output_bias)


def test_forward_matches_an_independent_evaluation_of_the_active_neurons():
    x = np.random.default_rng(0).uniform(-1, 1, (50, 2))
    depths = set()
    for seed in range(12):
        spec = random_mlp(jax.random.PRNGKey(seed), jnp.float64)
        depths.add(int(spec.depth))
        np.testing.assert_allclose(forward(spec, jnp.asarray(x)), numpy_forward(spec, x), rtol=1e-12, atol=1e-12)
    assert len(depths) >= 3  # the sample covers several depths


def test_token_round_trip_and_validity_mask():
    spec = random_mlp(jax.random.PRNGKey(3), jnp.float64)
    tokens, valid = encode(spec)
    assert tokens.shape == (NUM_TOKENS, TOKEN_FEATURES)
    assert np.array_equal(np.asarray(valid[:-1]).reshape(4, MAX_WIDTH).any(axis=1), np.arange(4) < int(spec.depth))
    back = decode(tokens, spec.depth)
    for a, b in zip(jax.tree_util.tree_leaves(spec), jax.tree_util.tree_leaves(back)):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ValueError, match="tokens must have shape"):
        decode(tokens[:-1], spec.depth)
    batch = jax.vmap(random_mlp)(jax.random.split(jax.random.PRNGKey(4), 8))  # one structure for every member
    assert batch.weights.shape == (8, 4, MAX_WIDTH, MAX_WIDTH)


def test_switched_off_neurons_and_skipped_layers_have_no_effect():
    spec = random_mlp(jax.random.PRNGKey(5), jnp.float64)
    x = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (20, 2)))
    noise = jax.random.normal(jax.random.PRNGKey(6), spec.weights.shape, jnp.float64)
    off = (1 - spec.neuron_mask)[:, :, None]
    perturbed = spec.__class__(
        spec.weights + noise * off,
        spec.biases + (1 - spec.neuron_mask),
        spec.activation_logits,
        spec.neuron_mask,
        spec.output_weights,
        spec.output_bias,
        spec.depth,
    )
    np.testing.assert_allclose(forward(perturbed, x), forward(spec, x), rtol=1e-12)


def test_softmax_relaxation_tends_to_the_hard_network():
    spec = random_mlp(jax.random.PRNGKey(7), jnp.float64)
    x = jnp.asarray(np.random.default_rng(2).uniform(-1, 1, (30, 2)))
    hard = forward(spec, x)
    errors = [float(jnp.max(jnp.abs(forward(spec, x, temperature=t) - hard))) for t in (1.0, 0.1, 0.01)]
    assert errors[0] > 1e-3 and errors[0] >= errors[1] >= errors[2] and errors[2] < 1e-6


def test_straight_through_has_the_hard_values_and_the_relaxed_derivatives():
    """Values: the hard network's. Derivatives: a one-layer member's output is linear in each neuron's
    activation mixture and in its mask, so its derivative with respect to the activation logits and the mask
    logits is the relaxed network's (computed here without StraightThrough)."""
    import equinox as eqx

    from jaxnls.swat import load_pretrained
    from jaxnls.swat._autoencoder import relaxed_mask

    x = jax.random.uniform(jax.random.PRNGKey(1), (40, 2), jnp.float64, minval=-1.0, maxval=1.0)
    temperature = 0.3
    for seed in range(2):
        spec = random_mlp(jax.random.PRNGKey(seed), jnp.float64)
        # (hard + soft - soft: the hard value to rounding)
        np.testing.assert_allclose(
            forward(spec, x, StraightThrough(temperature)), forward(spec, x), rtol=1e-14, atol=1e-15
        )
        one_layer = eqx.tree_at(lambda s: s.depth, spec, jnp.asarray(1))
        output = lambda logits, t: jnp.sum(forward(eqx.tree_at(lambda s: s.activation_logits, one_layer, logits), x, t))
        through = jax.grad(output)(one_layer.activation_logits, StraightThrough(temperature))
        relaxed = jax.grad(output)(one_layer.activation_logits, temperature)
        assert np.any(np.asarray(through) != 0)
        np.testing.assert_allclose(through, relaxed, rtol=1e-12, atol=1e-14)
    logits = jax.random.normal(jax.random.PRNGKey(3), (4, MAX_WIDTH), jnp.float64)
    np.testing.assert_allclose(
        relaxed_mask(logits, StraightThrough(temperature)), relaxed_mask(logits, None), atol=1e-15
    )
    weights = jax.random.normal(jax.random.PRNGKey(4), (4, MAX_WIDTH), jnp.float64)
    through = jax.grad(lambda lg: jnp.sum(weights * relaxed_mask(lg, StraightThrough(temperature))))(logits)
    relaxed = jax.grad(lambda lg: jnp.sum(weights * relaxed_mask(lg, temperature)))(logits)
    np.testing.assert_allclose(through, relaxed, rtol=1e-14)
    # the autoencoder's decodings: 0/1 masks in value
    # (the shipped model's weights in float64: a new SwatAutoencoder draws its weights op by op, seconds of compiling)
    model = jax.tree_util.tree_map(
        lambda leaf: leaf.astype(jnp.float64) if eqx.is_inexact_array(leaf) else leaf, load_pretrained()
    )
    z = jnp.linspace(-0.5, 0.5, model.latent_size)
    decoded = model.decode_at(z, 2, StraightThrough(temperature))
    np.testing.assert_allclose(decoded.neuron_mask, model.decode_at(z, 2, None).neuron_mask, atol=1e-15)
