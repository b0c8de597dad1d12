r"""Matrix square root by coupled Newton–Schulz iterations (products only; iSQRT-COV, Li et al. CVPR 2018)."""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Float


def sqrtm_newton_schulz(a: Float[Array, "... n n"], num_iterations: int = 10) -> Float[Array, "... n n"]:
    r"""Approximate :math:`A^{1/2}` for symmetric positive-(semi)definite A with matrix products only.

    With :math:`\bar A = A / \mathrm{tr} A` (eigenvalues in (0, 1]), :math:`Y_0 = \bar A`, :math:`Z_0 = I`,

    .. math::  T_k = \tfrac12 (3I - Z_k Y_k),\quad Y_{k+1} = Y_k T_k,\quad Z_{k+1} = T_k Z_k,

    :math:`Y_k \to \bar A^{1/2}`, :math:`Z_k \to \bar A^{-1/2}`, and the result is :math:`\sqrt{\mathrm{tr} A}\, Y_N`.
    Convergence is quadratic once the eigenvalues of :math:`\bar A` are near 1 and slower for small
    ones: a badly conditioned A needs more iterations (compare with :func:`sqrtm_spd`, exact up to
    rounding). Differentiated by ordinary autodiff through the products — no eigendecomposition, so
    nothing divides by an eigenvalue gap; well suited to accelerators.

    Args:
        a: ``(..., n, n)`` symmetric positive-(semi)definite matrices with a positive trace.
        num_iterations: N, the number of iterations, >= 1 (default 10).

    Returns:
        ``(..., n, n)``, :math:`\sqrt{\mathrm{tr} A}\, Y_N`.
    """
    a = jnp.asarray(a)
    if a.ndim < 2 or a.shape[-1] != a.shape[-2]:
        raise ValueError(f"expected a (batch of) square matrices, got shape {a.shape}")
    if num_iterations < 1:
        raise ValueError(f"num_iterations must be >= 1, got {num_iterations}")
    n = a.shape[-1]
    eye = jnp.eye(n, dtype=a.dtype)
    trace = jnp.trace(a, axis1=-2, axis2=-1)[..., None, None]
    y, z = a / trace, jnp.broadcast_to(eye, a.shape)
    for _ in range(num_iterations):
        t = 0.5 * (3.0 * eye - z @ y)
        y, z = y @ t, t @ z
    return jnp.sqrt(trace) * y
