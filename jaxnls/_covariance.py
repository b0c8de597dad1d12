r"""What a fit is worth: the covariance of a least-squares estimate, per problem, differentiable.

At a minimum :math:`\hat x` of :math:`c(x) = \tfrac12\|r(x)\|^2` with Jacobian :math:`J` (m residuals, n
parameters), the covariance of the estimate in the convention of scipy's ``curve_fit`` and lmfit is

.. math::  C = s^2\,(J^\top J)^{-1},\qquad s^2 = \frac{\|r\|^2}{m - n}

(``absolute_sigma=True``: :math:`s^2 = 1`, the residuals already whitened by known standard deviations).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Bool, Float, Int, PyTree

from ._bounds import frozen_mask
from ._driver import UNSET, resolve_args_axes
from ._jacobian import flat_residual_fn, residual_and_jacobian
from ._problem import (
    as_float_array,
    batch_size,
    broadcast_args_axes,
    check_sizes,
    one_problem,
    residual_size,
)
from .manifolds import ProductSpace, has_groups


class Covariance(eqx.Module):
    r"""The uncertainty of a least-squares estimate (:func:`jaxnls.covariance`). With ``batched=True`` every
    array field leads with the batch axis.

    Parameters are ordered as ``jax.flatten_util.ravel_pytree(params)`` orders them (leaves in pytree order,
    each flattened row-major); a Lie-group leaf contributes its tangent coordinates, for the right
    perturbation :math:`X \operatorname{Exp}(δ)` (jaxlie's ``tangent`` layout, e.g. SE(3): translation, then
    rotation), so ``covariance`` is the covariance of δ at the estimate.

    Attributes:
        covariance: ``(n, n)``, :math:`s^2 (J^\top J)^{+}`.
        standard_errors: ``(n,)``, the square roots of its diagonal.
        correlation: ``(n, n)``, :math:`C_{ij}/\sqrt{C_{ii}C_{jj}}` (0 where a standard error is 0).
        rank: the numerical rank of J (of its columns scaled to unit norm, with singular values below
            ``rcond·max(m, n)·σ_max`` dropped). Where it is below n some parameter combinations are not
            determined by the data: ``covariance`` is then a pseudo-inverse (finite, never NaN), whose
            variances along those combinations are not estimates; check ``full_rank``.
        residual_variance: :math:`s^2` (1 with ``absolute_sigma``; inf where m <= n, as ``curve_fit``).
        num_free: the coordinates not ``fixed`` (n without ``fixed=``).
        num_residuals: m, the residuals of one problem (static).
        num_params: n, the parameters of one problem, tangent coordinates for Lie-group leaves (static).
    """

    covariance: Float[Array, "*batch n n"]
    standard_errors: Float[Array, "*batch n"]
    correlation: Float[Array, "*batch n n"]
    rank: Int[Array, "*batch"]
    residual_variance: Float[Array, "*batch"]
    num_free: Int[Array, "*batch"]
    num_residuals: int = eqx.field(static=True)
    num_params: int = eqx.field(static=True)

    @property
    def full_rank(self) -> Bool[Array, "*batch"]:
        """True where J has full column rank over the free coordinates (every one determined by the data)."""
        return self.rank == self.num_free


def covariance(
    residual_fn: Callable[[PyTree, Any], PyTree],
    params: PyTree,
    args: PyTree = None,
    *,
    batched: bool = False,
    args_axes: PyTree = UNSET,
    absolute_sigma: bool = False,
    rcond: float | None = None,
    fixed: PyTree | None = None,
) -> Covariance:
    r"""The covariance of the estimate ``params`` (a minimum of ``½‖residual_fn(params, args)‖²``), per problem.

    .. math::  C = s^2\,(J^\top J)^{+},\qquad s^2 = \frac{\|r\|^2}{m - n}\ \text{or 1 (absolute\_sigma)}

    evaluated at ``params``: pass ``Solution.params``. Computed from the singular value decomposition of J
    with its columns scaled to unit norm, so its accuracy is governed by the condition number of the
    scaled J, not of :math:`J^\top J` (NIST's certified standard deviations are reproduced to 6 digits or
    more on every StRD problem but Lanczos1, whose residuals are at rounding level). Where J is
    rank-deficient the pseudo-inverse is taken in those scaled variables: finite, unchanged by the units of
    the parameters, with ``rank`` saying how many directions the data determine.

    Compiled once per ``residual_fn`` and shapes: later calls at other values reuse the program.

    Differentiable with respect to the floating arrays of ``args`` and ``params`` in forward and reverse
    mode (through ``params = solve(...).params`` the implicit derivative of the estimate is included), at
    fixed rank: :math:`\dot{(A^{+})} = -A^{+}\dot A A^{+} + A^{+}A^{+}\dot A(I - AA^{+}) + (I - A^{+}A)\dot A
    A^{+}A^{+}` (Golub & Pereyra), exact also at repeated singular values.

    Args:
        residual_fn: as in :func:`jaxnls.solve`.
        params: the estimate, a pytree like :func:`jaxnls.solve`'s ``params0`` (with ``batched=True`` every
            leaf leads with the batch axis).
        args: as in :func:`jaxnls.solve`.
        batched: as in :func:`jaxnls.solve`.
        args_axes: as in :func:`jaxnls.solve`.
        absolute_sigma: the residuals are whitened by their true standard deviations (``curve_fit``'s
            ``absolute_sigma=True``): no rescaling by the residual variance.
        rcond: relative cut-off for the singular values of the scaled J, as a multiple of ``max(m, n)``;
            default the machine epsilon of the working dtype (NumPy's ``matrix_rank`` rule).
        fixed: as in :func:`jaxnls.solve`, a boolean pytree like ``params`` (per problem or shared): those
            coordinates are known exactly (zero rows and columns) and the covariance is that of the others,
            with ``s² = ‖r‖²/(m - n_free)``. For a bound-constrained fit pass the coordinates at their
            bounds, e.g. ``fixed=(sol.params <= lower) | (sol.params >= upper)``: its covariance is that of the
            fit of the free coordinates with the active ones held (the Laplace approximation of the
            constrained estimate ignores the probability mass the bound cuts off).

    Returns:
        A :class:`Covariance`.
    """
    if not isinstance(absolute_sigma, (bool, np.bool_)):
        raise TypeError(f"jaxnls.covariance: absolute_sigma must be a bool, got {absolute_sigma!r}")
    params = jax.tree_util.tree_map_with_path(functools.partial(as_float_array, name="params"), params)
    if not jax.tree_util.tree_leaves(params):
        raise ValueError("jaxnls.covariance: params has no array leaves")
    args_axes = resolve_args_axes(args_axes, args, batched)
    if batched:
        batch = batch_size(params, name="params")
        check_sizes(params, True, name="params")
        axes = broadcast_args_axes(args_axes, args, batch, name="params")
    else:
        check_sizes(params, False, name="params")
        batch, axes = 1, None
    num_residuals = residual_size(residual_fn, params, args, batched, axes)
    single_params = one_problem(params, batched)
    leaves = jax.tree_util.tree_leaves(single_params)
    dtype = jnp.result_type(*leaves)  # ravel_pytree's
    if rcond is None:
        rcond = float(jnp.finfo(dtype).eps)
    elif isinstance(rcond, (bool, np.bool_)) or not isinstance(rcond, (int, float)) or not 0 <= rcond < 1:
        raise ValueError(f"jaxnls.covariance: rcond must be a number in [0, 1), got {rcond!r}")

    if fixed is not None and has_groups(single_params):
        raise NotImplementedError("jaxnls.covariance: fixed= applies to Euclidean parameters")
    frozen = (
        np.zeros((batch, sum(int(np.prod(leaf.shape)) for leaf in leaves)), bool)
        if fixed is None
        else frozen_mask(fixed, params, batched, batch)
    )

    return _covariances(residual_fn, params, args, frozen, axes, batched, num_residuals, absolute_sigma, float(rcond))


@eqx.filter_jit
def _covariances(residual_fn, params, args, frozen, axes, batched, num_residuals, absolute_sigma, rcond):
    # compiled as one program (op by op, a NIST problem's covariance compiled ~40 small ones: 2-3 s per call)
    def one(p, a, f):
        return _one_problem(residual_fn, p, a, f, num_residuals, absolute_sigma, rcond)

    if batched:
        return jax.vmap(one, in_axes=(0, axes, 0))(params, args, frozen)
    return one(params, args, frozen[0])


def _one_problem(
    residual_fn, params, args, frozen, num_residuals: int, absolute_sigma: bool, rcond: float
) -> Covariance:
    x, unravel = ravel_pytree(params)
    fn = flat_residual_fn(residual_fn, unravel, x.dtype)
    m = num_residuals
    if has_groups(params):  # J with respect to the tangent perturbation δ of x ⊕ δ, at δ = 0
        space = ProductSpace(params)
        n = space.tangent_size
        residual, jacobian = residual_and_jacobian(
            lambda d, a: fn(space.retract_one(x, d), a), jnp.zeros((n,), x.dtype), args, m
        )
    else:
        n = x.shape[0]
        residual, jacobian = residual_and_jacobian(fn, x, args, m)
    if not has_groups(params):  # (a frozen coordinate's column is zero: its direction is known exactly)
        jacobian = jnp.where(frozen[None, :], 0.0, jacobian)
    num_free = jnp.asarray(n, jnp.int32) - (0 if has_groups(params) else jnp.sum(frozen).astype(jnp.int32))
    column_norms = jnp.sqrt(jnp.sum(jacobian**2, axis=0))
    scale = jnp.where(column_norms > 0, column_norms, 1.0)
    inverse, kept = _normal_pseudo_inverse(jacobian / scale[None, :], rcond * max(m, n))
    if absolute_sigma:
        variance = jnp.ones((), x.dtype)
    else:
        dof = m - num_free
        variance = jnp.where(dof > 0, jnp.sum(residual**2) / jnp.where(dof > 0, dof, 1), jnp.inf).astype(x.dtype)
    unscaled = inverse / (scale[:, None] * scale[None, :])  # (JᵀJ)⁺
    # (s² = inf where m <= n: the entries of (JᵀJ)⁺ that are 0 stay 0, not inf·0 = NaN)
    cov = jnp.where(unscaled == 0, 0.0, variance * unscaled)
    diagonal = jnp.diagonal(cov)
    # (sqrt's derivative guarded at 0: an undetermined direction has no error to differentiate)
    errors = jnp.where(diagonal > 0, jnp.sqrt(jnp.where(diagonal > 0, diagonal, 1.0)), 0.0)
    # correlations from (JᵀJ)⁺ itself, which s² scales away (so they stay finite where s² is inf)
    unscaled_diagonal = jnp.diagonal(unscaled)
    positive = (errors > 0) & (unscaled_diagonal > 0)
    safe = jnp.sqrt(jnp.where(positive, unscaled_diagonal, 1.0))
    correlation = jnp.where(positive[:, None] & positive[None, :], unscaled / (safe[:, None] * safe[None, :]), 0.0)
    correlation = jnp.where(jnp.eye(n, dtype=bool), positive.astype(x.dtype), correlation)
    return Covariance(
        covariance=cov,
        standard_errors=errors,
        correlation=correlation,
        rank=jnp.sum(kept).astype(jnp.int32),
        residual_variance=variance,
        num_free=num_free,
        num_residuals=m,
        num_params=n,
    )


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _normal_pseudo_inverse(a: Float[Array, "m n"], cutoff: float):
    """``(AᵀA)⁺`` from the SVD of A (singular values below ``cutoff·σ_max`` dropped), and the kept mask."""
    _, singular, vt = jnp.linalg.svd(a, full_matrices=False)
    kept = singular > cutoff * singular[0]
    inverse_squares = jnp.where(kept, 1.0 / jnp.where(kept, singular, 1.0) ** 2, 0.0)
    return (vt.T * inverse_squares[None, :]) @ vt, kept


@_normal_pseudo_inverse.defjvp
def _normal_pseudo_inverse_jvp(cutoff, primals, tangents):
    (a,), (a_dot,) = primals, tangents
    _, singular, vt = jnp.linalg.svd(a, full_matrices=False)
    kept = singular > cutoff * singular[0]
    inverse_squares = jnp.where(kept, 1.0 / jnp.where(kept, singular, 1.0) ** 2, 0.0)
    inverse = (vt.T * inverse_squares[None, :]) @ vt
    range_projector = (vt.T * kept[None, :]) @ vt
    complement = jnp.eye(a.shape[1], dtype=a.dtype) - range_projector
    normal_dot = a_dot.T @ a + a.T @ a_dot
    squared = inverse @ inverse
    inverse_dot = (
        -inverse @ normal_dot @ inverse + squared @ normal_dot @ complement + complement @ normal_dot @ squared
    )
    return (inverse, kept), (inverse_dot, np.zeros(kept.shape, jax.dtypes.float0))
