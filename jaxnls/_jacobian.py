"""Residual and Jacobian of one problem from one pass of forward- or reverse-mode autodiff."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float


def flat_residual_fn(residual_fn: Callable, unravel: Callable, dtype) -> Callable:
    """``x_flat, args -> r_flat`` in the working dtype, for a residual returning any pytree."""

    def fn(x: Float[Array, " n"], args) -> Float[Array, " m"]:
        out = residual_fn(unravel(x), args)
        leaves = jax.tree_util.tree_leaves(out)
        return jnp.concatenate([jnp.ravel(leaf).astype(dtype) for leaf in leaves])

    return fn


def residual_and_jacobian(
    fn: Callable, x: Float[Array, " n"], args, num_residuals: int
) -> tuple[Float[Array, " m"], Float[Array, "m n"]]:
    """Evaluate ``r(x)`` and ``J(x)`` together: the residual is the primal of the same autodiff pass.

    Forward mode (``jacfwd``: n tangents) when ``m >= n``, reverse mode (``jacrev``: m cotangents)
    when there are fewer residuals than parameters.
    """

    def with_aux(z):
        r = fn(z, args)
        return r, r

    mode = jax.jacfwd if num_residuals >= x.shape[0] else jax.jacrev
    jacobian, residual = mode(with_aux, has_aux=True)(x)
    return residual, jacobian
