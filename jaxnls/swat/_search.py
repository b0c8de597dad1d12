r"""Latent architecture-and-weights search: fit a regression task by moving a point z of the
autoencoder's latent space (and a weight threshold t), then read off a hard, sparse network.

For the decoder of depth D, the relaxed network :math:`\hat f_{z,t,\tau}` uses

- soft-thresholded weights :math:`\tilde w = w\,\sigma(s(|w| - t))` (sharpness :math:`s = 200`), so
  weights below the learned threshold fade out;
- relaxed neuron masks :math:`m \in (0, 1)` (the decoder's sigmoids) and a softmax over the three
  activations at temperature :math:`\tau`, annealed geometrically from 1 to 0.01 so that each neuron
  settles on one activation.

The objective is

.. math:: \mathrm{MSE}(\hat f) + \lambda_s \underbrace{\overline{\sigma(s(|w| - t))\,m_{\text{in}}m_{\text{out}}}}_{\text{surviving connections}}
          + \lambda_b \underbrace{\overline{4m(1 - m)}}_{\text{undecided masks}} + \lambda_c \underbrace{\overline{m}}_{\text{active neurons}},

averaged over the valid connections / neurons of the used layers, minimised by Adam on (z, t). The
hard network keeps the weights with :math:`|w| \ge t`, the neurons with :math:`m > ½`, and each neuron's
arg-max activation. :func:`search` runs several starts for every depth at once (one ``vmap``) and keeps
the hard network with the lowest training error; :func:`refine` then continues the same objective on
the decoded network's own parameters (architecture and weights still trained together, now outside the
latent space) for a final polish.
"""

from __future__ import annotations

from functools import partial

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, DTypeLike, Float, Int, PRNGKeyArray, PyTree

from ._autoencoder import SwatAutoencoder, relaxed_mask
from ._family import (
    MAX_DEPTH,
    MAX_WIDTH,
    NUM_INPUTS,
    MLPSpec,
    connection_fraction,
    forward,
    last_layer_mask,
    neuron_fraction,
    random_mlp,
    source_masks,
    used_layers,
    weight_exists,
)


class SearchConfig(eqx.Module):
    r"""Settings of :func:`search` and :func:`refine` (the objective is in the module docstring).

    Attributes:
        steps: Adam steps per run, over which the temperature is annealed (static, default 1000).
        starts: random starting points per depth in :func:`search` (static, default 4).
        batch_size: training points per Adam step, drawn with replacement (static, default 256; at most
            the number of points).
        learning_rate: Adam's learning rate (default 0.02).
        initial_threshold: :math:`t_0`, the threshold's starting value and unit: :math:`t = t_0|u|` with
            :math:`u` trained from 1 (default 0.02).
        sharpness: :math:`s` of the gates :math:`σ(s(|w| - t))` (default 200).
        temperature_start: the activation temperature :math:`τ` of the first step (default 1).
        temperature_end: :math:`τ` of the last step, reached geometrically (default 0.01).
        sparsity_weight: :math:`λ_s`, the weight of the surviving connections (default 1e-4; larger trades
            error for fewer weights).
        binarization_weight: :math:`λ_b`, the weight of the undecided masks (default 1e-4).
        compactness_weight: :math:`λ_c`, the weight of the active neurons (default 1e-4).
    """

    steps: int = eqx.field(static=True, default=1000)
    starts: int = eqx.field(static=True, default=4)
    batch_size: int = eqx.field(static=True, default=256)  # training points per Adam step
    learning_rate: float = 0.02
    initial_threshold: float = 0.02
    sharpness: float = 200.0
    temperature_start: float = 1.0
    temperature_end: float = 0.01
    # the penalties' weight trades error for size: on Matyas (tests/test_swat_search.py settings) 1e-4
    # gives a test error at or below the dense network's with about two thirds of its weights, 3e-4
    # about a third of its weights at twice its error
    sparsity_weight: float = 1e-4
    binarization_weight: float = 1e-4
    compactness_weight: float = 1e-4


class SearchResult(eqx.Module):
    """The chosen hard network and how the search went.

    Attributes:
        network: the hard :class:`MLPSpec`: thresholded weights, 0/1 neuron masks, one-hot activation logits.
        threshold: the learned weight threshold t.
        latent: the chosen run's latent point z, ``(d,)``.
        loss_history: ``(steps,)``, the chosen run's relaxed objective per step.
        initial_train_mse: the training MSE of the chosen run's hard network at its starting point (after
            :func:`refine`: that of the search's hard network).
    """

    network: MLPSpec  # hard: thresholded weights, 0/1 neuron masks, one-hot activation logits
    threshold: Float[Array, ""]
    latent: Float[Array, " d"]
    loss_history: Float[Array, " steps"]  # the chosen run's relaxed objective
    initial_train_mse: Float[Array, ""]  # the chosen run's hard network at its starting point


@eqx.filter_jit
def soft_threshold(
    spec: MLPSpec, threshold: float | Float[Array, ""], sharpness: float
) -> tuple[MLPSpec, Float[Array, "4 7 7"], Float[Array, " 7"]]:
    """Weights scaled by their gates σ(s(|w| − t)); returns the spec and the hidden/output gates.

    Args:
        spec: one member.
        threshold: t.
        sharpness: s.

    Returns:
        ``(soft, gate, output_gate)``: the member with gated hidden and output weights, the ``(4, 7, 7)``
        hidden gates and the ``(7,)`` output gates.
    """
    gate = jax.nn.sigmoid(sharpness * (jnp.abs(spec.weights) - threshold))
    output_gate = jax.nn.sigmoid(sharpness * (jnp.abs(spec.output_weights) - threshold))
    soft = eqx.tree_at(
        lambda s: (s.weights, s.output_weights), spec, (spec.weights * gate, spec.output_weights * output_gate)
    )
    return soft, gate, output_gate


@eqx.filter_jit
def regularizers(
    spec: MLPSpec, gate: Float[Array, "4 7 7"], output_gate: Float[Array, " 7"]
) -> dict[str, Float[Array, ""]]:
    """Sparsity (surviving connections), binarisation (undecided masks) and compactness (active
    neurons), each a mean over what exists in a network of ``spec.depth``.

    Args:
        spec: one (relaxed) member.
        gate: its ``(4, 7, 7)`` hidden weight gates (:func:`soft_threshold`).
        output_gate: its ``(7,)`` output weight gates.

    Returns:
        ``{"sparsity": ..., "binarization": ..., "compactness": ...}``, scalars in [0, 1].
    """
    used = used_layers(spec.depth, spec.weights.dtype) * jnp.ones((1, MAX_WIDTH), spec.weights.dtype)
    m = spec.neuron_mask
    return {
        "sparsity": connection_fraction(spec, gate, output_gate),
        "binarization": jnp.sum(4 * m * (1 - m) * used) / jnp.sum(used),
        "compactness": neuron_fraction(spec),
    }


@eqx.filter_jit
def harden(spec: MLPSpec, threshold: float | Float[Array, ""]) -> MLPSpec:
    """The discrete network: |w| < t → 0, masks > ½ → 1 else 0, one-hot arg-max activation logits, and
    every weight into or out of an inactive neuron (or a layer beyond the depth) zeroed.

    Args:
        spec: one (relaxed) member.
        threshold: t.

    Returns:
        The hard :class:`MLPSpec`.
    """
    dtype = spec.weights.dtype
    mask = (spec.neuron_mask > 0.5).astype(dtype) * used_layers(spec.depth, dtype)
    hard = eqx.tree_at(lambda s: s.neuron_mask, spec, mask)
    keep = (jnp.abs(spec.weights) >= threshold).astype(dtype) * weight_exists(spec.depth, dtype)
    weights = spec.weights * keep * mask[:, :, None] * source_masks(hard)[:, None, :]
    output_weights = spec.output_weights * (jnp.abs(spec.output_weights) >= threshold) * last_layer_mask(hard)
    logits = jax.nn.one_hot(jnp.argmax(spec.activation_logits, axis=-1), spec.activation_logits.shape[-1], dtype=dtype)
    return MLPSpec(weights, spec.biases * mask, logits, mask, output_weights, spec.output_bias, spec.depth)


@eqx.filter_jit
def network_size(hard: MLPSpec) -> dict[str, Int[Array, ""]]:
    """Active neurons and non-zero connection weights of a hard network (biases not counted).

    Args:
        hard: a hard member (:func:`harden`).

    Returns:
        ``{"active_neurons": ..., "nonzeros": ...}``, int32 scalars.
    """
    return {
        "active_neurons": jnp.sum(hard.neuron_mask > 0).astype(jnp.int32),
        "nonzeros": (jnp.sum(hard.weights != 0) + jnp.sum(hard.output_weights != 0)).astype(jnp.int32),
    }


def mse(
    spec: MLPSpec, x: Float[Array, "N 2"], y: Float[Array, " N"], temperature: float | Float[Array, ""] | None = None
) -> Float[Array, ""]:
    r"""Mean squared error of a member on a data set.

    Args:
        spec: one member.
        x: ``(N, 2)`` inputs.
        y: ``(N,)`` targets.
        temperature: as in :func:`forward`: None for the hard network, else the relaxed one's temperature.

    Returns:
        :math:`\frac1N\sum_i (f(x_i) - y_i)^2`.
    """
    return jnp.mean((forward(spec, x, temperature) - y) ** 2)


def _objective(spec, threshold, x, y, temperature, config):
    soft, gate, output_gate = soft_threshold(spec, threshold, config.sharpness)
    penalties = regularizers(spec, gate, output_gate)
    return (
        mse(soft, x, y, temperature)
        + config.sparsity_weight * penalties["sparsity"]
        + config.binarization_weight * penalties["binarization"]
        + config.compactness_weight * penalties["compactness"]
    )


def _temperatures(config: SearchConfig) -> Float[Array, " steps"]:
    fraction = jnp.linspace(0.0, 1.0, config.steps)
    return config.temperature_start * (config.temperature_end / config.temperature_start) ** fraction


def _run_adam(loss_fn, params, x, y, key, config: SearchConfig) -> tuple[PyTree, Float[Array, " steps"]]:
    """Adam over the annealed temperatures, each step on a random minibatch of the training points;
    ``loss_fn(params, x, y, temperature)``. Returns the final params and the loss history."""
    optimizer = optax.adam(config.learning_rate)
    batch = min(config.batch_size, x.shape[0])

    def step(carry, schedule):
        params, state = carry
        temperature, rows = schedule
        loss, grads = jax.value_and_grad(loss_fn)(params, x[rows], y[rows], temperature)
        updates, state = optimizer.update(grads, state, params)
        return (optax.apply_updates(params, updates), state), loss

    # minibatches drawn with replacement, all at once (one random kernel instead of one per step)
    schedule = (_temperatures(config), jax.random.randint(key, (config.steps, batch), 0, x.shape[0]))
    (params, _), history = jax.lax.scan(step, (params, optimizer.init(params)), schedule)
    return params, history


def _threshold(relative, config: SearchConfig):
    # t = t0·|u| with u starting at 1: Adam moves u by about the learning rate per step, so t moves by
    # that fraction of t0 instead of by an absolute amount that would swallow every weight in a few
    # dozen steps (the sparsity gradient always pushes t up; only weights near |w| = t push back)
    return config.initial_threshold * jnp.abs(relative)


def _check_task(x, y, dtype=None):
    x, y = jnp.asarray(x, dtype), jnp.asarray(y, dtype)
    if x.ndim != 2 or x.shape[1] != NUM_INPUTS or y.shape != (x.shape[0],):
        raise ValueError(f"expected inputs (N, {NUM_INPUTS}) and targets (N,), got {x.shape} and {y.shape}")
    if not (bool(jnp.all(jnp.isfinite(x))) and bool(jnp.all(jnp.isfinite(y)))):
        raise ValueError("task inputs and targets must be finite")
    return x, y


def search(
    model: SwatAutoencoder,
    x: Float[Array, "N 2"],
    y: Float[Array, " N"],
    key: PRNGKeyArray,
    config: SearchConfig = SearchConfig(),
) -> SearchResult:
    r"""Fit ``y ≈ f(x)`` by Adam on a latent point and a weight threshold, for ``config.starts`` starting
    points (encodings of random members of the family) × every depth, all in one compiled ``vmap``;
    keep the run whose hard network has the lowest training MSE.

    Args:
        model: the trained autoencoder (e.g. :func:`load_pretrained`).
        x: ``(N, 2)`` training inputs.
        y: ``(N,)`` training targets.
        key: a JAX PRNG key (starting points and minibatches).
        config: the settings (:class:`SearchConfig`).

    Returns:
        The :class:`SearchResult` of the best run.

    Raises:
        ValueError: ``x`` / ``y`` are not ``(N, 2)`` / ``(N,)`` or not finite.
    """
    x, y = _check_task(x, y, model.positions.dtype)
    return _search(model, x, y, key, config)


@eqx.filter_jit
def _search(model: SwatAutoencoder, x, y, key, config: SearchConfig) -> SearchResult:
    k_starts, k_batches = jax.random.split(key)
    members = jax.vmap(partial(random_mlp, dtype=x.dtype))(jax.random.split(k_starts, config.starts))
    starts = jax.vmap(model.encode)(members)
    decode = model.decode_at

    def run(z0, depth):
        params = (jnp.arctanh(jnp.clip(z0, -0.999, 0.999)), jnp.ones((), z0.dtype))
        loss_fn = lambda p, xb, yb, temperature: _objective(
            decode(jnp.tanh(p[0]), depth, temperature), _threshold(p[1], config), xb, yb, temperature, config
        )
        (u, relative_threshold), history = _run_adam(loss_fn, params, x, y, k_batches, config)
        z, threshold = jnp.tanh(u), _threshold(relative_threshold, config)
        hard = harden(decode(z, depth, None), threshold)
        initial = mse(harden(decode(z0, depth, None), config.initial_threshold), x, y)
        return hard, threshold, z, history, initial, mse(hard, x, y)

    depths = jnp.arange(1, MAX_DEPTH + 1)
    grid_z = jnp.repeat(starts, MAX_DEPTH, axis=0)
    grid_depth = jnp.tile(depths, config.starts)
    hard, threshold, z, history, initial, train_mse = jax.vmap(run)(grid_z, grid_depth)
    best = jnp.argmin(jnp.where(jnp.isfinite(train_mse), train_mse, jnp.inf))
    pick = lambda tree: jax.tree_util.tree_map(lambda leaf: leaf[best], tree)
    return SearchResult(pick(hard), threshold[best], z[best], history[best], initial[best])


def refine(
    model: SwatAutoencoder,
    result: SearchResult,
    x: Float[Array, "N 2"],
    y: Float[Array, " N"],
    key: PRNGKeyArray,
    config: SearchConfig = SearchConfig(),
) -> SearchResult:
    """Continue the same objective (annealed again) on the parameters of the network decoded at the
    found latent point — weights, biases, activation logits and neuron-mask logits — and the
    threshold; the depth is kept.

    Args:
        model: the autoencoder the search used.
        result: the search's result.
        x: ``(N, 2)`` training inputs.
        y: ``(N,)`` training targets.
        key: a JAX PRNG key (minibatches).
        config: the settings (:class:`SearchConfig`).

    Returns:
        A :class:`SearchResult` with the new hard network, or the search's own when that fits the
        training data better; ``latent`` is the search's, ``loss_history`` this run's and
        ``initial_train_mse`` the search's hard training error.

    Raises:
        ValueError: ``x`` / ``y`` are not ``(N, 2)`` / ``(N,)`` or not finite.
    """
    x, y = _check_task(x, y, model.positions.dtype)
    depth = result.network.depth
    # the decoder's own mask logits (a temperature of 1 leaves them as they are)
    decoded = model.decode_at(result.latent, depth, 1.0)
    probability = jnp.clip(decoded.neuron_mask, 1e-6, 1 - 1e-6)
    trainable = (
        decoded.weights,
        decoded.biases,
        decoded.activation_logits,
        jnp.log(probability) - jnp.log1p(-probability),
        decoded.output_weights,
        decoded.output_bias,
    )
    used = used_layers(depth, decoded.weights.dtype)
    hard, threshold, history = _refine(
        (trainable, result.threshold / config.initial_threshold), used, depth, x, y, key, config
    )
    before = mse(result.network, x, y)
    # the re-annealed objective can end on a worse hard network than it started from (the penalties
    # and the temperature schedule act on the relaxed one); keep whichever fits the training data better
    better = mse(hard, x, y) <= before
    network, threshold = jax.tree_util.tree_map(
        lambda new, old: jnp.where(better, new, old), (hard, threshold), (result.network, result.threshold)
    )
    return SearchResult(network, threshold, result.latent, history, before)


def _refined_spec(params, used, depth, temperature) -> MLPSpec:
    weights, biases, logits, mask_logits, output_weights, output_bias = params
    mask = relaxed_mask(mask_logits, temperature) * used
    return MLPSpec(weights, biases, logits, mask, output_weights, output_bias, depth)


@eqx.filter_jit  # module level, the task an argument: one program for every refined task of a shape and setting
def _refine(params, used, depth, x, y, key, config: SearchConfig):
    def loss_fn(params, xb, yb, temperature):
        spec = _refined_spec(params[0], used, depth, temperature)
        return _objective(spec, _threshold(params[1], config), xb, yb, temperature, config)

    (trained, relative_threshold), history = _run_adam(loss_fn, params, x, y, key, config)
    threshold = _threshold(relative_threshold, config)
    return harden(_refined_spec(trained, used, depth, None), threshold), threshold, history


def prune(network: MLPSpec, nonzeros: int) -> MLPSpec:
    """Keep the ``nonzeros`` connection weights of largest magnitude (hidden and output weights together) and zero
    the rest; masks, activations, biases and depth are kept (magnitude pruning; :func:`retrain` then refits the
    survivors).

    Args:
        network: a hard member.
        nonzeros: how many connection weights to keep, >= 0 (more than the network has keeps them all).

    Returns:
        The pruned :class:`MLPSpec`.

    Raises:
        ValueError: ``nonzeros`` is negative.
    """
    if nonzeros < 0:
        raise ValueError(f"nonzeros must be >= 0, got {nonzeros}")
    magnitudes = jnp.concatenate([jnp.abs(network.weights).ravel(), jnp.abs(network.output_weights)])
    keep = jnp.zeros(magnitudes.shape, bool)
    if nonzeros:
        order = jnp.argsort(-magnitudes)[: min(nonzeros, magnitudes.size)]
        keep = keep.at[order].set(magnitudes[order] > 0)
    hidden, output = keep[: network.weights.size].reshape(network.weights.shape), keep[network.weights.size :]
    return eqx.tree_at(
        lambda s: (s.weights, s.output_weights),
        network,
        (jnp.where(hidden, network.weights, 0.0), jnp.where(output, network.output_weights, 0.0)),
    )


def retrain(
    network: MLPSpec,
    x: Float[Array, "N 2"],
    y: Float[Array, " N"],
    key: PRNGKeyArray,
    config: SearchConfig = SearchConfig(),
) -> MLPSpec:
    """Continue training a hard network's surviving parameters on the MSE alone, its architecture fixed:
    the non-zero weights, the active neurons' biases, the non-zero output weights and the output bias, by the
    same Adam schedule as :func:`train_dense` (prune, then retrain). Zero weights stay zero; masks, activations
    and depth are kept. Applied to a dense network it is :func:`train_dense` continued.

    Args:
        network: a hard member (:func:`harden`, :func:`train_dense` or a search's ``network``).
        x: ``(N, 2)`` training inputs.
        y: ``(N,)`` training targets.
        key: a JAX PRNG key (minibatches).
        config: the settings; only ``steps``, ``batch_size`` and ``learning_rate`` are used.

    Returns:
        The retrained :class:`MLPSpec`, with ``network``'s zero pattern.

    Raises:
        ValueError: ``x`` / ``y`` are not ``(N, 2)`` / ``(N,)`` or not finite.
    """
    dtype = network.weights.dtype
    x, y = _check_task(x, y, dtype)
    weight_mask = (network.weights != 0).astype(dtype)
    output_mask = (network.output_weights != 0).astype(dtype)
    bias_mask = (network.neuron_mask != 0).astype(dtype)

    def as_spec(p):
        weights, biases, output_weights, output_bias = p
        return eqx.tree_at(
            lambda s: (s.weights, s.biases, s.output_weights, s.output_bias),
            network,
            (weights * weight_mask, biases * bias_mask, output_weights * output_mask, output_bias),
        )

    # the network stays a constant of the program (compiled per call, unlike refine's and train_dense's): passed
    # as an argument it gave retrained weights that differ in float32's last bits (measured; presumably what XLA
    # folds from the constant at compile time it then computes at run time), which would move the recorded SWAT
    # tables (benchmarks/README.md (z), (ab))
    loss_fn = lambda p, xb, yb, temperature: mse(as_spec(p), xb, yb)
    params = (network.weights, network.biases, network.output_weights, network.output_bias)
    trained, _ = eqx.filter_jit(lambda p: _run_adam(loss_fn, p, x, y, key, config))(params)
    return as_spec(trained)


def train_dense(
    x: Float[Array, "N 2"],
    y: Float[Array, " N"],
    key: PRNGKeyArray,
    depth: int,
    config: SearchConfig = SearchConfig(),
    activation: int = 1,
    dtype: DTypeLike = jnp.float32,
) -> MLPSpec:
    """The comparison point: a fully connected member of the same depth with all 7 neurons per layer on
    and one activation everywhere (default tanh), trained by the same Adam schedule (minibatches,
    steps, learning rate) on the MSE alone.

    Args:
        x: ``(N, 2)`` training inputs.
        y: ``(N,)`` training targets.
        key: a JAX PRNG key (initial weights and minibatches).
        depth: hidden layers, 1 to 4.
        config: the settings; only ``steps``, ``batch_size`` and ``learning_rate`` are used.
        activation: the index in ``("sigmoid", "tanh", "leaky_relu")`` of every neuron's activation
            (default 1, tanh).
        dtype: the floating dtype (default float32).

    Returns:
        The trained :class:`MLPSpec` (hard: all masks 1 in the used layers).

    Raises:
        ValueError: ``depth`` outside 1..4, or ``x`` / ``y`` malformed or not finite.
    """
    x, y = _check_task(x, y, dtype)
    if not 1 <= depth <= MAX_DEPTH:
        raise ValueError(f"depth must be in 1..{MAX_DEPTH}, got {depth}")
    k_init, k_batches = jax.random.split(key)
    exists = weight_exists(depth, dtype)
    fan_in = jnp.where(jnp.arange(MAX_DEPTH) == 0, NUM_INPUTS, MAX_WIDTH).astype(dtype)
    k_w, k_out = jax.random.split(k_init)
    weights = (
        jax.random.normal(k_w, (MAX_DEPTH, MAX_WIDTH, MAX_WIDTH), dtype) / jnp.sqrt(fan_in)[:, None, None] * exists
    )
    used = used_layers(depth, dtype) * jnp.ones((1, MAX_WIDTH), dtype)
    logits = jax.nn.one_hot(jnp.full((MAX_DEPTH, MAX_WIDTH), activation), 3, dtype=dtype)
    output_weights = jax.random.normal(k_out, (MAX_WIDTH,), dtype) / jnp.sqrt(float(MAX_WIDTH))

    fixed = (exists, used, logits, jnp.asarray(depth))
    params = (weights, jnp.zeros((MAX_DEPTH, MAX_WIDTH), dtype), output_weights, jnp.zeros((), dtype))
    return _dense_spec(_train_dense(params, fixed, x, y, k_batches, config), fixed)


def _dense_spec(params, fixed) -> MLPSpec:
    exists, used, logits, depth = fixed
    return MLPSpec(params[0] * exists, params[1] * used, logits, used, params[2], params[3], depth)


@eqx.filter_jit  # module level, the task an argument: one program for every dense fit of a shape and setting
def _train_dense(params, fixed, x, y, key, config: SearchConfig):
    loss_fn = lambda p, xb, yb, temperature: mse(_dense_spec(p, fixed), xb, yb)
    return _run_adam(loss_fn, params, x, y, key, config)[0]
