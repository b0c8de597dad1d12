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

    def solve(self, lin, damping):
        structure = lin.structure
        eliminated = self.eliminate
        _check_eliminable(structure, eliminated)
        kept = [kind for kind in structure.kinds if kind != eliminated]
        damping_parts = structure.flat_to_kinds(damping)
        diagonal_blocks = lin.block_diagonal()
        d = structure.dim[eliminated]
        eye = jnp.eye(d, dtype=damping.dtype)
        hpp_inverse = invert_blocks(diagonal_blocks[eliminated] + damping_parts[eliminated][:, :, None] * eye[None])
        gradient = structure.flat_to_kinds(lin.gradient)

        def zeros(kind):
            return jnp.zeros((structure.count[kind], structure.dim[kind]), damping.dtype)

        def h_times(parts):
            """(JᵀJ + diag d) applied to a vector given per kind (missing kinds are zero)."""
            flat = structure.kinds_to_flat({kind: parts.get(kind, zeros(kind)) for kind in structure.kinds})
            return structure.flat_to_kinds(lin.normal_times(flat) + damping * flat)

        def solve_points(rhs):
            return jnp.einsum("nij,nj->ni", hpp_inverse, rhs)

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

        back = h_times({eliminated: solve_points(gradient[eliminated])})
        rhs = flatten({kind: -gradient[kind] + back[kind] for kind in kept})
        precondition = _schur_jacobi(lin, structure, kept, eliminated, diagonal_blocks, damping_parts, hpp_inverse,
                                     flatten, unflatten)
        camera_step = unflatten(conjugate_gradient(schur_times, precondition, rhs, self.rtol, self.max_steps))
        coupling = h_times(camera_step)[eliminated]
        point_step = -solve_points(gradient[eliminated] + coupling)
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


def _schur_jacobi(lin, structure, kept, eliminated, diagonal_blocks, damping_parts, hpp_inverse, flatten, unflatten):
    """v ↦ (block diagonal of S)⁻¹ v."""
    blocks = {}
    for kind in kept:
        dk = structure.dim[kind]
        blocks[kind] = diagonal_blocks[kind] + damping_parts[kind][:, :, None] * jnp.eye(dk, dtype=hpp_inverse.dtype)[None]
    for jac, group in zip(lin.blocks, structure.groups):
        if eliminated not in group["kinds"]:
            continue
        starts = [sum(group["dims"][:j]) for j in range(len(group["dims"]))]
        j_point = group["kinds"].index(eliminated)
        point_part = jac[:, :, starts[j_point]:starts[j_point] + group["dims"][j_point]]
        points = group["indices"][:, j_point]
        for j, kind in enumerate(group["kinds"]):
            if kind == eliminated:
                continue
            part = jac[:, :, starts[j]:starts[j] + group["dims"][j]]
            coupling = jnp.einsum("eka,ekb->eab", part, point_part)  # W_e = J_cᵀ J_p
            reduction = jnp.einsum("eab,ebc,edc->ead", coupling, hpp_inverse[points], coupling)
            blocks[kind] = blocks[kind].at[group["indices"][:, j]].add(-reduction)
    inverses = {kind: invert_blocks(blocks[kind]) for kind in kept}

    def apply(v):
        parts = unflatten(v)
        return flatten({kind: jnp.einsum("nij,nj->ni", inverses[kind], parts[kind]) for kind in kept})

    return apply


__all__ = ["SchurPCG"]
