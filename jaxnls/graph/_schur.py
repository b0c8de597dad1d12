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
import jax.numpy as jnp

from ._linear import AbstractGraphLinearSolver, conjugate_gradient, invert_blocks


class SchurPCG(AbstractGraphLinearSolver):
    r"""Eliminate the variables of kind ``eliminate`` (default ``"point"``) and solve the reduced
    system by conjugate gradients preconditioned with its own block diagonal (module docstring).
    Stops at ``‖residual‖ ≤ rtol·‖rhs‖`` of the reduced system or after ``max_steps`` iterations.
    Pure JAX (any backend, ``vmap``). Raises at trace time if a cost term connects two variables of
    the eliminated kind (their block of :math:`H` would not be block diagonal)."""

    eliminate: str = eqx.field(static=True, default="point")
    rtol: float = 1e-8
    max_steps: int = 500

    def solve_system(self, operator, rhs):
        structure = operator.structure
        eliminated = self.eliminate
        _check_eliminable(structure, eliminated)
        kept = [kind for kind in structure.kinds if kind != eliminated]
        diagonal_blocks = operator.block_diagonal()
        hpp_inverse = invert_blocks(diagonal_blocks[eliminated])
        rhs_parts = structure.flat_to_kinds(rhs)
        dtype = rhs.dtype

        def zeros(kind):
            return jnp.zeros((structure.count[kind], structure.dim[kind]), dtype)

        def h_times(parts):
            """A applied to a vector given per kind (missing kinds are zero)."""
            flat = structure.kinds_to_flat({kind: parts.get(kind, zeros(kind)) for kind in structure.kinds})
            return structure.flat_to_kinds(operator.times(flat))

        def solve_points(b):
            return jnp.einsum("nij,nj->ni", hpp_inverse, b)

        def flatten(parts):
            return jnp.concatenate([jnp.ravel(parts[kind]) for kind in kept])

        def unflatten(v):
            out, start = {}, 0
            for kind in kept:
                size = structure.count[kind] * structure.dim[kind]
                out[kind] = v[start:start + size].reshape(structure.count[kind], structure.dim[kind])
                start += size
            return out

        def schur_times(v):
            kept_parts = unflatten(v)
            full = h_times(kept_parts)
            correction = h_times({eliminated: solve_points(full[eliminated])})
            return flatten({kind: full[kind] - correction[kind] for kind in kept})

        # S δ_c = b_c - A_cp A_pp⁻¹ b_p,  δ_p = A_pp⁻¹ (b_p - A_pc δ_c)
        back = h_times({eliminated: solve_points(rhs_parts[eliminated])})
        reduced_rhs = flatten({kind: rhs_parts[kind] - back[kind] for kind in kept})
        precondition = _schur_jacobi(operator, kept, eliminated, diagonal_blocks, hpp_inverse, flatten, unflatten)
        camera_step = unflatten(conjugate_gradient(schur_times, precondition, reduced_rhs, self.rtol, self.max_steps))
        coupling = h_times(camera_step)[eliminated]
        point_step = solve_points(rhs_parts[eliminated] - coupling)
        return structure.kinds_to_flat({**camera_step, eliminated: point_step})


def _check_eliminable(structure, eliminated: str):
    if eliminated not in structure.kinds:
        raise ValueError(f"SchurPCG(eliminate={eliminated!r}): no variable kind of that name among "
                         f"{structure.kinds}")
    if len(structure.kinds) < 2:
        raise ValueError("SchurPCG needs a second variable kind to keep; with one kind use PCG or SparseDirect")
    for g, group in enumerate(structure.groups):
        if list(group["kinds"]).count(eliminated) > 1:
            raise ValueError(f"SchurPCG(eliminate={eliminated!r}): cost group {g} connects two variables of that "
                             "kind, so their block of JᵀJ is not block diagonal; eliminate another kind")


def _schur_jacobi(operator, kept, eliminated, diagonal_blocks, hpp_inverse, flatten, unflatten):
    """v ↦ (block diagonal of S)⁻¹ v."""
    structure = operator.structure
    blocks = {kind: diagonal_blocks[kind] for kind in kept}
    for g, group in enumerate(structure.groups):
        if eliminated not in group["kinds"]:
            continue
        j_point = group["kinds"].index(eliminated)
        points = group["indices"][:, j_point]
        for j, kind in enumerate(group["kinds"]):
            if kind == eliminated:
                continue
            coupling = operator.coupling(g, j, j_point)  # W_e, the term's camera-point block
            reduction = jnp.einsum("eab,ebc,edc->ead", coupling, hpp_inverse[points], coupling)
            blocks[kind] = blocks[kind].at[group["indices"][:, j]].add(-reduction)
    inverses = {kind: invert_blocks(blocks[kind]) for kind in kept}

    def apply(v):
        parts = unflatten(v)
        return flatten({kind: jnp.einsum("nij,nj->ni", inverses[kind], parts[kind]) for kind in kept})

    return apply


__all__ = ["SchurPCG"]
