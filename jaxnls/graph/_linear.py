r"""Block-sparse linearisation and the step solvers for factor graphs.

Per problem the loop solves :math:`(J^\top J + \mathrm{diag}(d))\,δ = -J^\top r` with :math:`J` held as
per-term blocks (``(E, k, D)`` per cost group, with their column indices). Nothing here forms an
``n×n`` or ``m×n`` dense matrix:

- :class:`PCG`: conjugate gradients on the normal equations, matrix-free
  (:math:`v \mapsto J^\top(Jv) + d \odot v`, two block products and one scatter-add), preconditioned
  by the inverses of the ``d×d`` diagonal blocks of :math:`J^\top J + \mathrm{diag}(d)` (block Jacobi).
- :class:`SparseDirect`: :math:`J^\top J + \mathrm{diag}(d)` assembled from the blocks (its pattern is
  computed once on the host from the graph's indices) and factored by CHOLMOD inside the compiled program
  (``sparsax``'s FFI) or by QDLDL through ``jax.pure_callback`` (symbolic analysis once per structure).
"""

from __future__ import annotations

import abc
import collections
from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, DTypeLike, Float, Int

from .._numerics import split_by_sizes
from ..linear import AbstractLinearization, AbstractLinearSolver, pivot_floor
from ._blas import import_sparsax
from ._graph import GraphStructure


class BlockSparseLinearization(AbstractLinearization):
    """``r + J δ`` of one graph problem: ``gradient`` = Jᵀr (n,) and the Jacobian blocks per cost group.

    Attributes:
        gradient: ``Jᵀr``, ``(n,)`` over the problem's tangent coordinates.
        blocks: per cost group, the ``(E, k, D)`` Jacobian blocks of its E terms (k residuals each, D the
            summed tangent sizes of the variables a term connects).
        structure: the graph's structure (static): which columns each block fills.
    """

    gradient: Float[Array, " n"]
    blocks: tuple[Float[Array, "E k D"], ...]
    structure: GraphStructure = eqx.field(static=True)

    def diagonal(self) -> Float[Array, " n"]:
        structure = self.structure
        per_column = []
        for g, (jac, group) in enumerate(zip(self.blocks, structure.groups)):
            squares = jnp.sum(jac**2, axis=1)
            for i, j, same in group["shared"]:  # one variable in arguments i and j: its column is their sum
                first, second = structure.argument_columns(g, i), structure.argument_columns(g, j)
                cross = sum_over_rows(jac[:, :, first], jac[:, :, second])
                squares = squares.at[:, first].add(2.0 * jnp.asarray(same, jac.dtype)[:, None] * cross)
            per_column.append(squares)
        return structure.scatter(per_column)

    def curvature(self, v: Float[Array, " n"]) -> Float[Array, ""]:
        return sum((jnp.sum(piece**2) for piece in self.structure.times(self.blocks, v)), start=jnp.zeros((), v.dtype))


class NormalOperator(eqx.Module):
    r"""The symmetric matrix :math:`A = \sum_e S_e^\top P_e S_e + \mathrm{diag}(d)` of one graph problem.

    :math:`P_e` is term ``e``'s ``D×D`` block over the tangent coordinates of the variables it connects
    (:math:`S_e` picks them): :math:`J_e^\top J_e` for a step (given as the Jacobian blocks
    ``jacobians``, so that products with :math:`A` cost two block products) or any symmetric block, e.g.
    the term's exact Hessian in the implicit adjoint (given as ``products``). Exactly one of the two is set.
    :math:`d` is ``damping`` plus 1 at the coordinates of fixed variables (whose rows and columns of
    :math:`P_e` are zero): there :math:`A` is the identity, so their solution is their right-hand side (zero
    in every system the solves build) and no system is singular on their account.

    Attributes:
        structure: the graph's structure (static).
        jacobians: per cost group, the ``(E, k, D)`` Jacobian blocks :math:`J_e` (:math:`P_e = J_e^\top J_e`),
            or None.
        products: per cost group, the symmetric ``(E, D, D)`` blocks :math:`P_e` themselves, or None.
        damping: the ``(n,)`` diagonal added to :math:`A` (fixed coordinates get 1 more).
    """

    structure: GraphStructure = eqx.field(static=True)
    jacobians: tuple[Float[Array, "E k D"], ...] | None
    products: tuple[Float[Array, "E D D"], ...] | None
    damping: Float[Array, " n"]

    def diagonal(self) -> Float[Array, " n"]:
        """d: the damping, and 1 at the coordinates of fixed variables."""
        return self.damping + jnp.asarray(self.structure.fixed_diagonal, self.damping.dtype)

    def term_products(self) -> list[Float[Array, "E D D"]]:
        """The blocks :math:`P_e`, ``(E, D, D)`` per cost group."""
        if self.products is not None:
            return list(self.products)
        return [block_products(jac, jac) for jac in self._jacobians()]

    def _jacobians(self) -> tuple[Float[Array, "E k D"], ...]:
        if self.jacobians is None:
            raise ValueError("NormalOperator: exactly one of jacobians and products must be set, got neither")
        return self.jacobians

    def times(self, v: Float[Array, " n"]) -> Float[Array, " n"]:
        """A v (matrix-free)."""
        structure = self.structure
        if self.products is not None:
            applied = structure.scatter(
                [
                    jnp.einsum("eab,eb->ea", product, v[group["columns"]])
                    for product, group in zip(self.products, structure.groups)
                ]
            )
        else:
            applied = structure.transpose_times(self._jacobians(), structure.times(self._jacobians(), v))
        return applied + self.diagonal() * v

    def block_diagonal(self, kinds: Sequence[str] | None = None) -> dict[str, Float[Array, "N d d"]]:
        """The ``d×d`` diagonal blocks of A, per variable kind ``(N, d, d)``, for ``kinds`` (default: all)."""
        structure = self.structure
        kinds = structure.kinds if kinds is None else kinds
        dtype = self.damping.dtype
        diagonal = structure.flat_to_kinds(self.diagonal())
        out = {kind: diagonal[kind][:, :, None] * jnp.eye(structure.dim[kind], dtype=dtype)[None] for kind in kinds}
        for g, group in enumerate(structure.groups):
            for j, kind in enumerate(group["kinds"]):
                if kind in out:
                    out[kind] = out[kind].at[group["indices"][:, j]].add(self.coupling(g, j, j))
            for i, j, same in group["shared"]:  # one variable in arguments i and j: their couplings are its own
                kind = group["kinds"][i]
                if kind in out:
                    cross = self.coupling(g, i, j) + self.coupling(g, j, i)
                    out[kind] = (
                        out[kind].at[group["indices"][:, i]].add(jnp.asarray(same, dtype)[:, None, None] * cross)
                    )
        return out

    def coupling(self, group: int, row: int, column: int) -> Float[Array, "E a b"]:
        """The blocks of :math:`P_e` between argument ``row`` and argument ``column`` of every term of cost
        group ``group``: ``(E, d_row, d_column)``."""
        rows = self.structure.argument_columns(group, row)
        columns = self.structure.argument_columns(group, column)
        if self.products is not None:
            return self.products[group][:, rows, columns]
        jac = self._jacobians()[group]
        return block_products(jac[:, :, rows], jac[:, :, columns])


class AbstractGraphLinearSolver(AbstractLinearSolver[BlockSparseLinearization]):
    """A step solver for :func:`jaxnls.graph.solve`; the solve binds the graph's structure to it.

    Subclasses implement :meth:`solve_system`; every solve goes through ``jax.lax.custom_linear_solve``
    (symmetric), so the solution is differentiable in forward and reverse mode with respect to the
    matrix and the right-hand side (the unrolled adjoints differentiate through the steps, the implicit
    adjoint solves its system with the same solver) without differentiating the solver's own iterations
    or its host-side factorisation.

    Attributes:
        structure: the graph's structure, bound by :func:`jaxnls.graph.solve` (keyword-only; leave it None).
    """

    structure: GraphStructure | None = eqx.field(static=True, default=None, kw_only=True)

    def linearize(
        self, residual: Float[Array, " m"], jacobian: Sequence[Float[Array, "E k D"]]
    ) -> BlockSparseLinearization:
        structure = self.structure
        if structure is None:
            raise TypeError(f"{type(self).__name__} solves factor graphs: use it with jaxnls.graph.solve")
        sizes = [jac.shape[0] * jac.shape[1] for jac in jacobian]
        pieces = [piece.reshape(jac.shape[:2]) for piece, jac in zip(split_by_sizes(residual, sizes), jacobian)]
        return BlockSparseLinearization(
            gradient=structure.transpose_times(jacobian, pieces), blocks=tuple(jacobian), structure=structure
        )

    def solve(self, lin: BlockSparseLinearization, damping: Float[Array, " n"]) -> Float[Array, " n"]:
        """δ with ``(JᵀJ + diag(damping)) δ = -Jᵀr``."""
        operator = NormalOperator(structure=lin.structure, jacobians=lin.blocks, products=None, damping=damping)
        return self.solve_operator(operator, -lin.gradient)

    def solve_operator(self, operator: NormalOperator, rhs: Float[Array, " n"]) -> Float[Array, " n"]:
        """:math:`A^{-1}` ``rhs``, differentiable with respect to ``operator`` and ``rhs``."""
        return jax.lax.custom_linear_solve(
            operator.times, rhs, lambda _, b: self.solve_system(operator, b), symmetric=True
        )

    @abc.abstractmethod
    def solve_system(self, operator: NormalOperator, rhs: Float[Array, " n"]) -> Float[Array, " n"]:
        """x with ``A x = rhs`` (``A`` symmetric positive semi-definite; a singular ``A`` gets a finite x)."""


def _block_jacobi(operator: NormalOperator) -> Callable[[Float[Array, " n"]], Float[Array, " n"]]:
    """The preconditioner v ↦ blockdiag(A)⁻¹ v, each d×d block Jacobi-scaled and pivot-floored before
    inversion (a fixed variable's zero block gives a finite inverse)."""
    structure = operator.structure
    inverses = {kind: invert_blocks(block) for kind, block in operator.block_diagonal().items()}

    def apply(v):
        parts = structure.flat_to_kinds(v)
        return structure.kinds_to_flat({k: jnp.einsum("nij,nj->ni", inverses[k], parts[k]) for k in structure.kinds})

    return apply


def block_products(a: Float[Array, "E k p"], b: Float[Array, "E k q"]) -> Float[Array, "E p q"]:
    r""":math:`a_e^\top b_e` for every term :math:`e`, summed as :math:`k` outer products of rows: for the
    small blocks of factor graphs XLA:CPU runs this 2-3× faster than the batched ``einsum`` (measured:
    83,718 terms of 2×12, 42 → 24 ms; 60,000 of 6×12, 45 → 17 ms)."""
    return sum_over_rows(a[:, :, :, None], b[:, :, None, :])


def sum_over_rows(a: Float[Array, "E k ..."], b: Float[Array, "E k ..."]) -> Float[Array, "E ..."]:
    r""":math:`\sum_i a_{e,i} b_{e,i}` (elementwise, broadcast) over the rows ``i`` (axis 1), unrolled for up to
    16 rows (see :func:`block_products`)."""
    k = a.shape[1]
    if not 0 < k <= 16:  # past a few rows the unrolled sum only lengthens the program
        return jnp.sum(a * b, axis=1)
    return sum((a[:, i] * b[:, i] for i in range(1, k)), start=a[:, 0] * b[:, 0])


def invert_blocks(blocks: Float[Array, "N d d"]) -> Float[Array, "N d d"]:
    """Inverses of a stack of symmetric positive (semi)definite ``(N, d, d)`` blocks, each Jacobi-scaled to
    unit diagonal and pivot-floored (``10·d·ε``) first, so a zero or singular block gives a finite inverse."""
    d = blocks.shape[-1]
    eye = jnp.eye(d, dtype=blocks.dtype)
    diag = jnp.diagonal(blocks, axis1=1, axis2=2)
    scale = jnp.where(diag > 0, jax.lax.rsqrt(jnp.where(diag > 0, diag, 1.0)), 1.0)
    scaled = blocks * scale[:, :, None] * scale[:, None, :] + pivot_floor(d, blocks.dtype) * eye[None]
    inverse = _cofactor_inverse(scaled) if d <= 3 else jnp.linalg.inv(scaled)
    return inverse * scale[:, :, None] * scale[:, None, :]


def _cofactor_inverse(blocks: Float[Array, "N d d"]) -> Float[Array, "N d d"]:
    """Inverses of ``(N, d, d)`` blocks, d ≤ 3, as adjugate / determinant: elementwise operations that
    vectorise over N (a batched LAPACK inverse of 22,106 3×3 blocks takes 6 ms, this 0.2 ms); exact for
    any nonsingular block, definite or not."""
    d = blocks.shape[-1]
    if d == 1:
        return 1.0 / blocks
    if d == 2:
        a, b, c, e = blocks[:, 0, 0], blocks[:, 0, 1], blocks[:, 1, 0], blocks[:, 1, 1]
        adjugate = jnp.stack([jnp.stack([e, -b], -1), jnp.stack([-c, a], -1)], -2)
        return adjugate / (a * e - b * c)[:, None, None]
    m = [[blocks[:, i, j] for j in range(3)] for i in range(3)]

    def cofactor(i, j):
        rows = [r for r in range(3) if r != i]
        cols = [c for c in range(3) if c != j]
        minor = m[rows[0]][cols[0]] * m[rows[1]][cols[1]] - m[rows[0]][cols[1]] * m[rows[1]][cols[0]]
        return minor if (i + j) % 2 == 0 else -minor

    cofactors = [[cofactor(i, j) for j in range(3)] for i in range(3)]
    determinant = m[0][0] * cofactors[0][0] + m[0][1] * cofactors[0][1] + m[0][2] * cofactors[0][2]
    # the adjugate is the transposed cofactor matrix
    adjugate = jnp.stack([jnp.stack([cofactors[j][i] for j in range(3)], -1) for i in range(3)], -2)
    return adjugate / determinant[:, None, None]


class PCG(AbstractGraphLinearSolver):
    r"""Block-Jacobi preconditioned conjugate gradients on :math:`A δ = b`,
    :math:`A = J^\top J + \mathrm{diag}(d)`, matrix-free.

    Stops when :math:`\|A δ - b\| \le` ``rtol`` :math:`\cdot\|b\|` (and, as lineax's ``CG``, the
    last update :math:`\|Δδ\| \le` ``rtol`` :math:`\cdot\|b\|`) or after ``max_steps`` iterations (the
    step is then inexact; the outer loop measures its actual gain, so an inexact step is only less
    efficient, never wrong). Each iteration costs two passes over the Jacobian blocks. Pure JAX: runs on
    any backend and under ``vmap``. Where CG breaks down (a singular system: an unanchored graph's gauge
    directions) CG returns NaN; the step is then the preconditioned right-hand side
    :math:`M^{-1} b` (a scaled steepest-descent step), which the outer loop judges like any other.

    Attributes:
        rtol: relative residual tolerance, default 1e-6.
        max_steps: CG iteration limit per step, default 500.
        structure: the graph's structure, bound by :func:`jaxnls.graph.solve` (keyword-only; leave it None).
    """

    rtol: float = 1e-6
    max_steps: int = 500

    def solve_system(self, operator: NormalOperator, rhs: Float[Array, " n"]) -> Float[Array, " n"]:
        return conjugate_gradient(operator.times, _block_jacobi(operator), rhs, self.rtol, self.max_steps)


def conjugate_gradient(
    matvec: Callable[[Float[Array, " n"]], Float[Array, " n"]],
    precondition: Callable[[Float[Array, " n"]], Float[Array, " n"]],
    rhs: Float[Array, " n"],
    rtol: float,
    max_steps: int,
) -> Float[Array, " n"]:
    r"""Preconditioned CG from 0 for a symmetric positive (semi)definite operator (one problem), iterating as
    lineax's ``CG`` does (the residual recomputed as ``b - A x`` every 10th iteration and updated otherwise; a
    breakdown where :math:`|p^\top A p| \le 100\,nε\,|r^\top z|`) and stopping once both the residual and the
    last update are within ``rtol·‖b‖`` (2-norms) or after ``max_steps``.

    Stopped by the count, it returns the iterate of lowest model value :math:`φ(x) = ½x^\top Ax - b^\top x =
    -½(r + b)^\top x` among those whose residual was recomputed (and the last): in exact arithmetic φ falls at
    every iteration, so that is the last iterate, but past the accuracy rounding allows (an ill-conditioned
    system, a tolerance near ε) the iterate drifts while the updated residual says otherwise, and the recomputed
    one shows it. Where CG breaks down (a non-finite iterate: a singular system) the preconditioned right-hand
    side instead."""
    tolerance = rtol * jnp.linalg.norm(rhs)
    breakdown = 100 * rhs.size * jnp.finfo(rhs.dtype).eps

    def model(x, residual):
        return -0.5 * (residual + rhs) @ x

    def unfinished(carry):
        k, _, residual, _, rz, update_norm, _, _ = carry
        return (rz > 0) & (k < max_steps) & ((jnp.linalg.norm(residual) > tolerance) | (update_norm > tolerance))

    def iteration(carry, recompute: bool):
        k, x, residual, direction, rz, _, best, best_value = carry
        product = matvec(direction)
        curvature = direction @ product
        step = jnp.where(jnp.abs(curvature) > breakdown * jnp.abs(rz), rz / curvature, jnp.nan)
        update = step * direction
        x = x + update
        residual = rhs - matvec(x) if recompute else residual - step * product
        if recompute:
            value = model(x, residual)
            better = value < best_value
            best, best_value = jnp.where(better, x, best), jnp.where(better, value, best_value)
        z = precondition(residual)
        rz_new = residual @ z
        direction = z + (rz_new / rz) * direction
        return k + 1, x, residual, direction, rz_new, jnp.linalg.norm(update), best, best_value

    def ten_iterations(carry):
        # nine with the residual updated, then (if still unfinished) one that recomputes it: the count is
        # batched under vmap, so the schedule is the loops' structure rather than a branch on it
        carry = jax.lax.while_loop(
            lambda c: unfinished(c) & (c[0] % 10 != 9), lambda c: iteration(c, recompute=False), carry
        )
        return jax.lax.cond(unfinished(carry), lambda c: iteration(c, recompute=True), lambda c: c, carry)

    x = jnp.zeros_like(rhs)
    z = precondition(rhs)
    carry = (jnp.asarray(0), x, rhs, z, rhs @ z, jnp.asarray(jnp.inf, rhs.dtype), x, jnp.zeros((), rhs.dtype))
    _, x, residual, _, _, update_norm, best, best_value = jax.lax.while_loop(unfinished, ten_iterations, carry)
    converged = (jnp.linalg.norm(residual) <= tolerance) & (update_norm <= tolerance)
    last_is_best = converged | ~(best_value < model(x, rhs - matvec(x)))
    value = jnp.where(last_is_best, x, best)
    return jnp.where(jnp.all(jnp.isfinite(x)) & jnp.all(jnp.isfinite(value)), value, precondition(rhs))


class SparseDirect(AbstractGraphLinearSolver):
    r"""Sparse direct factorisation of :math:`A = J^\top J + \mathrm{diag}(d)`: supernodal Cholesky by CHOLMOD
    (SuiteSparse, through ``sparsax``'s XLA FFI) or :math:`LDL^\top` by QDLDL (the factorisation inside OSQP).

    Both factor :math:`A` Jacobi-scaled to unit diagonal with its pivots floored at ``10·n·ε`` like the dense
    solvers'; the fill-reducing ordering and the symbolic factorisation are computed once per graph
    structure, and each iteration only refactors numerically.

    - **CHOLMOD** (``factorization="cholmod"``): :math:`A` is assembled inside the compiled program (its
      upper triangle, summed over the terms' :math:`J_e^\top J_e` blocks) and factored by an FFI call: the loop
      never leaves XLA, the program can be kept in JAX's persistent compilation cache (``jaxnls solve``'s
      second run of a file does not recompile), and a batch is factored in one call. Per refactorisation, 2
      cores: sphere2500 (15,000 unknowns) 65 ms against QDLDL's 88, torus3D (30,000) 155 against 289,
      w10000 (30,000, a 2-D chain) 40 against 30. Needs ``sparsax`` (a dependency on Linux x86-64 and
      Windows) and float64. Those times are the serial ATLAS bundled with ``sparsax``; on SciPy's BLAS, which
      jaxnls gives CHOLMOD by default (:func:`jaxnls.graph.use_blas`), sphere2500 takes 16–20 ms and torus3D 39.
    - **QDLDL** (``factorization="qdldl"``): :math:`A` is summed and factored on the host through
      ``jax.pure_callback``; under ``vmap`` the problems are factored one after another; on an accelerator
      every iteration copies the matrix to the host and back. It also factors indefinite matrices, so it
      is what every :math:`A` built from symmetric blocks (``NormalOperator.products``: the implicit
      adjoint's exact Hessian) uses under either setting.

    ``"auto"`` (default) takes CHOLMOD where it applies (float64, ``sparsax`` importable, the CPU as JAX's
    default backend) and QDLDL elsewhere, and under a caller's ``jax.vmap`` around :func:`jaxnls.graph.solve`
    (CHOLMOD's call is batched once, by the solve's own batch; ``"cholmod"`` is refused there). Where a system
    cannot be factored (a non-finite entry, a zero pivot beyond the floor) the step is the scaled gradient
    direction :math:`\mathrm{diag}(A)^{-1} b`, which the outer loop judges like any other; a problem's failure
    never reaches its neighbours in a batch. CHOLMOD stops the whole computation with an error if the floored,
    scaled matrix is numerically indefinite, which rounding can only cause for a positive semi-definite
    :math:`J^\top J + \mathrm{diag}(d)` near the floor;
    :func:`jaxnls.graph.solve` then repeats the solve with QDLDL and warns (inside a caller's ``jit`` the
    error propagates: pass ``factorization="qdldl"`` there if it happens).

    Attributes:
        factorization: ``"auto"``, ``"cholmod"`` or ``"qdldl"``.
        assembly: CHOLMOD's assembly plan (:class:`UpperAssembly`), passed in by :func:`jaxnls.graph.solve`
            (keyword-only; leave it None: without it the plan enters the program as constants).
        structure: the graph's structure, bound by :func:`jaxnls.graph.solve` (keyword-only; leave it None).
    """

    factorization: str = "auto"
    assembly: UpperAssembly | None = eqx.field(default=None, kw_only=True)

    def __check_init__(self):
        if self.factorization not in _FACTORIZATIONS:
            raise ValueError(
                f"SparseDirect: factorization must be one of {', '.join(map(repr, _FACTORIZATIONS))}, "
                f"got {self.factorization!r}"
            )

    def uses_cholmod(self, dtype: DTypeLike) -> bool:
        r"""Whether the step systems (:math:`J^\top J + \mathrm{diag}(d)`) of a ``dtype`` problem go to CHOLMOD."""
        if self.factorization == "qdldl":
            return False
        available = jnp.dtype(dtype) == jnp.float64 and cholmod_available()
        if self.factorization == "cholmod" and not available:
            raise ValueError(
                "SparseDirect(factorization='cholmod') needs the sparsax package (pip install sparsax; wheels "
                f"for Linux x86-64 and Windows), a float64 problem (this one is {jnp.dtype(dtype).name}) and the "
                f"CPU as JAX's default backend (it is {jax.default_backend()!r}); factorization='qdldl' works "
                "everywhere"
            )
        return available

    def solve_system(self, operator: NormalOperator, rhs: Float[Array, " n"]) -> Float[Array, " n"]:
        if operator.jacobians is not None and self.uses_cholmod(rhs.dtype):
            return _cholmod_solve(operator, rhs, self.assembly)
        return _qdldl_solve(operator, rhs)


_FACTORIZATIONS = ("auto", "cholmod", "qdldl")

#: The XLA FFI targets of ``sparsax.solve`` (one problem, a batch): a stored program (:mod:`jaxnls._programs`)
#: may call them, since ``sparsax`` registers them in every process that imports it.
CHOLMOD_CUSTOM_CALLS = ("sparsax_solve_f64", "sparsax_solve_batched_f64")

#: The message of sparsax's FFI when CHOLMOD meets a non-positive pivot (it stops the computation).
CHOLMOD_NOT_POSITIVE_DEFINITE = "sparsax: matrix is not positive definite"


def cholmod_available() -> bool:
    """Whether CHOLMOD can be called from inside ``jit``: ``sparsax`` importable, float64 enabled and the default
    backend the CPU (``sparsax`` registers its FFI for the CPU only; on an accelerator QDLDL is the direct solver)."""
    if not jax.config.read("jax_enable_x64") or jax.default_backend() != "cpu":
        return False
    try:
        import_sparsax()
    except ImportError:
        return False
    return True


def _contributions(operator: NormalOperator) -> Float[Array, " c"]:
    """``[vec(P_e) for every term e of every group, d]``: what :meth:`GraphStructure.pattern`'s ``position`` sums."""
    return jnp.concatenate([product.ravel() for product in operator.term_products()] + [operator.diagonal()])


def upper_pairs(size: int) -> tuple[np.ndarray, np.ndarray]:
    """The entries ``(p, q)``, ``p ≤ q``, of a symmetric ``size × size`` block, row by row."""
    return np.triu_indices(size)


def _upper_products(operator: NormalOperator) -> Float[Array, " c"]:
    """``[P_e[p, q] for (p, q) in upper_pairs(D), for every term e of every group]``: what
    :class:`UpperAssembly`'s ``segment`` sums (each block's lower half is its upper half's mirror)."""
    parts = []
    if operator.products is not None:
        for product in operator.products:
            p, q = upper_pairs(product.shape[-1])
            parts.append(product[:, p, q].ravel())
    else:
        for jac in operator._jacobians():
            p, q = upper_pairs(jac.shape[-1])
            # summed as block_products sums them (bit for bit the same entries)
            parts.append(sum_over_rows(jac[:, :, p], jac[:, :, q]).ravel())
    return jnp.concatenate(parts)


class UpperAssembly(eqx.Module):
    """Where CHOLMOD's matrix comes from, once per structure: the upper entry each product of
    :func:`_upper_products` is summed into (``segment``; where a term names one variable twice, some of
    its off-diagonal products land on the diagonal twice, and ``repeat`` lists them), and those entries'
    coordinates (COO, ``row`` ≤ ``column``) and diagonal slots (where the damped diagonal is added).
    Summing only each term block's upper half (21 of 36 products for a pose-graph edge) leaves the lower
    half uncomputed: w10000's system took 2.3 M products, of which the matrix kept 1.4 M.
    :func:`jaxnls.graph.solve` passes the plan into the compiled program as arguments (built inside, these
    megabytes of indices would be constants that every run of a cached program reads back and hashes).

    Attributes:
        segment: the upper entry each product (then each repeated one) is summed into.
        repeat: the products summed a second time.
        row: the row of each upper entry.
        column: the column of each upper entry (at or right of its row).
        diagonal: the upper entry of each diagonal element.
        num_entries: how many upper entries there are.
        structure_key: the :attr:`GraphStructure.key` of the structure it was made for.
    """

    segment: Int[np.ndarray, " c"]
    repeat: Int[np.ndarray, " r"]
    row: Int[np.ndarray, " u"]
    column: Int[np.ndarray, " u"]
    diagonal: Int[np.ndarray, " n"]
    num_entries: int = eqx.field(static=True)
    structure_key: tuple = eqx.field(static=True)

    @classmethod
    def of(cls, structure: GraphStructure) -> UpperAssembly:
        """The plan for a graph's structure (host side, NumPy).

        Args:
            structure: the structure whose :meth:`GraphStructure.pattern` the plan follows.

        Returns:
            The plan, its index arrays int32.
        """
        _, indices, rows, position, diagonal_at = structure.pattern(keep=False)
        upper_entries = np.flatnonzero(indices <= rows)
        slot = np.full(indices.shape[0], -1, position.dtype)
        slot[upper_entries] = np.arange(upper_entries.shape[0])
        segments, repeats = [], []
        done = counted = 0
        for group in structure.groups:
            columns = group["host_columns"]
            size = columns.shape[1]
            p, q = upper_pairs(size)
            full = position[done : done + columns.shape[0] * size * size].reshape(-1, size, size)
            # P_e[p, q] = P_e[q, p]: whichever of the two lands on or above the diagonal
            upper, mirror = slot[full[:, p, q]], slot[full[:, q, p]]
            segments.append(np.where(upper >= 0, upper, mirror).ravel())
            twice = (columns[:, p] == columns[:, q]) & (p != q)  # both land on one diagonal entry
            repeats.append(counted + np.flatnonzero(twice.ravel()))
            done += full.size
            counted += upper.size
        segment = np.concatenate(segments)
        repeat = np.concatenate(repeats)
        return cls(
            segment=np.concatenate([segment, segment[repeat]]).astype(np.int32),
            repeat=repeat.astype(np.int32),
            row=indices[upper_entries].astype(np.int32),
            column=rows[upper_entries].astype(np.int32),
            diagonal=slot[diagonal_at].astype(np.int32),
            num_entries=int(upper_entries.shape[0]),
            structure_key=structure.key,
        )


class RecentPlans:
    """Host-side plans of the last few graph structures, by key (the structure's, plus whatever else the plan
    depends on): repeated solves of one graph (new starts, a training loop, a benchmark) and the trace that reads
    a plan already passed in reuse it instead of rebuilding it (w10000's CHOLMOD plan: ~0.1 s).

    Args:
        kept: how many plans to keep (the least recently used goes first).
    """

    def __init__(self, kept: int = 4):
        self._plans: collections.OrderedDict = collections.OrderedDict()
        self._kept = kept

    def get(self, key, make: Callable[[], object]):
        """The plan stored under ``key``, or ``make()``'s, stored."""
        plan = self._plans.pop(key, None)
        if plan is None:
            plan = make()
        self._plans[key] = plan
        while len(self._plans) > self._kept:
            self._plans.popitem(last=False)
        return plan


_RECENT_ASSEMBLIES = RecentPlans()


def assembly_for(structure: GraphStructure) -> UpperAssembly:
    """:meth:`UpperAssembly.of` ``structure``, reused for a structure with the same key as one of the last few."""
    return _RECENT_ASSEMBLIES.get(structure.key, lambda: UpperAssembly.of(structure))


def _cholmod_solve(operator: NormalOperator, rhs: Float[Array, " n"], plan: UpperAssembly | None) -> Float[Array, " n"]:
    sparsax = import_sparsax()
    structure = operator.structure
    if plan is None:  # (not passed in: inside a caller's jit, or a direct use of the solver)
        plan = assembly_for(structure)
    elif plan.structure_key != structure.key:
        raise ValueError("SparseDirect: its assembly plan was made for another graph structure (leave assembly=None)")
    products = _upper_products(operator)
    if plan.repeat.shape[0]:  # (a static size: no copy of the products where no term names a variable twice)
        products = jnp.concatenate([products, products[plan.repeat]])
    # the damped diagonal added at its entries afterwards: concatenated to the products, it would copy them all
    data = jax.ops.segment_sum(products, plan.segment, num_segments=plan.num_entries)
    data = data.at[plan.diagonal].add(operator.diagonal())
    diagonal = data[plan.diagonal]
    scale = jnp.where(diagonal > 0, jax.lax.rsqrt(jnp.where(diagonal > 0, diagonal, 1.0)), 1.0)
    scaled = (data * scale[plan.row] * scale[plan.column]).at[plan.diagonal].add(pivot_floor(structure.n, rhs.dtype))
    fallback = rhs * scale**2
    # a problem whose matrix is not finite is given the identity instead: CHOLMOD would stop the whole batch
    finite = jnp.all(jnp.isfinite(scaled)) & jnp.all(jnp.isfinite(rhs))
    # (the identity written into the one buffer: a separate identity matrix is a third copy of the data)
    matrix = jnp.where(finite, scaled, 0.0).at[plan.diagonal].set(jnp.where(finite, scaled[plan.diagonal], 1.0))
    x = sparsax.solve(plan.row, plan.column, matrix, jnp.where(finite, rhs * scale, 0.0))
    x = x * scale
    return jnp.where(finite & jnp.all(jnp.isfinite(x)), x, fallback)


def _qdldl_solve(operator: NormalOperator, rhs: Float[Array, " n"]) -> Float[Array, " n"]:
    structure = operator.structure
    # the per-term products JₑᵀJₑ (and d) are summed into the matrix data on the host by np.bincount over the
    # static positions, with the rest of the host-side work
    contributions = _contributions(operator)
    n = structure.n
    dtype = rhs.dtype
    floor = pivot_floor(n, dtype)

    def host_solve(contributions, rhs):
        qdldl, _ = sparse_modules()
        matrix, scale, _ = jacobi_scaled_upper(structure, np.asarray(contributions, np.float64), floor)
        rhs = np.asarray(rhs, np.float64)
        try:
            factor = structure.host_cache.get("ldl")
            if factor is None:  # AMD ordering + symbolic factorisation, once per structure
                factor = structure.host_cache["ldl"] = qdldl.Solver(matrix)
            else:
                factor.update(matrix)
            x = factor.solve(rhs * scale) * scale
        except (ValueError, RuntimeError):  # a zero pivot beyond the floor: the scaled gradient direction
            structure.host_cache.pop("ldl", None)
            x = rhs * scale**2
        if not np.all(np.isfinite(x)):
            x = rhs * scale**2
        return x.astype(dtype)

    return jax.pure_callback(
        host_solve, jax.ShapeDtypeStruct((n,), dtype), contributions, rhs, vmap_method="sequential"
    )


def jacobi_scaled_upper(structure, contributions: np.ndarray, shift: float = 0.0):
    r"""Host side: the matrix :math:`A` whose entries are the sums of ``contributions`` (``[vec(J_eᵀJ_e) for every
    term e of every group, d]``) over the structure's pattern, Jacobi-scaled to a unit diagonal
    (:math:`D^{-1/2} A D^{-1/2}`, a zero diagonal entry left unscaled) plus ``shift·I``, as the upper triangle in
    CSC (what QDLDL factors). Returns ``(matrix, scale, diagonal)`` with ``scale = D^{-1/2}`` and ``diagonal``
    that of :math:`A`."""
    _, sparse = sparse_modules()
    _, indices, rows, position, diagonal_at = structure.pattern()
    upper_indptr, upper = structure.upper_pattern()
    data = np.bincount(position, weights=contributions, minlength=indices.shape[0])
    diagonal = data[diagonal_at]
    scale = np.where(diagonal > 0, 1.0 / np.sqrt(np.where(diagonal > 0, diagonal, 1.0)), 1.0)
    scaled = data * scale[rows] * scale[indices]
    scaled[diagonal_at] += shift
    matrix = sparse.csc_matrix((scaled[upper], indices[upper], upper_indptr), shape=(structure.n, structure.n))
    return matrix, scale, diagonal


def sparse_modules():
    try:
        import qdldl
        import scipy.sparse as sparse
    except ImportError as err:  # pragma: no cover - both are dependencies
        raise ImportError(
            "jaxnls.graph.SparseDirect needs qdldl and scipy (pip install qdldl scipy); "
            "jaxnls.graph.PCG() needs nothing beyond JAX"
        ) from err
    return qdldl, sparse
