r"""Dense step solvers for one problem (the batch is handled by ``vmap`` outside).

Every solver answers the same question: given the residual ``r`` (m) and Jacobian ``J`` (m×n) at the
current point and a non-negative damping vector ``d`` (n), find

.. math::  δ = \arg\min_δ \tfrac12\|J δ + r\|^2 + \tfrac12 δ^\top \mathrm{diag}(d)\, δ
           \quad\Longleftrightarrow\quad (J^\top J + \mathrm{diag}(d))\,δ = -J^\top r .

Both solvers first scale the columns of ``J`` to unit norm (Jacobi scaling), which removes the
parameter-scale part of the conditioning, and both regularise a (numerically) singular system by
flooring its pivots at a few ulps of the scaled diagonal. A rank-deficient or indefinite system therefore
gives a finite least-squares step instead of NaN; the regularisation is relative, so a well-posed system
is solved to working precision.
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, Generic, TypeVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, DTypeLike, Float, PyTree

from .._numerics import safe_sqrt

# Above this size the elimination written in XLA operations gives way to LAPACK's Cholesky (its n steps of
# O(n²) work each are a kernel or more apiece: the program and the work per problem grow with n).
_ELIMINATE_MAX = 8


class AbstractLinearization(eqx.Module):
    """What the solve loop reads of one problem's linearisation ``r + J δ`` (δ in the tangent space).

    The loop and the strategies use only ``gradient`` (Jᵀr), :meth:`diagonal` (diag JᵀJ),
    :meth:`curvature` (‖Jv‖²), :meth:`steepest_descent` and their linear solver's ``solve``; a dense
    (:class:`Linearization`) and a block-sparse (:class:`jaxnls.graph.BlockSparseLinearization`)
    implementation exist.
    """

    # every implementation has the field ``gradient: Float[Array, " n"]`` (Jᵀr); declared for type checkers
    # only (a field here would be one of every subclass, an eqx.AbstractVar needs unstringified annotations)
    if TYPE_CHECKING:
        gradient: Float[Array, " n"]

    @abc.abstractmethod
    def diagonal(self) -> Float[Array, " n"]:
        """Squared column norms of J, i.e. diag(JᵀJ)."""

    @abc.abstractmethod
    def curvature(self, v: Float[Array, " n"]) -> Float[Array, ""]:
        """‖J v‖², the quadratic term of the Gauss-Newton model along ``v``."""

    def steepest_descent(
        self, scale: Float[Array, " n"]
    ) -> tuple[Float[Array, " n"], Float[Array, ""], Float[Array, ""]]:
        """The scaled steepest-descent direction ``u = g / scale``, the slope ``gᵀu`` and the length
        ``t = gᵀu / ‖Ju‖²`` minimising the model along ``-u`` (inf where the model has no curvature)."""
        direction = self.gradient / scale
        slope = self.gradient @ direction
        curvature = self.curvature(direction)
        length = jnp.where(curvature > 0, slope / jnp.where(curvature > 0, curvature, 1.0), jnp.inf)
        return direction, slope, length


class Linearization(AbstractLinearization):
    """What a step solver keeps of one linearisation ``r + J δ``.

    ``jacobian``/``residual`` are kept only by solvers that need them (QR); the normal-equation
    solver keeps ``Jᵀr`` and ``JᵀJ`` alone, which is what keeps the batched loop's memory at O(n²) per
    problem.

    Attributes:
        gradient: ``Jᵀr``, ``(n,)``.
        gram: ``JᵀJ``, ``(n, n)``.
        jacobian: ``J``, ``(m, n)``, or None where the solver does not keep it.
        residual: ``r``, ``(m,)``, or None where the solver does not keep it.
    """

    gradient: Float[Array, " n"]  # Jᵀ r
    gram: Float[Array, "n n"]  # Jᵀ J
    jacobian: Float[Array, "m n"] | None
    residual: Float[Array, " m"] | None

    def diagonal(self) -> Float[Array, " n"]:
        """Squared column norms of J, i.e. diag(JᵀJ)."""
        # (a strided slice of the entries: jnp.diagonal is a gather under vmap, whose indices XLA computes in a
        # kernel of its own)
        n = self.gram.shape[0]
        return jnp.reshape(self.gram, (n * n,))[:: n + 1]

    def normal_matrix(self) -> Float[Array, "n n"]:
        """JᵀJ."""
        return self.gram

    def restricted(self, free: Bool[Array, " n"]) -> Linearization:
        """The model of the free coordinates alone: the other columns of J (and their entries of Jᵀr and
        JᵀJ) zeroed, so that every step solver leaves them where they are."""
        both = free[:, None] & free[None, :]
        return Linearization(
            gradient=jnp.where(free, self.gradient, 0.0),
            gram=jnp.where(both, self.gram, 0.0),
            jacobian=None if self.jacobian is None else jnp.where(free[None, :], self.jacobian, 0.0),
            residual=self.residual,
        )

    def curvature(self, v: Float[Array, " n"]) -> Float[Array, ""]:
        """‖J v‖², the quadratic term of the Gauss-Newton model along ``v``."""
        if self.jacobian is not None:  # from J itself where it is kept (QR: cond(J), not cond(J)²)
            # (dots over the residual axis: they round alike for a problem alone and in any batch)
            along = _contract(self.jacobian, v, 1, 0)
            return _contract(along, along, 0, 0)
        # n×n with tiny vectors as multiply-and-sum, not dot: one fused reduction, which XLA:CPU compiles
        # several times faster than a small dot
        return jnp.sum(v[:, None] * self.gram * v[None, :])


_LinearizationT = TypeVar("_LinearizationT", bound=AbstractLinearization)


class AbstractLinearSolver(eqx.Module, Generic[_LinearizationT]):
    """Solves the damped Gauss-Newton system of one problem."""

    @abc.abstractmethod
    def linearize(self, residual: Float[Array, " m"], jacobian: PyTree) -> _LinearizationT:
        """Keep what :meth:`solve` needs of the linearisation at the current point."""

    @abc.abstractmethod
    def solve(self, lin: _LinearizationT, damping: Float[Array, " n"]) -> Float[Array, " n"]:
        """Return δ solving ``(JᵀJ + diag(damping)) δ = -Jᵀr``."""


def _normal_products(
    residual: Float[Array, " m"], jacobian: Float[Array, "m n"]
) -> tuple[Float[Array, " n"], Float[Array, "n n"]]:
    """Jᵀr and JᵀJ from one product ``[J r]ᵀ[J r]``.

    A problem must give the same bits alone as in a batch of any size (a working set moves problems
    between batches of different sizes), and XLA:CPU rounds a reduction over the m residuals by a plan
    that depends on the whole batched shape: ``jnp.sum(J**2, 0)`` or ``einsum("mi,mi->i")`` with m = 100
    rounds differently for 16 or more problems than for one, ``J.T @ J`` for any batch of two or more
    (measured). A dot_general contracting the residual axis of both operands in place was measured to
    round alike for one problem and any batch, at a dot's cost.
    """
    n = jacobian.shape[1]
    augmented = jnp.concatenate([jacobian, residual[:, None]], axis=1)
    product = _contract(augmented, augmented, 0, 0)
    return product[:n, n], product[:n, :n]


def _contract(a: Array, b: Array, axis_a: int, axis_b: int) -> Array:
    """``a`` and ``b`` summed over one axis each, as one dot_general (what ``jnp.einsum`` emits, without its
    contraction-path search, which costs tracing time in a loop traced for every solve)."""
    return jax.lax.dot_general(a, b, (((axis_a,), (axis_b,)), ((), ())))


def pivot_floor(n: int, dtype: DTypeLike) -> float:
    """The step solvers' relative pivot floor, ``10·n·ε``: a pivot of a unit-diagonal ``n×n`` matrix below
    it is rounding noise, not information.

    Args:
        n: the size of the system.
        dtype: the floating dtype whose machine epsilon ε is used.

    Returns:
        ``10·n·ε`` as a Python float.
    """
    return 10.0 * n * float(jnp.finfo(dtype).eps)


def _column_scale(diagonal: Float[Array, " n"]) -> Float[Array, " n"]:
    return jnp.where(diagonal > 0, jax.lax.rsqrt(jnp.where(diagonal > 0, diagonal, 1.0)), 1.0)


def _eliminated_solve(a: Float[Array, "n n"], b: Float[Array, " n"], floor: float) -> Float[Array, " n"]:
    r"""Solve ``a x = b`` for a small symmetric positive semi-definite matrix by Gauss-Jordan elimination with
    Cholesky's pivots, each raised to at least ``floor``.

    Step :math:`k` divides row :math:`k` of :math:`[a\,|\,b]` by its pivot :math:`\max(p_k, \text{floor})` and
    subtracts it from every other row; :math:`p_k` is the diagonal of the Schur complement the steps before it
    leave, which is the Cholesky factorisation's pivot :math:`L_{kk}^2`: the answer is that of a Cholesky
    factorisation whose pivots are floored alike. After :math:`n` steps the left block is the identity and
    the last column is :math:`x`. Each step is one elementwise operation on the whole :math:`n \times (n+1)`
    array, so under ``vmap`` a batch of tiny systems compiles to a few fused kernels (the Cholesky unrolled
    scalar by scalar that this replaced compiled to ~17 for :math:`n = 4`; benchmarks/README.md (aw)).
    """
    n = a.shape[0]
    augmented = jnp.concatenate([a, b[:, None]], axis=1)
    # (NumPy masks: constants of the program, where jnp.arange's comparisons would be kernels of their own)
    column = np.arange(n + 1)[None, :]
    row = np.arange(n)[:, None]
    for k in range(n):
        pivot = jnp.maximum(augmented[k, k], floor)
        pivot_row = jnp.where(column == k, 1.0, augmented[k : k + 1] / pivot)
        augmented = jnp.where(row == k, pivot_row, augmented - augmented[:, k : k + 1] * pivot_row)
    return augmented[:, n]


def _lapack_cholesky_solve(a: Float[Array, "n n"], b: Float[Array, " n"], floor: float) -> Float[Array, " n"]:
    n = a.shape[0]
    factor = jnp.linalg.cholesky(a + floor * jnp.eye(n, dtype=a.dtype))
    x = jax.scipy.linalg.cho_solve((factor, True), b)
    # Cholesky only fails here for a matrix that is indefinite beyond rounding; the (scaled)
    # steepest-descent direction is then still a descent direction for the outer loop to size.
    return jnp.where(jnp.all(jnp.isfinite(x)), x, b)


def lu_solve(a: Float[Array, "n n"], b: Float[Array, " n"]) -> Float[Array, " n"]:
    """``a⁻¹ b`` for one square matrix by LU with partial pivoting, written in XLA operations (a loop of
    ``n`` masked rank-1 updates, then the two triangular sweeps).

    For matrices up to a few hundred rows inside a compiled loop on CPU: LAPACK's ``getrf`` is faster
    alone, but its OpenBLAS threads then compete with XLA's for the same cores (measured on 2 cores: a
    144×144 solve per iteration cost a bundle-adjustment solve 0.32 s of its 0.95 s). Each of the n masked
    updates touches all n² entries, so larger systems belong to LAPACK.
    """
    n = a.shape[0]
    index = jnp.arange(n)

    def eliminate(k, carry):
        a, order = carry
        pivot_row = jnp.argmax(jnp.where(index >= k, jnp.abs(a[:, k]), -1.0))
        swap = jnp.where(index == k, pivot_row, jnp.where(index == pivot_row, k, index))
        a, order = a[swap], order[swap]
        multipliers = jnp.where(index > k, a[:, k] / a[k, k], 0.0)
        a = a - multipliers[:, None] * jnp.where(index > k, a[k], 0.0)[None, :]
        return a.at[:, k].set(jnp.where(index > k, multipliers, a[:, k])), order

    factors, order = jax.lax.fori_loop(0, n, eliminate, (a, index))

    def forward(i, y):  # L y = P b, L unit lower triangular
        return y.at[i].add(-jnp.dot(jnp.where(index < i, factors[i], 0.0), y))

    def backward(j, x):  # U x = y
        i = n - 1 - j
        return x.at[i].set((x[i] - jnp.dot(jnp.where(index > i, factors[i], 0.0), x)) / factors[i, i])

    return jax.lax.fori_loop(0, n, backward, jax.lax.fori_loop(0, n, forward, b[order]))


class Cholesky(AbstractLinearSolver[Linearization]):
    r"""Normal equations ``(JᵀJ + diag(d)) δ = -Jᵀr`` by Jacobi-scaled Cholesky.

    Fast and memory-light (O(n²) per problem); squares the condition number of ``J``. For n ≤ 8 the system
    is solved by elimination with Cholesky's pivots, written as n elementwise operations on the whole matrix
    that vectorise across a batch; above, by LAPACK's Cholesky.
    """

    def linearize(self, residual: Float[Array, " m"], jacobian: Float[Array, "m n"]) -> Linearization:
        gradient, gram = _normal_products(residual, jacobian)
        return Linearization(gradient=gradient, gram=gram, jacobian=None, residual=None)

    def solve(self, lin: Linearization, damping: Float[Array, " n"]) -> Float[Array, " n"]:
        gram = lin.gram
        n = gram.shape[0]
        scale = _column_scale(lin.diagonal() + damping)
        scaled = gram * scale[:, None] * scale[None, :] + jnp.where(
            np.eye(n, dtype=bool), (damping * scale**2)[None, :], 0.0
        )
        rhs = -lin.gradient * scale
        floor = pivot_floor(n, gram.dtype)
        solve = _eliminated_solve if n <= _ELIMINATE_MAX else _lapack_cholesky_solve
        return solve(scaled, rhs, floor) * scale


class QR(AbstractLinearSolver[Linearization]):
    r"""Least squares on ``[J; diag(√d)] δ ≈ [-r; 0]`` by Householder QR.

    Works with ``J`` itself, so its accuracy is governed by cond(J), not cond(J)²: the choice for
    ill-conditioned problems (NIST's Lanczos, MGH10, Bennett5). Keeps the m×n Jacobian per problem.
    As with :class:`Cholesky`, a batch gives every problem the bits it gets alone.
    """

    def linearize(self, residual: Float[Array, " m"], jacobian: Float[Array, "m n"]) -> Linearization:
        # JᵀJ only for its diagonal and the trust-region search: the step and the model's curvature
        # use J itself
        gradient, gram = _normal_products(residual, jacobian)
        return Linearization(gradient=gradient, gram=gram, jacobian=jacobian, residual=residual)

    def solve(self, lin: Linearization, damping: Float[Array, " n"]) -> Float[Array, " n"]:
        jac, residual = lin.jacobian, lin.residual
        if jac is None or residual is None:
            raise TypeError("QR.solve takes the linearisation of QR.linearize, which keeps J and r")
        n = jac.shape[1]
        # a zero column without damping (a coordinate held by a bound, or one r does not depend on) leaves
        # its coordinate undetermined; a unit damping row there gives it the minimum-norm value 0 (a
        # Householder reflection of a zero column would otherwise pass rounding noise to the floored pivot)
        damping = jnp.where((lin.diagonal() == 0) & (damping == 0), 1.0, damping)
        scale = _column_scale(lin.diagonal() + damping)
        stacked = jnp.concatenate([jac * scale[None, :], jnp.diag(safe_sqrt(damping) * scale)], axis=0)
        rhs = jnp.concatenate([-residual, jnp.zeros((n,), jac.dtype)])
        # R of the matrix augmented with the right-hand side holds Qᵀ·rhs in its last column, so Q
        # itself is never formed
        augmented = jnp.linalg.qr(jnp.concatenate([stacked, rhs[:, None]], axis=1), mode="r")
        r, qt_rhs = augmented[:n, :n], augmented[:n, n]
        diag = jnp.diagonal(r)
        # the same relative floor as Cholesky's pivots (R_jj² plays the role of a pivot of JᵀJ), so a
        # rank-deficient J gets the same bounded step from both solvers
        floor = jnp.sqrt(pivot_floor(n, jac.dtype)) * jnp.max(jnp.abs(diag))
        safe_diag = jnp.where(jnp.abs(diag) < floor, jnp.where(diag < 0, -floor, floor), diag)
        r = r - jnp.diag(diag) + jnp.diag(safe_diag)
        z = jax.scipy.linalg.solve_triangular(r, qt_rhs, lower=False)
        return z * scale
