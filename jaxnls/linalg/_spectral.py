r"""Symmetric matrix functions :math:`F(A) = U f(Λ) U^\top` with derivatives that stay exact at repeated
eigenvalues (Daleckii–Krein).

For symmetric :math:`A = U \mathrm{diag}(λ) U^\top` and a symmetric perturbation :math:`\dot A`,

.. math::  \dot F = U \big(L \circ (U^\top \dot A U)\big) U^\top,\qquad
           L_{ij} = \frac{f(λ_i) - f(λ_j)}{λ_i - λ_j}\ (λ_i \ne λ_j),\quad L_{ii} = f'(λ_i),

the Loewner matrix of first divided differences. It equals the eigenvector-derivative formula of
matrix backpropagation (Ionescu et al., ICCV 2015) when the eigenvalues are distinct, and unlike it
never divides by an eigenvalue gap: the divided difference is continuous across ties, and each
function below evaluates it in a form without cancellation (``log1p``, ``expm1``), so derivatives are
exact at exact ties, at 1e-9 ties and everywhere between. The eigenvectors of a repeated eigenvalue
are not unique, but :math:`\dot F` does not depend on the choice.

The rule is a ``custom_jvp`` (forward mode); reverse mode is its transpose, so ``jax.grad``, ``jax.vjp``,
``jax.jacfwd`` and ``jax.hessian``-of-composites all work; ``jnp.linalg.eigh``'s own derivative (which
divides by gaps) is never used.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float


def _symmetrize(a):
    return 0.5 * (a + jnp.swapaxes(a, -1, -2))


def _expm1_ratio(x):
    """expm1(x)/x, 1 at x = 0."""
    safe = jnp.where(x == 0, 1.0, x)
    return jnp.where(x == 0, 1.0, jnp.expm1(safe) / safe)


def _log1p_ratio(x):
    """log1p(x)/x, 1 at x = 0."""
    safe = jnp.where(x == 0, 1.0, x)
    return jnp.where(x == 0, 1.0, jnp.log1p(safe) / safe)


class SpectralFunction:
    r"""A scalar function applied to the eigenvalues of a symmetric matrix, with its divided difference.

    ``F(a)`` is :func:`matrix_function` with :math:`f` = ``value`` and :math:`L` from ``divided_difference``;
    :data:`logm_spd`, :data:`expm_sym` and :data:`sqrtm_spd` are instances.

    Args:
        value: :math:`f`, applied elementwise to the ``(..., n)`` eigenvalues.
        divided_difference: ``divided_difference(λ_i, λ_j)``, broadcasting, giving
            :math:`(f(λ_i) - f(λ_j))/(λ_i - λ_j)` and :math:`f'(λ_i)` where :math:`λ_i = λ_j`, evaluated
            without cancellation near ties.
        name: the function's ``__name__``.
    """

    def __init__(self, value: Callable, divided_difference: Callable, name: str):
        self.value = value
        self.divided_difference = divided_difference
        self.__name__ = name

    def __call__(self, a: Float[Array, "... n n"]) -> Float[Array, "... n n"]:
        return _apply(self, a)


def _check_square(a):
    if a.ndim < 2 or a.shape[-1] != a.shape[-2]:
        raise ValueError(f"expected a (batch of) square symmetric matrices, got shape {a.shape}")
    if not jnp.issubdtype(a.dtype, jnp.floating):
        raise ValueError(f"expected a floating dtype, got {a.dtype}")


def _apply(fn: SpectralFunction, a):
    return matrix_function(a, lambda lam: (fn.value(lam), fn.divided_difference(lam[..., :, None], lam[..., None, :])))


def matrix_function(a: Float[Array, "... n n"], spectrum: Callable) -> Float[Array, "... n n"]:
    r"""``U diag(f) Uᵀ`` for ``a = U diag(λ) Uᵀ``, with ``(f, L) = spectrum(λ)`` giving the new eigenvalues and
    the Loewner matrix of divided differences :math:`L_{ij} = (f_i - f_j)/(λ_i - λ_j)` (``f'`` on ties)
    that defines the derivative :math:`\dot F = U (L \circ U^\top \dot A U) U^\top`.

    Args:
        a: ``(..., n, n)`` symmetric floating matrices (only the symmetric part is used).
        spectrum: ``spectrum(λ) -> (f, L)``: from the ``(..., n)`` ascending eigenvalues, the new
            eigenvalues ``(..., n)`` and the Loewner matrix ``(..., n, n)``.

    Returns:
        ``(..., n, n)``, :math:`F(A) = U\,\mathrm{diag}(f)\,U^\top`.

    Raises:
        ValueError: ``a`` is not a (batch of) square floating matrices.
    """
    a = jnp.asarray(a)
    _check_square(a)

    @jax.custom_jvp
    def apply(a):
        eigenvalues, vectors = jnp.linalg.eigh(_symmetrize(a))
        values, _ = spectrum(eigenvalues)
        return (vectors * values[..., None, :]) @ jnp.swapaxes(vectors, -1, -2)

    @apply.defjvp
    def apply_jvp(primals, tangents):
        (a,), (a_dot,) = primals, tangents
        eigenvalues, vectors = jnp.linalg.eigh(_symmetrize(a))
        vt = jnp.swapaxes(vectors, -1, -2)
        values, loewner = spectrum(eigenvalues)
        value = (vectors * values[..., None, :]) @ vt
        rotated = vt @ _symmetrize(a_dot) @ vectors
        return value, vectors @ (loewner * rotated) @ vt

    return apply(a)


def top_k_projector(a: Float[Array, "... n n"], k: int) -> Float[Array, "... n n"]:
    r"""The orthogonal projector :math:`U_k U_k^\top` onto the eigenvectors of the k largest eigenvalues.

    Its derivative divides only by the gaps between the top k eigenvalues and the rest,
    :math:`L_{ij} = 1/(λ_i - λ_j)` for i in the top k and j not (and symmetrically), 0 within either group:
    repeated eigenvalues inside the top k or inside the rest are harmless; the projector itself is not
    differentiable (nor continuous) when :math:`λ_{n-k} = λ_{n-k+1}`, and its derivative grows as the inverse
    of that gap.

    Args:
        a: ``(..., n, n)`` symmetric floating matrices.
        k: how many of the largest eigenvalues' eigenvectors span the projector, 1 to n.

    Returns:
        ``(..., n, n)``, the rank-k projector :math:`U_k U_k^\top`.
    """
    n = jnp.shape(a)[-1]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in 1..{n}, got {k}")

    def spectrum(lam):
        top = (jnp.arange(n) >= n - k).astype(lam.dtype)  # eigh sorts ascending
        values = jnp.broadcast_to(top, lam.shape)
        across = values[..., :, None] != values[..., None, :]
        gap = lam[..., :, None] - lam[..., None, :]
        difference = values[..., :, None] - values[..., None, :]
        loewner = jnp.where(across, difference / jnp.where(across, gap, 1.0), 0.0)
        return values, loewner

    return matrix_function(a, spectrum)


def _log_divided_difference(li, lj):
    # (log λi − log λj)/(λi − λj) = log1p(δ/λj)/δ, δ = λi − λj: no cancellation near a tie
    delta = li - lj
    return _log1p_ratio(delta / lj) / lj


def _exp_divided_difference(li, lj):
    return jnp.exp(lj) * _expm1_ratio(li - lj)


def _sqrt_divided_difference(li, lj):
    return 1.0 / (jnp.sqrt(li) + jnp.sqrt(lj))


logm_spd = SpectralFunction(jnp.log, _log_divided_difference, "logm_spd")
logm_spd.__doc__ = """Matrix logarithm of a symmetric positive-definite matrix (Daleckii–Krein derivative).

Args:
    a: ``(..., n, n)`` symmetric positive-definite floating matrices.

Returns:
    ``(..., n, n)``, ``U diag(log λ) Uᵀ``.
"""
expm_sym = SpectralFunction(jnp.exp, _exp_divided_difference, "expm_sym")
expm_sym.__doc__ = """Matrix exponential of a symmetric matrix (Daleckii–Krein derivative).

Args:
    a: ``(..., n, n)`` symmetric floating matrices.

Returns:
    ``(..., n, n)``, ``U diag(exp λ) Uᵀ``.
"""
sqrtm_spd = SpectralFunction(jnp.sqrt, _sqrt_divided_difference, "sqrtm_spd")
sqrtm_spd.__doc__ = """Principal square root of a symmetric positive-definite matrix (Daleckii–Krein derivative).

Args:
    a: ``(..., n, n)`` symmetric positive-definite floating matrices.

Returns:
    ``(..., n, n)``, ``U diag(√λ) Uᵀ``, symmetric positive definite.
"""


def powm_spd(a: Float[Array, "... n n"], power: float) -> Float[Array, "... n n"]:
    r"""``A^p`` for symmetric positive-definite A, real p, with the Daleckii–Krein derivative
    (divided difference :math:`λ_j^{p-1}\,\mathrm{expm1}(p\,\mathrm{log1p}(δ/λ_j))/(δ/λ_j)`).

    Args:
        a: ``(..., n, n)`` symmetric positive-definite floating matrices.
        power: the real exponent p.

    Returns:
        ``(..., n, n)``, :math:`U\,\mathrm{diag}(λ^p)\,U^\top`.
    """

    def divided_difference(li, lj):
        ratio = (li - lj) / lj
        log_ratio = jnp.log1p(ratio)
        return lj ** (power - 1.0) * _expm1_ratio(power * log_ratio) * power * _log1p_ratio(ratio)

    return SpectralFunction(lambda lam: lam**power, divided_difference, f"powm_spd({power})")(a)
