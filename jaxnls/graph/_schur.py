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

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ..linear import pivot_floor
from ..linear._dense import lu_solve
from ._linear import (
    AbstractGraphLinearSolver,
    NormalOperator,
    RecentPlans,
    block_products,
    conjugate_gradient,
    invert_blocks,
)


class _Elimination:
    """The pieces both Schur solvers share for one system: the kept kinds, the inverses of the eliminated
    kind's diagonal blocks, products with A per kind, and the reduction / back substitution."""

    def __init__(self, operator, eliminated: str, owner: str):
        structure = operator.structure
        _check_eliminable(structure, eliminated, owner)
        self.operator, self.structure, self.eliminated = operator, structure, eliminated
        self.kept = [kind for kind in structure.kinds if kind != eliminated]
        self.hpp_inverse = invert_blocks(operator.block_diagonal([eliminated])[eliminated])

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

    :math:`S` is assembled block by block over the kept variables: :math:`A_{cc}` from the terms' own
    :math:`J_{e,i}^\top J_{e,j}` blocks, and :math:`A_{cp}A_{pp}^{-1}A_{pc}` as
    :math:`\sum_p\sum_{e,e' \ni p} W_e A_{pp}^{-1}W_{e'}^\top` over the pairs of terms that see the same
    eliminated variable, only for blocks on or above the diagonal. The pairs are listed once per structure on
    the host and sorted by the block they land in, so that each run of them is summed in one fused reduction
    and one block scattered per run (Ceres accumulates the same sum point by point), ``chunk`` pairs at a time
    so that memory stays bounded. Then Jacobi-scaled, shifted by ``10·n·ε`` like the dense solvers' pivots,
    and factored by LU with partial pivoting (the implicit adjoint's exact Hessian, which these solves also
    serve, need not be positive definite): in XLA operations up to 256 kept unknowns, by LAPACK above, whose
    threads would otherwise compete with XLA's on CPU (the module's ``_XLA_LU_MAX``).

    Attributes:
        eliminate: the variable kind eliminated (static, default ``"point"``); no cost term may connect two
            variables of this kind.
        chunk: the pairs of terms accumulated at a time into :math:`S` (static, default 65536): bounds the
            memory of the assembly.
        structure: the graph's structure, bound by :func:`jaxnls.graph.solve` (keyword-only; leave it None).
        plan: the index arrays of the assembly of :math:`S` (:func:`reduction_plan_arrays`), passed in by
            :func:`jaxnls.graph.solve` so that they are arguments of the compiled solve, not constants
            (keyword-only; leave it None).
    """

    eliminate: str = eqx.field(static=True, default="point")
    chunk: int = eqx.field(static=True, default=65536)
    plan: dict[str, Any] | None = eqx.field(default=None, kw_only=True)

    def solve_system(self, operator: NormalOperator, rhs: Float[Array, " n"]) -> Float[Array, " n"]:
        elimination = _Elimination(operator, self.eliminate, "SchurDirect")
        rhs_parts = operator.structure.flat_to_kinds(rhs)
        reduced = _reduced_camera_matrix(operator, elimination, self.chunk, self.plan)
        n = reduced.shape[0]
        diagonal = jnp.diagonal(reduced)
        scale = jnp.where(diagonal > 0, jax.lax.rsqrt(jnp.where(diagonal > 0, diagonal, 1.0)), 1.0)
        scaled = reduced * scale[:, None] * scale[None, :] + pivot_floor(n, rhs.dtype) * jnp.eye(n, dtype=rhs.dtype)
        # (LU, not Cholesky: the implicit adjoint's exact Hessian need not be positive definite)
        solve = lu_solve if n <= _XLA_LU_MAX else jnp.linalg.solve
        camera = solve(scaled, elimination.reduced_rhs(rhs_parts) * scale) * scale
        return elimination.full_step(elimination.unflatten(camera), rhs_parts)


def _reduced_camera_matrix(operator: NormalOperator, elimination: _Elimination, chunk: int, arrays: dict | None = None):
    r"""S = A_cc - A_cp A_pp⁻¹ A_pc, dense over the kept coordinates (``flatten``'s order).

    S is accumulated block by block over the kept variables (each padded to the widest kept kind, ``w``):
    a term's own blocks :math:`J_{e,i}^\top J_{e,j}` between the kept variables it connects, and for every
    ordered pair of terms :math:`(e, e')` that see the same eliminated variable :math:`p`,
    :math:`-W_e A_{pp}^{-1} W_{e'}^\top` (:math:`W_e = J_{e,c}^\top J_{e,p}`). The pairs are listed once per
    structure on the host, grouped by the block of S they land in and summed there by one fused reduction
    per run of pairs (:class:`_BlockSums`), only for blocks on or above the diagonal: the rest is their
    transpose. ``arrays``: the plan's index arrays as the compiled solve's arguments, or None (then its
    constants)."""
    structure = elimination.structure
    plan = _reduction_plan(structure, elimination.eliminated, chunk)
    if arrays is None:
        arrays = plan.arrays()
    elif jax.tree_util.tree_structure(arrays) != jax.tree_util.tree_structure(plan.arrays()):
        raise ValueError("SchurDirect: its plan was made for another graph structure (leave plan=None)")
    dtype = operator.damping.dtype
    size, width = plan.num_variables, plan.width
    blocks = jnp.zeros((size, size, width, width), dtype)

    # the terms' own blocks between kept variables
    for g, arguments in enumerate(plan.kept_arguments):
        if not arguments:
            continue
        if operator.jacobians is not None:
            jac = operator.jacobians[g]
            stacked = jnp.concatenate([_pad_columns(jac[:, :, plan.columns(g, j)], width) for j in arguments])
            blocks = plan.direct[g](stacked, stacked, blocks, arrays["direct"][g])
        else:
            for j in arguments:
                for i in arguments:
                    block = operator.coupling(g, j, i)
                    block = jnp.pad(block, ((0, 0), (0, width - block.shape[1]), (0, width - block.shape[2])))
                    blocks = _add_blocks(blocks, arrays["variable"][g][j], arrays["variable"][g][i], block)

    # minus the eliminated variables' share, on and above the diagonal, then mirrored
    if plan.pairs is not None:
        couplings = []  # W_eᵀ per (term, kept argument): (E, d_p, w), slot order of the plan
        for g, j, j_point in plan.slot_arguments:
            coupling = operator.coupling(g, j_point, j)
            couplings.append(jnp.pad(coupling, ((0, 0), (0, 0), (0, width - coupling.shape[2]))))
        couplings = jnp.concatenate(couplings)
        inverse = elimination.hpp_inverse[arrays["slot_points"]]
        reduced = block_products(jnp.swapaxes(inverse, 1, 2), couplings)  # A_pp⁻¹ W_eᵀ
        upper = plan.pairs(reduced, -couplings, jnp.zeros_like(blocks), arrays["pairs"])
        off_diagonal = ~np.eye(size, dtype=bool)[:, :, None, None]
        blocks = blocks + upper + jnp.where(off_diagonal, jnp.swapaxes(upper, 0, 1).swapaxes(2, 3), 0.0)

    matrix = blocks.transpose(0, 2, 1, 3).reshape(size * width, size * width)
    if arrays["coordinates"] is not None:
        coordinates = arrays["coordinates"]
        matrix = matrix[coordinates[:, None], coordinates[None, :]]
    kept_diagonal = elimination.flatten(structure.flat_to_kinds(operator.diagonal()))
    return matrix + jnp.diag(kept_diagonal)


def _add_blocks(out, rows, columns, blocks):
    """``out[rows[i], columns[i]] += blocks[i]`` for ``out`` of ``(V, V, w, w)`` blocks, scattered entry by
    entry into the flattened array: under ``vmap`` XLA:CPU runs the equivalent scatter of whole blocks as a
    loop of one small update per block (~3 µs each), the element-wise one as one kernel."""
    size, width = out.shape[1], out.shape[-1]
    flat = (rows * size + columns)[:, None] * width**2 + jnp.arange(width**2)[None, :]
    return out.ravel().at[flat.ravel()].add(blocks.ravel()).reshape(out.shape)


def _pad_columns(block, width: int):
    return jnp.pad(block, ((0, 0), (0, 0), (0, width - block.shape[2])))


class _BlockSums:
    r"""A host-side plan for ``out[u_i, v_i] += X[left_i]ᵀ Y[right_i]`` over items :math:`i` (``X``, ``Y``
    stacks of ``(c, w)`` blocks, ``out`` of ``(w, w)`` blocks).

    The items are sorted by their target block and each block's items padded (with a zero block) to a
    multiple of ``run``, so that the ``run`` items of one block are summed by one fused multiply-and-reduce
    over ``run·c`` rows and one ``(w, w)`` block per run, not per item, is added to ``out``. ``chunk`` items
    per step of a ``lax.scan`` bound the gathered memory."""

    def __init__(self, left, right, u, v, num_variables: int, run: int, chunk: int):
        key = u.astype(np.int64) * num_variables + v
        order = np.argsort(key, kind="stable")
        unique, counts = np.unique(key[order], return_counts=True)
        padded = -(-counts // run) * run
        total_runs = int(padded.sum()) // run
        steps = max(1, -(-total_runs // max(1, chunk // run)))
        runs_per_step = max(1, -(-total_runs // steps))  # the runs spread evenly over the steps
        # the dummy item (-1) reads the zero block appended to X and Y
        self.left = np.full(steps * runs_per_step * run, -1, np.int64)
        self.right = np.full_like(self.left, -1)
        destination = np.repeat(np.cumsum(padded) - padded, counts) + (
            np.arange(order.size) - np.repeat(np.cumsum(counts) - counts, counts)
        )
        self.left[destination] = left[order]
        self.right[destination] = right[order]
        run_keys = np.zeros(steps * runs_per_step, np.int64)
        run_keys[:total_runs] = np.repeat(unique, padded // run)  # padding runs add zero to block (0, 0)
        self.u, self.v = (run_keys // num_variables).astype(np.int32), (run_keys % num_variables).astype(np.int32)
        self.shape = (steps, runs_per_step, run)

    def arrays(self) -> tuple[np.ndarray, ...]:
        """The plan's index arrays, shaped for :meth:`__call__`'s scan: (left, right, u, v)."""
        steps, runs, run = self.shape
        return (
            self.left.reshape(steps, runs, run),
            self.right.reshape(steps, runs, run),
            self.u.reshape(steps, runs),
            self.v.reshape(steps, runs),
        )

    def __call__(self, x, y, out, where):
        """``out`` plus the plan's sums of ``X[left]ᵀ Y[right]``; ``where``: :meth:`arrays`, or the same traced."""
        zero = jnp.zeros((1,) + x.shape[1:], x.dtype)
        x, y = jnp.concatenate([x, zero]), jnp.concatenate([y, zero])

        def accumulate(out, where):
            left, right, u, v = where
            # a fused multiply-and-reduce: XLA:CPU runs the equivalent batched einsum as one small matrix
            # product per run, ~4× slower here
            block = jnp.sum(x[left][..., :, None] * y[right][..., None, :], axis=(1, 2))
            return _add_blocks(out, u, v, block), None

        out, _ = jax.lax.scan(accumulate, out, tuple(jnp.asarray(a) for a in where))
        return out


#: Reduced systems up to this size are factored by XLA operations (``lu_solve``), larger ones by LAPACK. On 2
#: cores a 144-unknown LU takes 0.8 ms in the loop and 0.16 ms in LAPACK alone, but LAPACK's OpenBLAS threads
#: then compete with XLA's for the cores: benchmarks/README.md (r)'s BAL solve took 0.95 s with LAPACK and
#: 0.63 s with the loop. At 441 unknowns the loop's n³ masked updates take 73 ms (LAPACK 2 ms).
_XLA_LU_MAX = 256

#: items (pairs of terms) summed together per run in SchurDirect's assembly; 8 to 64 measured alike on a
#: 16-camera BAL problem
_RUN = 16


class _ReductionPlan:
    """Where S's pieces come from and land, for one structure (host side, built once and cached)."""

    def __init__(self, structure, eliminated: str, kept: list[str], chunk: int):
        self.width = max(structure.dim[kind] for kind in kept)
        base, start = {}, 0
        for kind in kept:
            base[kind], start = start, start + structure.count[kind]
        self.num_variables = start
        # S's real coordinates among the padded blocks (None where no kind is narrower than the widest)
        coordinates = np.concatenate(
            [
                (
                    (base[kind] + np.arange(structure.count[kind]))[:, None] * self.width
                    + np.arange(structure.dim[kind])
                ).ravel()
                for kind in kept
            ]
        )
        uniform = all(structure.dim[kind] == self.width for kind in kept)
        self.coordinates = None if uniform else coordinates
        self._structure = structure
        self.kept_arguments, self.variable, self.direct = [], [], []
        self.slot_arguments, slot_variables, slot_points = [], [], []
        for g, group in enumerate(structure.groups):
            arguments = [j for j, kind in enumerate(group["kinds"]) if kind != eliminated]
            variable = {j: (base[group["kinds"][j]] + group["host_indices"][:, j]).astype(np.int32) for j in arguments}
            self.kept_arguments.append(arguments)
            self.variable.append(variable)
            num_terms = group["num_terms"]
            terms = np.arange(num_terms)
            # a term's own blocks: every ordered pair of its kept arguments, rows of the stacked Jacobians
            pairs = [(a, b) for a in range(len(arguments)) for b in range(len(arguments))]
            self.direct.append(
                _BlockSums(
                    np.concatenate([a * num_terms + terms for a, _ in pairs]),
                    np.concatenate([b * num_terms + terms for _, b in pairs]),
                    np.concatenate([variable[arguments[a]] for a, _ in pairs]),
                    np.concatenate([variable[arguments[b]] for _, b in pairs]),
                    self.num_variables,
                    _RUN,
                    chunk,
                )
                if arguments
                else None
            )
            if eliminated in group["kinds"]:
                j_point = group["kinds"].index(eliminated)
                for j in arguments:
                    self.slot_arguments.append((g, j, j_point))
                    slot_variables.append(variable[j])
                    slot_points.append(group["host_indices"][:, j_point])
        self.pairs, self.slot_points = None, None
        if self.slot_arguments:
            slot_variables, slot_points = np.concatenate(slot_variables), np.concatenate(slot_points)
            first, second = _pairs_sharing_a_point(slot_points, structure.count[eliminated])
            upper = slot_variables[first] <= slot_variables[second]
            first, second = first[upper], second[upper]
            self.pairs = _BlockSums(
                first, second, slot_variables[first], slot_variables[second], self.num_variables, _RUN, chunk
            )
            self.slot_points = slot_points

    def columns(self, g: int, j: int) -> slice:
        dims = self._structure.groups[g]["dims"]
        start = sum(dims[:j])
        return slice(start, start + dims[j])

    def arrays(self) -> dict[str, Any]:
        """Every index array the assembly reads, as one pytree (:attr:`SchurDirect.plan`)."""
        return {
            "direct": [None if sums is None else sums.arrays() for sums in self.direct],
            "pairs": None if self.pairs is None else self.pairs.arrays(),
            "slot_points": self.slot_points,
            "variable": [dict(variable) for variable in self.variable],
            "coordinates": self.coordinates,
        }


#: The reduction plans of the last few structures, by (:attr:`GraphStructure.key`, eliminated kind, chunk): the
#: plan is made on the host before the compiled solve (its arrays are arguments) and read again while tracing.
_RECENT_PLANS = RecentPlans()


def _reduction_plan(structure, eliminated: str, chunk: int) -> _ReductionPlan:
    kept = [kind for kind in structure.kinds if kind != eliminated]
    return _RECENT_PLANS.get(
        (structure.key, eliminated, chunk), lambda: _ReductionPlan(structure, eliminated, kept, chunk)
    )


def reduction_plan_arrays(structure, solver: SchurDirect) -> dict[str, Any]:
    """The index arrays of ``solver``'s assembly of :math:`S` for ``structure`` (host NumPy arrays), for
    :attr:`SchurDirect.plan`; raises the solver's error where its kind cannot be eliminated."""
    _check_eliminable(structure, solver.eliminate, "SchurDirect")
    return _reduction_plan(structure, solver.eliminate, solver.chunk).arrays()


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


def largest_eliminable_kind(structure) -> str | None:
    """The variable kind with the most variables that a Schur solver can eliminate (Ceres' choice of the largest
    independent set; ties go to the most tangent unknowns): one of at least two kinds, seen by some cost term, and
    never connected to another variable of its kind by one; None if no kind qualifies (a pose graph).

    Counting variables, not unknowns, eliminates bundle adjustment's points even where its cameras hold more
    unknowns (gtsam's dubrovnik-3-7: 3 cameras of 9, 7 points of 3): the points' 3×3 blocks are inverted with
    condition numbers in the hundreds, the cameras' 9×9 ones up to 4e6, whose rounding the reduced system then
    carries (benchmarks/README.md (ap))."""
    if len(structure.kinds) < 2:
        return None
    candidates = [
        kind
        for kind in structure.kinds
        if any(kind in group["kinds"] for group in structure.groups)
        and all(list(group["kinds"]).count(kind) <= 1 for group in structure.groups)
    ]
    if not candidates:
        return None
    return max(candidates, key=lambda kind: (structure.count[kind], structure.count[kind] * structure.dim[kind]))


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
    blocks = operator.block_diagonal(elimination.kept)
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
