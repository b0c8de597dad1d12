r"""Factor graphs: variables stacked by kind, cost terms grouped by kind, a block-sparse Jacobian.

A problem is

.. math::  c(X) = \tfrac12 \sum_{g}\sum_{e=1}^{E_g} \big\| L_{g,e}\, f_g(X_{i_{e,1}}, \dots, X_{i_{e,a}}, \text{data}_{g,e}) \big\|^2
           = \tfrac12\sum \|r\|^2_{Σ},\qquad L^\top L = Σ^{-1} = Ω,

(GTSAM's ``graph.error(values)``), where every variable kind is a stack of N jaxlie groups or an
``(N, d)`` array, and a :class:`CostGroup` ``g`` holds ``E_g`` terms of the same residual function
``f_g``. Each group is evaluated with ONE ``vmap``; each term's Jacobian with respect to the tangent
perturbations of its ``a`` variables, :math:`\partial r / \partial(δ_1, \dots, δ_a)` at 0 with
:math:`X \oplus δ = X\operatorname{Exp}(δ)` (:mod:`jaxnls.manifolds`), is one ``jacfwd`` (or ``jacrev``) of
shape ``(k, d_1 + … + d_a)``, or for :func:`~jaxnls.graph.between` on groups its closed form
(:func:`~jaxnls.graph.between_linearization`). The Jacobian of the whole problem is these blocks and their column
indices: it is never assembled densely.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int, PyTree

from .._driver import closes_over_tracers
from .._jacobian import residual_and_jacobian
from .._numerics import split_by_sizes
from ..losses import linearize_block
from ..manifolds import is_group, parameter_array, retract
from ._factors import closed_form_linearization

if TYPE_CHECKING:
    from jaxlie import MatrixLieGroup

    from ..losses import AbstractRobustLoss


class _Static:
    """A NumPy integer array as a static (hashable, compared-by-content) value of a pytree, so graph
    structure is part of the compilation key and known on the host (the sparse direct solver's
    symbolic pattern is built from it once)."""

    def __init__(self, array):
        self.array = np.ascontiguousarray(array)
        self.content_key = (self.array.shape, self.array.dtype.str, hashlib.sha1(self.array.tobytes()).hexdigest())
        """Shape, dtype and a digest of the content: what equality and hashing compare (and what a stored
        program's key records, :mod:`jaxnls._programs`)."""

    def __hash__(self):
        return hash(self.content_key)

    def __eq__(self, other):
        return isinstance(other, _Static) and self.content_key == other.content_key

    def __repr__(self):
        return f"_Static(shape={self.array.shape})"

    def __array__(self, dtype=None, copy=None):
        # (so that a graph's own ``fixed`` pairs, given back to FactorGraph, read as the indices they hold)
        return self.array if dtype is None else self.array.astype(dtype)


#: Equinox's warning when a static field holds arrays (its words, matched as a warnings filter).
_STATIC_ARRAY_WARNING = "A JAX array is being set as static"


class _ResidualArraysTakenOut(type(eqx.Module)):
    """The metaclass of :class:`CostGroup`: Equinox warns, once a module is built, of any static field holding
    arrays ("usually a mistake"). A cost group's residual function is static by design (the compiled solve's
    key) and may be a module or closure holding arrays, which every solve and the marginals take out
    (:func:`split_residual_arrays`) and pass as arguments, so for this field the warning would only mislead."""

    def __call__(cls, *args, **kwargs):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_STATIC_ARRAY_WARNING)
            return super().__call__(*args, **kwargs)


class CostGroup(eqx.Module, metaclass=_ResidualArraysTakenOut):
    r"""``E`` cost terms sharing one residual function.

    Args:
        residual_fn: ``residual_fn(x_1, ..., x_a, data) -> r`` of ONE term, ``r`` of shape ``(k,)``;
            ``x_j`` is one variable of kind ``kinds[j]`` (a jaxlie group or a ``(d,)`` array) and
            ``data`` one row of ``data`` (None when no data is given). An Equinox module, or a closure or
            ``functools.partial`` over arrays, works too: :func:`~jaxnls.graph.solve` differentiates the arrays it
            holds or closes over (shared by every term and every problem of a batch).
        kinds: the variable kind of each of the ``a`` arguments (keys of ``FactorGraph.variables``).
        indices: ``(E, a)`` integers: term ``e`` connects variable ``indices[e, j]`` of kind ``kinds[j]``.
        data: a pytree whose leaves lead with ``E`` (e.g. the measured relative poses, a stacked group).
        sqrt_information: ``(E, k, k)`` or ``(k, k)`` (shared) square root ``L`` of the information
            matrix, :math:`L^\top L = Σ^{-1}`; the term's cost is :math:`\tfrac12\|L r\|^2`. None: identity.
        loss: a robust loss from :mod:`jaxnls.losses` (``Huber``, ``Cauchy``, ...) applied to each whitened
            term: the group's cost becomes :math:`\tfrac12\sum_e ρ(\|L_e r_e\|^2)` and the step model uses
            Triggs' corrected residual and Jacobian (as Ceres). None: plain least squares.

    With ``solve(..., batched=True)`` every array of ``data`` and ``sqrt_information`` carries a leading
    batch axis before ``E``; ``indices`` (the structure) is shared by the batch.
    """

    residual_fn: Callable[..., Float[ArrayLike, " k"]] = eqx.field(static=True)
    kinds: tuple[str, ...] = eqx.field(static=True)
    indices: _Static = eqx.field(static=True)
    data: PyTree
    sqrt_information: Float[Array, "*E k k"] | None
    loss: AbstractRobustLoss | None

    def __init__(
        self,
        residual_fn: Callable[..., Float[ArrayLike, " k"]],
        kinds: str | Sequence[str],
        indices: Int[ArrayLike, "E a"] | Int[ArrayLike, " E"],
        data: PyTree = None,
        sqrt_information: Float[ArrayLike, "*E k k"] | None = None,
        loss: AbstractRobustLoss | None = None,
    ):
        if not callable(residual_fn):
            raise TypeError(f"CostGroup: residual_fn must be callable, got {residual_fn!r}")
        kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
        indices = np.asarray(indices)
        if indices.ndim == 1 and len(kinds) == 1:
            indices = indices[:, None]
        if indices.ndim != 2 or indices.shape[1] != len(kinds):
            raise ValueError(
                f"CostGroup: indices must have shape (E, {len(kinds)}) (one column per kind in "
                f"{kinds}), got {indices.shape}"
            )
        if not np.issubdtype(indices.dtype, np.integer):
            raise TypeError(f"CostGroup: indices must be integers, got dtype {indices.dtype}")
        self.residual_fn = residual_fn
        self.kinds = kinds
        self.indices = _Static(indices.astype(np.int64))
        self.data = data
        self.sqrt_information = None if sqrt_information is None else jnp.asarray(sqrt_information)
        from ..losses import AbstractRobustLoss

        if loss is not None and not isinstance(loss, AbstractRobustLoss):
            raise TypeError(f"CostGroup: loss must be a jaxnls.losses loss (Huber, Cauchy, ...) or None, got {loss!r}")
        self.loss = loss

    @property
    def num_terms(self) -> int:
        """E, the number of cost terms (rows of ``indices``)."""
        return self.indices.array.shape[0]


class FactorGraph(eqx.Module):
    r"""Variables and cost groups of one problem (or of a batch with one structure).

    Args:
        variables: a mapping kind → stacked variables: a jaxlie group holding N elements (e.g.
            ``jaxlie.SE2`` with ``unit_complex_xy`` of shape ``(N, 4)``) or an ``(N, d)`` array. These
            are the starting values. With ``solve(..., batched=True)`` every leaf leads with the batch axis.
        costs: the :class:`CostGroup` s (groups without terms are skipped).
        fixed: optional mapping kind → indices of variables held at their starting values (their
            Jacobian columns are zeroed; an alternative to a strong prior for removing the gauge freedom),
            or another graph's ``fixed`` (``FactorGraph(g.variables, new_costs, fixed=g.fixed)``).

    The tangent vector of the whole problem lists the kinds in sorted order (``jax.tree`` order of a
    dict), each kind's variables one after another, each with its ``d`` tangent coordinates.
    """

    variables: dict[str, MatrixLieGroup | Float[Array, "N d"]]
    costs: tuple[CostGroup, ...]
    fixed: tuple[tuple[str, _Static], ...] = eqx.field(static=True)

    def __init__(
        self,
        variables: Mapping[str, MatrixLieGroup | Float[ArrayLike, "N d"]],
        costs: CostGroup | Sequence[CostGroup],
        fixed: Mapping[str, Int[ArrayLike, " F"]] | None = None,
    ):
        if not isinstance(variables, Mapping) or not variables:
            raise TypeError("FactorGraph: variables must be a non-empty mapping kind -> stacked variables")
        self.variables = {str(k): (v if is_group(v) else jnp.asarray(v)) for k, v in variables.items()}
        costs = (costs,) if isinstance(costs, CostGroup) else tuple(costs)
        if not costs or not all(isinstance(c, CostGroup) for c in costs):
            raise TypeError("FactorGraph: costs must be a non-empty sequence of CostGroup")
        # a group without terms (a file's landmarks that no edge observes) contributes nothing: skipped
        costs = tuple(c for c in costs if c.num_terms > 0)
        if not costs:
            raise ValueError("FactorGraph: every cost group is empty: there is no cost term to minimise")
        self.costs = costs
        fixed = dict(fixed or {})
        for kind in fixed:
            if kind not in self.variables:
                raise ValueError(
                    f"FactorGraph: fixed names kind {kind!r}, which is not among the variables {sorted(self.variables)}"
                )
        self.fixed = tuple(sorted((k, _Static(np.asarray(v, np.int64).ravel())) for k, v in fixed.items()))


def _stack_count(leaf, batched: bool) -> tuple[int, int]:
    """(N, d) of a variable kind (without the batch axis)."""
    if is_group(leaf):
        shape = jnp.shape(parameter_array(leaf))[:-1]
        shape = shape[1:] if batched else shape
        if len(shape) != 1:
            raise ValueError(f"a variable kind must be a stack of N groups (batch axes {shape})")
        return shape[0], type(leaf).tangent_dim
    shape = jnp.shape(leaf)[1:] if batched else jnp.shape(leaf)
    if len(shape) != 2:
        raise ValueError(f"a Euclidean variable kind must be an (N, d) array, got shape {shape}")
    return shape[0], shape[1]


class GraphStructure:
    """Host-side structure of a graph (from shapes and indices only): the tangent layout and, per cost
    group, the column indices of its Jacobian blocks. Compared by identity (it is built once per trace)."""

    def __init__(self, graph: FactorGraph, batched: bool):
        kinds = sorted(graph.variables)
        self.kinds = kinds
        self.count, self.dim, self.offset = {}, {}, {}
        offset = 0
        for kind in kinds:
            n, d = _stack_count(graph.variables[kind], batched)
            self.count[kind], self.dim[kind], self.offset[kind] = n, d, offset
            offset += n * d
        self.n = offset
        free = {kind: np.ones(self.count[kind], bool) for kind in kinds}
        for kind, idx in graph.fixed:
            if idx.array.size and (idx.array.min() < 0 or idx.array.max() >= self.count[kind]):
                raise ValueError(f"FactorGraph: fixed[{kind!r}] has indices outside [0, {self.count[kind]})")
            free[kind][idx.array] = False
        self.groups = []
        for g, cost in enumerate(graph.costs):
            idx = cost.indices.array
            columns, masks, dims = [], [], []
            for j, kind in enumerate(cost.kinds):
                if kind not in self.count:
                    raise ValueError(f"CostGroup {g} ({_name(cost)}): kind {kind!r} is not among the variables {kinds}")
                col = idx[:, j]
                if col.size and (col.min() < 0 or col.max() >= self.count[kind]):
                    bad = col[(col < 0) | (col >= self.count[kind])][0]
                    raise ValueError(
                        f"CostGroup {g} ({_name(cost)}): indices[:, {j}] has {bad}, outside "
                        f"[0, {self.count[kind]}) for kind {kind!r}"
                    )
                d = self.dim[kind]
                dims.append(d)
                columns.append(self.offset[kind] + col[:, None] * d + np.arange(d)[None, :])
                masks.append(np.repeat(free[kind][col][:, None], d, axis=1))
            mask = np.concatenate(masks, axis=1)
            # argument pairs that name one variable in some terms (a term may connect a variable to itself):
            # there the variable's Jacobian column is the sum of the two arguments' columns
            shared = tuple(
                (i, j, (idx[:, i] == idx[:, j]).astype(np.float64))
                for i in range(len(cost.kinds))
                for j in range(i + 1, len(cost.kinds))
                if cost.kinds[i] == cost.kinds[j] and np.any(idx[:, i] == idx[:, j])
            )
            columns = np.concatenate(columns, axis=1).astype(np.int32)
            self.groups.append(
                dict(
                    kinds=cost.kinds,
                    dims=tuple(dims),
                    columns=columns,
                    mask=None if mask.all() else mask.astype(np.float64),
                    num_terms=idx.shape[0],
                    indices=idx,
                    shared=shared,
                    # what host-side plans read: columns, indices and mask can be traced (see bind)
                    host_columns=columns,
                    host_indices=idx,
                )
            )
        # 1.0 at the tangent coordinates of fixed variables: the step systems put an identity there (those
        # coordinates are not unknowns; their right-hand side is always zero), which keeps every system
        # nonsingular on their account and the transposed solves of the adjoints bounded
        self.fixed_diagonal = np.concatenate([np.repeat(~free[kind], self.dim[kind]) for kind in kinds]).astype(
            np.float64
        )
        # what the layout and the groups' columns (hence every host-side plan) are made from
        self.key = (
            batched,
            tuple((kind, self.count[kind], self.dim[kind]) for kind in kinds),
            tuple((tuple(cost.kinds), cost.indices) for cost in graph.costs),
        )
        self._pattern = None
        self._upper = None
        # host-side objects reused across the solve's iterations (the sparse factorisation's symbolic part)
        self.host_cache = {}

    def index_arrays(self) -> list[dict]:
        """Each cost group's index arrays: its terms' Jacobian ``columns`` (E, D), variable ``indices`` (E, a)
        and fixed-variable ``mask`` (or None), as :meth:`bind` takes them."""
        return [
            dict(columns=group["host_columns"], indices=group["host_indices"].astype(np.int32), mask=group["mask"])
            for group in self.groups
        ]

    def bind(self, arrays: list[dict]) -> GraphStructure:
        """This structure with its groups' index arrays replaced by ``arrays`` (:meth:`index_arrays`, traced):
        a compiled solve takes them as arguments instead of holding them as constants (w10000's are 10 MB and
        the 16-camera BAL problem's 30 MB once XLA has copied them into the loop, and loading a cached program
        took ~7× their size). Host-side plans keep reading ``host_columns`` and ``host_indices``."""
        bound = copy.copy(self)
        bound.groups = [
            dict(group, columns=given["columns"], indices=given["indices"], mask=given["mask"])
            for group, given in zip(self.groups, arrays)
        ]
        return bound

    # -- products with J (one problem) ---------------------------------------------------------------

    def argument_columns(self, group: int, argument: int) -> slice:
        """Where argument ``argument`` of cost group ``group`` sits among a term's ``D`` Jacobian columns."""
        dims = self.groups[group]["dims"]
        start = sum(dims[:argument])
        return slice(start, start + dims[argument])

    def transpose_times(self, blocks, pieces):
        """Jᵀu for ``pieces[g]`` of shape (E_g, k_g)."""
        contributions = [jnp.einsum("ekd,ek->ed", jac, u) for jac, u in zip(blocks, pieces)]
        return self.scatter(contributions)

    def scatter(self, per_column):
        """Sum per-term column values (E_g, D_g) into the flat tangent vector (n,)."""
        out = jnp.zeros((self.n,), per_column[0].dtype)
        for values, group in zip(per_column, self.groups):
            out = out.at[group["columns"]].add(values)
        return out

    def times(self, blocks, v):
        """J v as per-group pieces (E_g, k_g)."""
        return [jnp.einsum("ekd,ed->ek", jac, v[group["columns"]]) for jac, group in zip(blocks, self.groups)]

    def flat_to_kinds(self, v):
        return {
            kind: v[self.offset[kind] : self.offset[kind] + self.count[kind] * self.dim[kind]].reshape(
                self.count[kind], self.dim[kind]
            )
            for kind in self.kinds
        }

    def kinds_to_flat(self, parts):
        return jnp.concatenate([jnp.ravel(parts[kind]) for kind in self.kinds])

    # -- the sparsity pattern of JᵀJ + D (host side, built once) --------------------------------------

    def pattern(self, keep: bool = True):
        r"""The CSR pattern of :math:`J^\top J + \mathrm{diag}(d)` (symmetric, so also its CSC pattern):
        ``(indptr, indices, rows, position, diagonal_at)`` where ``position`` maps each entry of the concatenated
        contributions ``[vec(J_eᵀJ_e) for every term e of every group, d]`` to its slot in the CSR data.

        Built from the pattern of variable pairs (every variable's diagonal block is dense): a term touching
        variables :math:`i, j` fills the whole block :math:`(i, j)`, so the scalar slots follow from the block
        pattern by arithmetic. Deduplicating the scalar keys instead (w10000: 2.3 M of them) took ~120 MB of
        temporaries, which the allocator kept for the rest of the process.

        Args:
            keep: whether to keep the pattern for later calls (for a plan built from it once, not: w10000's
                arrays are ~20 MB).

        Returns:
            ``(indptr, indices, rows, position, diagonal_at)`` as above.
        """
        if self._pattern is not None:
            return self._pattern
        pattern = _scalar_pattern(self)
        if keep:
            self._pattern = pattern
        return pattern

    def upper_pattern(self):
        """CSC of the upper triangle of :meth:`pattern`: ``(indptr, selection)``, ``selection`` picking
        its entries out of the full pattern's data (the full pattern is symmetric, so its CSR arrays read
        as CSC with rows and columns swapped)."""
        if self._upper is None:
            _, indices, rows, _, _ = self.pattern()
            # in the CSC reading an entry's column is ``rows`` and its row ``indices``
            selection = np.flatnonzero(indices <= rows)
            counts = np.bincount(rows[selection], minlength=self.n)
            self._upper = (np.concatenate([[0], np.cumsum(counts)]).astype(np.int32), selection)
        return self._upper


#: Terms per chunk while the scalar positions of a cost group are computed (bounds the temporaries).
_POSITION_CHUNK = 1 << 15


def _scalar_pattern(structure: GraphStructure):
    """:meth:`GraphStructure.pattern`, from the block pattern (see there)."""
    kinds = structure.kinds
    block_base = {}
    num_blocks = 0
    for kind in kinds:
        block_base[kind] = num_blocks
        num_blocks += structure.count[kind]
    block_dim = np.concatenate([np.full(structure.count[kind], structure.dim[kind], np.int64) for kind in kinds])
    block_start = np.concatenate([[0], np.cumsum(block_dim)])[:-1]
    # the variables of each term, as block ids (E_g, a_g)
    term_blocks = [
        np.stack(
            [block_base[kind] + group["host_indices"][:, j].astype(np.int64) for j, kind in enumerate(group["kinds"])],
            1,
        )
        for group in structure.groups
    ]
    pair_keys = [(blocks[:, :, None] * num_blocks + blocks[:, None, :]).ravel() for blocks in term_blocks]
    pair_keys.append(np.arange(num_blocks, dtype=np.int64) * (num_blocks + 1))
    pairs, pair_of = np.unique(np.concatenate(pair_keys), return_inverse=True)
    block_row, block_col = np.divmod(pairs, num_blocks)
    # per block row I: the width of each of its scalar rows (the dims of its blocks) and, per pair (I, J), the
    # offset of block J's first column within such a row
    pair_dim = block_dim[block_col]
    width = np.bincount(block_row, weights=pair_dim, minlength=num_blocks).astype(np.int64)
    template_start = np.cumsum(pair_dim) - pair_dim  # where each pair's columns start among all pairs'
    first_pair = np.searchsorted(block_row, np.arange(num_blocks))  # (every block has its diagonal pair)
    within = template_start - template_start[first_pair][block_row]
    row_base = np.concatenate([[0], np.cumsum(block_dim * width)])  # first entry of each block row
    nnz = int(row_base[-1])
    n = structure.n

    def slot(pair, row_block, a, b):
        """The CSR slot of entry (a, b) of block pair ``pair`` in block row ``row_block``."""
        return row_base[row_block] + a * width[row_block] + within[pair] + b

    # sorted by (row, column): the scalar rows of block row I have the same columns, those of its block
    # pairs (I, J) in order, so every row reads its columns from I's template
    index = np.int32 if nnz < np.iinfo(np.int32).max and n < np.iinfo(np.int32).max else np.int64
    template = np.repeat(block_start[block_col] - template_start, pair_dim) + np.arange(int(pair_dim.sum()))
    scalar_block = np.repeat(np.arange(num_blocks), block_dim)
    row_width = width[scalar_block]
    indptr = np.concatenate([[0], np.cumsum(row_width)])
    rows = np.repeat(np.arange(n, dtype=index), row_width)
    cols = np.arange(nnz, dtype=index)
    cols += np.repeat((template_start[first_pair][scalar_block] - indptr[:-1]).astype(index), row_width)
    cols = template.astype(index)[cols]
    indptr = indptr.astype(np.int32)

    position = np.empty(sum(g["num_terms"] * g["columns"].shape[1] ** 2 for g in structure.groups) + n, index)
    done = 0
    pair_done = 0
    for group, blocks in zip(structure.groups, term_blocks):
        arity = blocks.shape[1]
        dims = np.asarray(group["dims"], np.int64)
        # for each column p of the group's Jacobian: which of the term's variables, and which of its coordinates
        which = np.repeat(np.arange(arity), dims)
        coordinate = np.concatenate([np.arange(d) for d in dims]) if dims.size else np.zeros(0, np.int64)
        pair_index = pair_of[pair_done : pair_done + blocks.shape[0] * arity * arity].reshape(-1, arity, arity)
        pair_done += blocks.shape[0] * arity * arity
        size = which.shape[0] ** 2
        for start in range(0, blocks.shape[0], _POSITION_CHUNK):
            stop = min(start + _POSITION_CHUNK, blocks.shape[0])
            row_block = blocks[start:stop][:, which]  # (e, D)
            pair = pair_index[start:stop][:, which[:, None], which[None, :]]  # (e, D, D)
            chunk = slot(pair, row_block[:, :, None], coordinate[None, :, None], coordinate[None, None, :])
            position[done + start * size : done + stop * size] = chunk.ravel()
        done += blocks.shape[0] * size
    # d: one per scalar diagonal, in the diagonal block of its variable
    diagonal_pair = pair_of[pair_done:]
    coordinate = np.arange(n) - block_start[scalar_block]
    diagonal_at = slot(diagonal_pair[scalar_block], scalar_block, coordinate, coordinate)
    position[done:] = diagonal_at
    return indptr, cols, rows, position, diagonal_at


def _name(cost) -> str:
    return getattr(cost.residual_fn, "__name__", type(cost.residual_fn).__name__)


def validate(graph: FactorGraph, batched: bool) -> GraphStructure:
    """Check shapes and indices at trace time and build the structure."""
    structure = GraphStructure(graph, batched)
    batch = None
    if batched:
        sizes = {int(np.shape(leaf)[0]) for leaf in jax.tree_util.tree_leaves(graph.variables)}
        if len(sizes) != 1:
            raise ValueError(f"batched=True but the variables disagree on the batch size: {sorted(sizes)}")
        batch = sizes.pop()
    for g, (cost, k) in enumerate(zip(graph.costs, residual_size(graph, batched))):
        lead = (batch, cost.num_terms) if batched else (cost.num_terms,)
        for path, leaf in jax.tree_util.tree_flatten_with_path(cost.data)[0]:
            if tuple(np.shape(leaf)[: len(lead)]) != lead:
                raise ValueError(
                    f"CostGroup {g} ({_name(cost)}): data{jax.tree_util.keystr(path)} has shape "
                    f"{np.shape(leaf)}; its leading axes must be {lead} "
                    f"({'batch, ' if batched else ''}one row per term)"
                )
        if cost.sqrt_information is not None:
            shape = cost.sqrt_information.shape[1:] if batched else cost.sqrt_information.shape
            if batched and cost.sqrt_information.shape[0] != batch:
                raise ValueError(
                    f"CostGroup {g} ({_name(cost)}): batched=True but sqrt_information has leading "
                    f"size {cost.sqrt_information.shape[0]}, not the batch size {batch}"
                )
            if len(shape) not in (2, 3) or shape[-2:] != (k, k) or (len(shape) == 3 and shape[0] != cost.num_terms):
                raise ValueError(
                    f"CostGroup {g} ({_name(cost)}): sqrt_information must be (E, k, k) or (k, k) "
                    f"with E = {cost.num_terms}, k = {k} (the residual's size), got {shape}"
                )
    return structure


def gather_variables(values: dict, group: dict) -> list:
    """The variables every term of a cost group connects: one stack (E leading) per argument."""
    return [
        jax.tree_util.tree_map(lambda leaf, c=column: leaf[c], values[kind])
        for kind, column in zip(group["kinds"], group["indices"].T)
    ]


def term_residual(residual_fn, group: dict, dtype):
    r"""``(variables of ONE term, δ (D,), data, L) -> L r(X_1 ⊕ δ_1, …, X_a ⊕ δ_a, data)`` (k,)."""
    dims = group["dims"]

    def fn(variables, delta, data, sqrt_information):
        moved = [retract(v, p) for v, p in zip(variables, split_by_sizes(delta, dims))]
        r = jnp.ravel(residual_fn(*moved, data)).astype(dtype)
        return r if sqrt_information is None else sqrt_information @ r

    return fn


def information_axis(sqrt_information):
    """vmap axis of ``sqrt_information`` over a group's terms: shared (k, k) or per term (E, k, k)."""
    return None if sqrt_information is None or sqrt_information.ndim == 2 else 0


def term_evaluator(cost: CostGroup, group: dict, dtype, k: int):
    r"""``(variables of E terms, data, L, loss, arrays=None) -> (r (E, k), J (E, k, D), cost)`` with one vmap
    over the terms; ``cost`` is the group's :math:`\tfrac12\sum_e ρ(\|L_e r_e\|^2)` (ρ(s) = s without a loss),
    and with a loss ``r``, ``J`` are Triggs-corrected. ``k`` is the group's residual size (:func:`residual_size`).
    ``arrays``: the residual function's own arrays where :func:`split_residual_arrays` took them out of
    ``cost.residual_fn`` (combined back here, so that they are differentiated as arguments)."""
    zero = jnp.zeros((sum(group["dims"]),), dtype)
    closed_form = closed_form_linearization(cost.residual_fn)

    def one_term(variables, data, sqrt_information, loss, arrays):
        residual = term_residual(with_arrays(cost.residual_fn, arrays), group, dtype)
        if closed_form is not None and all(is_group(v) for v in (*variables, data)):
            r, jac = (jnp.asarray(part, dtype) for part in closed_form(*variables, data))
            if sqrt_information is not None:
                r, jac = sqrt_information @ r, sqrt_information @ jac
            return linearize_block(loss, r, jac)

        def fn(delta, _):
            return residual(variables, delta, data, sqrt_information)

        r, jac = residual_and_jacobian(fn, zero, None, k)
        return linearize_block(loss, r, jac)

    def evaluate(variables, data, sqrt_information, loss, arrays=None):
        r, jac, cost_terms = jax.vmap(one_term, in_axes=(0, 0, information_axis(sqrt_information), None, None))(
            variables, data, sqrt_information, loss, arrays
        )
        if group["mask"] is not None:
            jac = jac * jnp.asarray(group["mask"], dtype)[:, None, :]
        return r, jac, jnp.sum(cost_terms)

    return evaluate


def split_residual_arrays(graph: FactorGraph, batched: bool, convert: bool) -> tuple[FactorGraph, tuple | None]:
    """The arrays the cost groups' residual functions hold (an Equinox module's fields, a closure's values once
    converted), taken out: ``(graph, arrays)``, ``graph`` with each residual function's remaining static part and
    ``arrays`` one pytree (or None) per cost group, for :func:`with_arrays` to put back; ``(graph, None)`` where
    they hold none (ordinary functions: the graph as it is).

    A residual function is a static field of its :class:`CostGroup`: what it holds would otherwise be a constant
    of the compiled solve, never differentiated (an implicit derivative of 0), or a tracer of the caller's that
    the compiled solve cannot take (a failure). With ``convert`` (the solve runs inside a caller's
    transformation), a function that closes over tracers (a closure, a ``functools.partial``:
    :func:`~jaxnls._driver.closes_over_tracers`) is first converted by ``eqx.filter_closure_convert`` at one
    term's arguments, so that they become arrays it holds; only then, as a converted function is a new
    compilation key at every call."""
    functions, converted = [], []
    for cost in graph.costs:
        fn = cost.residual_fn
        converted.append(convert and closes_over_tracers(fn))
        if converted[-1]:
            fn = eqx.filter_closure_convert(fn, *one_term_arguments(graph, cost, batched))
        functions.append(fn)
    arrays, static = eqx.partition(tuple(functions), eqx.is_array)
    if not jax.tree_util.tree_leaves(arrays):
        return graph, None
    return with_residual_fns(graph, [_ByIdentity(s) if c else s for s, c in zip(static, converted)]), arrays


class _ByIdentity:
    """The static part of a closure-converted residual function, compared and hashed by identity: equinox's holds
    its example arguments' flattened structure in lists, which no hash of a module holding it (the adjoints'
    :class:`~jaxnls.graph._adjoint.GraphProblem`) could take; it is a new compilation key at every call anyway."""

    def __init__(self, static):
        self.static = static

    def __call__(self, *args):
        return self.static(*args)


def with_arrays(residual_fn: Callable, arrays) -> Callable:
    """``residual_fn`` with the arrays :func:`split_residual_arrays` took out of it put back (None: as it is)."""
    if isinstance(residual_fn, _ByIdentity):
        residual_fn = residual_fn.static
    return residual_fn if arrays is None else eqx.combine(arrays, residual_fn)


def with_residual_arrays(graph: FactorGraph, residual_arrays: tuple | None) -> FactorGraph:
    """``graph`` with the arrays :func:`split_residual_arrays` took out of its residual functions put back, for
    reading shapes and validating (None: the graph as it is)."""
    if residual_arrays is None:
        return graph
    return with_residual_fns(graph, [with_arrays(c.residual_fn, a) for c, a in zip(graph.costs, residual_arrays)])


def cost_arguments(graph: FactorGraph, residual_arrays: tuple | None) -> tuple:
    """Per cost group ``(data, sqrt_information, loss, arrays)``: what a solve's derivatives are taken with respect
    to, ``arrays`` those :func:`split_residual_arrays` took out of its residual function (None where it holds none)."""
    if residual_arrays is None:
        residual_arrays = (None,) * len(graph.costs)
    return tuple(
        (cost.data, cost.sqrt_information, cost.loss, arrays) for cost, arrays in zip(graph.costs, residual_arrays)
    )


def with_residual_fns(graph: FactorGraph, residual_fns: Sequence[Callable]) -> FactorGraph:
    """``graph`` with its cost groups' residual functions replaced (nothing else checked or rebuilt)."""
    costs = tuple(_replaced(cost, residual_fn=fn) for cost, fn in zip(graph.costs, residual_fns))
    return _replaced(graph, costs=costs)


def _replaced(module, **fields):
    # (as equinox rebuilds a module from its fields: a static field takes any value without __init__'s checks and
    # without equinox's warning for arrays in a static field, which a residual function put back may hold)
    new = object.__new__(type(module))
    for field in dataclasses.fields(module):
        object.__setattr__(new, field.name, fields.get(field.name, getattr(module, field.name)))
    return new


def one_term_arguments(graph: FactorGraph, cost: CostGroup, batched: bool) -> list:
    """The arguments of ``cost.residual_fn`` for its first term (of the first problem of a batch), as shapes."""
    lead = 2 if batched else 1

    def first(tree):
        return jax.tree_util.tree_map(lambda leaf: leaf[(0,) * lead], tree)

    variables, data = jax.eval_shape(
        lambda variables, data: ([first(v) for v in variables], first(data)),
        [graph.variables[kind] for kind in cost.kinds],
        cost.data,
    )
    return [*variables, data]


def residual_size(graph: FactorGraph, batched: bool) -> list[int]:
    """k of every cost group (from shapes)."""
    sizes = []
    for cost in graph.costs:
        # (the first term only traced, never run: indexing outside would compile a program per array)
        out = jax.eval_shape(lambda *args, fn=cost.residual_fn: fn(*args), *one_term_arguments(graph, cost, batched))
        sizes.append(int(math.prod(out.shape)))
    return sizes
