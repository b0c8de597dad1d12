"""Elementary functions made safe for differentiation at the points the solve loop reaches."""

from __future__ import annotations

import jax.numpy as jnp


def safe_sqrt(s):
    """√s with a zero derivative at s = 0."""
    # the derivative of √s at s = 0 is infinite; a zero (a finished problem's step, a vanished gradient,
    # an undamped Gauss-Newton system) must give a zero derivative, or an unrolled backward pass turns
    # 0·∞ into NaN
    return jnp.where(s > 0, jnp.sqrt(jnp.where(s > 0, s, 1.0)), 0.0)


def norm(v):
    """‖v‖₂, differentiable at 0 (see :func:`safe_sqrt`)."""
    return safe_sqrt(jnp.sum(v * v))


def split_by_sizes(vector, sizes):
    """Consecutive pieces of ``vector`` of the given lengths."""
    pieces, start = [], 0
    for size in sizes:
        pieces.append(vector[start:start + size])
        start += size
    return pieces
