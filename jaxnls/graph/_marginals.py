r"""Marginal covariances of chosen variables of a factor graph, from one sparse factorisation.

For the cost :math:`\tfrac12\sum_e\|w_e\|^2` (each term whitened by its square-root information and robust
loss), the Laplace approximation of the estimate's distribution in the tangent coordinates δ of
:math:`X \oplus δ` has covariance :math:`Σ = (J^\top J)^{-1}` (no rescaling: the square-root informations
carry the noise, as in GTSAM's ``Marginals``). The blocks of Σ for a few variables are read from the
columns :math:`Σ e_j = (J^\top J)^{-1} e_j` of their tangent coordinates: one sparse :math:`LDL^\top`
factorisation of :math:`J^\top J` and one pair of triangular solves per column; no ``n×n`` inverse is formed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from ..manifolds import ProductSpace
from ._adjoint import GraphProblem
from ._graph import FactorGraph, cost_arguments, split_residual_arrays, validate, with_residual_arrays
from ._linear import SparseDirect, block_products, jacobi_scaled_upper, sparse_modules


def marginal_covariance(
    graph: FactorGraph, variables: Sequence[tuple[str, int]], at: Mapping | None = None
) -> np.ndarray:
    r"""The joint covariance of ``variables`` at the estimate ``at`` (GTSAM's ``marginalCovariance`` for one
    variable, ``jointMarginalCovariance`` for several).

    The linearisation is compiled once per graph structure: later calls, at other values or for other
    variables, reuse the program (asking for several variables in one call also shares the factorisation).

    Args:
        graph: the :class:`FactorGraph` (one problem, not a batch).
        variables: ``[(kind, index), ...]``, e.g. ``[("pose", 7)]`` or ``[("pose", 0), ("landmark", 3)]``.
        at: the variables' values to linearise at, a mapping like ``graph.variables`` (typically
            ``jaxnls.graph.solve(graph).params``); default ``graph.variables``.

    Returns:
        A NumPy array ``(D, D)``, D the sum of the variables' tangent sizes, in the order given: block
        ``(i, j)`` is the covariance of variable i's tangent perturbation with variable j's. Tangent
        coordinates are jaxlie's (right perturbation :math:`X\operatorname{Exp}(δ)`; SE(3): translation then
        rotation, where GTSAM's Pose3 is rotation then translation; SE(2): x, y, θ as GTSAM). A fixed
        variable is known exactly: its rows and columns are zero.

    Raises:
        ValueError: an unknown kind or an index out of range, a batched graph, or an information matrix
        that is singular (a gauge left free: fix a variable or add a prior).
    """
    if not isinstance(graph, FactorGraph):
        raise TypeError(f"marginal_covariance: graph must be a jaxnls.graph.FactorGraph, got {type(graph).__name__}")
    if at is not None:
        if set(at) != set(graph.variables):
            raise ValueError(f"marginal_covariance: `at` has kinds {sorted(at)}, the graph {sorted(graph.variables)}")
        graph = eqx.tree_at(lambda g: g.variables, graph, dict(at))
    structure = validate(graph, False)
    columns = []
    for entry in variables:
        if not (isinstance(entry, (tuple, list)) and len(entry) == 2):
            raise ValueError(f"marginal_covariance: variables must be (kind, index) pairs, got {entry!r}")
        kind, index = entry
        if kind not in structure.count:
            raise ValueError(f"marginal_covariance: no variable kind {kind!r} (the graph has {structure.kinds})")
        if (
            isinstance(index, (bool, np.bool_))
            or not isinstance(index, (int, np.integer))
            or not 0 <= index < structure.count[kind]
        ):
            raise ValueError(f"marginal_covariance: {kind!r} index {index!r} is outside [0, {structure.count[kind]})")
        d = structure.dim[kind]
        columns.append(structure.offset[kind] + int(index) * d + np.arange(d))
    if not columns:
        raise ValueError("marginal_covariance: no variables given")
    columns = np.concatenate(columns)
    products = _term_products(graph)
    return _covariance_columns(structure, products, columns)


def _term_products(graph: FactorGraph) -> list[np.ndarray]:
    """JₑᵀJₑ per term, ``(E, D, D)`` per cost group, of the whitened residuals at the graph's values (the
    coordinates of fixed variables masked to zero)."""
    # a residual module's arrays as arguments, as in graph.solve: not constants of a program compiled per value
    graph, residual_arrays = split_residual_arrays(graph, batched=False, convert=False)
    return [np.asarray(p, np.float64) for p in _term_products_compiled(graph, residual_arrays)]


@eqx.filter_jit
def _term_products_compiled(graph: FactorGraph, residual_arrays: tuple | None) -> list[jax.Array]:
    # module level, the graph an argument: one compilation per graph structure, not one per call
    structure = validate(with_residual_arrays(graph, residual_arrays), False)
    values = graph.variables
    anchor = ravel_pytree(values)[0]
    problem = GraphProblem(
        structure=structure,
        space=ProductSpace(values),
        residual_fns=tuple(c.residual_fn for c in graph.costs),
        linear_solver=SparseDirect(),
        dtype=anchor.dtype,
    )
    cost_args = cost_arguments(graph, residual_arrays)
    _, jacobians = problem.whitened_jacobians(jnp.zeros((structure.n,), anchor.dtype), (anchor, cost_args))
    return [block_products(jac, jac) for jac in jacobians]


def _covariance_columns(structure, products, columns: np.ndarray) -> np.ndarray:
    qdldl, _ = sparse_modules()
    n = structure.n
    fixed = structure.fixed_diagonal > 0
    # fixed coordinates get an identity (their Jacobian columns are zero), which keeps the matrix nonsingular;
    # Jacobi scaling to a unit diagonal (undone afterwards) makes the factorisation's accuracy depend on the
    # conditioning of the correlations, not on the units of the variables
    contributions = np.concatenate([p.ravel() for p in products] + [structure.fixed_diagonal])
    matrix, scale, diagonal = jacobi_scaled_upper(structure, contributions)
    if np.any(diagonal <= 0):
        empty = int(np.flatnonzero(diagonal <= 0)[0])
        raise ValueError(
            f"marginal_covariance: tangent coordinate {empty} appears in no cost term: the information "
            "matrix is singular"
        )
    try:
        factor = qdldl.Solver(matrix)
    except (ValueError, RuntimeError) as err:
        raise ValueError(
            "marginal_covariance: the information matrix JᵀJ is singular (a gauge freedom left "
            "free? fix a variable or add a prior)"
        ) from err
    block = np.empty((n, columns.size))
    for j, column in enumerate(columns):
        unit = np.zeros(n)
        unit[column] = scale[column]
        block[:, j] = factor.solve(unit) * scale
    result = block[columns]
    if not np.all(np.isfinite(result)):
        raise ValueError("marginal_covariance: the information matrix JᵀJ is singular (non-finite solve)")
    # with a positive-definite JᵀJ every pivot is positive; a non-positive diagonal of the inverse means
    # rounding has broken that (a numerically singular matrix)
    if np.any(np.diag(result)[~fixed[columns]] <= 0):
        raise ValueError("marginal_covariance: the information matrix JᵀJ is numerically singular")
    zero = fixed[columns]
    result[zero, :] = 0.0
    result[:, zero] = 0.0
    return 0.5 * (result + result.T)
