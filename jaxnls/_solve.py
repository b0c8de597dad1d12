"""``jaxnls.solve``: validation, flattening, batching and the one jit-compiled loop over the batch."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, Bool, Float, Int, PyTree

from ._jacobian import flat_residual_fn, residual_and_jacobian
from .adjoint import AbstractAdjoint, DenseProblem, Implicit
from ._solution import Solution
from ._status import MESSAGES, Status
from .linear import AbstractLinearization
from .manifolds import EUCLIDEAN, ProductSpace, has_groups
from .losses import AbstractRobustLoss
from .solvers import AbstractLeastSquaresSolver, LevenbergMarquardt


def solve(
    residual_fn: Callable[[PyTree, Any], PyTree],
    params0: PyTree,
    args: PyTree = None,
    *,
    solver: AbstractLeastSquaresSolver = LevenbergMarquardt(),
    max_steps: int = 256,
    batched: bool = False,
    args_axes: PyTree = 0,
    verbose: bool = False,
    throw: bool = False,
    working_set: int | str | None = "auto",
    adjoint: AbstractAdjoint = Implicit(),
    loss: AbstractRobustLoss | None = None,
) -> Solution:
    r"""Minimise :math:`c(x) = \tfrac12\sum r(x, \text{args})^2` for one problem or a batch of them.

    Args:
        residual_fn: ``residual_fn(params, args) -> residuals`` for ONE problem; residuals may be any
            pytree of floating arrays. It must be pure (it is traced once and compiled).
        params0: starting parameters, any pytree of floating arrays. With ``batched=True`` every leaf
            carries a leading batch axis of the same size B.
        args: data passed unchanged to ``residual_fn`` (arrays, pytrees, Equinox modules).
        solver: :class:`LevenbergMarquardt` (default), :class:`GaussNewton` or :class:`Dogleg`, holding
            the tolerances and the linear step solver.
        max_steps: iteration limit per problem (each iteration is one trial step).
        batched: solve B independent problems at once. Each problem has its own damping, acceptance
            and termination; a finished or failed problem never changes its neighbours.
        args_axes: with ``batched=True``, which ``args`` leaves carry the batch axis, in ``jax.vmap``'s
            ``in_axes`` style: a prefix of ``args`` made of ``0`` (batched along axis 0) and ``None``
            (shared by every problem). Default: everything batched.
        verbose: print one line per iteration from inside the compiled loop (for a batch: totals,
            maxima and the number of problems still running).
        throw: raise if any problem ends without converging (its status names the reason) instead of
            reporting it only in ``Solution.status``.
        working_set: with ``batched=True``, how many unfinished problems the loop advances at a time.
            ``None``: the whole batch, every iteration, until its slowest problem stops. An int ``K``:
            the first ``K`` unfinished problems, refilled from the rest as they finish, so a few slow
            problems cost ``K`` problems' work per iteration instead of ``B``. Each problem takes
            exactly the same iterations either way. ``"auto"`` (default): ``max(64, B // 64)`` on a
            single CPU device for ``B >= 4K`` (an iteration there costs in proportion to the problems
            it touches), the whole batch on accelerators, across several devices (so a sharded batch
            never moves between them) and with ``verbose=True`` (whose log reports batch totals).

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

    Returns:
        A :class:`Solution`; its fields carry the batch axis when ``batched=True``.

    Static configuration (``residual_fn``, solver, ``max_steps``, flags, Python scalars in ``args``) is
    part of the compilation key: calling again with new arrays of the same shapes does not recompile.
    """
    params0 = jax.tree_util.tree_map_with_path(_as_float_array, params0)
    if loss is not None:
        if not isinstance(loss, AbstractRobustLoss):
            raise TypeError(f"loss must be a jaxnls.losses loss (Huber(), Cauchy(), ...) or None, got {loss!r}")
        # the loss travels in args so that its scale is differentiated like any argument
        residual_fn, args, args_axes = _RobustResidual(residual_fn), (args, loss), (args_axes, None)
    # params0's leaves went through jnp.asarray, so inside a caller's jit / vmap they are tracers; under
    # a caller's grad / jvp at least one of params0 and args is
    nested = any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves((params0, args)))
    if nested:
        solve_jit = _nested_solve
    else:
        entries = _jacobian_entries(residual_fn, params0, args, batched, args_axes)
        solve_jit = _top_level_solve(small=entries is not None and entries < _SMALL_JACOBIAN)
    working_set = _working_set_size(working_set, params0, batched, verbose, nested)
    return solve_jit(residual_fn, params0, args, solver, max_steps, batched, args_axes, verbose, throw, working_set,
                     adjoint)


# XLA:CPU's classic elemental kernel emitters compile the solve loop's few dozen small fused kernels in
# about half the time its newer MLIR fusion emitters take, and the loop runs as fast (measured in
# benchmarks/README.md). The option only matters on CPU, and JAX accepts compiler options only on the
# outermost jit: inside a caller's jax.jit the caller's options apply.
_COMPILER_OPTIONS = {"xla_cpu_use_fusion_emitters": False}
# A solve whose Jacobian, over the whole batch, has fewer entries than this is dominated by its
# compilation (a NIST fit: ~0.5 s to compile, ~1 ms to run), so its kernels are generated without
# LLVM optimisation, which halves XLA:CPU's compile time and at most doubles a run that costs
# milliseconds (measured on 10 NIST problems: backend compile 4.2 s vs 8.0-8.8 s; second fits 79 ms vs
# 31-39 ms in all). Larger solves keep the default: there the run time matters.
_SMALL_JACOBIAN = 2**16
_SMALL_COMPILER_OPTIONS = {**_COMPILER_OPTIONS, "xla_backend_optimization_level": 0}


@functools.cache
def jit_with_options(fn, small: bool):
    """``eqx.filter_jit(fn)`` with ``_COMPILER_OPTIONS`` (``_SMALL_COMPILER_OPTIONS`` when ``small``) if
    this XLA build knows them (checked on first use, so that importing jaxnls does not initialise a JAX
    backend); the outermost jit of a solve, ``jaxnls.solve``'s or ``jaxnls.graph.solve``'s."""
    options = _SMALL_COMPILER_OPTIONS if small else _COMPILER_OPTIONS
    try:
        jax.jit(lambda x: x + 1, compiler_options=options).lower(0.0).compile()
    except Exception:  # an XLA build without the options: its defaults
        return eqx.filter_jit(fn)
    return eqx.filter_jit(fn, compiler_options=options)


def _top_level_solve(small: bool = False):
    """The jit-compiled solve (see :func:`jit_with_options`)."""
    return jit_with_options(_solve_jit, small)


_ENTRIES_CACHE: dict = {}


def _jacobian_entries(residual_fn, params0, args, batched: bool, args_axes) -> int | None:
    """B·m·n, the entries of the batch's Jacobian, read from shapes alone; None when they cannot be read
    here (bad input is then reported, with its reason, by the solve itself). Cached on the same key as
    the compiled solve (function, structure, shapes and static leaves), so a repeated call traces nothing."""
    dynamic, static = eqx.partition((params0, args), eqx.is_array)
    try:
        key = (residual_fn, jax.tree_util.tree_structure(dynamic), static, batched, str(args_axes),
               tuple((leaf.shape, str(leaf.dtype)) for leaf in jax.tree_util.tree_leaves(dynamic)))
        hash(key)
    except TypeError:  # something unhashable: work it out every time
        return _read_jacobian_entries(residual_fn, params0, args, batched, args_axes)
    if key not in _ENTRIES_CACHE:
        if len(_ENTRIES_CACHE) > 1024:
            _ENTRIES_CACHE.clear()
        _ENTRIES_CACHE[key] = _read_jacobian_entries(residual_fn, params0, args, batched, args_axes)
    return _ENTRIES_CACHE[key]


def _read_jacobian_entries(residual_fn, params0, args, batched: bool, args_axes) -> int | None:
    try:
        if batched:
            batch_size = _batch_size(params0)
            single_params = jax.tree_util.tree_map(lambda leaf: leaf[0], params0)
            single_args = _take(args, _broadcast_axes(args_axes, args, batch_size), 0)
        else:
            batch_size, single_params, single_args = 1, params0, args
        residuals = eqx.filter_eval_shape(residual_fn, single_params, single_args)
        num_residuals = sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(residuals))
        num_params = sum(int(np.size(leaf)) for leaf in jax.tree_util.tree_leaves(single_params))
        return batch_size * num_residuals * num_params
    except Exception:
        return None


def _working_set_size(working_set, params0, batched: bool, verbose: bool, nested: bool) -> int | None:
    """The static number of problems the loop advances at a time; None for the whole batch."""
    if not (working_set is None or working_set == "auto" or _is_positive_int(working_set)):
        raise ValueError(f"working_set must be 'auto', None or a positive int, got {working_set!r}")
    leaves = jax.tree_util.tree_leaves(params0)
    if not batched or working_set is None or not leaves or jnp.ndim(leaves[0]) == 0:
        return None  # (a batch without a batch axis is reported by _solve_jit)
    batch = leaves[0].shape[0]
    if working_set == "auto":
        if verbose:
            return None
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
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value > 0


def _as_float_array(path, leaf):
    if isinstance(leaf, (bool, np.bool_)) or not (
        isinstance(leaf, (int, float)) or hasattr(leaf, "dtype")
    ):
        raise TypeError(f"params0{jax.tree_util.keystr(path)} is a {type(leaf).__name__}; every leaf of params0 "
                        "must be a floating-point array")
    leaf = jnp.asarray(leaf) if not isinstance(leaf, int) else leaf
    if isinstance(leaf, int) or not jnp.issubdtype(leaf.dtype, jnp.floating):
        dtype = "int" if isinstance(leaf, int) else leaf.dtype
        raise TypeError(f"params0{jax.tree_util.keystr(path)} has dtype {dtype}; nonlinear least squares needs "
                        "floating-point parameters (convert it, e.g. jnp.asarray(x, dtype=float))")
    return leaf


class _LoopState(eqx.Module):
    """Per-problem loop state; every leaf leads with the batch axis."""

    x: Float[Array, "batch n"]
    lin: AbstractLinearization
    cost: Float[Array, " batch"]
    initial_cost: Float[Array, " batch"]
    scale: Float[Array, "batch n"]
    control: PyTree
    status: Int[Array, " batch"]
    num_steps: Int[Array, " batch"]
    num_accepted: Int[Array, " batch"]
    started: Bool[Array, " batch"]


class _RobustResidual:
    """``residual_fn`` of a solve with a robust loss, whose args are ``(args, loss)``."""

    def __init__(self, residual_fn):
        self.residual_fn = residual_fn

    def __call__(self, params, args):
        return self.residual_fn(params, args[0])

    def __eq__(self, other):
        return isinstance(other, _RobustResidual) and self.residual_fn == other.residual_fn

    def __hash__(self):
        return hash((_RobustResidual, self.residual_fn))


def _robust(loss, residual, jacobian):
    """Per scalar residual: Triggs-corrected r and J, and the cost ½Σρ(rᵢ²)."""
    corrected, corrected_jacobian = jax.vmap(loss.correct)(residual[:, None], jacobian[:, None, :])
    return corrected[:, 0], corrected_jacobian[:, 0, :], 0.5 * jnp.sum(loss.rho(residual**2)[0])


def _whitened(loss, residual):
    """√(ρ(rᵢ²)/rᵢ²)·rᵢ: a residual whose ½‖·‖² is the robust cost (what the adjoints differentiate)."""
    return jax.vmap(loss.whiten)(residual[:, None])[:, 0]


def _solve_jit(residual_fn, params0, args, solver, max_steps, batched, args_axes, verbose, throw, working_set,
               adjoint):
    if not isinstance(adjoint, AbstractAdjoint):
        raise TypeError(f"adjoint must be a jaxnls adjoint (jaxnls.Implicit()), got {adjoint!r}")
    if not isinstance(solver, AbstractLeastSquaresSolver):
        raise TypeError(f"solver must be a jaxnls solver (LevenbergMarquardt(), GaussNewton(), Dogleg()), got {solver!r}")
    if not isinstance(max_steps, (int, np.integer)) or max_steps < 0:
        raise ValueError(f"max_steps must be a non-negative int, got {max_steps!r}")
    if not jax.tree_util.tree_leaves(params0):
        raise ValueError("params0 has no array leaves: there is nothing to solve for")
    if batched:
        batch_size = _batch_size(params0)
        axes = _broadcast_axes(args_axes, args, batch_size)
        single_params = jax.tree_util.tree_map(lambda leaf: leaf[0], params0)
        x0 = jax.vmap(lambda p: ravel_pytree(p)[0])(params0)
    else:
        axes = jax.tree_util.tree_map(lambda _: None, args)
        single_params = params0
        x0 = ravel_pytree(params0)[0][None]
    _, unravel = ravel_pytree(single_params)
    # from here on `args` holds its arrays only (None elsewhere); the rest (functions, Python scalars,
    # strings in Equinox modules) is static and closed over
    args, static_args = eqx.partition(args, eqx.is_array)
    fn = flat_residual_fn(lambda p, a: residual_fn(p, eqx.combine(a, static_args)), unravel, x0.dtype)
    num_residuals = _check_residual(residual_fn, single_params, eqx.combine(_take(args, axes, 0), static_args))
    # Lie-group leaves (jaxnls.manifolds): x stays the ravelled ambient parameters, steps live in the
    # tangent space and the Jacobian is taken w.r.t. the tangent perturbation δ at 0, r(x ⊕ δ)
    if has_groups(single_params):
        space = ProductSpace(single_params)
        _check_manifold_solver(solver)
        tangent = jnp.zeros((space.tangent_size,), x0.dtype)
        evaluate = jax.vmap(
            lambda x, a: residual_and_jacobian(lambda d, b: fn(space.retract_one(x, d), b), tangent, a,
                                               num_residuals),
            in_axes=(0, axes),
        )
    else:
        space = EUCLIDEAN
        evaluate = jax.vmap(lambda x, a: residual_and_jacobian(fn, x, a, num_residuals), in_axes=(0, axes))
    # the residual whose ½‖·‖² the adjoints differentiate
    adjoint_fn = fn
    if isinstance(residual_fn, _RobustResidual):
        plain_evaluate = evaluate
        loss_of = lambda a: eqx.combine(a, static_args)[1]  # noqa: E731

        def evaluate(x, a):
            residual, jacobian = plain_evaluate(x, a)
            return jax.vmap(_robust, in_axes=(None, 0, 0))(loss_of(a), residual, jacobian)

        adjoint_fn = lambda x, a: _whitened(loss_of(a), fn(x, a))  # noqa: E731
    differentiable_args = args
    if not adjoint.differentiates_iterations:  # derivatives come from the adjoint's rule at the solution
        x0, args = jax.lax.stop_gradient((x0, args))

    if verbose:
        jax.debug.callback(_print_header, type(solver).control_label, x0.shape[0], ordered=True)
    state = _initial_state(solver, x0, num_residuals,
                           tangent_size=None if space is EUCLIDEAN else space.tangent_size)
    state = _run_loop(solver, evaluate, args, axes, state, max_steps, verbose, working_set, adjoint, space)

    if space is EUCLIDEAN:
        x, cost = adjoint.attach(DenseProblem(adjoint_fn), state.x, state.cost, state.status, differentiable_args, axes)
    else:
        # the adjoint works in the chart δ ↦ x* ⊕ δ around the solution (δ* = 0), and the solution's
        # derivative is the retraction's: ẋ = ∂(x* ⊕ δ)/∂δ · δ̇
        chart = lambda d, a: adjoint_fn(space.retract_one(a[0], d), a[1])  # noqa: E731
        anchor = state.x if adjoint.differentiates_iterations else jax.lax.stop_gradient(state.x)
        x, cost = attach_in_chart(adjoint, DenseProblem(chart), space, anchor, state, differentiable_args, axes)
    params = jax.vmap(unravel)(x)
    return _make_solution(solver, params, cost, state, batched, throw, num_residuals,
                          x0.shape[1] if space is EUCLIDEAN else space.tangent_size)


def attach_in_chart(adjoint, problem, space, anchor, state, args, axes):
    r"""The solution :math:`X^* = X \oplus δ` with ``adjoint``'s derivatives, the rule applied in the chart
    :math:`δ \mapsto X \oplus δ` around ``anchor`` (the solution, carrying whatever derivatives it has)
    at :math:`δ = 0`. ``problem`` sees ``(anchor, args)``; returns ``(x, cost)``. A problem whose anchor is
    not finite (a NaN start) is returned as it is, and the rule linearises it at the identity instead, so
    that no NaN partial derivative reaches the batch's gradients."""
    finite, safe_anchor = space.finite_or_identity(anchor)
    delta, cost = adjoint.attach(problem, jnp.zeros((anchor.shape[0], space.tangent_size), anchor.dtype), state.cost,
                                 state.status, (safe_anchor, args), (0, axes))
    return jnp.where(finite[:, None], jax.vmap(space.retract_one)(safe_anchor, delta), anchor), cost


def _check_manifold_solver(solver):
    from .solvers import IndirectLevenbergMarquardt

    if isinstance(solver, IndirectLevenbergMarquardt):
        raise NotImplementedError(
            "IndirectLevenbergMarquardt sizes its damping from an eigendecomposition in the scaled "
            "Euclidean variables and is not supported with Lie-group parameters; use LevenbergMarquardt() "
            "or Dogleg()")


def _run_loop(solver, evaluate, args, axes, state, max_steps, verbose, working_set, adjoint, space=EUCLIDEAN):
    """Iterate every problem of ``state`` until it stops (the one loop every solve runs)."""
    packing = _Packing(state)
    iterate = lambda packed, a: packing.pack(  # noqa: E731
        _iterate(solver, evaluate, a, packing.unpack(packed), max_steps, verbose, space)
    )
    active = lambda packed: _active(packing.unpack(packed))  # noqa: E731
    if adjoint.differentiates_iterations:
        # a bounded loop JAX can differentiate: exactly max_steps iterations after evaluating x0
        step = lambda p, _: (iterate(p, args), None)  # noqa: E731
        step = jax.checkpoint(step) if adjoint.checkpoint else step
        packed = jax.lax.scan(step, packing.pack(state), None, length=max_steps + 1)[0]
    elif working_set is None:
        packed = jax.lax.while_loop(lambda p: _count(active(p)) > 0, lambda p: iterate(p, args), packing.pack(state))
    else:
        packed = _working_set_loop(iterate, active, packing.pack(state), args, axes, working_set)
    return packing.unpack(packed)


def _make_solution(solver, params, cost, state, batched, throw, num_residuals, num_params) -> Solution:
    fields = dict(
        cost=cost,
        initial_cost=state.initial_cost,
        gradient_norm=jnp.max(jnp.abs(state.lin.gradient), axis=-1),
        num_steps=state.num_steps,
        num_accepted=state.num_accepted,
        status=state.status,
    )
    if not batched:
        params = jax.tree_util.tree_map(lambda leaf: leaf[0], params)
        fields = {k: v[0] for k, v in fields.items()}
    solution = Solution(
        params=params,
        **fields,
        num_residuals=num_residuals,
        num_params=num_params,
        method=f"{type(solver).__name__}, {type(solver.linear_solver).__name__}",
    )
    if throw:
        failed = ~solution.converged
        first_failed = jnp.ravel(solution.status)[jnp.argmax(jnp.ravel(failed))]
        solution = eqx.branched_error_if(
            solution, jnp.any(failed), first_failed,
            [f"jaxnls.solve did not converge: {message}" for message in MESSAGES],
        )
    return solution


_nested_solve = eqx.filter_jit(_solve_jit)


def _batch_size(params0) -> int:
    sizes = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(params0)[0]:
        if leaf.ndim == 0:
            raise ValueError(f"batched=True but params0{jax.tree_util.keystr(path)} is a scalar; every leaf "
                             "needs a leading batch axis")
        sizes[jax.tree_util.keystr(path)] = leaf.shape[0]
    if len(set(sizes.values())) > 1:
        listing = ", ".join(f"params0{k}: {v}" for k, v in sizes.items())
        raise ValueError(f"batched=True but the leaves of params0 disagree on the batch size ({listing})")
    return next(iter(sizes.values()))


def _broadcast_axes(args_axes, args, batch_size: int):
    try:
        axes = jax.tree.broadcast(args_axes, args, is_leaf=lambda a: a is None)
    except ValueError as err:
        raise ValueError(f"args_axes must be a prefix of the structure of args: {err}") from None
    paths_axes = jax.tree_util.tree_flatten_with_path(axes, is_leaf=lambda a: a is None)[0]
    arg_leaves = jax.tree_util.tree_leaves(args, is_leaf=lambda a: a is None)
    for (path, axis), leaf in zip(paths_axes, arg_leaves):
        where = f"args{jax.tree_util.keystr(path)}"
        if axis is None:
            continue
        if axis != 0:
            raise ValueError(f"args_axes for {where} is {axis!r}; use 0 (batched on the leading axis) or None")
        if callable(leaf) or isinstance(leaf, str):
            continue  # static: shared by every problem whatever args_axes says
        shape = np.shape(leaf)
        if not hasattr(leaf, "shape") or len(shape) == 0:
            raise ValueError(f"{where} is marked batched (axis 0) but is not an array with a batch axis; "
                             "mark it None in args_axes to share it across the batch")
        if shape[0] != batch_size:
            raise ValueError(f"{where} has leading size {shape[0]} but params0 has batch size {batch_size}; "
                             "mark it None in args_axes if it is shared by every problem")
    return axes


def _take(args, axes, index):
    """The batched array leaves of ``args`` at ``index`` (shared leaves and None placeholders as they are)."""
    return jax.tree_util.tree_map(
        lambda axis, leaf: leaf if axis is None or leaf is None else leaf[index], axes, args,
        is_leaf=lambda a: a is None,
    )


def _check_residual(residual_fn, single_params, single_args) -> int:
    out = eqx.filter_eval_shape(residual_fn, single_params, single_args)
    leaves = jax.tree_util.tree_flatten_with_path(out)[0]
    if not leaves:
        raise ValueError("residual_fn returned no arrays; it must return the residual vector (or a pytree of them)")
    for path, leaf in leaves:
        if not jnp.issubdtype(leaf.dtype, jnp.floating):
            raise TypeError(f"residual_fn output{jax.tree_util.keystr(path)} has dtype {leaf.dtype}; residuals "
                            "must be real floating-point arrays")
    num_residuals = sum(int(np.prod(leaf.shape)) for _, leaf in leaves)
    if num_residuals == 0:
        raise ValueError("residual_fn returned zero residuals")
    return num_residuals


def _gradient_converged(solver, lin: AbstractLinearization, cost) -> Bool[Array, " batch"]:
    """MINPACK's test: cos∠(J_j, r) <= gtol for every column j, or r = 0."""
    column_norms = jnp.sqrt(jax.vmap(type(lin).diagonal)(lin))
    residual_norm = jnp.sqrt(2.0 * cost)
    bound = solver.gradient_tolerance * column_norms * residual_norm[:, None]
    return (cost == 0) | jnp.all(jnp.abs(lin.gradient) <= bound, axis=-1)


def _linearize(solver, evaluate, x, args):
    # A non-finite point (a NaN start) is evaluated at 0 instead and reported as NaN: evaluating it
    # would put NaN into the residual's intermediates, and a differentiated loop (Unroll) would turn
    # 0·NaN into NaN cotangents for the arguments every problem shares.
    x_finite = jnp.all(jnp.isfinite(x), axis=-1)
    # ``evaluate`` returns (r, J) or, where the cost is not ½‖r‖² (robust losses: r and J are then
    # Triggs-corrected), (r, J, cost)
    evaluated = evaluate(jnp.where(x_finite[:, None], x, 0.0), args)
    residual, jacobian = evaluated[:2]
    cost = 0.5 * jnp.sum(residual**2, axis=-1) if len(evaluated) == 2 else evaluated[2]
    cost = jnp.where(x_finite, cost, jnp.nan)
    lin = jax.vmap(solver.linear_solver.linearize)(residual, jacobian)
    lin = _select(x_finite, lin, jax.tree_util.tree_map(lambda leaf: jnp.full_like(leaf, jnp.nan), lin))
    # a non-finite entry of r or J shows up in the cost or in diag(JᵀJ) (so does an overflowing one),
    # which are n + 1 numbers per problem instead of m·n
    diagonal = jax.vmap(type(lin).diagonal)(lin)
    finite = jnp.isfinite(cost) & jnp.all(jnp.isfinite(diagonal), axis=-1)
    return lin, cost, finite


def _initial_state(solver, x0, num_residuals, tangent_size=None, jacobian=None) -> _LoopState:
    """Placeholder state: the first loop iteration evaluates x0, so the residual and Jacobian are
    compiled once (in the loop body), not twice. ``tangent_size``: the step's length where it differs
    from x's (Lie groups); ``jacobian``: the shapes ``evaluate`` returns for J where it is not a dense
    (batch, m, n) array (a block-sparse graph)."""
    batch, n = x0.shape
    n = n if tangent_size is None else tangent_size
    lin_shape = jax.eval_shape(
        jax.vmap(solver.linear_solver.linearize),
        jax.ShapeDtypeStruct((batch, num_residuals), x0.dtype),
        jax.ShapeDtypeStruct((batch, num_residuals, n), x0.dtype) if jacobian is None else jacobian,
    )
    lin = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), lin_shape)
    ones = jnp.ones_like(x0) if tangent_size is None else jnp.ones((batch, n), x0.dtype)
    control_shape = jax.eval_shape(jax.vmap(solver.init_control), lin, ones, ones)
    control = jax.tree_util.tree_map(lambda s: jnp.ones(s.shape, s.dtype), control_shape)
    zero_cost = jnp.zeros(batch, x0.dtype)
    counts = jnp.zeros(batch, jnp.int32)
    status = jnp.full(batch, Status.RUNNING, jnp.int32)
    return _LoopState(x0, lin, zero_cost, zero_cost, ones, control, status, counts, counts, jnp.zeros(batch, bool))


def _first_true(cases) -> Int[Array, " batch"]:
    """The status of the first condition that holds, else RUNNING (elementwise; ``jnp.select`` would
    lower to an argmax reduction, an extra compiled kernel)."""
    status = jnp.full(jnp.shape(cases[0][0]), Status.RUNNING, jnp.int32)
    for condition, value in reversed(cases):
        status = jnp.where(condition, value, status)
    return status


def _count(mask: Bool[Array, " batch"]) -> Int[Array, ""]:
    # an integer sum: XLA:CPU compiles a boolean reduction over the batch ~3x slower
    return jnp.sum(mask.astype(jnp.int32))


def _active(state: _LoopState) -> Bool[Array, " batch"]:
    """Problems still to be iterated: not yet evaluated at their start, or running."""
    return ~state.started | (state.status == Status.RUNNING)


def _working_set_loop(iterate, active, packed, args, axes, slots: int):
    """Advance at most ``slots`` unfinished problems at a time and refill finished slots.

    A batched loop costs the whole batch's work every iteration until its slowest problem stops. Here
    each round gathers the first ``slots`` unfinished problems (and their batched args), iterates them
    until enough slots are free to be worth a refill (half of them, or as many as are waiting), and
    writes them back; the problems' own iterations are exactly those of the plain loop.
    """

    def one_round(packed):
        unfinished = active(packed)
        # the first `slots` unfinished problems, padded with finished ones (which never change)
        order = jnp.argsort(jnp.where(unfinished, 0, 1), stable=True)
        index = order[:slots]
        waiting = jnp.maximum(_count(unfinished) - slots, 0)
        part = jax.tree_util.tree_map(lambda buffer: buffer[index], packed)
        part_args = _take(args, axes, index)

        refill_at = jnp.minimum(waiting, max(slots // 2, 1))  # free slots worth a refill

        def keep_going(part):
            running = _count(active(part))
            return (running > 0) & ((waiting == 0) | (slots - running < refill_at))

        part = jax.lax.while_loop(keep_going, lambda p: iterate(p, part_args), part)
        return jax.tree_util.tree_map(lambda buffer, new: buffer.at[index].set(new, unique_indices=True), packed, part)

    return jax.lax.while_loop(lambda p: _count(active(p)) > 0, one_round, packed)


class _Packing:
    """The loop state as two arrays: every floating leaf side by side in one ``(batch, W)`` array of
    the working dtype, every integer/boolean leaf in one ``(batch, K)`` int32 array.

    The loops carry this form, so an iteration writes two arrays instead of a dozen (every array a
    loop writes is a separately compiled kernel) and moving problems in and out of the working set
    is two gathers and two scatters (XLA:CPU expands every scatter into a loop of its own).
    """

    def __init__(self, template: _LoopState):
        leaves, self.treedef = jax.tree_util.tree_flatten(template)
        self.dtype = template.x.dtype
        self.layout = [(leaf.shape[1:], leaf.dtype, jnp.issubdtype(leaf.dtype, jnp.floating)) for leaf in leaves]

    def pack(self, state: _LoopState):
        rows = [jnp.reshape(leaf, (leaf.shape[0], -1)) for leaf in jax.tree_util.tree_leaves(state)]
        floats = [row.astype(self.dtype) for row, (_, _, is_float) in zip(rows, self.layout) if is_float]
        ints = [row.astype(jnp.int32) for row, (_, _, is_float) in zip(rows, self.layout) if not is_float]
        return jnp.concatenate(floats, axis=1), jnp.concatenate(ints, axis=1)

    def unpack(self, packed) -> _LoopState:
        floats, ints = packed
        offsets = {True: 0, False: 0}
        leaves = []
        for shape, dtype, is_float in self.layout:
            width = int(np.prod(shape))
            start = offsets[is_float]
            offsets[is_float] += width
            piece = (floats if is_float else ints)[:, start:start + width]
            leaves.append(jnp.reshape(piece, (piece.shape[0],) + shape).astype(dtype))
        return jax.tree_util.tree_unflatten(self.treedef, leaves)


def _select(mask, new, old):
    """Per-problem choice between two pytrees whose leaves all lead with the batch axis."""
    return jax.tree_util.tree_map(
        lambda n, o: jnp.where(jnp.reshape(mask, jnp.shape(mask) + (1,) * (n.ndim - jnp.ndim(mask))), n, o),
        new, old,
    )


def _iterate(solver, evaluate, args, state: _LoopState, max_steps: int, verbose: bool, space=EUCLIDEAN) -> _LoopState:
    """One trial step for every running problem: propose, evaluate r and J once, accept or reject,
    adapt the control, test the tolerances. The first call evaluates x0 instead.

    ``space`` supplies the trial point ``x ⊕ δ`` and the parameter sizes of the scale-aware tests
    (:mod:`jaxnls.manifolds`); its Euclidean default is ``x + δ`` and ``x``, op for op."""
    started = state.started
    running = started & (state.status == Status.RUNNING)
    step, proposed_control = jax.vmap(solver.propose)(state.lin, state.scale, state.control)
    # the step actually taken: what survives rounding in x + δ (all of it is lost at a large |x|)
    trial, step = space.retract(state.x, jnp.where(running[:, None], step, 0.0))
    trial_lin, trial_cost, finite = _linearize(solver, evaluate, trial, args)

    curvature = jax.vmap(type(state.lin).curvature)(state.lin, step)
    predicted = -(jnp.sum(state.lin.gradient * step, axis=-1) + 0.5 * curvature)
    # Near the minimum the cost difference drowns in the rounding noise of the residuals
    # (eps·|model| per residual, far above eps·|r| on small-residual fits), while the Gauss-Newton
    # model is still accurate. For steps the model says gain less than √eps·cost, the decrease is
    # measured by the trapezoidal rule on the gradient, -½(g + g_trial)·δ, which is exact for a
    # quadratic cost and resolves changes far below the cost's noise; a cost that rises by more than
    # that margin still rejects the step.
    difference = state.cost - trial_cost
    margin = jnp.sqrt(jnp.finfo(state.cost.dtype).eps) * state.cost
    small = predicted <= margin
    trapezoid = -0.5 * jnp.sum((state.lin.gradient + trial_lin.gradient) * step, axis=-1)
    actual = jnp.where(small, trapezoid, difference)
    consistent = finite & (~small | (difference >= -margin))
    ratio = jnp.where(consistent & (predicted > 0), actual / jnp.where(predicted > 0, predicted, 1.0), -jnp.inf)
    accepted = running & consistent & (ratio > solver.acceptance)
    updated_control = jax.vmap(solver.update_control)(proposed_control, accepted, ratio, step, state.scale)

    trial_diagonal = jax.vmap(type(trial_lin).diagonal)(trial_lin)
    take = accepted | ~started
    x = jnp.where(take[:, None], trial, state.x)
    lin = _select(take, trial_lin, state.lin)
    cost = jnp.where(take, trial_cost, state.cost)
    if solver.scaling == "running_max":
        scale = jnp.where(
            started[:, None], jnp.where(accepted[:, None], jnp.maximum(state.scale, trial_diagonal), state.scale),
            jnp.where(trial_diagonal > 0, trial_diagonal, 1.0),
        )
    else:  # "current": Ceres' diag(JᵀJ) at the current point, clamped to [1e-6, 1e32]
        scale = jnp.where(take[:, None], jnp.clip(trial_diagonal, 1e-6, 1e32), state.scale)
    control = _select(
        started, _select(running, updated_control, state.control),
        jax.vmap(solver.init_control)(lin, scale, space.magnitude(x)),
    )

    # A tolerance on the step or the cost change is a claim about the model's minimiser, but the step
    # tested was shortened by the damping / radius / backtracking: a heavily damped step is tiny and
    # gains nothing at a point with a large gradient. So both tests also ask the returned point to be
    # stationary in the tolerance's own units, along every coordinate j (cheap lower bounds on what the
    # undamped model still offers, from g = Jᵀr and diag(JᵀJ) alone):
    #   function:  the best gain along j, g_j²/(2(JᵀJ)_jj) = cos²∠(J_j, r)·cost, is <= ftol·cost;
    #   parameter: the Newton step along j, |g_j|/(JᵀJ)_jj, is within rtol·|x_j| + atol.
    ftol = solver.function_tolerance
    x_magnitude = jnp.abs(space.magnitude(x))
    diagonal = jax.vmap(type(lin).diagonal)(lin)
    gradient = jnp.abs(lin.gradient)
    # (written without squaring g: a column whose squared norm underflows to 0 beside a non-zero g_j, a
    # plateau where exp() underflows, is not stationary)
    function_stationary = jnp.all(gradient <= jnp.sqrt(2.0 * ftol * cost[:, None] * diagonal), axis=-1)
    parameter_stationary = jnp.all(gradient <= (solver.rtol * x_magnitude + solver.atol) * diagonal, axis=-1)
    eps = jnp.finfo(cost.dtype).eps
    unchanged = finite & (jnp.abs(actual) <= 2 * eps * state.cost)
    small_step = jnp.all(jnp.abs(step) <= solver.rtol * jnp.abs(space.magnitude(state.x)) + solver.atol, axis=-1)
    # an accepted step that gained <= ftol·cost, or a rejected one that changed the cost by no more while
    # the model, too, promised no more (MINPACK's actred/prered test)
    function_converged = (
        finite
        & (jnp.abs(actual) <= ftol * state.cost)
        & (ratio <= 2.0)
        & (accepted | (predicted <= ftol * state.cost))
        & function_stationary
    )
    parameter_converged = parameter_stationary & (
        (small_step & (accepted | unchanged))
        | (finite & jax.vmap(solver.steps_within_tolerance)(control, space.magnitude(x), scale))
    )
    gradient_converged = _gradient_converged(solver, lin, cost)
    stalled = jax.vmap(solver.stalled)(control, space.magnitude(x), scale)
    num_steps = state.num_steps + running
    outcome = _first_true(
        [(gradient_converged, Status.CONVERGED_GRADIENT), (function_converged, Status.CONVERGED_FUNCTION),
         (parameter_converged, Status.CONVERGED_PARAMETER), (stalled & ~finite, Status.NONFINITE_RESIDUAL),
         (stalled, Status.STALLED), (num_steps >= max_steps, Status.MAX_STEPS)],
    )
    first_outcome = _first_true(
        [(~finite, Status.NONFINITE_START), (gradient_converged, Status.CONVERGED_GRADIENT),
         (num_steps >= max_steps, Status.MAX_STEPS)],
    )
    status = jnp.where(running, outcome, jnp.where(started, state.status, first_outcome)).astype(jnp.int32)
    if verbose:
        jax.debug.callback(
            _print_row, num_steps, running | ~started, cost, jnp.where(accepted, actual, 0.0),
            jnp.max(jnp.abs(lin.gradient), axis=-1), jnp.max(jnp.abs(step), axis=-1),
            jax.vmap(solver.control_value)(control), accepted | ~started, ordered=True,
        )
    return _LoopState(
        x, lin, cost, jnp.where(started, state.initial_cost, cost), scale, control, status, num_steps,
        state.num_accepted + accepted, jnp.ones_like(started),
    )


def _print_header(label, batch_size):
    if int(batch_size) == 1:
        print(f"{'iter':>5} {'cost':>14} {'cost_change':>12} {'|gradient|':>11} {'|step|':>11} "
              f"{label:>11} {'accepted':>8}", flush=True)
    else:
        print(f"{'iter':>5} {'running':>8} {'total_cost':>14} {'cost_change':>12} {'max|grad|':>11} "
              f"{'max|step|':>11} {'med ' + label:>12} {'accepted':>8}", flush=True)


def _print_row(num_steps, running, cost, change, gradient, step, control, accepted):
    running = np.asarray(running)
    if not running.any():
        return
    if running.size == 1:
        print(f"{int(num_steps[0]):>5} {float(cost[0]):>14.6e} {float(change[0]):>12.3e} {float(gradient[0]):>11.3e} "
              f"{float(step[0]):>11.3e} {float(control[0]):>11.3e} {'yes' if accepted[0] else 'no':>8}", flush=True)
        return
    live = running
    print(f"{int(np.max(num_steps[live])):>5} {int(live.sum()):>8} {float(np.nansum(cost)):>14.6e} "
          f"{float(np.nansum(change)):>12.3e} {float(np.nanmax(gradient[live])):>11.3e} {float(np.nanmax(step[live])):>11.3e} "
          f"{float(np.nanmedian(control[live])):>12.3e} {int(np.sum(accepted)):>8}", flush=True)
