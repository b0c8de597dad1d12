r"""``eigh`` and ``svd`` whose derivatives stay finite at repeated eigen/singular values.

JAX's own rules divide by eigenvalue gaps (masking only the diagonal), so an exact tie gives inf/NaN.
Here the eigenvector terms :math:`1/(λ_j - λ_i)` of a (numerically) tied pair are set to 0. Values,
eigen/singular-value derivatives and the derivative of every quantity that is invariant under
rotations inside an eigenspace are exact: symmetric functions of a tied group's values (their sum,
Σλ², ...) and projectors onto whole tied groups. Quantities that split a tied group need the
perturbation's own eigenvectors inside it and are NOT exact at a tie — in particular a spectral
function U f(Λ) Uᵀ built from these factors misses its f′ terms there: use
:func:`jaxnls.linalg.matrix_function` (and ``logm_spd`` etc.), exact by construction.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ._spectral import _check_square, _symmetrize


def _inverse_gaps(values, tolerance):
    """``1/(v_j - v_i)`` off the diagonal, 0 where ``|v_j - v_i| <= tolerance · max|v|`` (ties)."""
    gaps = values[..., None, :] - values[..., :, None]
    scale = jnp.max(jnp.abs(values), axis=-1, keepdims=True)[..., None]
    tied = jnp.abs(gaps) <= tolerance * scale
    return jnp.where(tied, 0.0, 1.0 / jnp.where(tied, 1.0, gaps))


def eigh(
    a: Float[Array, "... n n"], tie_tolerance: float | None = None
) -> tuple[Float[Array, "... n"], Float[Array, "... n n"]]:
    r"""Eigenvalues (ascending) and eigenvectors of a symmetric matrix, with a derivative finite at ties.

    :math:`\dot λ_i = u_i^\top \dot A u_i`, :math:`\dot U = U (K \circ U^\top \dot A U)` with
    :math:`K_{ij} = 1/(λ_j - λ_i)` for :math:`|λ_j - λ_i| >` ``tie_tolerance``·max|λ| (default √eps) and 0
    otherwise.

    Args:
        a: ``(..., n, n)`` symmetric floating matrices (only the symmetric part is used).
        tie_tolerance: eigenvalues closer than this times max|λ| count as tied; None (default): √ε of
            ``a``'s dtype.

    Returns:
        ``(eigenvalues, eigenvectors)``: ``(..., n)`` ascending and ``(..., n, n)`` with the eigenvectors as
        columns, as :func:`jax.numpy.linalg.eigh`.
    """
    a = jnp.asarray(a)
    _check_square(a)
    tolerance = float(np.sqrt(jnp.finfo(a.dtype).eps)) if tie_tolerance is None else tie_tolerance

    @jax.custom_jvp
    def decompose(a):
        return jnp.linalg.eigh(_symmetrize(a))

    @decompose.defjvp
    def decompose_jvp(primals, tangents):
        (a,), (a_dot,) = primals, tangents
        eigenvalues, vectors = jnp.linalg.eigh(_symmetrize(a))
        rotated = jnp.swapaxes(vectors, -1, -2) @ _symmetrize(a_dot) @ vectors
        values_dot = jnp.diagonal(rotated, axis1=-2, axis2=-1)
        vectors_dot = vectors @ (_inverse_gaps(eigenvalues, tolerance) * rotated)
        return (eigenvalues, vectors), (values_dot, vectors_dot)

    return decompose(a)


def svd(
    a: Float[Array, "... m n"], tie_tolerance: float | None = None
) -> tuple[Float[Array, "... m k"], Float[Array, "... k"], Float[Array, "... k n"]]:
    r"""Thin SVD ``a = U diag(s) Vᵀ`` (s descending) with a derivative finite at repeated and zero singular values.

    With :math:`P = U^\top \dot A V`, :math:`\dot s = \mathrm{diag}(P)`, and (m ≥ n; the transpose otherwise)

    .. math::  \dot U = U\big(F \circ (P S + S P^\top)\big) + (I - UU^\top)\dot A V S^{+},\qquad
               \dot V = V\big(F \circ (S P + P^\top S)\big) + (I - VV^\top)\dot A^\top U S^{+},

    :math:`F_{ij} = 1/(s_j^2 - s_i^2)` and :math:`S^{+}` the pseudo-inverse (0 for a zero singular value).
    Written as :math:`F\circ(PS + SP^\top) = G\circ\mathrm{sym}(P) + H\circ\mathrm{skew}(P)` with
    :math:`G_{ij} = 1/(s_j - s_i)`, :math:`H_{ij} = 1/(s_i + s_j)`, only G is singular at a tie and only it is
    set to 0 there: the rotation part stays exact, so e.g. the polar factor :math:`UV^\top` is differentiated
    exactly even at repeated singular values.

    Args:
        a: ``(..., m, n)`` floating matrices.
        tie_tolerance: singular values closer than this times max s count as tied, and those at most this
            times max s as zero; None (default): √ε of ``a``'s dtype.

    Returns:
        ``(u, s, vt)``: ``(..., m, k)``, ``(..., k)`` descending and ``(..., k, n)``, k = min(m, n), as
        ``jax.numpy.linalg.svd(a, full_matrices=False)``.
    """
    a = jnp.asarray(a)
    if a.ndim < 2 or not jnp.issubdtype(a.dtype, jnp.floating):
        raise ValueError(f"expected a (batch of) floating matrices, got shape {a.shape} and dtype {a.dtype}")
    if a.shape[-2] < a.shape[-1]:
        u, s, vt = svd(jnp.swapaxes(a, -1, -2), tie_tolerance)
        return jnp.swapaxes(vt, -1, -2), s, jnp.swapaxes(u, -1, -2)
    tolerance = float(np.sqrt(jnp.finfo(a.dtype).eps)) if tie_tolerance is None else tie_tolerance

    @jax.custom_jvp
    def decompose(a: Array) -> tuple[Array, Array, Array]:
        return jnp.linalg.svd(a, full_matrices=False, compute_uv=True)

    @decompose.defjvp
    def decompose_jvp(primals, tangents) -> tuple[tuple[Array, Array, Array], tuple[Array, Array, Array]]:
        (a,), (a_dot,) = primals, tangents
        u, s, vt = jnp.linalg.svd(a, full_matrices=False)
        v = jnp.swapaxes(vt, -1, -2)
        p = jnp.swapaxes(u, -1, -2) @ a_dot @ v
        s_dot = jnp.diagonal(p, axis1=-2, axis2=-1)
        pt = jnp.swapaxes(p, -1, -2)
        # F∘(PS + SPᵀ) = G∘sym(P) + H∘skew(P), G_ij = 1/(s_j - s_i), H_ij = 1/(s_i + s_j): only G is singular
        # at a tie, so only the symmetric part is dropped there and the rotation part stays exact
        gaps = _inverse_gaps(s, tolerance)
        sums = s[..., :, None] + s[..., None, :]
        off_diagonal = ~jnp.eye(s.shape[-1], dtype=bool)
        inverse_sums = jnp.where(off_diagonal & (sums > 0), 1.0 / jnp.where(sums > 0, sums, 1.0), 0.0)
        symmetric, skew = 0.5 * (p + pt), 0.5 * (p - pt)
        inv_s = jnp.where(s > tolerance * jnp.max(s, axis=-1, keepdims=True), 1.0 / jnp.where(s > 0, s, 1.0), 0.0)
        u_dot = u @ (gaps * symmetric + inverse_sums * skew)
        u_dot = u_dot + (a_dot @ v - u @ p) * inv_s[..., None, :]
        v_dot = v @ (gaps * symmetric - inverse_sums * skew)
        a_dot_t_u = jnp.swapaxes(a_dot, -1, -2) @ u
        v_dot = v_dot + (a_dot_t_u - v @ pt) * inv_s[..., None, :]
        return (u, s, vt), (u_dot, s_dot, jnp.swapaxes(v_dot, -1, -2))

    return decompose(a)
