r"""The SWAT-NN multi-scale autoencoder: a small transformer encoder maps an MLP's tokens to a latent
point z, and one decoder per depth D = 1..4 maps z back to an MLP of that depth.

Besides the 29 row tokens, the encoder reads one *probe token*: the network's outputs on a fixed 8×8
grid of [-1, 1]². Weights alone determine the function only through a deep composition the encoder
would have to learn to evaluate; with the probe token the functional loss falls several times faster
(measured on this family, width 32, one block, 1,500 steps of 32 networks: 0.10 without it against
an output-variance baseline of 0.14).

Training is *functional*: a decoded network is judged by what it computes, not by its weights (many
weight settings compute the same function — neurons permute, masked neurons carry arbitrary weights).
For a random member f and points :math:`x_1..x_K` uniform on :math:`[-1, 1]^2`,

.. math:: \ell(f) = \min_{D} \frac1K \sum_k \big(\hat f_D(x_k) - f(x_k)\big)^2, \qquad \hat f_D = \mathrm{dec}_D(\mathrm{enc}(f)),

the minimum over the decoders letting each latent point be explained by the depth that fits it best
(that is what makes the latent space multi-scale: one point stands for networks of every depth).
Decoded networks are relaxed: neuron masks are sigmoids of logits and activations a softmax mixture, so
the loss is differentiable in z.
"""

from __future__ import annotations

import io
import json
import math
import os
import time
from functools import partial
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, DTypeLike, Float, Int, PRNGKeyArray

from .._progress import Progress
from ..io import write_atomically
from ._family import (
    ACTIVATIONS,
    MAX_DEPTH,
    MAX_WIDTH,
    NUM_TOKENS,
    TOKEN_FEATURES,
    MLPSpec,
    StraightThrough,
    connection_fraction,
    encode,
    forward,
    neuron_fraction,
    random_mlp,
    straight_through,
    used_layers,
)

#: How a network is decoded: None (hard), a temperature of the relaxation, or :class:`StraightThrough`.
Temperature = float | Float[Array, ""] | StraightThrough | None

# per hidden neuron: incoming weights, bias, activation logits, mask logit; then output weights + bias
_NEURON_OUTPUTS = MAX_WIDTH + 1 + len(ACTIVATIONS) + 1
_DECODER_OUTPUTS = MAX_DEPTH * MAX_WIDTH * _NEURON_OUTPUTS + MAX_WIDTH + 1
_PROBE_GRID = np.linspace(-1.0, 1.0, 8)
PROBE_POINTS = np.stack(np.meshgrid(_PROBE_GRID, _PROBE_GRID), axis=-1).reshape(-1, 2)


class _EncoderBlock(eqx.Module):
    """Pre-norm transformer block: masked self-attention over the tokens, then a position-wise MLP."""

    attention_norm: eqx.nn.LayerNorm
    attention: eqx.nn.MultiheadAttention
    mlp_norm: eqx.nn.LayerNorm
    mlp: eqx.nn.MLP

    def __init__(self, width: int, heads: int, key: PRNGKeyArray, dtype: DTypeLike):
        k_attention, k_mlp = jax.random.split(key)
        self.attention_norm = eqx.nn.LayerNorm(width, dtype=dtype)
        self.attention = eqx.nn.MultiheadAttention(heads, width, key=k_attention, dtype=dtype)
        self.mlp_norm = eqx.nn.LayerNorm(width, dtype=dtype)
        self.mlp = eqx.nn.MLP(width, width, 2 * width, 1, activation=jax.nn.gelu, key=k_mlp, dtype=dtype)

    def __call__(self, h: Float[Array, "T W"], valid: Float[Array, " T"]) -> Float[Array, "T W"]:
        normed = jax.vmap(self.attention_norm)(h)
        mask = jnp.broadcast_to(valid[None, :] > 0, (h.shape[0], h.shape[0]))
        h = h + self.attention(normed, normed, normed, mask=mask)
        return h + jax.vmap(self.mlp)(jax.vmap(self.mlp_norm)(h))


class SwatAutoencoder(eqx.Module):
    r"""Transformer encoder to a latent :math:`z \in \mathbb R^{d}` and one MLP decoder per depth.

    The four decoders have the same shape and are stored stacked (leading axis = depth − 1), so all
    depths decode in one ``vmap``. Decoder D fills layers 1..D of the padded family arrays.

    Args:
        key: a JAX PRNG key for the initial weights.
        latent_size: d, the latent dimension (default 32).
        width: the encoder's token width (default 32).
        heads: attention heads per encoder block (default 4).
        num_blocks: encoder blocks (default 1).
        decoder_width: hidden width of each decoder MLP (default 128).
        decoder_depth: hidden layers of each decoder MLP (default 2).
        dtype: the floating dtype of the parameters (default float32).

    Attributes:
        latent_size: d (static).
        options: the keyword arguments above as ``(name, value)`` pairs (static; what
            :func:`save_autoencoder` writes to rebuild the model).
    """

    embed: eqx.nn.Linear
    probe_embed: eqx.nn.Linear
    positions: Float[Array, "30 W"]
    blocks: tuple[_EncoderBlock, ...]
    final_norm: eqx.nn.LayerNorm
    to_latent: eqx.nn.Linear
    decoders: eqx.nn.MLP  # stacked over the 4 depths
    latent_size: int = eqx.field(static=True)
    # the constructor's keyword arguments, to rebuild it on loading
    options: tuple[tuple[str, int | str], ...] = eqx.field(static=True)

    def __init__(
        self,
        key: PRNGKeyArray,
        *,
        latent_size: int = 32,
        width: int = 32,
        heads: int = 4,
        num_blocks: int = 1,
        decoder_width: int = 128,
        decoder_depth: int = 2,
        dtype: DTypeLike = jnp.float32,
    ):
        k_embed, k_probe, k_pos, k_blocks, k_latent, k_decoders = jax.random.split(key, 6)
        self.embed = eqx.nn.Linear(TOKEN_FEATURES, width, key=k_embed, dtype=dtype)
        self.probe_embed = eqx.nn.Linear(PROBE_POINTS.shape[0], width, key=k_probe, dtype=dtype)
        self.positions = 0.02 * jax.random.normal(k_pos, (NUM_TOKENS + 1, width), dtype)
        self.blocks = tuple(_EncoderBlock(width, heads, k, dtype) for k in jax.random.split(k_blocks, num_blocks))
        self.final_norm = eqx.nn.LayerNorm(width, dtype=dtype)
        self.to_latent = eqx.nn.Linear(width, latent_size, key=k_latent, dtype=dtype)
        make_decoder = lambda k: eqx.nn.MLP(
            latent_size, _DECODER_OUTPUTS, decoder_width, decoder_depth, activation=jax.nn.gelu, key=k, dtype=dtype
        )
        self.decoders = eqx.filter_vmap(make_decoder)(jax.random.split(k_decoders, MAX_DEPTH))
        self.latent_size = latent_size
        self.options = (
            ("latent_size", latent_size),
            ("width", width),
            ("heads", heads),
            ("num_blocks", num_blocks),
            ("decoder_width", decoder_width),
            ("decoder_depth", decoder_depth),
            ("dtype", jnp.dtype(dtype).name),
        )

    @eqx.filter_jit  # one program, also when called eagerly (op by op it compiled dozens)
    def encode(self, spec: MLPSpec) -> Float[Array, " d"]:
        """The latent point of one network: attention over its probe token and valid row tokens,
        mean-pooled."""
        tokens, valid = encode(spec)
        probe = self.probe_embed(forward(spec, jnp.asarray(PROBE_POINTS, tokens.dtype)))
        h = jnp.concatenate([probe[None, :], jax.vmap(self.embed)(tokens)], axis=0) + self.positions
        valid = jnp.concatenate([jnp.ones(1, valid.dtype), valid])
        for block in self.blocks:
            h = block(h, valid)
        h = jax.vmap(self.final_norm)(h)
        pooled = jnp.sum(h * valid[:, None], axis=0) / jnp.sum(valid)
        return jnp.tanh(self.to_latent(pooled))

    def decode_at(self, z: Float[Array, " d"], depth: int | Int[Array, ""], temperature: Temperature = None) -> MLPSpec:
        """The depth-``depth`` decoding of ``z`` (``depth`` in 1..4, may be traced). Neuron masks are
        σ(logit / temperature) (0/1 for ``temperature=None``; 0/1 with the sigmoid's derivatives for a
        :class:`StraightThrough` one)."""
        params, static = eqx.partition(self.decoders, eqx.is_array)
        decoder = eqx.combine(jax.tree_util.tree_map(lambda leaf: leaf[depth - 1], params), static)
        return _spec_from_outputs(decoder(z), depth, temperature)

    @eqx.filter_jit  # one program, also when called eagerly (op by op it compiled dozens)
    def decode(self, z: Float[Array, " d"], temperature: Temperature = None) -> MLPSpec:
        """All four decodings of ``z`` (:meth:`decode_at`), stacked: leaf shapes gain a leading axis of 4
        (depth 1..4)."""
        return jax.vmap(lambda depth: self.decode_at(z, depth, temperature))(jnp.arange(1, MAX_DEPTH + 1))


def relaxed_mask(logits: Float[Array, "*shape"], temperature: Temperature) -> Float[Array, "*shape"]:
    """σ(logits / temperature), the 0/1 step for ``temperature=None`` (with the sigmoid's derivatives for a
    :class:`StraightThrough` one): the neuron-mask counterpart of the activation softmax, annealed with it so
    that the relaxed network becomes the hard one."""
    hard = (logits > 0).astype(logits.dtype)
    if temperature is None:
        return hard
    if isinstance(temperature, StraightThrough):
        return straight_through(hard, jax.nn.sigmoid(logits / temperature.temperature))
    return jax.nn.sigmoid(logits / temperature)


def _spec_from_outputs(out: Float[Array, " P"], depth: int | Int[Array, ""], temperature: Temperature) -> MLPSpec:
    hidden = out[: -(MAX_WIDTH + 1)].reshape(MAX_DEPTH, MAX_WIDTH, _NEURON_OUTPUTS)
    used = used_layers(depth, out.dtype)
    return MLPSpec(
        weights=hidden[..., :MAX_WIDTH],
        biases=hidden[..., MAX_WIDTH],
        activation_logits=hidden[..., MAX_WIDTH + 1 : MAX_WIDTH + 1 + len(ACTIVATIONS)],
        neuron_mask=relaxed_mask(hidden[..., -1], temperature) * used,
        output_weights=out[-(MAX_WIDTH + 1) : -1],
        output_bias=out[-1],
        depth=jnp.asarray(depth),
    )


def reconstruction_errors(
    model: SwatAutoencoder,
    spec: MLPSpec,
    x: Float[Array, "K 2"],
    temperature: Temperature = None,
    latent_shift: Float[Array, " d"] | None = None,
) -> Float[Array, " 4"]:
    """Per-depth functional error :math:`\\frac1K\\sum_k(\\hat f_D(x_k) - f(x_k))^2` of one network
    (decoded hard for ``temperature=None``, relaxed at a temperature, or hard with the relaxation's derivatives
    for a :class:`StraightThrough` one), optionally with the latent point shifted by ``latent_shift``.

    Args:
        model: the autoencoder.
        spec: the network f (one member).
        x: ``(K, 2)`` evaluation points.
        temperature: None for hard decodings, a relaxation temperature, or :class:`StraightThrough`.
        latent_shift: ``(d,)`` added to the encoding before decoding, or None.

    Returns:
        ``(4,)``, the error of the decoding of each depth D = 1..4.
    """
    return _errors_and_decodings(model, spec, x, temperature, latent_shift)[0]


def _errors_and_decodings(model, spec, x, temperature, latent_shift) -> tuple[Float[Array, " 4"], MLPSpec]:
    """:func:`reconstruction_errors` and the four decodings they were measured on."""
    target = forward(spec, x)
    z = model.encode(spec)
    if latent_shift is not None:
        z = z + latent_shift
    decoded = model.decode(z, temperature)
    outputs = jax.vmap(lambda s: forward(s, x, temperature))(decoded)
    return jnp.mean((outputs - target[None, :]) ** 2, axis=-1), decoded


def train_autoencoder(
    key: PRNGKeyArray,
    *,
    steps: int = 2000,
    batch_size: int = 64,
    num_points: int = 64,
    learning_rate: float = 2e-3,
    latent_noise: float = 0.05,
    min_temperature: float = 0.05,
    hard_weight: float = 0.0,
    size_weight: float = 0.0,
    size_measure: str = "neurons",
    model: SwatAutoencoder | None = None,
    log_every: int = 0,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 100,
    max_seconds: float | None = None,
    **model_options: Any,
) -> tuple[SwatAutoencoder, Float[Array, " done"]]:
    """Train on a fresh batch of random members (:func:`random_mlp`) and fresh points each step, with
    Adam (cosine-decayed learning rate) on the functional loss. Returns the model and the loss curve.

    Two choices serve the later latent search: each network's latent point is shifted by Gaussian
    noise of standard deviation ``latent_noise`` (so that a neighbourhood of an encoding decodes to
    similar functions and the search meets a smooth landscape, not isolated good points), and each is
    decoded at a temperature drawn log-uniformly from [``min_temperature``, 1] (so that decoded networks
    stay good while the search anneals towards hard activations). With ``hard_weight`` > 0 the loss adds that
    multiple of the same functional loss of the *hard* decodings (arg-max activations, 0/1 masks: the networks the
    search reads out), trained through the relaxation's derivatives (:class:`StraightThrough`), so that the model
    cannot rely on mixtures that hardening destroys.

    Args:
        key: a JAX PRNG key (the model's initial weights and the data).
        steps: Adam steps, >= 1 (default 2000).
        batch_size: random members per step (default 64).
        num_points: evaluation points per member (default 64).
        learning_rate: the peak of the cosine-decayed learning rate (default 2e-3).
        latent_noise: the standard deviation of the latent shifts, >= 0 (default 0.05).
        min_temperature: the lowest decoding temperature, in (0, 1] (default 0.05).
        hard_weight: the weight of the hard decodings' loss, >= 0 (default 0: the relaxed loss alone).
        size_weight: the weight of the hard decodings' size, >= 0 (default 0): the share of its neurons (or
            connection weights) that the best depth's hard decoding keeps, through :class:`StraightThrough` masks
            (needs ``hard_weight`` > 0).
        size_measure: what the size counts: ``"neurons"`` (default), the share of the used layers' neurons
            switched on, or ``"connections"``, the share of a dense network's connection weights between the
            switched-on neurons (what the search's networks are measured by).
        model: an autoencoder to continue training; None (default): a new one from ``model_options``.
        log_every: print the loss every this many steps (0, the default: never; a progress bar is drawn
            instead, on a terminal or in a notebook only).
        checkpoint: a file to resume from and to save to: where it exists, training continues from the step
            it records (bit for bit as if it had not stopped) after checking that it was written with the
            same key, settings and architecture; it is replaced atomically every ``checkpoint_every`` steps
            and when training stops (calls with the same settings and architecture share one compiled step, so
            a training resumed in the same process does not compile again). None (default): no checkpoint.
        checkpoint_every: steps between checkpoints (>= 1, default 100).
        max_seconds: stop (saving the checkpoint) once this much wall time has passed in this call; None
            (default): run all ``steps``.
        **model_options: keyword arguments of :class:`SwatAutoencoder` for a new model (not with
            ``model``).

    Returns:
        ``(model, losses)``: the model and the functional loss of every step done so far (``steps`` of them
        unless ``max_seconds`` stopped the run first; a resumed run includes the earlier steps').

    Raises:
        ValueError: a count is not positive, a noise or temperature is out of range, ``model_options``
            come with a ``model``, or ``checkpoint`` was written by a different training.
    """
    if checkpoint_every < 1 or (max_seconds is not None and not max_seconds >= 0):
        raise ValueError(f"need checkpoint_every >= 1 and max_seconds >= 0, got {checkpoint_every}, {max_seconds}")
    if steps < 1 or batch_size < 1 or num_points < 1:
        raise ValueError(f"steps, batch_size and num_points must be positive, got {steps}, {batch_size}, {num_points}")
    if not 0 < min_temperature <= 1 or latent_noise < 0 or not hard_weight >= 0 or not size_weight >= 0:
        raise ValueError(
            "need 0 < min_temperature <= 1, latent_noise >= 0, hard_weight >= 0 and size_weight >= 0, got "
            f"{min_temperature}, {latent_noise}, {hard_weight}, {size_weight}"
        )
    if size_measure not in ("neurons", "connections"):
        raise ValueError(f"size_measure must be 'neurons' or 'connections', got {size_measure!r}")
    if size_weight and not hard_weight:
        raise ValueError("size_weight needs hard_weight > 0 (the size is that of the hard decodings)")
    k_model, k_data = jax.random.split(key)
    if model is None:
        model = SwatAutoencoder(k_model, **model_options)
    elif model_options:
        raise ValueError(f"model options {sorted(model_options)} given together with a model")
    training = _Training(
        int(steps),
        int(batch_size),
        int(num_points),
        float(learning_rate),
        float(latent_noise),
        float(min_temperature),
        float(hard_weight),
        float(size_weight),
        size_measure,
    )
    params, static = eqx.partition(model, eqx.is_inexact_array)
    opt_state = training.optimizer().init(params)

    losses = np.zeros(steps, model.positions.dtype)
    settings = dict(
        key=np.asarray(jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key).tolist(),
        steps=steps,
        batch_size=batch_size,
        num_points=num_points,
        learning_rate=learning_rate,
        latent_noise=latent_noise,
        min_temperature=min_temperature,
        **({"hard_weight": hard_weight} if hard_weight else {}),
        **({"size_weight": size_weight} if size_weight else {}),
        **({"size_measure": size_measure} if size_weight and size_measure != "neurons" else {}),
        options=dict(model.options),
    )
    done = 0
    if checkpoint is not None and os.path.exists(checkpoint):
        params, opt_state, losses, done = _read_checkpoint(checkpoint, settings, (params, opt_state, losses))
    keys = jax.random.split(k_data, steps)
    started = time.perf_counter()
    # a bar on a terminal or in a notebook (nothing in logs), unless lines are printed every log_every steps
    indices = range(done, steps)
    bar = None if log_every else Progress(indices, label="SWAT autoencoder")
    # the losses stay on the device (no wait for each step) until a checkpoint or the end reads them
    pending, first_pending = [], done
    for i in indices if bar is None else bar:
        params, opt_state, loss = _training_step(params, static, opt_state, keys[i], training)
        pending.append(loss)
        done = i + 1
        if bar is not None:
            bar.note(loss=loss)
        if log_every and (i % log_every == 0 or i == steps - 1):
            print(f"step {i:5d}  functional loss {float(loss):.4e}")
        out_of_time = max_seconds is not None and time.perf_counter() - started >= max_seconds
        if checkpoint is not None and (done % checkpoint_every == 0 or done == steps or out_of_time):
            losses[first_pending:done] = np.asarray(jnp.stack(pending))
            pending, first_pending = [], done
            _write_checkpoint(checkpoint, settings, (params, opt_state, losses), done)
        if out_of_time:
            break
    if pending:
        losses[first_pending:done] = np.asarray(jnp.stack(pending))
    return eqx.combine(params, static), jnp.asarray(losses[:done])


class _Training(NamedTuple):
    """The settings a training step is compiled for (hashable: one compiled step serves every call that repeats
    them, e.g. a training resumed from its checkpoint in the same process)."""

    steps: int
    batch_size: int
    num_points: int
    learning_rate: float
    latent_noise: float
    min_temperature: float
    hard_weight: float
    size_weight: float
    size_measure: str

    def optimizer(self) -> optax.GradientTransformation:
        return optax.adam(optax.cosine_decay_schedule(self.learning_rate, self.steps, alpha=0.05))


def _batch_loss(params, static, key: PRNGKeyArray, training: _Training) -> Float[Array, ""]:
    model = eqx.combine(params, static)
    batch_size, num_points = training.batch_size, training.num_points
    k_specs, k_points, k_noise, k_temperature = jax.random.split(key, 4)
    dtype = model.positions.dtype
    specs = jax.vmap(partial(random_mlp, dtype=dtype))(jax.random.split(k_specs, batch_size))
    x = jax.random.uniform(k_points, (batch_size, num_points, 2), dtype, minval=-1.0, maxval=1.0)
    shifts = training.latent_noise * jax.random.normal(k_noise, (batch_size, model.latent_size), dtype)
    temperatures = training.min_temperature ** jax.random.uniform(k_temperature, (batch_size,), dtype)
    errors_of = jax.vmap(partial(_errors_and_decodings, model))
    loss = jnp.mean(jnp.min(errors_of(specs, x, temperatures, shifts)[0], axis=-1))
    if training.hard_weight:
        hard, decoded = errors_of(specs, x, StraightThrough(temperatures), shifts)
        loss = loss + training.hard_weight * jnp.mean(jnp.min(hard, axis=-1))
        if training.size_weight:
            # each depth's hard decoding's size (batch, depth), counted at the depth that reconstructs best
            size = neuron_fraction if training.size_measure == "neurons" else connection_fraction
            fractions = jax.vmap(jax.vmap(size))(decoded)
            best = jax.lax.stop_gradient(jnp.argmin(hard, axis=-1))
            loss = loss + training.size_weight * jnp.mean(jnp.take_along_axis(fractions, best[:, None], axis=1))
    return loss


@eqx.filter_jit
def _training_step(params, static, opt_state, key: PRNGKeyArray, training: _Training):
    loss, grads = jax.value_and_grad(_batch_loss)(params, static, key, training)
    updates, opt_state = training.optimizer().update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss


def _write_checkpoint(path, settings: dict, state, done: int) -> None:
    """One JSON line (the training's settings and the steps done), then the arrays; replaced atomically."""
    buffer = io.BytesIO()
    buffer.write((json.dumps(dict(settings, done=done)) + "\n").encode())
    eqx.tree_serialise_leaves(buffer, state)
    write_atomically(path, buffer.getvalue())


def _read_checkpoint(path, settings: dict, like) -> tuple[Any, Any, np.ndarray, int]:
    with open(path, "rb") as f:
        header = json.loads(f.readline().decode())
        done = header.pop("done")
        differing = sorted(name for name in settings if header.get(name) != settings[name])
        if differing:
            raise ValueError(
                f"checkpoint {os.fspath(path)!r} was written by a different training ({', '.join(differing)} "
                "differ): resume with the same key, settings and architecture, or start a new checkpoint file"
            )
        params, opt_state, losses = eqx.tree_deserialise_leaves(f, like)
    return params, opt_state, np.asarray(losses), int(done)


def evaluate_reconstruction(
    model: SwatAutoencoder, key: PRNGKeyArray, *, num_networks: int = 256, num_points: int = 256
) -> dict[str, float]:
    """Functional reconstruction of held-out random members (decoded with hard arg-max activations,
    as the search's final networks are) beside the trivial baseline: predicting each network's own
    mean output, whose error is the output variance.

    Args:
        model: the autoencoder.
        key: a JAX PRNG key (the members and points).
        num_networks: held-out random members (default 256).
        num_points: evaluation points per member, uniform on [-1, 1]² (default 256).

    Returns:
        ``{"reconstruction": mean min-over-depth MSE, "baseline": mean output variance}``.
    """
    reconstruction, baseline = _evaluate_reconstruction(model, key, num_networks, num_points)
    return {"reconstruction": float(reconstruction), "baseline": float(baseline)}


@eqx.filter_jit
def _evaluate_reconstruction(model, key, num_networks: int, num_points: int):
    k_specs, k_points = jax.random.split(key)
    dtype = model.positions.dtype
    specs = jax.vmap(partial(random_mlp, dtype=dtype))(jax.random.split(k_specs, num_networks))
    x = jax.random.uniform(k_points, (num_networks, num_points, 2), dtype, minval=-1.0, maxval=1.0)
    errors = jax.vmap(partial(reconstruction_errors, model))(specs, x)
    targets = jax.vmap(forward)(specs, x)
    return jnp.mean(jnp.min(errors, axis=-1)), jnp.mean(jnp.var(targets, axis=-1))


PRETRAINED_OPTIONS = dict(latent_size=32, width=32, heads=4, num_blocks=1, decoder_width=128, decoder_depth=2)
"""The architecture of the shipped model (:func:`load_pretrained`), trained by benchmarks/swat.py."""
PRETRAINED_PATH = os.path.join(os.path.dirname(__file__), "pretrained.eqx")


def save_autoencoder(path: str, model: SwatAutoencoder) -> None:
    """One JSON line with the constructor options, then the arrays (equinox's leaf serialisation).

    Args:
        path: the file to write (replaced if it exists).
        model: the autoencoder.
    """
    with open(path, "wb") as f:
        f.write((json.dumps(dict(model.options)) + "\n").encode())
        eqx.tree_serialise_leaves(f, model)


def load_autoencoder(path: str) -> SwatAutoencoder:
    """Read an autoencoder written by :func:`save_autoencoder`.

    Args:
        path: the file.

    Returns:
        The :class:`SwatAutoencoder`, rebuilt from the stored options and filled with the stored arrays.
    """
    with open(path, "rb") as f:
        options = json.loads(f.readline().decode())
        options["dtype"] = jnp.dtype(options["dtype"])
        skeleton = eqx.filter_eval_shape(lambda: SwatAutoencoder(jax.random.PRNGKey(0), **options))
        return eqx.tree_deserialise_leaves(f, skeleton)


def load_pretrained() -> SwatAutoencoder:
    """The shipped autoencoder: ``PRETRAINED_OPTIONS``, trained on the functional loss by
    ``python benchmarks/swat.py --train 2000 --save jaxnls/swat/pretrained.eqx`` (benchmarks/README.md
    records its held-out reconstruction error).

    Returns:
        The :class:`SwatAutoencoder` read from ``jaxnls/swat/pretrained.eqx``.
    """
    return load_autoencoder(PRETRAINED_PATH)


def parameter_count(model: SwatAutoencoder) -> int:
    return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(eqx.filter(model, eqx.is_array)))
