r"""Bounds and frozen coordinates of a residual function's parameters, as one box per problem.

``bounds=(lower, upper)`` and ``fixed=`` (a boolean pytree) of :func:`jaxnls.solve` become flat arrays
``lower, upper`` of shape ``(batch, n)`` in ``ravel_pytree``'s order; a frozen coordinate is a box of width 0
at its starting value. The loop then solves the bound-constrained problem (:class:`jaxnls._loop.LoopProblem`'s
``box``): projected trial points, the model restricted to the coordinates not held at a bound, KKT tests.
"""

from __future__ import annotations

import warnings

import equinox as eqx
import jax
import jax.core
import jax.numpy as jnp
import numpy as np

from ._problem import one_problem


def _side(side, params0, batched: bool, batch: int, fill: float, what: str):
    """One side of the box as ``(batch, n)``: None / a scalar / a pytree like params0 (each leaf shaped like
    one problem's leaf, or with the batch axis in front)."""
    template = one_problem(params0, batched)
    dtype = jnp.result_type(*jax.tree_util.tree_leaves(template))  # ravel_pytree's
    if side is None:
        side = fill
    if isinstance(side, (bool, int, float, np.number)) or (eqx.is_array(side) and jnp.ndim(side) == 0):
        value = side
        side = jax.tree_util.tree_map(lambda leaf: jnp.full(leaf.shape, value), template)
    try:  # (params0's structure as the prefix: a list of numbers stands for an array leaf)
        pairs = jax.tree_util.tree_map(lambda leaf, bound: (bound, leaf), template, side)
    except ValueError as err:
        raise ValueError(f"{what} must be None, a number, or a pytree with the structure of params0: {err}") from None
    rows = []
    for path, (bound, leaf) in jax.tree_util.tree_flatten_with_path(
        pairs, is_leaf=lambda p: isinstance(p, tuple) and len(p) == 2
    )[0]:
        bound = jnp.asarray(bound)
        if (what != "fixed" and not jnp.issubdtype(bound.dtype, jnp.number)) or jnp.iscomplexobj(bound):
            raise TypeError(f"{what}{jax.tree_util.keystr(path)} must be real numbers, got dtype {bound.dtype}")
        shape = tuple(leaf.shape)
        if bound.shape in ((), shape):
            bound = jnp.broadcast_to(bound, (batch,) + shape)
        elif batched and bound.shape == (batch,) + shape:
            pass
        else:
            per_problem = f"{shape} or {(batch,) + shape}" if batched else f"{shape}"
            raise ValueError(
                f"{what}{jax.tree_util.keystr(path)} has shape {bound.shape}; expected a scalar, "
                f"{per_problem} (the parameter's shape)"
            )
        rows.append(jnp.reshape(bound, (batch, -1)))
    flat = jnp.concatenate(rows, axis=1)
    return flat if what == "fixed" else flat.astype(dtype)


def frozen_mask(fixed, params, batched: bool, batch: int):
    """``fixed`` (True / False, or a boolean pytree like ``params``, per problem or shared) as a ``(batch, n)``
    mask in ``ravel_pytree``'s order."""
    frozen = _side(fixed, params, batched, batch, False, "fixed")
    if frozen.dtype != jnp.bool_:
        raise TypeError(f"fixed must be booleans (True: frozen at its start), got dtype {frozen.dtype}")
    return frozen


def box(bounds, fixed, params0, x0, batched: bool):
    """``(lower, upper)`` of shape ``(batch, n)`` for the flat starts ``x0`` (batch, n), and ``x0`` projected
    into the box. A frozen coordinate gets ``lower = upper = x0``. Errors name the offending leaf."""
    batch = x0.shape[0]
    if bounds is None:
        lower = jnp.full(x0.shape, -jnp.inf, x0.dtype)
        upper = jnp.full(x0.shape, jnp.inf, x0.dtype)
    else:
        if not (isinstance(bounds, (tuple, list)) and len(bounds) == 2):
            raise ValueError("bounds must be a pair (lower, upper) of None, numbers or pytrees like params0")
        lower = _side(bounds[0], params0, batched, batch, -np.inf, "bounds[0] (lower)")
        upper = _side(bounds[1], params0, batched, batch, np.inf, "bounds[1] (upper)")
    if fixed is not None:
        frozen = frozen_mask(fixed, params0, batched, batch)
        lower = jnp.where(frozen, x0, lower)
        upper = jnp.where(frozen, x0, upper)
    _check(lower, upper, x0)
    # a box that _check cannot refuse (traced, inside a caller's jit or vmap) and that holds no point — a NaN
    # bound, lower > upper, lower == upper == ±inf — makes its problem's start NaN: NONFINITE_START, never a
    # "converged" point outside the box
    empty = jnp.isnan(lower) | jnp.isnan(upper) | (lower > upper) | (jnp.isinf(lower) & (lower == upper))
    start = jnp.where(x0 < lower, lower, jnp.where(x0 > upper, upper, x0))
    return lower, upper, jnp.where(jnp.any(empty, axis=1, keepdims=True), jnp.nan, start)


def _check(lower, upper, x0):
    """Concrete boxes are checked here (inside a caller's jit they cannot be)."""
    if any(isinstance(a, jax.core.Tracer) for a in (lower, upper, x0)):
        return
    lower, upper, x0 = np.asarray(lower), np.asarray(upper), np.asarray(x0)
    if np.isnan(lower).any() or np.isnan(upper).any():
        raise ValueError("bounds contain NaN (use -inf / inf for a side without a bound)")
    crossed = lower > upper
    if crossed.any():
        problem, coordinate = np.argwhere(crossed)[0]
        raise ValueError(
            f"bounds: lower > upper at coordinate {coordinate} (ravelled params order) of problem "
            f"{problem}: {lower[problem, coordinate]:g} > {upper[problem, coordinate]:g}"
        )
    if np.isinf(lower[lower == upper]).any():
        raise ValueError("bounds: a coordinate has lower == upper == ±inf")
    outside = (x0 < lower) | (x0 > upper)
    if outside.any():
        problem, coordinate = np.argwhere(outside)[0]
        warnings.warn(
            f"params0 is outside the bounds at {int(outside.sum())} coordinate(s) (first: coordinate "
            f"{coordinate} of problem {problem}, {x0[problem, coordinate]:g} not in "
            f"[{lower[problem, coordinate]:g}, {upper[problem, coordinate]:g}]); the solve starts from "
            "its projection onto the box",
            stacklevel=4,
        )


def pin_to_box(x, lower, upper):
    """``x`` with the coordinates at or beyond a bound replaced by that bound: the map through which the
    adjoints see a bounded solution (derivatives flow to the bound, not to x, where it holds)."""
    return jnp.where(x <= lower, lower, jnp.where(x >= upper, upper, x))
