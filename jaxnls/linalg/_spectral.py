r"""Symmetric matrix functions :math:`F(A) = U f(Λ) U^\top` with first and second derivatives that stay exact at
repeated eigenvalues (Daleckii–Krein).

For symmetric :math:`A = U \mathrm{diag}(λ) U^\top` and a symmetric perturbation :math:`\dot A`,

.. math::  \dot F = U \big(L \circ (U^\top \dot A U)\big) U^\top,\qquad
           L_{ij} = f[λ_i, λ_j] = \frac{f(λ_i) - f(λ_j)}{λ_i - λ_j}\ (λ_i \ne λ_j),\quad L_{ii} = f'(λ_i),

the Loewner matrix of first divided differences. It equals the eigenvector-derivative formula of
matrix backpropagation (Ionescu et al., ICCV 2015) when the eigenvalues are distinct, and unlike it
never divides by an eigenvalue gap: the divided difference is continuous across ties, and each
function below evaluates it in a form without cancellation (``log1p``, ``expm1``), so first derivatives
are exact at exact ties, at 1e-9 ties and everywhere between. The eigenvectors of a repeated eigenvalue
are not unique, but :math:`\dot F` does not depend on the choice.

Second derivatives follow the second-order Daleckii–Krein rule, with :math:`\tilde E = U^\top E U`,
:math:`\tilde H = U^\top H U` and the second divided differences :math:`f[λ_i, λ_k, λ_j]`:

.. math::  D^2F(A)[E, H] = U \Big(\sum_k f[λ_i, λ_k, λ_j]\,
           \big(\tilde E_{ik} \tilde H_{kj} + \tilde H_{ik} \tilde E_{kj}\big)\Big)_{ij} U^\top .

Differentiating the first-order rule through ``jnp.linalg.eigh`` instead divides by the gaps (NaN at exact
ties, O(1) errors where rounding splits them), and even with the rotations inside a tied group masked it misses
the terms of the sum with k ≠ i inside the group (40–100 % errors at ties).
:math:`f[λ_i, λ_k, λ_j]` is a difference quotient of :math:`L` across the widest of the three pairs when that
gap exceeds :math:`τ = ε^{1/3}` times the local scale :math:`|L|/|\partial L|` (relative error about
:math:`ε/τ`, 4e-11 in float64), and otherwise the mean of :math:`\partial L/\partialλ` (forward-mode
derivatives of ``L``) at the two ends of the closest pair: exact at an exact tie, relative error about
:math:`τ^2` between. So second derivatives are exact to rounding at exact ties (the identity, a rotated
diag(1, 1, 2)), at 1e-9 ties and far from ties, and within about 1e-11 relative in between (measured against
60-digit arithmetic for gaps 1e-12 to 1e-2; the worst near 3e-5, where the quotient takes over). ``L`` (the
divided differences of the functions below) must have derivatives right at and near ties for this.

The first-order rule is a ``custom_jvp`` whose tangent is a small primitive, linear in :math:`\dot A`, with
the second-order rule as its JVP and itself as its transpose (it is self-adjoint). ``jax.grad``,
``jax.vjp``, ``jax.jacfwd``, ``jax.jvp`` of ``jax.grad`` (forward over reverse), ``jax.hessian`` and
``jax.jacrev`` of ``jax.grad`` (reverse over reverse) therefore all use these rules, and ``jnp.linalg.eigh``'s
own derivative is never used up to second order. Third and higher derivatives differentiate the
second-order rule through ``jnp.linalg.eigh``'s derivative: right where the eigenvalues are distinct (losing
accuracy as gaps shrink, about ε/gap), NaN at exactly repeated eigenvalues and wrong at numerically
repeated ones.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.core
import jax.numpy as jnp
from jax.core import ShapedArray
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir
from jaxtyping import Array, Float


def _symmetrize(a):
    return 0.5 * (a + jnp.swapaxes(a, -1, -2))


# The ratios below are divided differences at a tie (x = 0). Their values are the quotients (1 at 0); their
# derivatives, which second derivatives of a matrix function need, are custom: the quotients' own derivatives
# cancel near 0 (and are 0 at 0, where the where(x == 0, ...) is constant). Below |x| = 0.1 the derivatives are
# Taylor series (truncated below 1e-18), above it the derivative formulas lose at most about 10ε; the first-order
# path computes only the quotients, as before.
_SERIES_RADIUS = 0.1
_EXPM1_SLOPE = tuple((k + 1) / math.factorial(k + 2) for k in range(14))  # d/dx expm1(x)/x = Σ (k+1) x^k/(k+2)!
_LOG1P_SLOPE = tuple((-1.0) ** (k + 1) * (k + 1) / (k + 2) for k in range(22))  # d/dx log1p(x)/x


def _slope(x, series, derivative):
    small = jnp.abs(x) < _SERIES_RADIUS
    near, far = jnp.where(small, x, 0.0), jnp.where(small, 1.0, x)
    value = jnp.full_like(near, series[-1])
    for coefficient in reversed(series[:-1]):
        value = value * near + coefficient
    return jnp.where(small, value, derivative(far))


@jax.custom_jvp
def _expm1_ratio(x):
    """expm1(x)/x, 1 at x = 0, with its derivative right at and near 0."""
    safe = jnp.where(x == 0, 1.0, x)
    return jnp.where(x == 0, 1.0, jnp.expm1(safe) / safe)


@_expm1_ratio.defjvp
def _expm1_ratio_jvp(primals, tangents):
    (x,), (x_dot,) = primals, tangents
    slope = _slope(x, _EXPM1_SLOPE, lambda x: (jnp.exp(x) - jnp.expm1(x) / x) / x)
    return _expm1_ratio(x), slope * x_dot


@jax.custom_jvp
def _log1p_ratio(x):
    """log1p(x)/x, 1 at x = 0, with its derivative right at and near 0."""
    safe = jnp.where(x == 0, 1.0, x)
    return jnp.where(x == 0, 1.0, jnp.log1p(safe) / safe)


@_log1p_ratio.defjvp
def _log1p_ratio_jvp(primals, tangents):
    (x,), (x_dot,) = primals, tangents
    slope = _slope(x, _LOG1P_SLOPE, lambda x: (1.0 / (1.0 + x) - jnp.log1p(x) / x) / x)
    return _log1p_ratio(x), slope * x_dot


class SpectralFunction:
    r"""A scalar function applied to the eigenvalues of a symmetric matrix, with its divided difference.

    ``F(a)`` is :func:`matrix_function` with :math:`f` = ``value`` and :math:`L` from ``divided_difference``;
    :data:`logm_spd`, :data:`expm_sym` and :data:`sqrtm_spd` are instances.

    Args:
        value: :math:`f`, applied elementwise to the ``(..., n)`` eigenvalues.
        divided_difference: ``divided_difference(λ_i, λ_j)``, broadcasting, giving
            :math:`(f(λ_i) - f(λ_j))/(λ_i - λ_j)` and :math:`f'(λ_i)` where :math:`λ_i = λ_j`, evaluated
            without cancellation near ties; for second derivatives its own derivatives must be right there
            too (no ``where(λ_i == λ_j, f'(λ_i), ...)``, whose derivative at the tie is that of :math:`f'` alone).
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


def _reconstruct(vectors, values):
    return (vectors * values[..., None, :]) @ jnp.swapaxes(vectors, -1, -2)


# ------------------------------------------------------------------------------------------------------------
# The first-order tangent U (L ∘ Uᵀ sym(Ȧ) U) Uᵀ as a primitive of (A, U, λ, L, Ȧ), linear in Ȧ. A primitive,
# not a custom_jvp: reverse mode partially evaluates the JVP rule with Ȧ unknown, and a custom_jvp with an
# unknown input is inlined there (its rule dropped), so jvp-of-grad and hessian would differentiate eigh again.
# The primitive stays one equation of the linear program; its JVP is the second-order rule (the tangents of
# U, λ, L, functions of A, are accounted for by A's), its transpose is itself. spectrum is a parameter, called
# only by the JVP rule, at trace time.
# ------------------------------------------------------------------------------------------------------------


def _tangent_impl(a, vectors, eigenvalues, loewner, a_dot, *, spectrum):
    del a, eigenvalues, spectrum
    vt = jnp.swapaxes(vectors, -1, -2)
    return vectors @ (loewner * (vt @ _symmetrize(a_dot) @ vectors)) @ vt


def _tangent(a, vectors, eigenvalues, loewner, a_dot, spectrum):
    return _tangent_p.bind(a, vectors, eigenvalues, loewner, a_dot, spectrum=spectrum)


def _loewner_slopes(spectrum, eigenvalues):
    r""":math:`D_{ab} = \partial f[λ_a, λ_b]/\partial λ_a` (:math:`f''(λ_a)/2` on the diagonal), by forward mode."""
    n = eigenvalues.shape[-1]

    def along(basis):
        return jax.jvp(lambda lam: spectrum(lam)[1], (eigenvalues,), (jnp.broadcast_to(basis, eigenvalues.shape),))[1]

    jacobian = jnp.moveaxis(jax.vmap(along)(jnp.eye(n, dtype=eigenvalues.dtype)), 0, -3)  # [..., c, a, b] = ∂L_ab/∂λ_c
    slopes = jnp.swapaxes(jnp.diagonal(jacobian, axis1=-3, axis2=-2), -1, -2)
    # L_aa = f[λ_a, λ_a] moves with both arguments: its derivative is twice ∂f[λ_a, λ_b]/∂λ_a at λ_b = λ_a
    diagonal = jnp.broadcast_to(jnp.eye(n, dtype=bool), slopes.shape)
    return jnp.where(diagonal, 0.5 * slopes, slopes)


def _second_divided_differences(spectrum, eigenvalues, loewner):
    r""":math:`S_{ikj} = f[λ_i, λ_k, λ_j]`, ``(..., n, n, n)``, from the Loewner matrix and its slopes.

    Over a pair (a, b) of the three indices, m the third, :math:`f[λ_a, λ_m, λ_b] = (L_{am} - L_{mb})/(λ_a - λ_b)`
    (rounding error about :math:`ε(|L_{am}| + |L_{mb}|)/|λ_a - λ_b|`) or, as the gap closes, the trapezoid
    :math:`(D_{am} + D_{bm})/2` (error about the squared gap times a third derivative; exact at a tie). The
    quotient over the widest pair is used when that gap exceeds τ = ε^(1/3) times the local scale
    :math:`(|L_{am}| + |L_{mb}|)/(|D_{am}| + |D_{bm}|)`, the trapezoid over the closest pair otherwise.
    """
    d = _loewner_slopes(spectrum, eigenvalues)
    tau = float(jnp.finfo(eigenvalues.dtype).eps) ** (1.0 / 3.0)
    lam, l = eigenvalues, loewner
    lam_i, lam_k, lam_j = lam[..., :, None, None], lam[..., None, :, None], lam[..., None, None, :]
    lt, dt = jnp.swapaxes(l, -1, -2), jnp.swapaxes(d, -1, -2)
    # (λ_a, λ_b, L_am, L_mb, D_am, D_bm) on the (i, k, j) grid for the pairs (i, j), (i, k) and (k, j)
    pairs = (
        (lam_i, lam_j, l[..., :, :, None], l[..., None, :, :], d[..., :, :, None], dt[..., None, :, :]),
        (lam_i, lam_k, l[..., :, None, :], lt[..., None, :, :], d[..., :, None, :], d[..., None, :, :]),
        (lam_k, lam_j, lt[..., :, :, None], l[..., :, None, :], dt[..., :, :, None], dt[..., :, None, :]),
    )
    widths, trusted, quotients, trapezoids = [], [], [], []
    for lam_a, lam_b, l_am, l_mb, d_am, d_bm in pairs:
        gap = lam_a - lam_b
        trust = jnp.abs(gap) * (jnp.abs(d_am) + jnp.abs(d_bm)) > tau * (jnp.abs(l_am) + jnp.abs(l_mb))
        widths.append(jnp.abs(gap))
        trusted.append(trust)
        quotients.append((l_am - l_mb) / jnp.where(trust, gap, 1.0))
        trapezoids.append(0.5 * (d_am + d_bm))
    (w1, w2, w3) = widths
    widest = ((w1 >= w2) & (w1 >= w3), (w2 > w1) & (w2 >= w3))
    closest = ((w1 <= w2) & (w1 <= w3), (w2 < w1) & (w2 <= w3))

    def pick(first_second, options):
        return jnp.where(first_second[0], options[0], jnp.where(first_second[1], options[1], options[2]))

    return jnp.where(pick(widest, trusted), pick(widest, quotients), pick(closest, trapezoids))


def _second_order(spectrum, vectors, eigenvalues, loewner, e, h):
    """D²F(A)[E, H] in the eigenbasis (see the module docstring)."""
    vt = jnp.swapaxes(vectors, -1, -2)
    e = vt @ _symmetrize(e) @ vectors
    h = vt @ _symmetrize(h) @ vectors
    s = _second_divided_differences(spectrum, eigenvalues, loewner)
    inner = jnp.einsum("...ikj,...ik,...kj->...ij", s, e, h) + jnp.einsum("...ikj,...ik,...kj->...ij", s, h, e)
    return vectors @ inner @ vt


def _tangent_jvp(primals, tangents, *, spectrum):
    a, vectors, eigenvalues, loewner, a_dot = primals
    a_tangent, a_dot_tangent = tangents[0], tangents[-1]
    out = _tangent(a, vectors, eigenvalues, loewner, a_dot, spectrum)
    terms = []
    if type(a_dot_tangent) is not ad.Zero:  # linear in Ȧ
        terms.append(_tangent(a, vectors, eigenvalues, loewner, a_dot_tangent, spectrum))
    if type(a_tangent) is not ad.Zero:
        terms.append(_second_order(spectrum, vectors, eigenvalues, loewner, a_tangent, a_dot))
    return out, sum(terms[1:], terms[0]) if terms else jnp.zeros_like(out)


def _tangent_transpose(cotangent, a, vectors, eigenvalues, loewner, a_dot, *, spectrum):
    if any(ad.is_undefined_primal(x) for x in (a, vectors, eigenvalues, loewner)):
        raise NotImplementedError("the spectral tangent is linear in the perturbation only")
    if type(cotangent) is ad.Zero:
        return None, None, None, None, ad.Zero(a_dot.aval)
    # self-adjoint: <G, U(L∘Uᵀsym(H)U)Uᵀ> = <U(L∘Uᵀsym(G)U)Uᵀ, H> for a symmetric L
    return None, None, None, None, _tangent(a, vectors, eigenvalues, loewner, cotangent, spectrum)


def _tangent_batch(args, dims, *, spectrum):
    size = next(x.shape[d] for x, d in zip(args, dims) if d is not None)
    a, vectors, eigenvalues, loewner, a_dot = (batching.bdim_at_front(x, d, size) for x, d in zip(args, dims))
    return _tangent(a, vectors, eigenvalues, loewner, a_dot, spectrum), 0


_tangent_p = Primitive("spectral_tangent")
_tangent_p.def_impl(_tangent_impl)
_tangent_p.def_abstract_eval(lambda *args, spectrum: ShapedArray(args[-1].shape, args[-1].dtype))
ad.primitive_jvps[_tangent_p] = _tangent_jvp
ad.primitive_transposes[_tangent_p] = _tangent_transpose
batching.primitive_batchers[_tangent_p] = _tangent_batch
mlir.register_lowering(_tangent_p, mlir.lower_fun(_tangent_impl, multiple_results=False))


def matrix_function(a: Float[Array, "... n n"], spectrum: Callable) -> Float[Array, "... n n"]:
    r"""``U diag(f) Uᵀ`` for ``a = U diag(λ) Uᵀ``, with ``(f, L) = spectrum(λ)`` giving the new eigenvalues and
    the Loewner matrix of divided differences :math:`L_{ij} = (f_i - f_j)/(λ_i - λ_j)` (``f'`` on ties)
    that defines the derivative :math:`\dot F = U (L \circ U^\top \dot A U) U^\top`.

    Second derivatives (module docstring) take the second divided differences from ``L`` and its forward-mode
    derivative with respect to λ, so they are as accurate as ``L``'s derivatives: ``L`` must be symmetric and
    differentiable, with derivatives right at and near ties (``log1p``/``expm1`` ratios with a series near 0,
    not ``where(gap == 0, f', ...)``, whose derivative at the tie misses the cross term).

    Args:
        a: ``(..., n, n)`` symmetric floating matrices (only the symmetric part is used).
        spectrum: ``spectrum(λ) -> (f, L)``: from the ``(..., n)`` ascending eigenvalues, the new
            eigenvalues ``(..., n)`` and the symmetric Loewner matrix ``(..., n, n)``.

    Returns:
        ``(..., n, n)``, :math:`F(A) = U\,\mathrm{diag}(f)\,U^\top`.

    Raises:
        ValueError: ``a`` is not a (batch of) square floating matrices.
    """
    a = jnp.asarray(a)
    _check_square(a)

    @jax.custom_jvp
    def value(a, vectors, eigenvalues, values, loewner):
        # F from its eigendecomposition, differentiated by the rule (eigh's derivative never used for it)
        return _reconstruct(vectors, values)

    @value.defjvp
    def value_jvp(primals, tangents):
        a, vectors, eigenvalues, _, loewner = primals
        return value(*primals), _tangent(a, vectors, eigenvalues, loewner, tangents[0], spectrum)

    @jax.custom_jvp
    def apply(a):
        eigenvalues, vectors = jnp.linalg.eigh(_symmetrize(a))
        return _reconstruct(vectors, spectrum(eigenvalues)[0])

    @apply.defjvp
    def apply_jvp(primals, tangents):
        (a,), (a_dot,) = primals, tangents
        # differentiated again, eigh's own derivative is traced here too, but value and _tangent_p ignore the
        # tangents of U, λ and L (jit drops them); only third and higher orders use them
        eigenvalues, vectors = jnp.linalg.eigh(_symmetrize(a))
        values, loewner = spectrum(eigenvalues)
        tangent = _tangent(a, vectors, eigenvalues, loewner, a_dot, spectrum)
        return value(a, vectors, eigenvalues, values, loewner), tangent

    return apply(a)


def top_k_projector(a: Float[Array, "... n n"], k: int) -> Float[Array, "... n n"]:
    r"""The orthogonal projector :math:`U_k U_k^\top` onto the eigenvectors of the k largest eigenvalues.

    Its derivative divides only by the gaps between the top k eigenvalues and the rest,
    :math:`L_{ij} = 1/(λ_i - λ_j)` for i in the top k and j not (and symmetrically), 0 within either group:
    repeated eigenvalues inside the top k or inside the rest are harmless; the projector itself is not
    differentiable (nor continuous) when :math:`λ_{n-k} = λ_{n-k+1}`, and its derivative grows as the inverse
    of that gap. Second derivatives (module docstring) are exact with ties inside either group too, and grow as
    the inverse square of that gap.

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

    A traced ``power`` (a learnable exponent, or one inside the caller's ``jit``) is computed as
    :math:`\exp(p \log A)` (:data:`expm_sym` of :data:`logm_spd`, the same eigenvectors): derivatives with
    respect to p, :math:`\partial A^p/\partial p = A^p \log A`, and to A then come from those two functions'
    rules (two eigendecompositions instead of one).

    Args:
        a: ``(..., n, n)`` symmetric positive-definite floating matrices.
        power: the real exponent p (a number, or a scalar array).

    Returns:
        ``(..., n, n)``, :math:`U\,\mathrm{diag}(λ^p)\,U^\top`.
    """
    if isinstance(power, jax.core.Tracer):
        # (the rule below closes over p, and a custom derivative rule cannot close over a traced value)
        return expm_sym(power * logm_spd(a))

    def divided_difference(li, lj):
        ratio = (li - lj) / lj
        log_ratio = jnp.log1p(ratio)
        return lj ** (power - 1.0) * _expm1_ratio(power * log_ratio) * power * _log1p_ratio(ratio)

    return SpectralFunction(lambda lam: lam**power, divided_difference, f"powm_spd({power})")(a)
