r"""Gradient-flow integrators as optax transformations.

Training follows the gradient flow :math:`θ' = -∇L(θ)`; plain SGD is its forward-Euler discretisation
with step h (the learning rate). Higher-order schemes take more accurate steps at the price of extra
gradient evaluations (Runge–Kutta, on the same minibatch through ``grad_fn``), memory of past gradients
(Adams–Bashforth) or a Hessian-vector product (Taylor-2, from ``jax.jvp`` of ``grad_fn``).

Multi-stage transformations are ``optax.GradientTransformationExtraArgs`` and are called as
``update(grads, state, params, grad_fn=f)`` with ``f(params) -> grads`` on the current minibatch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, cast

import jax
import jax.numpy as jnp
import optax
from jaxtyping import PyTree

from ._trees import ScalarOrSchedule, axpy, require_grad_fn, scaled_sum, step_size


def euler(learning_rate: ScalarOrSchedule) -> optax.GradientTransformation:
    r"""Forward Euler, :math:`θ_{n+1} = θ_n - h\,g_n`: exactly ``optax.sgd(learning_rate)`` (the same transformation).

    Args:
        learning_rate: the step h: a number, or an optax schedule ``count -> h`` of the step count.

    Returns:
        An ``optax.GradientTransformation`` whose updates are :math:`-h\,g_n`.
    """
    return optax.scale_by_learning_rate(learning_rate)


class _StepState(NamedTuple):
    count: jax.Array  # pyright: ignore[reportIncompatibleMethodOverride]  # shadows tuple.count, as in optax's states


def _runge_kutta(name: str, stages: Callable, learning_rate: ScalarOrSchedule) -> optax.GradientTransformationExtraArgs:
    def init(params):
        return _StepState(jnp.zeros((), jnp.int32))

    def update(updates, state, params=None, *, grad_fn: Callable[[PyTree], PyTree] | None = None, **extra):
        require_grad_fn(name, grad_fn, params)
        h = step_size(learning_rate, state.count)
        direction = stages(updates, params, grad_fn, h)
        updates = jax.tree_util.tree_map(lambda d: -h * d, direction)
        return updates, _StepState(cast(jax.Array, optax.safe_increment(state.count)))

    return optax.GradientTransformationExtraArgs(init, update)


def heun(learning_rate: ScalarOrSchedule) -> optax.GradientTransformationExtraArgs:
    r"""Heun's method (explicit trapezoid, order 2): :math:`k_2 = g(θ - h k_1)`, step :math:`-\tfrac h2 (k_1 + k_2)`.

    Args:
        learning_rate: the step h: a number, or an optax schedule ``count -> h`` of the step count.

    Returns:
        An ``optax.GradientTransformationExtraArgs`` called as ``update(grads, state, params, grad_fn=f)``,
        ``f(params) -> grads`` on the current minibatch; its updates are to be applied with
        ``optax.apply_updates``.
    """

    def stages(k1, params, grad_fn, h):
        k2 = grad_fn(axpy(-h, k1, params))
        return scaled_sum((0.5, 0.5), (k1, k2))

    return _runge_kutta("heun", stages, learning_rate)


def midpoint(learning_rate: ScalarOrSchedule) -> optax.GradientTransformationExtraArgs:
    r"""Explicit midpoint (order 2): step :math:`-h\, g(θ - \tfrac h2 k_1)`.

    Args:
        learning_rate: the step h: a number, or an optax schedule ``count -> h`` of the step count.

    Returns:
        An ``optax.GradientTransformationExtraArgs`` called as ``update(grads, state, params, grad_fn=f)``,
        ``f(params) -> grads`` on the current minibatch; its updates are to be applied with
        ``optax.apply_updates``.
    """

    def stages(k1, params, grad_fn, h):
        return grad_fn(axpy(-0.5 * h, k1, params))

    return _runge_kutta("midpoint", stages, learning_rate)


def rk4(learning_rate: ScalarOrSchedule) -> optax.GradientTransformationExtraArgs:
    r"""Classical Runge–Kutta (order 4): four gradient evaluations per step, weights (1, 2, 2, 1)/6.

    Args:
        learning_rate: the step h: a number, or an optax schedule ``count -> h`` of the step count.

    Returns:
        An ``optax.GradientTransformationExtraArgs`` called as ``update(grads, state, params, grad_fn=f)``,
        ``f(params) -> grads`` on the current minibatch; its updates are to be applied with
        ``optax.apply_updates``.
    """

    def stages(k1, params, grad_fn, h):
        k2 = grad_fn(axpy(-0.5 * h, k1, params))
        k3 = grad_fn(axpy(-0.5 * h, k2, params))
        k4 = grad_fn(axpy(-h, k3, params))
        return scaled_sum((1 / 6, 1 / 3, 1 / 3, 1 / 6), (k1, k2, k3, k4))

    return _runge_kutta("rk4", stages, learning_rate)


def taylor2(learning_rate: ScalarOrSchedule) -> optax.GradientTransformationExtraArgs:
    r"""Second-order Taylor step of the flow: :math:`θ - h g + \tfrac{h^2}{2} H g`, with :math:`Hg` one
    forward-over-reverse product ``jax.jvp(grad_fn, (θ,), (g,))`` (no Hessian is formed).

    Args:
        learning_rate: the step h: a number, or an optax schedule ``count -> h`` of the step count.

    Returns:
        An ``optax.GradientTransformationExtraArgs`` called as ``update(grads, state, params, grad_fn=f)``,
        ``f(params) -> grads`` on the current minibatch; its updates are to be applied with
        ``optax.apply_updates``.
    """

    def stages(g, params, grad_fn, h):
        hessian_g = jax.jvp(grad_fn, (params,), (g,))[1]
        return axpy(-0.5 * h, hessian_g, g)

    return _runge_kutta("taylor2", stages, learning_rate)


class _MultistepState(NamedTuple):
    count: jax.Array  # pyright: ignore[reportIncompatibleMethodOverride]  # shadows tuple.count, as in optax's states
    history: tuple  # past gradients, newest first


#: Adams–Bashforth coefficients by order, newest gradient first, and the lower orders used to start.
_ADAMS_BASHFORTH = {1: (1.0,), 2: (1.5, -0.5), 3: (23 / 12, -16 / 12, 5 / 12)}


def adams_bashforth(learning_rate: ScalarOrSchedule, order: int = 2) -> optax.GradientTransformation:
    r"""Adams–Bashforth multistep method of order 2 or 3: :math:`θ_{n+1} = θ_n - h \sum_j b_j g_{n-j}`
    (:math:`b = (3/2, -1/2)` or :math:`(23, -16, 5)/12`), one gradient per step; the first steps use the
    lower orders (Euler, then AB2), which keeps the global error of AB3 at O(h²) (its local error from an
    exact history is O(h⁴)). Past gradients are kept in the state. A constant step is assumed (with a
    schedule the coefficients are those of the current step).

    Args:
        learning_rate: the step h: a number, or an optax schedule ``count -> h`` of the step count.
        order: 2 (default) or 3.

    Returns:
        An ``optax.GradientTransformation`` (no ``grad_fn`` needed) whose state holds the last
        ``order - 1`` gradients.

    Raises:
        ValueError: ``order`` is not 2 or 3.
    """
    if order not in (2, 3):
        raise ValueError(f"order must be 2 or 3, got {order!r}")

    def init(params):
        zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
        return _MultistepState(jnp.zeros((), jnp.int32), tuple(zeros for _ in range(order - 1)))

    def update(updates, state, params=None):
        h = step_size(learning_rate, state.count)
        gradients = (updates,) + state.history
        available = jnp.minimum(state.count + 1, order)  # how many gradients this step may use

        def step_with(k):
            return scaled_sum(_ADAMS_BASHFORTH[k], gradients[:k])

        direction = step_with(1)
        for k in range(2, order + 1):
            direction = jax.tree_util.tree_map(
                lambda new, old, k=k: jnp.where(available >= k, new, old), step_with(k), direction
            )
        updates = jax.tree_util.tree_map(lambda d: -h * d, direction)
        return updates, _MultistepState(cast(jax.Array, optax.safe_increment(state.count)), gradients[: order - 1])

    return optax.GradientTransformation(init, update)
