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

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.special
import numpy as np
from jaxtyping import Array, DTypeLike, Float, Int, PRNGKeyArray

MAX_DEPTH = 4
MAX_WIDTH = 7
NUM_INPUTS = 2
ACTIVATIONS = ("sigmoid", "tanh", "leaky_relu")
TOKEN_FEATURES = MAX_WIDTH + 1 + len(ACTIVATIONS) + 1
NUM_TOKENS = MAX_DEPTH * MAX_WIDTH + 1


def used_layers(depth: int | Int[Array, ""], dtype: DTypeLike) -> Float[Array, "4 1"]:
    """1 for the hidden layers a network of ``depth`` uses, 0 for the padding, as a (4, 1) column."""
    return (jnp.arange(MAX_DEPTH) < depth).astype(dtype)[:, None]


class MLPSpec(eqx.Module):
    """A member of the MLP family, padded to the maximal shape (module docstring); a batch of members has
    a leading axis on every field.

    Attributes:
        weights: ``(4, 7, 7)``: layer l's incoming weights, row j for neuron j (layer 0 reads the 2 inputs
            from its first 2 columns).
        biases: ``(4, 7)``.
        activation_logits: ``(4, 7, 3)``: per neuron, logits of sigmoid, tanh and leaky-ReLU.
        neuron_mask: ``(4, 7)``: 1 for a neuron in use, 0 for one switched off (in ``[0, 1]`` when relaxed).
        output_weights: ``(7,)``, reading the last hidden layer used.
        output_bias: ``()``.
        depth: ``()`` int, the hidden layers used, 1 to 4; layers from ``depth`` on are skipped.
    """

    weights: Float[Array, "4 7 7"]
    biases: Float[Array, "4 7"]
    activation_logits: Float[Array, "4 7 3"]
    neuron_mask: Float[Array, "4 7"]
    output_weights: Float[Array, " 7"]
    output_bias: Float[Array, ""]
    depth: Int[Array, ""]


def weight_exists(depth: int | Int[Array, ""], dtype: DTypeLike) -> Float[Array, "4 7 7"]:
    """1 for a hidden weight that exists in a network of ``depth`` (layer 0 reads the 2 inputs only), else 0."""
    columns = jnp.concatenate(
        [(jnp.arange(MAX_WIDTH) < NUM_INPUTS)[None, :], jnp.ones((MAX_DEPTH - 1, MAX_WIDTH), bool)], axis=0
    )
    used = (jnp.arange(MAX_DEPTH) < depth)[:, None, None]
    return (columns[:, None, :] & used).astype(dtype) * jnp.ones((1, MAX_WIDTH, 1), dtype)


def source_masks(spec: MLPSpec) -> Float[Array, "4 7"]:
    """The mask of each layer's input neurons (the network inputs count as on)."""
    return jnp.concatenate([jnp.ones((1, MAX_WIDTH), spec.neuron_mask.dtype), spec.neuron_mask[:-1]], axis=0)


def last_layer_mask(spec: MLPSpec) -> Float[Array, " 7"]:
    """The mask of the last hidden layer used (the neurons the output weights read)."""
    return spec.neuron_mask[jnp.maximum(spec.depth - 1, 0)]


def neuron_fraction(spec: MLPSpec) -> Float[Array, ""]:
    """The share of the neurons of its ``spec.depth`` layers that are switched on (masks hard or relaxed)."""
    used = used_layers(spec.depth, spec.neuron_mask.dtype) * jnp.ones((1, MAX_WIDTH), spec.neuron_mask.dtype)
    return jnp.sum(spec.neuron_mask * used) / jnp.sum(used)


def connection_fraction(
    spec: MLPSpec, gate: Float[Array, "4 7 7"] | None = None, output_gate: Float[Array, " 7"] | None = None
) -> Float[Array, ""]:
    r"""The share of the connection weights a network of ``spec.depth`` can have that are present:
    :math:`\big(\sum_{l,j,i} e_{lji}\, m_{lj}\, s_{li}\, g_{lji} + \sum_j m_{D-1,j}\, g^{out}_j\big) / (\sum e + 7)`,
    with :math:`e` the weights that exist at this depth (:func:`weight_exists`), :math:`m` the neuron masks,
    :math:`s` the masks of each layer's inputs and :math:`g` per-weight gates (1 where None). With hard masks
    and no gates, the share of a dense network's weights that the switched-on neurons keep.

    Args:
        spec: one member (masks hard or relaxed).
        gate: ``(4, 7, 7)`` gates of the hidden weights, or None.
        output_gate: ``(7,)`` gates of the output weights, or None.

    Returns:
        A scalar in [0, 1].
    """
    exists = weight_exists(spec.depth, spec.weights.dtype)
    presence = spec.neuron_mask[:, :, None] * source_masks(spec)[:, None, :] * exists
    output_presence = last_layer_mask(spec)
    if gate is not None:
        presence = presence * gate
    if output_gate is not None:
        output_presence = output_presence * output_gate
    return (jnp.sum(presence) + jnp.sum(output_presence)) / (jnp.sum(exists) + MAX_WIDTH)


def _activations(pre):
    return jnp.stack([jax.nn.sigmoid(pre), jnp.tanh(pre), jax.nn.leaky_relu(pre, 0.01)], axis=-1)


class StraightThrough(eqx.Module):
    """A decoding whose values are the hard network's (arg-max activations, 0/1 neuron masks) and whose gradients
    are those of the relaxation at ``temperature`` (the straight-through estimator): given as the ``temperature``
    of :func:`forward` and of the autoencoder's decodings, it lets a loss on the hard network train what decodes it.

    Attributes:
        temperature: the relaxation temperature > 0 whose gradients are used.
    """

    temperature: float | Float[Array, ""]


def straight_through(hard: Float[Array, "*shape"], soft: Float[Array, "*shape"]) -> Float[Array, "*shape"]:
    """``hard`` in value, ``soft``'s derivatives."""
    return hard + soft - jax.lax.stop_gradient(soft)


@eqx.filter_jit
def forward(
    spec: MLPSpec, x: Float[Array, "N 2"], temperature: float | Float[Array, ""] | StraightThrough | None = None
) -> Float[Array, " N"]:
    """Evaluate a member on points ``x``. ``temperature=None``: each neuron uses its arg-max activation;
    otherwise the softmax(logits / temperature) mixture of the three (the relaxation used in search); a
    :class:`StraightThrough` temperature: the arg-max activation with the mixture's derivatives.

    Args:
        spec: the member (one, not a batch: ``jax.vmap`` over members).
        x: ``(N, 2)`` input points.
        temperature: None for the hard network, the softmax temperature > 0 of the relaxed one, or
            :class:`StraightThrough`.

    Returns:
        The ``(N,)`` outputs.
    """
    h = jnp.zeros((x.shape[0], MAX_WIDTH), x.dtype).at[:, :NUM_INPUTS].set(x)
    for layer in range(MAX_DEPTH):
        w = spec.weights[layer]
        if layer == 0:
            w = w * (jnp.arange(MAX_WIDTH) < NUM_INPUTS)[None, :]
        pre = h @ w.T + spec.biases[layer][None, :]
        logits = spec.activation_logits[layer]
        hard = jax.nn.one_hot(jnp.argmax(logits, axis=-1), len(ACTIVATIONS), dtype=x.dtype)
        if temperature is None:
            choice = hard
        elif isinstance(temperature, StraightThrough):
            choice = straight_through(hard, jax.nn.softmax(logits / temperature.temperature, axis=-1))
        else:
            choice = jax.nn.softmax(logits / temperature, axis=-1)
        out = jnp.sum(_activations(pre) * choice[None, :, :], axis=-1) * spec.neuron_mask[layer][None, :]
        h = jnp.where(layer < spec.depth, out, h)
    return h @ spec.output_weights + spec.output_bias


@functools.partial(jax.jit, static_argnames="dtype")
def random_mlp(key: PRNGKeyArray, dtype: DTypeLike = jnp.float32) -> MLPSpec:
    """A random member: depth uniform in 1..4, each layer's width uniform in 1..7 (the rest masked off),
    weights N(0, 4/fan-in), biases N(0, ¼), activations uniform. The output layer is then scaled so
    that on [-1, 1]² the output has a standard deviation uniform in [0.2, 0.6] and a mean uniform in
    [-0.3, 0.3] (measured on an 8×8 grid): without it most random members are nearly constant (median
    output variance 0.003 at unit gain), and with it they cover the range of the [-1, 1]-scaled tasks.

    Args:
        key: a JAX PRNG key.
        dtype: the floating dtype of the arrays (static; default float32).

    Returns:
        The random :class:`MLPSpec` (hard: one-hot activation logits scaled by 4, a 0/1 neuron mask).
    """
    # one uniform draw, cut into the pieces below: every separate jax.random call compiles its own
    # threefry kernel, and eight of them made this function take seconds to compile
    sizes = (
        1,
        MAX_DEPTH,
        MAX_DEPTH * MAX_WIDTH * MAX_WIDTH,
        MAX_DEPTH * MAX_WIDTH,
        MAX_DEPTH * MAX_WIDTH,
        MAX_WIDTH,
        1,
        1,
    )
    u = jax.random.uniform(key, (sum(sizes),), dtype, minval=1e-7, maxval=1.0 - 1e-7)
    u_depth, u_width, u_w, u_b, u_act, u_out, u_std, u_mean = jnp.split(u, np.cumsum(sizes)[:-1])
    normal = jax.scipy.special.ndtri
    depth = jnp.minimum(1 + jnp.floor(u_depth[0] * MAX_DEPTH), MAX_DEPTH).astype(jnp.int32)
    widths = jnp.minimum(1 + jnp.floor(u_width * MAX_WIDTH), MAX_WIDTH).astype(jnp.int32)
    mask = (jnp.arange(MAX_WIDTH)[None, :] < widths[:, None]) & (jnp.arange(MAX_DEPTH) < depth)[:, None]
    mask = mask.astype(dtype)
    fan_in = jnp.concatenate([jnp.full((1,), NUM_INPUTS), widths[:-1]]).astype(dtype)
    weights = 2.0 * normal(u_w).reshape(MAX_DEPTH, MAX_WIDTH, MAX_WIDTH) / jnp.sqrt(fan_in)[:, None, None]
    # incoming columns from masked neurons of the previous layer carry no signal; zero them for clarity
    previous = jnp.concatenate([(jnp.arange(MAX_WIDTH) < NUM_INPUTS)[None, :].astype(dtype), mask[:-1]], axis=0)
    weights = weights * previous[:, None, :] * mask[:, :, None]
    biases = normal(u_b).reshape(MAX_DEPTH, MAX_WIDTH) * 0.5 * mask
    activation = jnp.minimum(jnp.floor(u_act * len(ACTIVATIONS)), len(ACTIVATIONS) - 1).astype(jnp.int32)
    activation = activation.reshape(MAX_DEPTH, MAX_WIDTH)
    logits = 4.0 * jax.nn.one_hot(activation, len(ACTIVATIONS), dtype=dtype)
    last = mask[jnp.maximum(depth - 1, 0)]
    output_weights = normal(u_out) / jnp.sqrt(jnp.sum(last)) * last
    spec = MLPSpec(weights, biases, logits, mask, output_weights, jnp.zeros((), dtype), depth)
    grid = jnp.linspace(-1.0, 1.0, 8, dtype=dtype)
    outputs = forward(spec, jnp.stack(jnp.meshgrid(grid, grid), axis=-1).reshape(-1, NUM_INPUTS))
    std = 0.2 + 0.4 * u_std[0]
    mean = -0.3 + 0.6 * u_mean[0]
    gain = std / jnp.maximum(jnp.std(outputs), 1e-6)
    return eqx.tree_at(
        lambda s: (s.output_weights, s.output_bias), spec, (output_weights * gain, mean - gain * jnp.mean(outputs))
    )


def encode(spec: MLPSpec) -> tuple[Float[Array, "29 12"], Float[Array, " 29"]]:
    """Row-wise tokens and their validity mask (see the module docstring).

    Args:
        spec: one member.

    Returns:
        ``(tokens, valid)``: ``(29, 12)`` tokens (28 hidden neurons layer by layer, then the output
        token) and ``(29,)``, 1 for the tokens of used layers and the output token, 0 for the rest.
    """
    hidden = jnp.concatenate(
        [spec.weights, spec.biases[..., None], spec.activation_logits, spec.neuron_mask[..., None]], axis=-1
    ).reshape(MAX_DEPTH * MAX_WIDTH, TOKEN_FEATURES)
    output = jnp.concatenate(
        [
            spec.output_weights,
            spec.output_bias[None],
            jnp.zeros(len(ACTIVATIONS), hidden.dtype),
            jnp.ones(1, hidden.dtype),
        ]
    )
    valid_layers = used_layers(spec.depth, hidden.dtype)[:, 0]
    valid = jnp.concatenate([jnp.repeat(valid_layers, MAX_WIDTH), jnp.ones(1, hidden.dtype)])
    return jnp.concatenate([hidden, output[None, :]], axis=0), valid


def decode(tokens: Float[Array, "29 12"], depth: Int[Array, ""]) -> MLPSpec:
    """The inverse of :func:`encode` for a given depth.

    Args:
        tokens: ``(29, 12)`` tokens as :func:`encode` lays them out.
        depth: the member's number of hidden layers, 1 to 4 (the tokens do not carry it).

    Returns:
        The :class:`MLPSpec`.

    Raises:
        ValueError: ``tokens`` is not ``(29, 12)``.
    """
    if tokens.shape != (NUM_TOKENS, TOKEN_FEATURES):
        raise ValueError(f"tokens must have shape {(NUM_TOKENS, TOKEN_FEATURES)}, got {tokens.shape}")
    hidden = tokens[:-1].reshape(MAX_DEPTH, MAX_WIDTH, TOKEN_FEATURES)
    output = tokens[-1]
    return MLPSpec(
        weights=hidden[..., :MAX_WIDTH],
        biases=hidden[..., MAX_WIDTH],
        activation_logits=hidden[..., MAX_WIDTH + 1 : MAX_WIDTH + 1 + len(ACTIVATIONS)],
        neuron_mask=hidden[..., -1],
        output_weights=output[:MAX_WIDTH],
        output_bias=output[MAX_WIDTH],
        depth=jnp.asarray(depth),
    )
