r"""Adaptive-step gradient flow: an embedded Runge–Kutta pair whose error estimate sets the learning rate.

Each update attempts one step of :math:`θ' = -∇L(θ)` with the current step h and, from the same stages, a
lower-order solution; their difference estimates the local error. With the scaled norm of scipy's
``solve_ivp`` (Hairer, Nørsett & Wanner, II.4),

.. math::  \mathrm{err} = \sqrt{\tfrac1N \sum_i \Big(\frac{e_i}{\mathrm{atol} + \mathrm{rtol}\,\max(|θ_i|, |θ^{new}_i|)}\Big)^2},

the step is taken when err < 1 (else the update is zero and the parameters stay), and the next step is
:math:`h \cdot \min(10, \max(0.2,\ 0.9\,\mathrm{err}^{-1/(q+1)}))` with q the order of the error estimate
(no growth right after a rejection): scipy's ``RK23`` controller, so that the learning rate is the largest
step whose local error stays within the tolerance.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple, cast

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import PyTree

from ._trees import axpy, require_grad_fn, scaled_sum

#: scipy's controller constants (scipy/integrate/_ivp/rk.py): safety factor and the bounds of one change of h.
_SAFETY, _MIN_FACTOR, _MAX_FACTOR = 0.9, 0.2, 10.0


class AdaptiveState(NamedTuple):
    """The state of :func:`bogacki_shampine` and :func:`heun_euler`.

    Attributes:
        count: attempted steps so far.
        step_size: the step h the next attempt takes (the learning rate the controller chose).
        flow_time: the sum of the accepted steps: how far along the gradient flow the parameters are.
        error: the last attempt's scaled error estimate (< 1: it was taken).
        accepted: whether the last attempt was taken.
        rejections: attempts rejected so far.
    """

    count: jax.Array  # pyright: ignore[reportIncompatibleMethodOverride]  # shadows tuple.count, as in optax's states
    step_size: jax.Array
    flow_time: jax.Array
    error: jax.Array
    accepted: jax.Array
    rejections: jax.Array


def _bogacki_shampine_stages(k1, params, grad_fn, h):
    k2 = grad_fn(axpy(-0.5 * h, k1, params))
    k3 = grad_fn(axpy(-0.75 * h, k2, params))
    direction = scaled_sum((2 / 9, 1 / 3, 4 / 9), (k1, k2, k3))
    k4 = grad_fn(axpy(-h, direction, params))  # at the new point (first same as last on a fixed objective)
    difference = scaled_sum((5 / 72, -1 / 12, -1 / 9, 1 / 8), (k1, k2, k3, k4))
    return direction, difference


def _heun_euler_stages(k1, params, grad_fn, h):
    k2 = grad_fn(axpy(-h, k1, params))
    return scaled_sum((0.5, 0.5), (k1, k2)), scaled_sum((0.5, -0.5), (k2, k1))


def _scaled_error(difference, params, new_params, h, rtol, atol):
    squares, size = [], 0
    for e, old, new in zip(*(jax.tree_util.tree_leaves(t) for t in (difference, params, new_params))):
        scale = atol + rtol * jnp.maximum(jnp.abs(old), jnp.abs(new))
        squares.append(jnp.sum((h * e / scale) ** 2))
        size += int(np.size(e))
    return jnp.sqrt(sum(squares) / max(size, 1))


def _adaptive(
    name: str, stages: Callable, error_order: int, initial_step: float, rtol: float, atol: float, max_step: float
) -> optax.GradientTransformationExtraArgs:
    for option, value, strict in (("initial_step", initial_step, True), ("rtol", rtol, False), ("atol", atol, False)):
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0 or (strict and value == 0):
            raise ValueError(f"{name}: {option} must be a finite number {'>' if strict else '>='} 0, got {value!r}")
    if rtol == 0 and atol == 0:
        raise ValueError(f"{name}: rtol and atol cannot both be 0")
    if not isinstance(max_step, (int, float)) or not max_step > 0:
        raise ValueError(f"{name}: max_step must be > 0, got {max_step!r}")
    exponent = -1.0 / (error_order + 1)

    def init(params):
        leaves = jax.tree_util.tree_leaves(params)
        dtype = jnp.result_type(*leaves) if leaves else jnp.float32
        zero = jnp.zeros((), dtype)
        first = jnp.asarray(min(initial_step, max_step), dtype)
        return AdaptiveState(jnp.zeros((), jnp.int32), first, zero, zero, jnp.asarray(True), jnp.zeros((), jnp.int32))

    def update(updates, state, params=None, *, grad_fn: Callable[[PyTree], PyTree] | None = None, **extra):
        require_grad_fn(name, grad_fn, params)
        h = state.step_size
        direction, difference = stages(updates, params, grad_fn, h)
        step = jax.tree_util.tree_map(lambda d: -h * d, direction)
        new_params = optax.apply_updates(cast(PyTree, params), step)  # (checked above)
        error = _scaled_error(difference, params, new_params, h, rtol, atol)
        accept = error < 1  # (False for a NaN error)
        proposed = _SAFETY * error ** jnp.asarray(exponent, error.dtype)
        grow = jnp.where(error == 0, _MAX_FACTOR, jnp.minimum(_MAX_FACTOR, proposed))
        grow = jnp.where(state.accepted, grow, jnp.minimum(1.0, grow))  # no growth right after a rejection
        shrink = jnp.where(jnp.isfinite(error), jnp.maximum(_MIN_FACTOR, proposed), _MIN_FACTOR)
        next_h = jnp.minimum(h * jnp.where(accept, grow, shrink), max_step).astype(h.dtype)
        updates = jax.tree_util.tree_map(lambda s: jnp.where(accept, s, jnp.zeros_like(s)), step)
        return updates, AdaptiveState(
            cast(jax.Array, optax.safe_increment(state.count)),
            next_h,
            state.flow_time + jnp.where(accept, h, 0.0).astype(h.dtype),
            error.astype(h.dtype),
            accept,
            state.rejections + (~accept).astype(jnp.int32),
        )

    return optax.GradientTransformationExtraArgs(init, update)


def bogacki_shampine(
    initial_step: float, rtol: float = 1e-3, atol: float = 1e-6, max_step: float = math.inf
) -> optax.GradientTransformationExtraArgs:
    r"""Bogacki–Shampine 3(2) with an adaptive step (scipy's ``RK23``): the learning rate is the largest step
    whose local error estimate stays within ``rtol``/``atol`` (module docstring). Four gradient evaluations per
    attempt on the same minibatch (:math:`k_1` is the incoming gradient; :math:`k_4`, at the new point, only
    serves the error estimate); the step taken is the third-order one.

    Args:
        initial_step: the first attempt's step h (> 0).
        rtol: relative tolerance of the local error (>= 0, default scipy's 1e-3).
        atol: absolute tolerance of the local error (>= 0, default scipy's 1e-6); not both 0.
        max_step: the largest step the controller may choose (default unbounded).

    Returns:
        An ``optax.GradientTransformationExtraArgs`` called as ``update(grads, state, params, grad_fn=f)``,
        ``f(params) -> grads`` on the current minibatch; its state is an :class:`AdaptiveState` (the step
        chosen, the flow time reached, the last error estimate). A rejected attempt's update is zero.

    Raises:
        ValueError: an option out of range.
    """
    return _adaptive("bogacki_shampine", _bogacki_shampine_stages, 2, initial_step, rtol, atol, max_step)


def heun_euler(
    initial_step: float, rtol: float = 1e-3, atol: float = 1e-6, max_step: float = math.inf
) -> optax.GradientTransformationExtraArgs:
    r"""Heun–Euler 2(1) with an adaptive step: Heun's step (order 2), Euler's as the error estimate
    (:math:`e = \tfrac h2 (k_2 - k_1)`, order 1, so the step changes by :math:`0.9\,\mathrm{err}^{-1/2}`); two
    gradient evaluations per attempt. The controller and tolerances are those of :func:`bogacki_shampine`.

    Args:
        initial_step: the first attempt's step h (> 0).
        rtol: relative tolerance of the local error (>= 0, default 1e-3).
        atol: absolute tolerance of the local error (>= 0, default 1e-6); not both 0.
        max_step: the largest step the controller may choose (default unbounded).

    Returns:
        An ``optax.GradientTransformationExtraArgs`` called as ``update(grads, state, params, grad_fn=f)``;
        its state is an :class:`AdaptiveState`. A rejected attempt's update is zero.

    Raises:
        ValueError: an option out of range.
    """
    return _adaptive("heun_euler", _heun_euler_stages, 1, initial_step, rtol, atol, max_step)
