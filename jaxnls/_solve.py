"""``jaxnls.solve``: a residual function's problems (one, or a batch) as the loop's dense problem."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jaxtyping import PyTree

from ._bounds import box, pin_to_box
from ._callback import IterationInfo
from ._driver import (
    UNSET,
    attach_in_chart,
    call_compiled,
    check_options,
    closes_over_tracers,
    compiled,
    inside_a_transformation,
    make_solution,
    resolve_args_axes,
    run_loop,
)
from ._jacobian import flat_residual_fn, residual_and_jacobian
from ._loop import LoopProblem, take
from ._problem import (
    as_float_array,
    batch_size,
    broadcast_args_axes,
    check_residual,
    check_sizes,
    one_problem,
    one_problem_call,
    residual_size,
)
from ._solution import Solution
from .adjoint import AbstractAdjoint, DenseProblem, Implicit
from .linear import Cholesky
from .losses import AbstractRobustLoss, linearize_block
from .manifolds import EUCLIDEAN, ProductSpace, has_groups
from .solvers import AbstractLeastSquaresSolver, LevenbergMarquardt


def solve(
    residual_fn: Callable[[PyTree, Any], PyTree],
    params0: PyTree,
    args: PyTree = None,
    *,
    solver: AbstractLeastSquaresSolver = LevenbergMarquardt(),
    max_steps: int = 256,
    batched: bool = False,
    args_axes: PyTree = UNSET,
    verbose: bool = False,
    throw: bool = False,
    working_set: int | str | None = "auto",
    adjoint: AbstractAdjoint = Implicit(),
    loss: AbstractRobustLoss | None = None,
    callback: Callable[[IterationInfo], Any] | None = None,
    history: int = 0,
    bounds: tuple[PyTree, PyTree] | None = None,
    fixed: PyTree | None = None,
) -> Solution:
    r"""Minimise :math:`c(x) = \tfrac12\sum r(x, \text{args})^2` for one problem or a batch of them.

    Args:
        residual_fn: ``residual_fn(params, args) -> residuals`` for ONE problem; residuals may be any
            pytree of floating arrays. It must be pure (it is traced once and compiled).
        params0: starting parameters, any pytree of floating arrays. With ``batched=True`` every leaf
            carries a leading batch axis of the same size B.
        args: data passed unchanged to ``residual_fn`` (arrays, pytrees, Equinox modules).
        solver: :class:`LevenbergMarquardt` (default), :class:`GaussNewton`, :class:`Dogleg` or
            :class:`IndirectLevenbergMarquardt` (MINPACK's trust-region form, for hard single fits), holding
            the tolerances and the linear step solver (:class:`Cholesky` where its ``linear_solver`` is None,
            the strategies' default).
        max_steps: iteration limit per problem (each iteration is one trial step), 0 to 2³¹ - 2.
        batched: solve B independent problems at once. Each problem has its own damping, acceptance
            and termination; a finished or failed problem never changes its neighbours.
        args_axes: with ``batched=True``, which ``args`` leaves carry the batch axis, in ``jax.vmap``'s
            ``in_axes`` style: a prefix of ``args`` made of ``0`` (batched along axis 0) and ``None``
            (shared by every problem), e.g. ``(None, 0)`` for shared sample times and per-problem data,
            ``0`` for everything batched. Required when ``args`` holds arrays: a shared array whose
            leading size happens to equal the batch size would otherwise be split between the problems
            without any error.
        verbose: print one line per iteration from inside the compiled loop (for a batch: totals,
            maxima and the number of problems still running).
        throw: raise if any problem ends without converging (its status names the reason) instead of
            reporting it only in ``Solution.status``.
        working_set: with ``batched=True``, how many unfinished problems the loop advances at a time.
            ``None``: the whole batch, every iteration, until its slowest problem stops. An int ``K``:
            the first ``K`` unfinished problems, refilled from the rest as they finish, so a few slow
            problems cost ``K`` problems' work per iteration instead of ``B``. Each problem takes
            the same iterations either way (up to the last bits where XLA sums a batched matrix product
            in the residual in another order). ``"auto"`` (default): ``max(64, B // 64)`` on a
            single CPU device for ``B >= 4K`` (an iteration there costs in proportion to the problems
            it touches), the whole batch on accelerators and across several devices (so a sharded batch
            never moves between them). ``verbose`` logs the working set's iterations.

        adjoint: how ``Solution.params`` and ``Solution.cost`` are differentiated with respect to the
            floating arrays in ``args`` (``jax.grad``, ``jax.jvp``, ``jax.hessian`` all work):
            :class:`Implicit` (default) applies the implicit function theorem at the solution (the
            iterations are not differentiated, so ``params0`` gets no gradient); :class:`Unroll`
            differentiates the iterations (exactly ``max_steps`` of them run); :class:`Truncated`
            differentiates a few Gauss-Newton steps taken from the solution.
        loss: a robust loss from :mod:`jaxnls.losses` applied to every scalar residual: the cost becomes
            :math:`\tfrac12\sum_i ρ(r_i^2)` and the step model uses Triggs' corrected residual and
            Jacobian (as Ceres). Its ``scale`` is differentiated like an entry of ``args`` (every
            adjoint). For losses on residual *blocks* use :class:`jaxnls.graph.CostGroup`.
        callback: ``callback(info)``, called on the host after every iteration with a
            :class:`jaxnls.IterationInfo` of the problems that iteration advanced (iteration, cost, cost
            change, gradient and step norms, damping / radius, accepted, status; per problem, with its index
            in the batch). It may return ``None`` to go on, or a bool (or one per problem in ``info``): True
            stops those problems, which end ``Status.STOPPED``. It runs inside the compiled loop (an
            ``io_callback``; the loop waits for it) and is part of the compilation key. With
            :class:`Unroll` every one of the ``max_steps`` iterations still runs; a stop request freezes the
            problem where it is.
        bounds: ``(lower, upper)``, each None, a number, or a pytree like ``params0`` (leaves shaped like one
            problem's parameter, or with the batch axis in front for per-problem bounds; ``-inf`` / ``inf``
            for no bound). The solve is then bound-constrained: trial points are projected onto the box
            and each step is taken in the coordinates not held at a bound by a gradient pointing out of
            it (an active-set projected method on the solver's own step), so a ``CONVERGED_*`` status means
            the KKT conditions hold: zero gradient along the free coordinates, an outward-pointing one at
            the active bounds. A start outside the box is projected onto it (with a warning where the
            values are concrete). A box holding no point (lower > upper, a NaN bound) is refused, or, inside
            a caller's jit where it cannot be, gives its problem ``NONFINITE_START``. Euclidean parameters
            only. The adjoints see the solution through its active bounds: those coordinates get the bounds'
            derivatives (zero with respect to ``args``), the others the implicit rule of the problem reduced
            to them.
        fixed: a boolean pytree like ``params0`` (or True/False for all): True freezes that coordinate at
            its starting value without rewriting ``residual_fn`` (a box of width 0). Frozen coordinates
            carry ``params0``'s derivatives.
        history: keep the last ``history`` iterations' figures (cost, cost change, gradient and step norms,
            damping / radius, accepted) as fixed-size arrays in ``Solution.history`` (a :class:`History`),
            e.g. to plot a convergence curve of a jit-compiled solve. 0 (default): none.

    Returns:
        A :class:`Solution`; its fields carry the batch axis when ``batched=True``.

    Static configuration (``residual_fn``, solver, ``max_steps``, flags, Python scalars in ``args``) is
    part of the compilation key: calling again with new arrays of the same shapes does not recompile.
    """
    max_steps = check_options(
        solver,
        adjoint,
        max_steps,
        caller="jaxnls.solve",
        dense=not has_groups(params0),
        callback=callback,
        history=history,
        batched=batched,
    )
    solver = solver.for_problem_kind("dense", Cholesky())
    if (bounds is not None or fixed is not None) and has_groups(params0):
        raise NotImplementedError(
            "jaxnls.solve: bounds= and fixed= apply to Euclidean parameters; params0 holds "
            "Lie-group leaves (freeze whole variables with jaxnls.graph.FactorGraph(fixed=...))"
        )
    if loss is not None and not isinstance(loss, AbstractRobustLoss):
        raise TypeError(f"loss must be a jaxnls.losses loss (Huber(), Cauchy(), ...) or None, got {loss!r}")
    params0 = jax.tree_util.tree_map_with_path(as_float_array, params0)
    if not jax.tree_util.tree_leaves(params0):
        raise ValueError("params0 has no array leaves: there is nothing to solve for")
    args_axes = resolve_args_axes(args_axes, args, batched)
    if batched:
        batch_size(params0)  # (scalar leaves, disagreeing batch sizes: before _check_sizes reads shape[0])
    check_sizes(params0, batched)
    nested = inside_a_transformation((residual_fn, params0, args, loss, solver, bounds, fixed, adjoint))
    if nested and closes_over_tracers(residual_fn):
        # a residual closing over the caller's tracers gets them as leaves of its own (equinox's closure
        # conversion), which _solve_jit moves beside args with an Equinox module's own arrays: the adjoints
        # differentiate args, and would see a closed-over tracer as a constant (a zero derivative, or, for an
        # adjoint that stops the iterations' gradients, the iterations' tangent added to its own). (Only then:
        # a converted function is a new compilation key at every call.)
        axes = broadcast_args_axes(args_axes, args, batch_size(params0)) if batched else None
        residual_fn = eqx.filter_closure_convert(residual_fn, *one_problem_call(params0, args, batched, axes))
    # the residual's size, read from shapes (and checked) once per compilation key: it chooses the
    # compiler options and the jit-compiled solve takes it as a static argument (no second trace)
    num_residuals = None if nested else _residual_size(residual_fn, params0, args, batched, args_axes)
    entries = (
        None
        if num_residuals is None
        else _batch_size_or_one(params0, batched) * num_residuals * _problem_size(params0, batched)
    )
    working_set = _working_set_size(working_set, params0, batched, nested)
    if (bounds is not None or fixed is not None) and not nested:
        # checked (and a start outside the box reported) here, where the values are concrete
        flat = jax.vmap(lambda p: ravel_pytree(p)[0])(params0) if batched else ravel_pytree(params0)[0][None]
        box(bounds, fixed, params0, flat, batched)
    return call_compiled(
        compiled(_solve_jit, nested=nested, jacobian_entries=entries),
        residual_fn,
        params0,
        args,
        solver,
        max_steps,
        batched,
        args_axes,
        verbose,
        throw,
        working_set,
        adjoint,
        loss,
        num_residuals,
        callback,
        int(history),
        bounds,
        fixed,
        callback=callback,
        caller="jaxnls.solve",
    )


def _residual_size(residual_fn, params0, args, batched: bool, args_axes) -> int:
    """m, the residuals of one problem (validated by :func:`check_residual`), remembered per compilation key
    (function, structure, shapes, static leaves) so that a repeated call traces nothing."""
    dynamic, static = eqx.partition((params0, args), eqx.is_array)
    key = (
        residual_fn,
        jax.tree_util.tree_structure(dynamic),
        static,
        batched,
        jax.tree_util.tree_structure(args_axes, is_leaf=lambda a: a is None),
        tuple(jax.tree_util.tree_leaves(args_axes, is_leaf=lambda a: a is None)),
        tuple((leaf.shape, str(leaf.dtype)) for leaf in jax.tree_util.tree_leaves(dynamic)),
    )

    def read():
        axes = broadcast_args_axes(args_axes, args, batch_size(params0)) if batched else None
        return residual_size(residual_fn, params0, args, batched, axes)

    try:
        hash(key)
    except TypeError:  # something unhashable: work it out every time
        return read()
    if key not in _RESIDUAL_SIZES:
        if len(_RESIDUAL_SIZES) >= 1024:
            _RESIDUAL_SIZES.clear()
        _RESIDUAL_SIZES[key] = read()
    return _RESIDUAL_SIZES[key]


_RESIDUAL_SIZES: dict = {}


def _batch_size_or_one(params0, batched: bool) -> int:
    return batch_size(params0) if batched else 1


def _problem_size(params0, batched: bool) -> int:
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(one_problem(params0, batched)))


def _working_set_size(working_set, params0, batched: bool, nested: bool) -> int | None:
    """The static number of problems the loop advances at a time; None for the whole batch."""
    if not (working_set is None or working_set == "auto" or _is_positive_int(working_set)):
        raise ValueError(f"working_set must be 'auto', None or a positive int, got {working_set!r}")
    leaves = jax.tree_util.tree_leaves(params0)
    if not batched or working_set is None or not leaves or jnp.ndim(leaves[0]) == 0:
        return None  # (a batch without a batch axis is reported by _solve_jit)
    batch = leaves[0].shape[0]
    if working_set == "auto":
        if nested:
            platform, num_devices = jax.default_backend(), jax.device_count()
        else:
            devices = {device for leaf in leaves for device in leaf.devices()}
            platform, num_devices = next(iter(devices)).platform, len(devices)
        if platform != "cpu" or num_devices > 1:
            return None
        working_set = max(_AUTO_WORKING_SET_MIN, batch // _AUTO_WORKING_SET_FRACTION)
        return working_set if 4 * working_set <= batch else None
    return int(working_set) if working_set < batch else None


# An iteration on a small working set still pays a fixed cost for launching its kernels (~0.1 ms on a
# CPU), so K stays above a few dozen problems; B // 64 keeps that overhead small for large batches.
# (benchmarks/README.md: B = 1,024 and 16,384 curve fits.)
_AUTO_WORKING_SET_MIN = 64
_AUTO_WORKING_SET_FRACTION = 64


def _is_positive_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and bool(value > 0)


def _solve_jit(
    residual_fn,
    params0,
    args,
    solver,
    max_steps,
    batched,
    args_axes,
    verbose,
    throw,
    working_set,
    adjoint,
    loss,
    num_residuals,
    callback,
    history,
    bounds,
    fixed,
):
    if batched:
        axes = broadcast_args_axes(args_axes, args, batch_size(params0))
        single_params = jax.tree_util.tree_map(lambda leaf: leaf[0], params0)
        x0 = jax.vmap(lambda p: ravel_pytree(p)[0])(params0)
    else:
        axes = jax.tree_util.tree_map(lambda _: None, args)
        single_params = params0
        x0 = ravel_pytree(params0)[0][None]
    _, unravel = ravel_pytree(single_params)
    # from here on `args` holds its arrays only (None elsewhere); the rest (functions, Python scalars,
    # strings in Equinox modules) is static and closed over. The loss travels beside args (its scale is
    # differentiated like any argument, shared by every problem).
    args, static_args = eqx.partition(args, eqx.is_array)
    # so do the residual's own arrays (an Equinox module's, a closure's once converted by solve()): shared by
    # every problem and differentiated like args
    residual_arrays, static_residual = eqx.partition(residual_fn, eqx.is_array)
    args, axes = (args, residual_arrays), (axes, None)
    bounded = bounds is not None or fixed is not None
    if bounded:  # the box travels per problem beside args (its values are differentiated like args)
        lower, upper, x0 = box(bounds, fixed, params0, x0, batched)
        args, axes = (args, loss, (lower, upper)), (axes, None, (0, 0))
    else:
        args, axes = (args, loss), (axes, None)

    def user_residual(p, a):
        own_args, arrays = a[0]
        return eqx.combine(arrays, static_residual)(p, eqx.combine(own_args, static_args))

    fn = flat_residual_fn(user_residual, unravel, x0.dtype)
    if num_residuals is None:  # (inside a caller's transformation)
        num_residuals = check_residual(
            residual_fn, single_params, eqx.combine(take(args[0][0], axes[0][0], 0), static_args)
        )
    # Lie-group leaves (jaxnls.manifolds): x stays the ravelled ambient parameters, steps live in the
    # tangent space and the Jacobian is taken w.r.t. the tangent perturbation δ at 0, r(x ⊕ δ)
    space = ProductSpace(single_params) if has_groups(single_params) else EUCLIDEAN
    tangent_size = space.tangent_size if isinstance(space, ProductSpace) else x0.shape[1]
    if not isinstance(space, ProductSpace):  # EUCLIDEAN
        residual_and_jacobian_at = lambda x, a: residual_and_jacobian(fn, x, a, num_residuals)
    else:
        tangent = jnp.zeros((tangent_size,), x0.dtype)
        residual_and_jacobian_at = lambda x, a: residual_and_jacobian(
            lambda d, b: fn(space.retract_one(x, d), b), tangent, a, num_residuals
        )

    def evaluate(x, a):
        residual, jacobian = residual_and_jacobian_at(x, a)
        if loss is None:
            return residual, jacobian, 0.5 * jnp.sum(residual**2)
        # the loss applies to every scalar residual: blocks of one
        corrected, corrected_jacobian, costs = jax.vmap(linearize_block, in_axes=(None, 0, 0))(
            a[1], residual[:, None], jacobian[:, None, :]
        )
        return corrected[:, 0], corrected_jacobian[:, 0, :], jnp.sum(costs)

    # the residual whose ½‖·‖² the adjoints differentiate (√ρ-whitened under a loss), seen through the active
    # bounds of a bounded problem (there it depends on the bound, not on x)
    def adjoint_fn(x, a):
        if bounded:
            x = pin_to_box(x, *a[2])
        residual = fn(x, a)
        return residual if loss is None else jax.vmap(a[1].whiten)(residual[:, None])[:, 0]

    differentiable_args = args
    if not adjoint.differentiates_iterations:  # derivatives come from the adjoint's rule at the solution
        x0, args = jax.lax.stop_gradient((x0, args))
    problem = LoopProblem(
        evaluate=evaluate,
        space=space,
        num_residuals=num_residuals,
        tangent_size=tangent_size,
        jacobian=jax.ShapeDtypeStruct((num_residuals, tangent_size), x0.dtype),
        box=(lambda a: a[2]) if bounded else None,
    )
    state = run_loop(
        solver,
        problem,
        x0,
        args,
        axes,
        max_steps,
        verbose=verbose,
        working_set=working_set,
        adjoint=adjoint,
        callback=callback,
        history=history,
    )

    if not isinstance(space, ProductSpace):  # EUCLIDEAN
        x, cost = adjoint.attach(DenseProblem(adjoint_fn), state.x, state.cost, state.status, differentiable_args, axes)
        if bounded:  # the coordinates at a bound are the bound (with its derivatives)
            x = pin_to_box(x, *differentiable_args[2])  # pyright: ignore[reportGeneralTypeIssues]  # bounded: the box is args[2]
    else:
        # the adjoint works in the chart δ ↦ x* ⊕ δ around the solution (δ* = 0), and the solution's
        # derivative is the retraction's: ẋ = ∂(x* ⊕ δ)/∂δ · δ̇
        chart = lambda d, a: adjoint_fn(space.retract_one(a[0], d), a[1])
        anchor = state.x if adjoint.differentiates_iterations else jax.lax.stop_gradient(state.x)
        x, cost = attach_in_chart(adjoint, DenseProblem(chart), space, anchor, state, differentiable_args, axes)
    return make_solution(
        solver,
        jax.vmap(unravel)(x),
        cost,
        state,
        batched=batched,
        throw=throw,
        num_residuals=num_residuals,
        num_params=tangent_size,
        caller="jaxnls.solve",
    )
