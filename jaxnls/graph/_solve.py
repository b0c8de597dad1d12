r"""``jaxnls.graph.solve``: the loop of :func:`jaxnls.solve` on a block-sparse linearisation."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.core
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from .._callback import IterationInfo
from .._driver import (
    attach_in_chart,
    call_compiled,
    check_options,
    compiled,
    inside_a_transformation,
    make_solution,
    run_loop,
    solution_arrays,
    solution_from_arrays,
    top_level_compiler_options,
)
from .._loop import LoopProblem
from .._programs import active_store
from .._solution import Solution
from ..adjoint import AbstractAdjoint, Implicit
from ..manifolds import ProductSpace, is_group, parameter_array
from ..solvers import AbstractLeastSquaresSolver, Dogleg
from ._adjoint import GraphProblem
from ._graph import (
    FactorGraph,
    cost_arguments,
    gather_variables,
    residual_size,
    split_residual_arrays,
    term_evaluator,
    validate,
    with_residual_arrays,
)
from ._linear import (
    CHOLMOD_CUSTOM_CALLS,
    CHOLMOD_NOT_POSITIVE_DEFINITE,
    AbstractGraphLinearSolver,
    SparseDirect,
    assembly_for,
)
from ._schur import SchurDirect, largest_eliminable_kind, reduction_plan_arrays

#: The default solver eliminates a kind (SchurDirect) when at most this many tangent unknowns are kept. On 2
#: cores, synthetic bundle adjustment (benchmarks/bundle.py, Dogleg, 4 views per point), SchurDirect against
#: SparseDirect: 40 cameras (360 kept) 0.31 vs 0.70 s, 100 cameras (900) 0.27 vs 0.64 s, 250 cameras
#: (2,250) 1.10 vs 12.7 s with QDLDL (1.02 vs 1.39 s since SparseDirect factors by CHOLMOD, benchmarks (u)); a
#: real BAL problem with 16 cameras 0.67 vs 2.8 s. Beyond a few thousand the dense reduced system's n³
#: factorisation takes over.
SCHUR_KEPT_MAX = 2500


def solve(
    graph: FactorGraph,
    *,
    solver: AbstractLeastSquaresSolver | None = None,
    max_steps: int = 256,
    batched: bool = False,
    verbose: bool = False,
    throw: bool = False,
    adjoint: AbstractAdjoint = Implicit(),
    callback: Callable[[IterationInfo], Any] | None = None,
    history: int = 0,
) -> Solution:
    r"""Minimise :math:`c(X) = \tfrac12\sum_{\text{terms}} \|L\,r\|^2` over the variables of ``graph``.

    The loop is :func:`jaxnls.solve`'s (same acceptance, damping, statuses, verbose log and
    :class:`~jaxnls.Solution`): only the linearisation differs. Each iteration evaluates every cost
    group with one ``vmap`` (residuals and ``(E, k, D)`` Jacobian blocks w.r.t. the connected
    variables' tangent perturbations), and the strategy's damped system
    :math:`(J^\top J + λ\,\mathrm{diag}(D))δ = -J^\top r` is solved by the solver's graph linear solver:
    :class:`SparseDirect` (sparse Cholesky: CHOLMOD in the program, or QDLDL on the host), :class:`SchurDirect` / :class:`SchurPCG` (one kind of
    variable eliminated: bundle adjustment's points) or :class:`PCG` (matrix-free, pure JAX). Without a
    ``solver`` the linear solver is :func:`default_linear_solver`'s choice for the graph.

    The default strategy is :class:`~jaxnls.Dogleg`: on GTSAM's w10000 pose graph (started from
    odometry, cost 2.8e7) it follows the Gauss-Newton path and reaches GTSAM's minimum (144.8674) in 9
    iterations. :class:`~jaxnls.LevenbergMarquardt` starts graphs with a damping of 1e-8 relative to
    diag(JᵀJ) (its docstring says why: a pose graph's JᵀJ is a Laplacian) and reaches the same minimum in
    13; with the dense fits' 0.1 it would crawl (cost 978 after 200 iterations). On the small graphs of
    the tests all three reach GTSAM's cost.
    Steps are retracted per variable, :math:`X_i \leftarrow X_i \operatorname{Exp}(δ_i)` (``x + δ`` for
    Euclidean kinds).

    Args:
        graph: the :class:`FactorGraph` (its ``variables`` are the starting values).
        solver: :class:`~jaxnls.LevenbergMarquardt`, :class:`~jaxnls.Dogleg` or
            :class:`~jaxnls.GaussNewton`, whose ``linear_solver`` is a graph solver (:class:`SparseDirect`,
            :class:`SchurDirect`, :class:`SchurPCG`, :class:`PCG`) or None, the strategies' default: then
            :func:`default_linear_solver`'s choice for the graph (so ``solver=jaxnls.LevenbergMarquardt()``
            works as in :func:`jaxnls.solve`). None (default): ``Dogleg()``.
            :class:`~jaxnls.IndirectLevenbergMarquardt` needs a dense eigendecomposition and is rejected.
        max_steps: iteration limit.
        batched: solve B graphs of the same structure at once: every leaf of ``graph.variables`` and
            every array of the cost groups' ``data`` / ``sqrt_information`` leads with the batch axis;
            indices are shared. Each graph has its own damping and termination; a diverging one never
            changes its neighbours.
        verbose: as in :func:`jaxnls.solve`.
        throw: as in :func:`jaxnls.solve`.
        callback: as in :func:`jaxnls.solve`.
        history: as in :func:`jaxnls.solve`.
        adjoint: how ``Solution.params`` and ``Solution.cost`` are differentiated with respect to the
            graph's floating arrays — the cost groups' ``data`` (measurements, stacked groups too),
            ``sqrt_information``, the losses' ``scale``, the values of ``fixed`` variables and the arrays a
            residual function holds (an Equinox module) or closes over (a closure, a ``functools.partial``;
            shared by a batch) — as in :func:`jaxnls.solve` (``jax.grad``, ``jax.jvp``, ``jax.jacfwd`` all work):
            :class:`~jaxnls.Implicit` (default; the starting values of the free variables get no
            gradient), :class:`~jaxnls.Unroll`, :class:`~jaxnls.Truncated`,
            :class:`~jaxnls.DirectLossMinimization`. The implicit rule works in the chart
            :math:`δ \mapsto X^* \oplus δ` and solves its system, the exact Hessian
            :math:`\sum_e \nabla^2 \tfrac12ρ(\|L_e r_e\|^2)` assembled from the terms' ``D×D`` blocks
            (or :math:`J^\top J` with ``Implicit(hessian="gauss_newton")``), with the solver's own graph
            linear solver, so it stays sparse; with :class:`PCG` its accuracy is that of the CG tolerance.
            Derivatives of the variables are tangent-space pushes of the retraction, as for Lie-group
            leaves in :func:`jaxnls.solve`.

    Returns:
        A :class:`~jaxnls.Solution` whose ``params`` is the variables mapping at the end (groups
        stay groups).

    Raises:
        ValueError: at call time for inconsistent shapes, indices out of range and (outside ``jit``,
            unbatched) non-finite starting values; in a batch a non-finite start is reported in that
            problem's ``Solution.status`` (``NONFINITE_START``) and its neighbours solve.
        TypeError: for arguments of the wrong kind (a graph that is not a :class:`FactorGraph`, a dense
            linear solver given explicitly).
    """
    if not isinstance(graph, FactorGraph):
        raise TypeError(f"graph must be a jaxnls.graph.FactorGraph, got {type(graph).__name__}")
    if solver is None:
        solver = Dogleg()
    max_steps = check_options(
        solver,
        adjoint,
        max_steps,
        caller="jaxnls.graph.solve",
        dense=False,
        callback=callback,
        history=history,
        batched=batched,
    )
    structure = validate(graph, batched)
    solver = solver.for_problem_kind("graph", _default_for(structure))
    if not isinstance(solver.linear_solver, AbstractGraphLinearSolver):
        raise TypeError(
            f"{type(solver).__name__}'s linear_solver is {type(solver.linear_solver).__name__}, a dense "
            "solver; factor graphs need a graph linear solver (jaxnls.graph.SparseDirect(), SchurDirect(), "
            f"PCG(), ...), or none: {type(solver).__name__}() leaves the choice to jaxnls.graph.default_linear_solver"
        )
    if not batched:
        _check_finite(graph)
    # as in jaxnls.solve: a small problem is dominated by its compilation, so its kernels are generated
    # without LLVM optimisation (halves the compile time; w100: 4.5 s -> 2 s, run time ~ms either way)
    entries = sum(
        c.num_terms * k * sum(g["dims"])
        for c, k, g in zip(graph.costs, residual_size(graph, batched), structure.groups)
    )
    batch = _batch(graph) if batched else 1
    # (a residual function is a static field: its tracers, held or closed over, are not among the graph's leaves)
    nested = inside_a_transformation((graph, tuple(c.residual_fn for c in graph.costs), solver))
    # the arrays the residual functions hold or close over travel beside the cost groups' data, differentiated
    # like it (ordinary functions: None, the graph as it is)
    graph, residual_arrays = split_residual_arrays(graph, batched, convert=nested)

    def run(solver):
        args = (
            graph,
            solver,
            max_steps,
            batched,
            verbose,
            throw,
            adjoint,
            callback,
            int(history),
            None if nested else structure.index_arrays(),
            # (only where there are some: an ordinary graph's call, and stored program key, as they were)
            *(() if residual_arrays is None else (residual_arrays,)),
        )

        def plain():
            return call_compiled(
                compiled(_solve_jit, nested=nested, jacobian_entries=batch * entries, graph=True),
                *args,
                callback=callback,
                caller="jaxnls.graph.solve",
            )

        # a program kept on disk by the caller's store (the command line's) skips the trace; host callbacks
        # (a callback, the verbose log, throw's error) cannot be kept
        store = None if nested or callback is not None or verbose or throw else active_store()
        if store is None:
            return plain()
        return store.call(
            _solve_jit,
            args,
            compiler_options=top_level_compiler_options(jacobian_entries=batch * entries, graph=True),
            to_arrays=solution_arrays,
            from_arrays=lambda arrays, meta: solution_from_arrays(
                arrays, meta, jax.tree_util.tree_structure(graph.variables)
            ),
            fallback=plain,
            allowed_custom_calls=CHOLMOD_CUSTOM_CALLS,
        )

    linear_solver = solver.linear_solver
    if isinstance(linear_solver, SchurDirect):
        # the reduction plan's index arrays as arguments of the compiled solve, not its constants (inside a
        # caller's jit, the plan the structure gives, as constants)
        plan = None if nested else reduction_plan_arrays(structure, linear_solver)
        return run(eqx.tree_at(lambda s: s.linear_solver, solver, dataclasses.replace(linear_solver, plan=plan)))
    if not isinstance(linear_solver, SparseDirect) or not linear_solver.uses_cholmod(_dtype(graph)):
        return run(solver)
    if nested:
        try:
            return run(solver)
        except NotImplementedError as err:
            # CHOLMOD's FFI call is vmapped once, by the loop's own vmap over the batch; a caller's jax.vmap
            # around the solve would vmap it again, which the call does not support. QDLDL (a host callback that
            # factors the problems one after another) does; "auto" takes it there
            if "ffi_call" not in str(err):
                raise
            if linear_solver.factorization == "cholmod":
                raise NotImplementedError(
                    "jaxnls.graph.solve: SparseDirect(factorization='cholmod') cannot run under a caller's "
                    "jax.vmap (CHOLMOD's FFI call is batched once, by the solve itself): stack the graphs along a "
                    "leading axis and pass batched=True, or use SparseDirect() (it takes QDLDL under a vmap)"
                ) from err
            qdldl = dataclasses.replace(linear_solver, factorization="qdldl")
            return run(eqx.tree_at(lambda s: s.linear_solver, solver, qdldl))
    # the plan as arguments of the compiled solve, not its constants (bound here like the structure)
    solver = eqx.tree_at(
        lambda s: s.linear_solver, solver, dataclasses.replace(linear_solver, assembly=assembly_for(structure))
    )
    try:  # CHOLMOD's refusal of a numerically indefinite matrix surfaces when the results are ready
        return jax.block_until_ready(run(solver))
    except Exception as err:
        if CHOLMOD_NOT_POSITIVE_DEFINITE not in str(err):
            raise
        warnings.warn(
            f"jaxnls.graph.solve: CHOLMOD found a damped normal matrix numerically indefinite ({err}); "
            "solving again with SparseDirect(factorization='qdldl')",
            RuntimeWarning,
            stacklevel=2,
        )
        return run(eqx.tree_at(lambda s: s.linear_solver, solver, SparseDirect(factorization="qdldl")))


def default_linear_solver(graph: FactorGraph, batched: bool = False) -> AbstractGraphLinearSolver:
    """The graph linear solver :func:`solve` uses when it is given no ``solver``, chosen from the graph's shape.

    :class:`SchurDirect` eliminating the kind with the most variables that no cost term connects twice (bundle
    adjustment's points, a SLAM problem's landmarks), when the other kinds keep at most 2,500 tangent unknowns
    (the dense reduced system stays small; measured against :class:`SparseDirect` in the module's
    ``SCHUR_KEPT_MAX``); otherwise :class:`SparseDirect` (pose graphs, and problems with many kept unknowns).

    Args:
        graph: the :class:`FactorGraph` to be solved.
        batched: whether ``graph`` is a batch (as in :func:`solve`).

    Returns:
        An unbound graph linear solver, e.g. for ``jaxnls.LevenbergMarquardt(linear_solver=...)``.
    """
    return _default_for(validate(graph, batched))


def _default_for(structure) -> AbstractGraphLinearSolver:
    kind = largest_eliminable_kind(structure)
    if kind is not None and structure.n - structure.count[kind] * structure.dim[kind] <= SCHUR_KEPT_MAX:
        return SchurDirect(eliminate=kind)
    return SparseDirect()


def _dtype(graph):
    return jnp.result_type(*[parameter_array(value) for value in graph.variables.values()])


def _batch(graph) -> int:
    return int(np.shape(jax.tree_util.tree_leaves(graph.variables)[0])[0])


def _check_finite(graph: FactorGraph):
    for kind, value in graph.variables.items():
        leaf = parameter_array(value)
        if isinstance(leaf, jax.core.Tracer):
            continue  # under jit: reported per problem as Status.NONFINITE_START
        bad = ~np.isfinite(np.asarray(leaf))
        if bad.any():
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            where = where[:-1] if is_group(value) else where
            raise ValueError(f"graph.variables[{kind!r}] has a non-finite starting value at index {where}")


def _solve_jit(
    graph: FactorGraph,
    solver,
    max_steps,
    batched,
    verbose,
    throw,
    adjoint,
    callback,
    history,
    index_arrays,
    residual_arrays=None,
):
    # the residual functions' own arrays (split_residual_arrays) enter the evaluation through cost_args below, so
    # that the adjoints differentiate them; the graph with them put back is for reading shapes
    evaluated, graph = graph, with_residual_arrays(graph, residual_arrays)
    structure = validate(graph, batched)
    if index_arrays is not None:  # the index arrays as arguments of the program, not its constants
        structure = structure.bind(index_arrays)
    values = graph.variables
    if batched:
        template = jax.tree_util.tree_map(lambda leaf: leaf[0], values)
        x0 = jax.vmap(lambda v: ravel_pytree(v)[0])(values)
    else:
        template = values
        x0 = ravel_pytree(values)[0][None]
    dtype = x0.dtype
    space = ProductSpace(template)
    assert space.tangent_size == structure.n
    linear_solver = _bind(solver.linear_solver, structure)
    solver = eqx.tree_at(lambda s: s.linear_solver, solver, linear_solver)
    sizes = residual_size(graph, batched)
    evaluators = [term_evaluator(c, group, dtype, k) for c, group, k in zip(evaluated.costs, structure.groups, sizes)]
    cost_args = cost_arguments(graph, residual_arrays)
    # vmap axes leaf by leaf (the adjoints read them per leaf): data and sqrt_information carry the batch
    # axis when batched, the losses' scales and the residual functions' arrays are shared
    axes = tuple(
        jax.tree_util.tree_map(lambda _: 0 if batched else None, (data, sqrt_information))
        + jax.tree_util.tree_map(lambda _: None, (loss, arrays))
        for data, sqrt_information, loss, arrays in cost_args
    )
    differentiable = (x0, cost_args)
    if not adjoint.differentiates_iterations:  # derivatives come from the adjoint's rule at the solution
        x0, cost_args = jax.lax.stop_gradient((x0, cost_args))

    def evaluate_one(x, args):
        values = space.unravel(x)
        residuals, blocks, total = [], [], 0.0
        for group, evaluator, (data, sqrt_information, loss, arrays) in zip(structure.groups, evaluators, args):
            r, jac, group_cost = evaluator(gather_variables(values, group), data, sqrt_information, loss, arrays)
            residuals.append(jnp.ravel(r))
            blocks.append(jac)
            total = total + group_cost
        return jnp.concatenate(residuals), tuple(blocks), total

    num_residuals = sum(c.num_terms * k for c, k in zip(graph.costs, sizes))
    jacobian = tuple(
        jax.ShapeDtypeStruct((c.num_terms, k, sum(g["dims"])), dtype)
        for c, k, g in zip(graph.costs, sizes, structure.groups)
    )
    problem = LoopProblem(
        evaluate=evaluate_one,
        space=space,
        num_residuals=num_residuals,
        tangent_size=structure.n,
        jacobian=jacobian,
        sparse_steps=True,
        movable=not np.all(structure.fixed_diagonal),
    )
    state = run_loop(
        solver,
        problem,
        x0,
        cost_args,
        axes,
        max_steps,
        verbose=verbose,
        working_set=None,
        adjoint=adjoint,
        callback=callback,
        history=history,
    )

    # the adjoint works in the chart δ ↦ X ⊕ δ around the solution. Fixed variables never move (X* = X0
    # there), so the anchor carries their starting values' derivatives; the free ones get theirs from the
    # adjoint's rule (or, unrolled, from the iterations)
    x0_differentiable, cost_args_differentiable = differentiable
    if adjoint.differentiates_iterations:
        anchor = state.x
    else:
        anchor = jnp.where(_fixed_mask(graph, template), x0_differentiable, jax.lax.stop_gradient(state.x))
    adjoint_problem = GraphProblem(
        structure=structure,
        space=space,
        residual_fns=tuple(c.residual_fn for c in evaluated.costs),
        # (the adjoint's systems come from the solution, not the loop: without the loop's plan, which is an
        # argument of this program and cannot sit in the problem's static fields)
        linear_solver=_without_plan_arrays(linear_solver),
        dtype=dtype,
    )
    x, cost = attach_in_chart(adjoint, adjoint_problem, space, anchor, state, cost_args_differentiable, axes)
    return make_solution(
        solver,
        jax.vmap(space.unravel)(x),
        cost,
        state,
        batched=batched,
        throw=throw,
        num_residuals=num_residuals,
        num_params=structure.n,
        caller="jaxnls.graph.solve",
    )


def _fixed_mask(graph: FactorGraph, template) -> np.ndarray:
    """True at the ravelled ambient coordinates of the fixed variables (ravel_pytree's layout)."""
    fixed = {kind: idx.array for kind, idx in graph.fixed}
    parts = []
    for kind in sorted(template):
        value = template[kind]
        leaf = parameter_array(value)
        mask = np.zeros(jnp.shape(leaf), bool)
        mask[fixed.get(kind, np.zeros(0, np.int64))] = True
        parts.append(mask.ravel())
    return np.concatenate(parts)


def _without_plan_arrays(linear_solver):
    if isinstance(linear_solver, SparseDirect) and linear_solver.assembly is not None:
        return dataclasses.replace(linear_solver, assembly=None)
    if isinstance(linear_solver, SchurDirect) and linear_solver.plan is not None:
        return dataclasses.replace(linear_solver, plan=None)
    return linear_solver


def _bind(linear_solver, structure):
    return dataclasses.replace(linear_solver, structure=structure)
