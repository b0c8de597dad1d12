"""What :func:`jaxnls.solve` and :func:`jaxnls.graph.solve` share around the loop: validation of the
options, the compiled entry point (compiler options, nested or top-level jit), the loop run with the
adjoint's requirements, and the :class:`~jaxnls.Solution` with its messages."""

from __future__ import annotations

import functools
import os
import types
from typing import Any

import equinox as eqx
import jax
import jax.core
import jax.numpy as jnp
import numpy as np
from jaxtyping import PyTree

from . import _loop
from ._callback import check_callback
from ._solution import History, Solution
from ._status import MESSAGES, Status
from .adjoint import AbstractAdjoint
from .solvers import AbstractLeastSquaresSolver, IndirectLevenbergMarquardt

#: The loop counts steps in int32.
MAX_STEPS_LIMIT = 2**31 - 2


def _codegen_parts() -> int:
    """How many parts XLA:CPU splits a program's machine code into, compiled in parallel: one per core this
    process may use, at most XLA's default 32."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(32, cores)


# XLA:CPU's classic elemental kernel emitters compile the solve loop's few dozen small fused kernels in
# about half the time its newer MLIR fusion emitters take, and the loop runs as fast (measured in
# benchmarks/README.md). XLA splits the machine code into 32 parts compiled in parallel; with no more parts
# than cores the compile takes as long, each program keeps ~6x fewer memory mappings, and on 2 cores LLVM
# optimises the Jacobian kernels of the dense loop better (the batched curve fit's sin and cos are computed
# once per sample instead of once per Jacobian column: steady calls 2x faster; benchmarks/README.md (au)).
# The options only matter on CPU, and JAX accepts compiler options only on the outermost jit: inside a
# caller's jax.jit the caller's options apply.
_COMPILER_OPTIONS = {"xla_cpu_use_fusion_emitters": False, "xla_cpu_parallel_codegen_split_count": _codegen_parts()}
#: Graph solves also leave out XLA:CPU's YNNPACK fusions: they run a graph's many small per-term element-wise
#: kernels slower than XLA's own loops (parking-garage, 5 Dogleg steps: 0.28 s with them, 0.15 s without),
#: while the batched dense fits run 13-15 % faster with them (benchmarks/README.md (s)).
_GRAPH_COMPILER_OPTIONS = {**_COMPILER_OPTIONS, "xla_cpu_experimental_ynn_fusion_type": ""}
#: A solve whose Jacobian, over the whole batch, has fewer entries than this is dominated by its
#: compilation (a NIST fit: ~0.5 s to compile, ~1 ms to run), so its kernels are generated without
#: LLVM optimisation, which halves XLA:CPU's compile time and at most doubles a run that costs
#: milliseconds (measured on 10 NIST problems: backend compile 4.2 s vs 8.0-8.8 s; second fits 79 ms vs
#: 31-39 ms in all). Larger solves keep the default: there the run time matters.
SMALL_JACOBIAN = 2**16


def check_options(
    solver, adjoint, max_steps, *, caller: str, dense: bool, callback=None, history=0, batched=False
) -> int:
    """Validate the options every solve takes; returns ``max_steps`` as an int. ``dense``: whether the
    solve's linearisation is a dense Euclidean one (the only kind IndirectLevenbergMarquardt handles)."""
    if not isinstance(batched, (bool, np.bool_)):
        raise TypeError(f"{caller}: batched must be True or False, got {batched!r}")
    check_callback(callback, caller)
    if isinstance(history, (bool, np.bool_)) or not isinstance(history, (int, np.integer)) or history < 0:
        raise ValueError(f"{caller}: history must be an int >= 0 (how many iterations to keep), got {history!r}")
    if not isinstance(solver, AbstractLeastSquaresSolver):
        raise TypeError(
            f"{caller}: solver must be a jaxnls solver (LevenbergMarquardt(), GaussNewton(), Dogleg(), "
            f"IndirectLevenbergMarquardt()), got {solver!r}"
        )
    if not isinstance(adjoint, AbstractAdjoint):
        raise TypeError(
            f"{caller}: adjoint must be a jaxnls adjoint (jaxnls.Implicit(), Unroll(), ...), got {adjoint!r}"
        )
    if isinstance(max_steps, (bool, np.bool_)) or not isinstance(max_steps, (int, np.integer)):
        raise TypeError(f"{caller}: max_steps must be an int, got {max_steps!r}")
    if not 0 <= max_steps <= MAX_STEPS_LIMIT:
        raise ValueError(
            f"{caller}: max_steps must be between 0 and {MAX_STEPS_LIMIT} (the loop counts in int32), got {max_steps}"
        )
    if not dense and isinstance(solver, IndirectLevenbergMarquardt):
        raise NotImplementedError(
            f"{caller}: IndirectLevenbergMarquardt sizes its damping from a dense eigendecomposition in the scaled "
            "Euclidean variables; with Lie-group parameters or factor graphs use LevenbergMarquardt() or Dogleg()"
        )
    return int(max_steps)


class Unset:
    """The default of an option that must be given in some cases (``args_axes`` of a batch with arrays)."""

    def __repr__(self):
        return "<unset>"


UNSET = Unset()


def resolve_args_axes(args_axes: PyTree, args: PyTree, batched: bool) -> PyTree:
    """``args_axes`` as given; where it was not: an error for a batch whose ``args`` hold arrays (a shared
    array whose leading size happens to equal the batch size would silently be split between the
    problems), else 0."""
    if args_axes is not UNSET:
        return args_axes
    if batched and any(eqx.is_array(leaf) for leaf in jax.tree_util.tree_leaves(args)):
        raise ValueError(
            "batched=True with arrays in args: say which of them carry the batch axis with args_axes, in "
            "jax.vmap's in_axes style (0: one slice per problem, None: shared by every problem), e.g. "
            "args_axes=(None, 0) for shared sample points and per-problem data, args_axes=0 when every array "
            "in args is per problem, args_axes=None when all are shared"
        )
    return 0


def inside_a_transformation(tree) -> bool:
    """Whether a solve given ``tree`` (everything it was given: functions, arrays, options) runs inside a
    caller's transformation: it reaches a tracer (:func:`reaches_tracers`: the caller's jit, vmap, grad or jvp
    of an input, or of what a function closes over), or a caller's jit or ``eval_shape`` is tracing although
    nothing given is traced — it stages the solve as a nested jit all the same, and a nested jit takes no
    compiler options. (An array made now is a tracer exactly when a jit is tracing: JAX stages every operation
    into the innermost trace. ``jax.device_put`` makes one without compiling a program, as ``jnp.asarray`` would at
    the top level: 15 ms of a process's first solve.)"""
    return reaches_tracers(tree) or isinstance(jax.device_put(np.float32(0)), jax.core.Tracer)


def closes_over_tracers(fn) -> bool:
    """Whether a function (or a pytree of them, an Equinox module) reaches a tracer through what its functions
    close over (:func:`reaches_tracers`), not through its own leaves."""
    return reaches_tracers([_closed_over(leaf) for leaf in jax.tree_util.tree_leaves(fn) if callable(leaf)])


def reaches_tracers(tree, depth: int = 4) -> bool:
    """Whether ``tree`` holds a tracer among its leaves or, for the functions among them, in what they close over:
    closure cells, default values, a bound method's instance, ``functools.partial``'s arguments (followed
    ``depth`` functions deep). A tracer reached only through a global or some other object is not seen."""
    for leaf in jax.tree_util.tree_leaves(tree):
        if isinstance(leaf, jax.core.Tracer):
            return True
        if depth and callable(leaf) and reaches_tracers(_closed_over(leaf), depth - 1):
            return True
    return False


def _closed_over(fn) -> list:
    if isinstance(fn, functools.partial):
        return [fn.func, fn.args, fn.keywords]
    if isinstance(fn, types.MethodType):
        return [fn.__func__, fn.__self__]
    cells = getattr(fn, "__closure__", None) or ()
    contents = []
    for cell in cells:
        try:
            contents.append(cell.cell_contents)
        except ValueError:  # (a cell not yet filled)
            pass
    return [
        *contents,
        *(getattr(fn, "__defaults__", None) or ()),
        *(getattr(fn, "__kwdefaults__", None) or {}).values(),
    ]


#: LLVM's optimisation level of a dense solve at or above :data:`SMALL_JACOBIAN` entries. XLA:CPU's default is 3. At
#: 2 the float32 batched curve fits (B = 1,024) compile as fast or faster and run 20-27 % faster under
#: LevenbergMarquardt, Dogleg and IndirectLevenbergMarquardt, 10 % slower under GaussNewton; the float64 ones compile
#: and run the same within the noise (benchmarks/README.md (av)). Factor-graph solves keep XLA's level (w10000: no
#: difference). A level named in ``XLA_FLAGS`` is the process's choice and is kept.
LARGE_DENSE_SOLVE_LEVEL = 2


def _options(small: bool, graph: bool) -> dict:
    options = _GRAPH_COMPILER_OPTIONS if graph else _COMPILER_OPTIONS
    if small:
        return {**options, "xla_backend_optimization_level": 0}
    if graph or "xla_backend_optimization_level" in os.environ.get("XLA_FLAGS", ""):
        return options
    return {**options, "xla_backend_optimization_level": LARGE_DENSE_SOLVE_LEVEL}


@functools.cache
def _knows_compiler_options(small: bool, graph: bool) -> bool:
    # (an empty program: XLA reads the options before it compiles anything, and there is nothing to compile)
    try:
        jax.jit(lambda: (), compiler_options=_options(small, graph)).lower().compile()
    except jax.errors.JaxRuntimeError:  # an XLA build that does not know the options: its defaults
        return False
    return True


def top_level_compiler_options(*, jacobian_entries: int | None, graph: bool) -> dict:
    """The XLA options of a top-level solve (see :func:`compiled`); empty where this XLA does not know them."""
    small = jacobian_entries is not None and jacobian_entries < SMALL_JACOBIAN
    return _options(small, graph) if _knows_compiler_options(small, graph) else {}


@functools.cache
def _top_level(fn, small: bool, graph: bool):
    if _knows_compiler_options(small, graph):
        return eqx.filter_jit(  # pyright: ignore[reportCallIssue]  # its overloads omit the **jitkwargs it passes to jax.jit
            fn, compiler_options=_options(small, graph)
        )
    return eqx.filter_jit(fn)


@functools.cache
def _nested(fn):
    return eqx.filter_jit(fn)


def compiled(fn, *, nested: bool, jacobian_entries: int | None, graph: bool = False):
    """``fn`` jit-compiled: inside a caller's transformation (``nested``) a plain ``eqx.filter_jit``; at
    the top level with the compiler options (checked on first use, so that importing jaxnls does not
    initialise a backend; a factor ``graph``'s solve has its own), without LLVM optimisation for a batch
    Jacobian under :data:`SMALL_JACOBIAN` entries."""
    if nested:
        return _nested(fn)
    return _top_level(fn, jacobian_entries is not None and jacobian_entries < SMALL_JACOBIAN, graph)


def call_compiled(fn, *args, callback, caller: str):
    """``fn(*args)``, where a ``callback`` that JAX cannot run (an io_callback inside a loop whose
    continuation a caller's ``jax.vmap`` batched) gets an error saying what to do instead."""
    try:
        return fn(*args)
    except Exception as err:
        if callback is not None and "IO effects not supported" in str(err):
            raise ValueError(
                f"{caller}: callback= cannot be used inside jax.vmap (JAX cannot call the host from a "
                "loop whose stopping condition vmap batched); solve the batch with batched=True "
                "instead, where the callback sees every problem"
            ) from err
        raise


def run_loop(solver, problem, x0, args, axes, max_steps, *, verbose, working_set, adjoint, callback, history=0):
    """The loop over the batch starting at ``x0`` (batch, n), as the adjoint requires it: differentiated
    iteration by iteration, or not at all (its rule applies at the solution); keeping the last ``history``
    iterations' figures."""
    state = _loop.initial_state(solver, problem, x0, history)
    return _loop.run(
        solver,
        problem,
        args,
        axes,
        state,
        max_steps,
        verbose=verbose,
        working_set=working_set,
        unroll=adjoint.differentiates_iterations,
        checkpoint=adjoint.checkpoint,
        callback=callback,
    )


def attach_in_chart(adjoint, problem, space, anchor, state, args, axes):
    r"""The solution :math:`X^* = X \oplus δ` with ``adjoint``'s derivatives, the rule applied in the chart
    :math:`δ \mapsto X \oplus δ` around ``anchor`` (the solution, carrying whatever derivatives it has)
    at :math:`δ = 0`. ``problem`` sees ``(anchor, args)``; returns ``(x, cost)``. A problem whose anchor is
    not finite (a NaN start) is returned as it is, and the rule linearises it at the identity instead, so
    that no NaN partial derivative reaches the batch's gradients."""
    finite, safe_anchor = space.finite_or_identity(anchor)
    delta, cost = adjoint.attach(
        problem,
        jnp.zeros((anchor.shape[0], space.tangent_size), anchor.dtype),
        state.cost,
        state.status,
        (safe_anchor, args),
        (0, axes),
    )
    return jnp.where(finite[:, None], jax.vmap(space.retract_one)(safe_anchor, delta), anchor), cost


#: The per-problem arrays of a :class:`~jaxnls.Solution` besides its params and history.
_SOLUTION_ARRAYS = ("cost", "initial_cost", "gradient_norm", "num_steps", "num_accepted", "status")


def solution_arrays(solution: Solution) -> tuple[dict, dict]:
    """A :class:`~jaxnls.Solution` as plain containers of arrays (params as their leaves, in order) and its
    static fields: what a stored program (:mod:`jaxnls._programs`) returns and records."""
    arrays = {name: getattr(solution, name) for name in _SOLUTION_ARRAYS}
    arrays["params"] = jax.tree_util.tree_leaves(solution.params)
    if solution.history is not None:
        arrays["history"] = {name: getattr(solution.history, name) for name in _loop.HISTORY_FIELDS}
    meta = dict(num_residuals=solution.num_residuals, num_params=solution.num_params, method=solution.method)
    return arrays, meta


def solution_from_arrays(arrays: dict, meta: dict, params_structure) -> Solution:
    """The :class:`~jaxnls.Solution` that :func:`solution_arrays` took apart; ``params_structure``: the pytree
    structure of its params (the starting values')."""
    history = History(**arrays["history"]) if "history" in arrays else None
    return Solution(
        params=jax.tree_util.tree_unflatten(params_structure, arrays["params"]),
        **{name: arrays[name] for name in _SOLUTION_ARRAYS},
        history=history,
        **meta,
    )


def make_solution(solver, params, cost, state, *, batched, throw, num_residuals, num_params, caller) -> Solution:
    """The :class:`~jaxnls.Solution` of a batch loop state (``batched=False``: its one problem)."""
    fields: dict[str, Any] = dict(
        cost=cost,
        initial_cost=state.initial_cost,
        # (NaN where the start was not finite: its linearisation was zeroed to spare its batch neighbours)
        gradient_norm=jnp.where(
            state.status == Status.NONFINITE_START, jnp.nan, jnp.max(jnp.abs(state.lin.gradient), axis=-1)
        ),
        num_steps=state.num_steps,
        num_accepted=state.num_accepted,
        status=state.status,
    )
    if state.history.shape[1]:
        rows = jax.vmap(_loop.ordered_history)(state.history, state.num_steps)
        fields["history"] = History(**{name: rows[..., i] for i, name in enumerate(_loop.HISTORY_FIELDS)})
    if not batched:
        params = jax.tree_util.tree_map(lambda leaf: leaf[0], params)
        fields = jax.tree_util.tree_map(lambda v: v[0], fields)
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
            solution,
            jnp.any(failed),
            first_failed,
            [f"{caller} did not converge: {message}" for message in MESSAGES],
        )
    return solution
