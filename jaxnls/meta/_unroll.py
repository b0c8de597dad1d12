r"""Meta-gradients through an unrolled inner optimisation, in reverse or mixed (forward-over-reverse) mode.

An inner loop runs T optimiser steps on ``inner_loss(θ, η, batch)``,

.. math::  g_t = ∇_θ L(θ_t, η, x_t),\qquad (u_t, s_{t+1}) = \mathrm{opt}_η.\mathrm{update}(g_t, s_t, θ_t),
           \qquad θ_{t+1} = θ_t + u_t,

and the meta-gradient differentiates an outer loss of θ_T with respect to the meta-parameters η.
Reverse-over-reverse autodiff of that loop keeps, for every step, the whole backward pass of the inner
gradient alive for the outer backward pass. The backward pass only ever needs the products of the
inner gradient's derivatives with a cotangent :math:`\bar g`,

.. math::  \bar θ \mathrel{+}= ∇^2_{θθ}L\,\bar g,\qquad \bar η \mathrel{+}= ∇^2_{ηθ}L\,\bar g,

and by the symmetry of second derivatives both are ONE forward-over-reverse product,
``jax.jvp(lambda θ: ∇_{(θ, η)} L(θ, η, x), (θ,), (ḡ,))`` (MixFlow-MG, Kemaev et al., ICML 2025). In
``mode="mixed"`` the inner gradient is a ``custom_vjp`` whose backward pass is that product, and the loop
is a ``lax.scan`` whose steps are rematerialised, saving only the inner gradients: per step the
backward pass stores θ_t, the optimiser state and g_t, never the inner backward pass.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import jax
import jax.numpy as jnp
import optax
from jax.ad_checkpoint import checkpoint_name
from jaxtyping import PyTree

INNER_GRADIENT = "jaxnls_inner_gradient"
"""The ``checkpoint_name`` under which ``unroll(..., mode="mixed")`` saves the inner gradients for the
backward pass: its rematerialised steps keep exactly the values of this name
(``jax.checkpoint_policies.save_only_these_names``)."""

InnerLoss = Callable[[PyTree, PyTree, PyTree], jax.Array]


def _zeros_like_cotangent(tree):
    """Zero cotangents for ``tree``: float0 for integer and boolean leaves, as custom_vjp requires."""

    def zero(leaf):
        leaf = jnp.asarray(leaf)
        if jnp.issubdtype(leaf.dtype, jnp.inexact):
            return jnp.zeros_like(leaf)
        return jnp.zeros(leaf.shape, jax.dtypes.float0)

    return jax.tree_util.tree_map(zero, tree)


def mixed_mode_gradient(inner_loss: InnerLoss) -> Callable[[PyTree, PyTree, PyTree], PyTree]:
    r"""``∇_θ inner_loss(θ, η, batch)`` whose derivative is one forward-over-reverse product.

    The vector-Jacobian product of the gradient with a cotangent ḡ is
    :math:`(∇^2_{θθ}L\,ḡ,\; ∇^2_{ηθ}L\,ḡ)`, computed as the jvp, along ḡ in θ, of ``grad`` with respect to
    (θ, η): no reverse pass over the reverse pass. ``batch`` gets a zero cotangent: data are not
    meta-parameters; put anything learnable in η. ``inner_loss`` must not close over traced values
    (JAX then raises ``CustomVJPException``; pass them in η instead).

    Args:
        inner_loss: ``inner_loss(θ, η, batch) -> scalar``.

    Returns:
        ``gradient(θ, η, batch) -> ∇_θ inner_loss``, a pytree like θ, with the derivative rule above.
    """

    def gradient_of_both(theta, eta, batch):
        return jax.grad(inner_loss, argnums=(0, 1))(theta, eta, batch)

    @jax.custom_vjp
    def gradient(theta, eta, batch):
        return jax.grad(inner_loss)(theta, eta, batch)

    def forward(theta, eta, batch):
        return gradient(theta, eta, batch), (theta, eta, batch)

    def backward(residuals, cotangent):
        theta, eta, batch = residuals
        _, (theta_bar, eta_bar) = jax.jvp(lambda th: gradient_of_both(th, eta, batch), (theta,), (cotangent,))
        return theta_bar, eta_bar, _zeros_like_cotangent(batch)

    gradient.defvjp(forward, backward)
    return gradient


def unroll(
    inner_loss: InnerLoss,
    make_optimizer: Callable[[PyTree], optax.GradientTransformation],
    num_steps: int,
    *,
    mode: Literal["mixed", "reverse"] = "mixed",
    truncate: int | None = None,
) -> Callable[[PyTree, PyTree, PyTree], PyTree]:
    r"""An inner optimisation of ``num_steps`` optax steps, differentiable with respect to its meta-parameters.

    Args:
        inner_loss: ``inner_loss(θ, η, batch) -> scalar`` for one step's batch. Everything that depends on
            the meta-parameters must come in through η (a closure over a traced value raises in mixed mode).
        make_optimizer: ``make_optimizer(η) -> optax.GradientTransformation``, so that learning rates,
            weight decay and the like can be meta-parameters.
        num_steps: T, the number of inner steps; ``batches`` carries one batch per step on its leading axis.
        mode: ``"mixed"`` (forward-over-reverse products, rematerialised steps that save only the inner
            gradients) or ``"reverse"`` (plain autodiff of the loop, the baseline).
        truncate: differentiate only through the last ``truncate`` steps (truncated backpropagation):
            the first T - k steps run forward only and θ, the optimiser state after them are constants.

    Returns:
        ``run(θ₀, η, batches) -> θ_T``, differentiable in θ₀ and η with ``jax.grad``/``jax.vjp``.

    Raises:
        ValueError: an unknown mode, a truncation window outside 1..T, or ``batches`` whose leading axis is
            not T (at trace time, naming the leaf).
    """
    if mode not in ("mixed", "reverse"):
        raise ValueError(f"mode must be 'mixed' or 'reverse', got {mode!r}")
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive int, got {num_steps!r}")
    if truncate is not None and not (isinstance(truncate, int) and 1 <= truncate <= num_steps):
        raise ValueError(f"truncate must be an int in 1..num_steps={num_steps}, got {truncate!r}")
    gradient = mixed_mode_gradient(inner_loss) if mode == "mixed" else jax.grad(inner_loss)

    def run(theta0, eta, batches):
        _check_batches(batches, num_steps)
        optimizer = make_optimizer(eta)

        def step(carry, batch):
            theta, state = carry
            g = gradient(theta, eta, batch)
            if mode == "mixed":
                g = checkpoint_name(g, INNER_GRADIENT)
            updates, state = optimizer.update(g, state, theta)
            return (optax.apply_updates(theta, updates), state), None

        if mode == "mixed":
            step = jax.checkpoint(step, policy=jax.checkpoint_policies.save_only_these_names(INNER_GRADIENT))
        carry = (theta0, optimizer.init(theta0))
        if truncate is not None and truncate < num_steps:
            split = num_steps - truncate
            head = jax.tree_util.tree_map(lambda b: b[:split], batches)
            batches = jax.tree_util.tree_map(lambda b: b[split:], batches)
            carry, _ = jax.lax.scan(step, carry, head)
            carry = jax.lax.stop_gradient(carry)
        (theta, _), _ = jax.lax.scan(step, carry, batches)
        return theta

    return run


def _check_batches(batches: Any, num_steps: int) -> None:
    leaves = jax.tree_util.tree_leaves_with_path(batches)
    if not leaves:
        raise ValueError("batches is empty: it must carry one batch per inner step on its leading axis")
    for path, leaf in leaves:
        shape = jnp.shape(leaf)
        if not shape or shape[0] != num_steps:
            raise ValueError(
                f"batches{jax.tree_util.keystr(path)} has shape {shape}: its leading axis must be "
                f"num_steps = {num_steps} (one batch per inner step)"
            )
