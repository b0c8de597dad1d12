"""What the integrators share: pytree arithmetic, the step size of a step count, the grad_fn check."""

from __future__ import annotations

from typing import cast

import jax
import optax

ScalarOrSchedule = float | jax.Array | optax.Schedule


def step_size(learning_rate: ScalarOrSchedule, count: jax.Array) -> jax.Array | float:
    """The learning rate at step ``count``: the number itself, or the schedule's value."""
    # (optax types a schedule's value as chex.Numeric, any array-like)
    return cast(jax.Array, learning_rate(count)) if callable(learning_rate) else learning_rate


def axpy(a, x, y):
    """a·x + y over pytrees."""
    return jax.tree_util.tree_map(lambda xi, yi: a * xi + yi, x, y)


def scaled_sum(coefficients, trees):
    """Σ c_i · tree_i over pytrees."""
    return jax.tree_util.tree_map(lambda *leaves: sum(c * leaf for c, leaf in zip(coefficients, leaves)), *trees)


def require_grad_fn(name: str, grad_fn, params) -> None:
    """Raise a ValueError saying how to call ``name``'s update when ``grad_fn`` or ``params`` is missing."""
    if grad_fn is None:
        raise ValueError(
            f"{name}.update needs grad_fn=f (f(params) -> gradient on the same minibatch): "
            "call update(grads, state, params, grad_fn=f)"
        )
    if params is None:
        raise ValueError(f"{name}.update needs params (the stages evaluate the gradient at shifted parameters)")
