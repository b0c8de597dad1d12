"""Elementary functions made safe for differentiation at the points the solve loop reaches."""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
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
        pieces.append(vector[start : start + size])
        start += size
    return pieces


def finite_derivatives(fn: Callable) -> Callable:
    """``fn(x, args)`` of one problem, with zero derivatives (w.r.t. ``x``, ``args`` and whatever ``fn`` closes
    over) wherever its value is not finite.

    Evaluated where the residual overflows (a long trial step on ``exp``), ``fn``'s derivative has
    infinite partials; the value is discarded, but a reverse pass still pulls a zero cotangent back
    through it and ``0 · ∞ = NaN`` reaches ``args``, summed into the arguments every problem shares. A
    ``where`` on the value cannot stop that; masking the input tangents can: transposed, the mask comes
    after the pull-back and discards its NaN."""

    def guarded(x, args):
        # closed-over arrays (tracers of an enclosing jit / grad) become explicit inputs of the rule
        converted, constants = jax.closure_convert(fn, x, args)
        return _finite_call(converted, x, args, tuple(constants))

    return guarded


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _finite_call(fn, x, args, constants):
    return fn(x, args, *constants)


@_finite_call.defjvp
def _finite_call_jvp(fn, primals, tangents):
    inputs = primals
    # only floating leaves have tangents (integer ones have float0 placeholders)
    floating = jax.tree_util.tree_map(lambda a: jnp.issubdtype(jnp.result_type(a), jnp.inexact), inputs)
    floats = jax.tree_util.tree_map(lambda f, a: a if f else None, floating, inputs)

    def of_floats(floats):
        x, args, constants = jax.tree_util.tree_map(
            lambda f, a, b: b if f else a, floating, inputs, floats, is_leaf=lambda a: a is None
        )
        return fn(x, args, *constants)

    out, linear = jax.linearize(of_floats, floats)
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree_util.tree_leaves(out)]))
    floats_dot = jax.tree_util.tree_map(lambda f, d: jnp.where(finite, d, 0.0) if f else None, floating, tangents)
    return out, linear(floats_dot)
