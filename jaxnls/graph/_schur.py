r"""The Schur complement step solver for bundle adjustment and other problems with a kind of variable
that no cost term connects to another of its kind (points, landmarks).

Order the unknowns as kept (cameras) and eliminated (points), :math:`H = J^\top J + \mathrm{diag}(d)`:

.. math::  \begin{pmatrix} H_{cc} & H_{cp} \\ H_{pc} & H_{pp} \end{pmatrix}
           \begin{pmatrix} δ_c \\ δ_p \end{pmatrix} = -\begin{pmatrix} g_c \\ g_p \end{pmatrix}.

:math:`H_{pp}` is block diagonal (one :math:`3\times3` block per point), so it is inverted block by
block and the points are eliminated: the reduced camera system

.. math::  S\,δ_c = -g_c + H_{cp} H_{pp}^{-1} g_p, \qquad S = H_{cc} - H_{cp} H_{pp}^{-1} H_{pc},

is solved by conjugate gradients, then :math:`δ_p = -H_{pp}^{-1}(g_p + H_{pc} δ_c)`. :math:`S` is never
formed (Ceres' ``ITERATIVE_SCHUR``): a product :math:`S v` is two products with :math:`J^\top J` and one
with :math:`H_{pp}^{-1}`. The preconditioner is the block diagonal of :math:`S` itself (Ceres'
``SCHUR_JACOBI``): per camera :math:`H_{cc,ii} - \sum_e W_e H_{pp,p(e)}^{-1} W_e^\top` with
:math:`W_e = J_{c,e}^\top J_{p,e}` over the terms :math:`e` that see camera :math:`i`.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ..linear import pivot_floor
from ._linear import AbstractGraphLinearSolver, NormalOperator, conjugate_gradient, invert_blocks


class _Elimination:
    """The pieces both Schur solvers share for one system: the kept kinds, the inverses of the eliminated
    kind's diagonal blocks, products with A per kind, and the reduction / back substitution."""

    def __init__(self, operator, eliminated: str, owner: str):
        structure = operator.structure
        _check_eliminable(structure, eliminated, owner)
        self.operator, self.structure, self.eliminated = operator, structure, eliminated
        self.kept = [kind for kind in structure.kinds if kind != eliminated]
        self.diagonal_blocks = operator.block_diagonal()
        self.hpp_inverse = invert_blocks(self.diagonal_blocks[eliminated])

    def zeros(self, kind, dtype):
        return jnp.zeros((self.structure.count[kind], self.structure.dim[kind]), dtype)

    def h_times(self, parts):
        """A applied to a vector given per kind (missing kinds are zero)."""
        structure = self.structure
        dtype = next(iter(parts.values())).dtype
        flat = structure.kinds_to_flat({kind: parts.get(kind, self.zeros(kind, dtype)) for kind in structure.kinds})
        return structure.flat_to_kinds(self.operator.times(flat))

    def solve_points(self, b):
        return jnp.einsum("nij,nj->ni", self.hpp_inverse, b)

    def flatten(self, parts):
        return jnp.concatenate([jnp.ravel(parts[kind]) for kind in self.kept])

    def unflatten(self, v):
        out, start = {}, 0
        for kind in self.kept:
            size = self.structure.count[kind] * self.structure.dim[kind]
            out[kind] = v[start : start + size].reshape(self.structure.count[kind], self.structure.dim[kind])
            start += size
        return out

    def reduced_rhs(self, rhs_parts):
        """b_c - A_cp A_pp⁻¹ b_p."""
        back = self.h_times({self.eliminated: self.solve_points(rhs_parts[self.eliminated])})
        return self.flatten({kind: rhs_parts[kind] - back[kind] for kind in self.kept})

    def full_step(self, camera_step, rhs_parts):
        """δ from the kept kinds' δ_c: δ_p = A_pp⁻¹ (b_p - A_pc δ_c)."""
        coupling = self.h_times(camera_step)[self.eliminated]
        point_step = self.solve_points(rhs_parts[self.eliminated] - coupling)
        return self.structure.kinds_to_flat({**camera_step, self.eliminated: point_step})


class SchurPCG(AbstractGraphLinearSolver):
    r"""Eliminate the variables of kind ``eliminate`` (default ``"point"``) and solve the reduced
    system by conjugate gradients preconditioned with its own block diagonal (module docstring).
    Stops at ``‖residual‖ ≤ rtol·‖rhs‖`` of the reduced system or after ``max_steps`` iterations.
    Pure JAX (any backend, ``vmap``). Raises at trace time if a cost term connects two variables of
    the eliminated kind (their block of :math:`H` would not be block diagonal).

    Attributes:
        eliminate: the variable kind eliminated (static, default ``"point"``).
        rtol: relative residual tolerance of CG on the reduced system, default 1e-8.
        max_steps: CG iteration limit per step, default 500.
        structure: the graph's structure, bound by :func:`jaxnls.graph.solve` (keyword-only; leave it None).
    """

    eliminate: str = eqx.field(static=True, default="point")
    rtol: float = 1e-8
    max_steps: int = 500

    def solve_system(self, operator: NormalOperator, rhs: Float[Array, " n"]) -> Float[Array, " n"]:
        elimination = _Elimination(operator, self.eliminate, "SchurPCG")
        rhs_parts = operator.structure.flat_to_kinds(rhs)

        def schur_times(v):
            kept_parts = elimination.unflatten(v)
            full = elimination.h_times(kept_parts)
            correction = elimination.h_times(
                {elimination.eliminated: elimination.solve_points(full[elimination.eliminated])}
            )
            return elimination.flatten({kind: full[kind] - correction[kind] for kind in elimination.kept})

        precondition = _schur_jacobi(operator, elimination)
        camera_step = elimination.unflatten(
            conjugate_gradient(schur_times, precondition, elimination.reduced_rhs(rhs_parts), self.rtol, self.max_steps)
        )
        return elimination.full_step(camera_step, rhs_parts)


class SchurDirect(AbstractGraphLinearSolver):
    r"""Eliminate the variables of kind ``eliminate`` (default ``"point"``) and solve the reduced camera
    system :math:`S δ_c = b_c - A_{cp}A_{pp}^{-1}b_p` by a dense factorisation of
    :math:`S = A_{cc} - A_{cp}A_{pp}^{-1}A_{pc}` (Ceres' ``DENSE_SCHUR``): exact, pure JAX (jit, vmap, any
    backend; no host round trip), for problems whose kept unknowns number up to a few thousand
    (:math:`S` is dense: ``n_c²`` memory, ``n_c³/3`` flops per step).

    :math:`S` is assembled from its parts: :math:`A_{cc}` from the terms' ``J_eᵀJ_e`` blocks over the kept
    variables, and :math:`A_{cp}A_{pp}^{-1}A_{pc}` as
    :math:`\sum_p\sum_{e,e' \ni p} W_e A_{pp}^{-1}W_{e'}^\top` over the pairs of terms that see the same
    eliminated variable (listed once per structure, on the host), accumulated in chunks of ``chunk`` pairs so
    that memory stays bounded. Jacobi-scaled, shifted by ``10·n·ε`` like the dense solvers' pivots, and
    factored by LU (the implicit adjoint's exact Hessian, which these solves also serve, need not be positive
    definite).

    Attributes:
        eliminate: the variable kind eliminated (static, default ``"point"``); no cost term may connect two
            variables of this kind.
        chunk: the pairs of terms accumulated at a time into :math:`S` (static, default 65536): bounds the
            memory of the assembly.
        structure: the graph's structure, bound by :func:`jaxnls.graph.solve` (keyword-only; leave it None).
    """

    eliminate: str = eqx.field(static=True, default="point")
    chunk: int = eqx.field(static=True, default=65536)

    def solve_system(self, operator: NormalOperator, rhs: Float[Array, " n"]) -> Float[Array, " n"]:
        elimination = _Elimination(operator, self.eliminate, "SchurDirect")
        rhs_parts = operator.structure.flat_to_kinds(rhs)
        reduced = _reduced_camera_matrix(operator, elimination, self.chunk)
        n = reduced.shape[0]
        diagonal = jnp.diagonal(reduced)
        scale = jnp.where(diagonal > 0, jax.lax.rsqrt(jnp.where(diagonal > 0, diagonal, 1.0)), 1.0)
        scaled = reduced * scale[:, None] * scale[None, :] + pivot_floor(n, rhs.dtype) * jnp.eye(n, dtype=rhs.dtype)
        # (LU, not Cholesky: the implicit adjoint's exact Hessian need not be positive definite)
        camera = jnp.linalg.solve(scaled, elimination.reduced_rhs(rhs_parts) * scale) * scale
        return elimination.full_step(elimination.unflatten(camera), rhs_parts)


def _kept_positions(structure, kept) -> np.ndarray:
    """For every flat tangent coordinate its place among the kept kinds' coordinates (flatten's order), or
    the dummy place n_kept for the eliminated kind's."""
    n_kept = sum(structure.count[kind] * structure.dim[kind] for kind in kept)
    positions = np.full(structure.n, n_kept, np.int64)
    start = 0
    for kind in kept:
        size = structure.count[kind] * structure.dim[kind]
        positions[structure.offset[kind] : structure.offset[kind] + size] = np.arange(start, start + size)
        start += size
    return positions


def _reduced_camera_matrix(operator, elimination, chunk: int):
    """S = A_cc - A_cp A_pp⁻¹ A_pc, dense over the kept coordinates."""
    structure, eliminated = elimination.structure, elimination.eliminated
    positions = _kept_positions(structure, elimination.kept)
    n_kept = sum(structure.count[kind] * structure.dim[kind] for kind in elimination.kept)
    products = operator.term_products()
    dtype = products[0].dtype
    size = n_kept + 1  # one dummy row/column that collects every eliminated coordinate's entries
    matrix = jnp.zeros((size, size), dtype)
    for product, group in zip(products, structure.groups):
        place = positions[group["columns"]]  # (E, D)
        matrix = matrix.at[place[:, :, None], place[:, None, :]].add(product)
    diagonal = operator.diagonal()
    kept_diagonal = jnp.zeros((size,), dtype).at[positions].add(diagonal)
    matrix = matrix + jnp.diag(kept_diagonal)

    # the terms' camera-point blocks W (slots), padded to one width, and the pairs that share a point
    slots, slot_places, slot_points = [], [], []
    width = max(structure.dim[kind] for kind in elimination.kept)
    d_point = structure.dim[eliminated]
    for g, group in enumerate(structure.groups):
        if eliminated not in group["kinds"]:
            continue
        j_point = group["kinds"].index(eliminated)
        starts = np.cumsum((0,) + group["dims"])
        for j, kind in enumerate(group["kinds"]):
            if kind == eliminated:
                continue
            coupling = operator.coupling(g, j, j_point)  # (E, d_j, d_point)
            pad = width - coupling.shape[1]
            slots.append(jnp.pad(coupling, ((0, 0), (0, pad), (0, 0))))
            place = positions[group["columns"][:, starts[j] : starts[j + 1]]]
            slot_places.append(np.pad(place, ((0, 0), (0, pad)), constant_values=n_kept))
            slot_points.append(group["indices"][:, j_point])
    if not slots:
        return matrix[:n_kept, :n_kept]
    slots = jnp.concatenate(slots + [jnp.zeros((1, width, d_point), dtype)])  # + one zero slot for padding
    slot_places = np.concatenate(slot_places + [np.full((1, width), n_kept)])
    slot_points = np.concatenate(slot_points + [np.zeros(1, np.int64)])
    first, second = _pairs_sharing_a_point(slot_points[:-1], structure.count[eliminated])
    total = first.size
    chunks = max(1, -(-total // chunk))
    padding = chunks * chunk - total
    dummy = slots.shape[0] - 1
    first = np.concatenate([first, np.full(padding, dummy)]).reshape(chunks, chunk)
    second = np.concatenate([second, np.full(padding, dummy)]).reshape(chunks, chunk)
    hpp_inverse = elimination.hpp_inverse

    def accumulate(matrix, pair):
        a, b = pair
        inverse = hpp_inverse[jnp.asarray(slot_points)[a]]
        block = jnp.einsum("pik,pkl,pjl->pij", slots[a], inverse, slots[b])
        rows = jnp.asarray(slot_places)[a][:, :, None]
        columns = jnp.asarray(slot_places)[b][:, None, :]
        return matrix.at[rows, columns].add(-block), None

    matrix, _ = jax.lax.scan(accumulate, matrix, (jnp.asarray(first), jnp.asarray(second)))
    return matrix[:n_kept, :n_kept]


def _pairs_sharing_a_point(slot_points: np.ndarray, num_points: int) -> tuple[np.ndarray, np.ndarray]:
    """Every ordered pair of slots (terms' camera-point blocks) that see the same point, itself included."""
    order = np.argsort(slot_points, kind="stable")
    counts = np.bincount(slot_points, minlength=num_points)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    firsts, seconds = [], []
    for size in np.unique(counts[counts > 0]):
        groups = order[starts[counts == size][:, None] + np.arange(size)[None, :]]  # (points, size)
        firsts.append(np.repeat(groups, size, axis=1).ravel())
        seconds.append(np.tile(groups, (1, size)).ravel())
    return np.concatenate(firsts), np.concatenate(seconds)


def _check_eliminable(structure, eliminated: str, owner: str):
    if eliminated not in structure.kinds:
        raise ValueError(f"{owner}(eliminate={eliminated!r}): no variable kind of that name among {structure.kinds}")
    if len(structure.kinds) < 2:
        raise ValueError(f"{owner} needs a second variable kind to keep; with one kind use PCG or SparseDirect")
    for g, group in enumerate(structure.groups):
        if list(group["kinds"]).count(eliminated) > 1:
            raise ValueError(
                f"{owner}(eliminate={eliminated!r}): cost group {g} connects two variables of that "
                "kind, so their block of JᵀJ is not block diagonal; eliminate another kind"
            )


def _schur_jacobi(operator, elimination):
    """v ↦ (block diagonal of S)⁻¹ v."""
    structure, eliminated = operator.structure, elimination.eliminated
    blocks = {kind: elimination.diagonal_blocks[kind] for kind in elimination.kept}
    for g, group in enumerate(structure.groups):
        if eliminated not in group["kinds"]:
            continue
        j_point = group["kinds"].index(eliminated)
        points = group["indices"][:, j_point]
        for j, kind in enumerate(group["kinds"]):
            if kind == eliminated:
                continue
            coupling = operator.coupling(g, j, j_point)  # W_e, the term's camera-point block
            reduction = jnp.einsum("eab,ebc,edc->ead", coupling, elimination.hpp_inverse[points], coupling)
            blocks[kind] = blocks[kind].at[group["indices"][:, j]].add(-reduction)
    inverses = {kind: invert_blocks(blocks[kind]) for kind in elimination.kept}

    def apply(v):
        parts = elimination.unflatten(v)
        return elimination.flatten(
            {kind: jnp.einsum("nij,nj->ni", inverses[kind], parts[kind]) for kind in elimination.kept}
        )

    return apply


__all__ = ["SchurDirect", "SchurPCG"]
