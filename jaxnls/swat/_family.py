r"""The SWAT-NN MLP family and its row-wise token encoding.

A member maps 2 inputs to 1 output through 1-4 hidden layers of at most 7 neurons; every neuron has its
own activation (sigmoid, tanh or leaky-ReLU, chosen by logits — one-hot for a hard network, a softmax
for a relaxed one) and an on/off mask. Arrays are padded to the maximal shape, so every member has the
same pytree structure and batches of them vmap:

- ``weights`` (4, 7, 7): layer l's incoming weights, row j for neuron j (layer 0 reads the 2 inputs from
  the first 2 columns; the other columns are ignored);
- ``biases`` (4, 7), ``activation_logits`` (4, 7, 3), ``neuron_mask`` (4, 7);
- ``output_weights`` (7,), ``output_bias`` (); ``depth`` (): layers ≥ depth are skipped.

Tokens are the rows: one per hidden neuron, ``[incoming weights (7), bias, activation logits (3),
mask]``, and one output token ``[output weights (7), output bias, 0, 0, 0, 1]`` — 29 tokens of 12
features, with a validity mask that is 0 for the neurons of skipped layers.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

MAX_DEPTH = 4
MAX_WIDTH = 7
NUM_INPUTS = 2
ACTIVATIONS = ("sigmoid", "tanh", "leaky_relu")
TOKEN_FEATURES = MAX_WIDTH + 1 + len(ACTIVATIONS) + 1
NUM_TOKENS = MAX_DEPTH * MAX_WIDTH + 1


class MLPSpec(eqx.Module):
    weights: Float[Array, "4 7 7"]
    biases: Float[Array, "4 7"]
    activation_logits: Float[Array, "4 7 3"]
    neuron_mask: Float[Array, "4 7"]
    output_weights: Float[Array, " 7"]
    output_bias: Float[Array, ""]
    depth: Int[Array, ""]


def _activations(pre):
    return jnp.stack([jax.nn.sigmoid(pre), jnp.tanh(pre), jax.nn.leaky_relu(pre, 0.01)], axis=-1)


def forward(spec: MLPSpec, x: Float[Array, "N 2"], temperature: float | None = None) -> Float[Array, " N"]:
    """Evaluate a member on points ``x``. ``temperature=None``: each neuron uses its arg-max activation;
    otherwise the softmax(logits / temperature) mixture of the three (the relaxation used in search)."""
    h = jnp.zeros((x.shape[0], MAX_WIDTH), x.dtype).at[:, :NUM_INPUTS].set(x)
    for layer in range(MAX_DEPTH):
        w = spec.weights[layer]
        if layer == 0:
            w = w * (jnp.arange(MAX_WIDTH) < NUM_INPUTS)[None, :]
        pre = h @ w.T + spec.biases[layer][None, :]
        logits = spec.activation_logits[layer]
        if temperature is None:
            choice = jax.nn.one_hot(jnp.argmax(logits, axis=-1), len(ACTIVATIONS), dtype=x.dtype)
        else:
            choice = jax.nn.softmax(logits / temperature, axis=-1)
        out = jnp.sum(_activations(pre) * choice[None, :, :], axis=-1) * spec.neuron_mask[layer][None, :]
        h = jnp.where(layer < spec.depth, out, h)
    return h @ spec.output_weights + spec.output_bias


def random_mlp(key, dtype=jnp.float32) -> MLPSpec:
    """A random member: depth uniform in 1..4, each layer's width uniform in 1..7 (the rest masked off),
    weights and biases N(0, 1) scaled by 1/√fan-in, activations uniform."""
    k_depth, k_width, k_w, k_b, k_act, k_out = jax.random.split(key, 6)
    depth = jax.random.randint(k_depth, (), 1, MAX_DEPTH + 1)
    widths = jax.random.randint(k_width, (MAX_DEPTH,), 1, MAX_WIDTH + 1)
    mask = (jnp.arange(MAX_WIDTH)[None, :] < widths[:, None]) & (jnp.arange(MAX_DEPTH) < depth)[:, None]
    mask = mask.astype(dtype)
    fan_in = jnp.concatenate([jnp.full((1,), NUM_INPUTS), widths[:-1]]).astype(dtype)
    weights = jax.random.normal(k_w, (MAX_DEPTH, MAX_WIDTH, MAX_WIDTH), dtype) / jnp.sqrt(fan_in)[:, None, None]
    # incoming columns from masked neurons of the previous layer carry no signal; zero them for clarity
    previous = jnp.concatenate([(jnp.arange(MAX_WIDTH) < NUM_INPUTS)[None, :].astype(dtype), mask[:-1]], axis=0)
    weights = weights * previous[:, None, :] * mask[:, :, None]
    biases = jax.random.normal(k_b, (MAX_DEPTH, MAX_WIDTH), dtype) * 0.5 * mask
    activation = jax.random.randint(k_act, (MAX_DEPTH, MAX_WIDTH), 0, len(ACTIVATIONS))
    logits = 4.0 * jax.nn.one_hot(activation, len(ACTIVATIONS), dtype=dtype)
    last = mask[jnp.maximum(depth - 1, 0)]
    output_weights = jax.random.normal(k_out, (MAX_WIDTH,), dtype) / jnp.sqrt(jnp.sum(last)) * last
    return MLPSpec(weights, biases, logits, mask, output_weights, jnp.zeros((), dtype), depth)


def encode(spec: MLPSpec) -> tuple[Float[Array, "29 12"], Float[Array, " 29"]]:
    """Row-wise tokens and their validity mask (see the module docstring)."""
    hidden = jnp.concatenate([spec.weights, spec.biases[..., None], spec.activation_logits,
                              spec.neuron_mask[..., None]], axis=-1).reshape(MAX_DEPTH * MAX_WIDTH, TOKEN_FEATURES)
    output = jnp.concatenate([spec.output_weights, spec.output_bias[None], jnp.zeros(len(ACTIVATIONS), hidden.dtype),
                              jnp.ones(1, hidden.dtype)])
    valid_layers = (jnp.arange(MAX_DEPTH) < spec.depth).astype(hidden.dtype)
    valid = jnp.concatenate([jnp.repeat(valid_layers, MAX_WIDTH), jnp.ones(1, hidden.dtype)])
    return jnp.concatenate([hidden, output[None, :]], axis=0), valid


def decode(tokens: Float[Array, "29 12"], depth: Int[Array, ""]) -> MLPSpec:
    """The inverse of :func:`encode` for a given depth."""
    if tokens.shape != (NUM_TOKENS, TOKEN_FEATURES):
        raise ValueError(f"tokens must have shape {(NUM_TOKENS, TOKEN_FEATURES)}, got {tokens.shape}")
    hidden = tokens[:-1].reshape(MAX_DEPTH, MAX_WIDTH, TOKEN_FEATURES)
    output = tokens[-1]
    return MLPSpec(
        weights=hidden[..., :MAX_WIDTH],
        biases=hidden[..., MAX_WIDTH],
        activation_logits=hidden[..., MAX_WIDTH + 1:MAX_WIDTH + 1 + len(ACTIVATIONS)],
        neuron_mask=hidden[..., -1],
        output_weights=output[:MAX_WIDTH],
        output_bias=output[MAX_WIDTH],
        depth=jnp.asarray(depth),
    )
