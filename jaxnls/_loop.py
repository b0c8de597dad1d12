r"""The solve loop, written once for every problem kind: one trial step of ONE problem, and the batch layer
that runs it over a batch (``vmap``), until every problem stops (``while_loop``, or a working set of the
unfinished ones), or for a fixed number of differentiated iterations (``scan``).

Data flow of one iteration (docs/architecture.md)::

    strategy.propose(lin, scale, control) -> δ           (LM / Dogleg / GN: damping, radius, step length)
    space.retract_step(x, δ) -> x ⊕ δ                    (x + δ, or X·Exp(δ) per Lie-group leaf)
    problem.evaluate(x ⊕ δ, args) -> r, J, cost          (dense vmapped autodiff, or block-sparse terms)
    linear_solver.linearize(r, J) -> lin                 (what the step solves and the tests read)
    gain ratio ρ = actual / predicted -> strategy.accepts, update_control, update_scale
    tests (gradient, function, parameter) -> status      (a CONVERGED_* status only at a stationary point)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int, PyTree

from . import _callback
from ._batching import vmap_traced_once
from ._bounds import pin_to_box
from ._numerics import finite_derivatives
from ._status import Status
from .linear import AbstractLinearization

if TYPE_CHECKING:
    from .manifolds._space import ProductSpace, _Euclidean


class LoopProblem(eqx.Module):
    """What the loop needs of ONE problem; :func:`jaxnls.solve` and :func:`jaxnls.graph.solve` build one.

    Attributes:
        evaluate: ``(x, args) -> (r, J, cost)`` at the ambient point ``x``: the residual and Jacobian the
            step model uses (Triggs-corrected under a robust loss; ``J`` with respect to the tangent
            perturbation δ, in whatever layout the linear solver's ``linearize`` takes) and the cost.
        space: the retraction ``x ⊕ δ`` and the parameter magnitudes of the scale-aware tests
            (:data:`jaxnls.manifolds.EUCLIDEAN` or a :class:`~jaxnls.manifolds.ProductSpace`).
        num_residuals: m.
        tangent_size: the length of δ.
        jacobian: the shapes ``evaluate`` returns for ``J`` (for the loop's placeholder state).
        box: ``args -> (lower, upper)``, the bounds of the (Euclidean) parameters, or None. A bounded
            problem's trial points are projected onto the box, and its model is restricted to the free
            coordinates: those not held at a bound by a gradient pointing out of the box (see
            :func:`free_coordinates`), so that steps, tests and statuses are those of the bound-constrained
            problem (a CONVERGED_* status means the KKT conditions hold to the tolerances).
        sparse_steps: a step costs a sparse factorisation (a factor graph). The first iteration, which only
            evaluates the starts, then skips the step proposal it would throw away (a whole factorisation of
            the placeholder system; a dense problem's costs less than the branch that would skip it).
        movable: False where no coordinate may move (a factor graph whose variables are all held): the start
            is then the solution of the restricted problem, as for a bounded one whose bounds all coincide,
            and its zero Jacobian is no plateau.
    """

    evaluate: Callable = eqx.field(static=True)
    space: _Euclidean | ProductSpace = eqx.field(static=True)
    num_residuals: int = eqx.field(static=True)
    tangent_size: int = eqx.field(static=True)
    jacobian: PyTree = eqx.field(static=True)
    box: Callable | None = eqx.field(static=True, default=None)
    sparse_steps: bool = eqx.field(static=True, default=False)
    movable: bool = eqx.field(static=True, default=True)


def free_coordinates(x, gradient, lower, upper) -> Bool[Array, " n"]:
    """The coordinates a descent step may move: all but those at a bound whose gradient ``g = Jᵀr`` points
    out of the box (−g would leave it), and those with ``lower == upper`` (frozen)."""
    held = ((x <= lower) & (gradient > 0)) | ((x >= upper) & (gradient < 0)) | (lower == upper)
    return ~held


class LoopState(eqx.Module):
    """One problem's loop state (the batch layer stacks it along a leading axis)."""

    x: Float[Array, " n"]
    lin: AbstractLinearization
    cost: Float[Array, ""]
    initial_cost: Float[Array, ""]
    scale: Float[Array, " n"]
    control: PyTree
    status: Int[Array, ""]
    num_steps: Int[Array, ""]
    num_accepted: Int[Array, ""]
    started: Bool[Array, ""]
    # the coordinates whose Jacobian column was non-zero at the start or an accepted point since (see step)
    influential: Bool[Array, " n"]
    index: Int[Array, ""]  # the problem's place in the batch (what a callback reports)
    history: Float[Array, "K 7"]  # the last K iterations' figures (HISTORY_FIELDS), a ring indexed by step % K


class LogRow(eqx.Module):
    """What one problem contributes to a line of the verbose log."""

    num_steps: Int[Array, ""]
    active: Bool[Array, ""]
    cost: Float[Array, ""]
    change: Float[Array, ""]
    gradient: Float[Array, ""]
    step: Float[Array, ""]
    control: Float[Array, ""]
    accepted: Bool[Array, ""]


#: The figures a history row holds, in order (see :class:`jaxnls.History`).
HISTORY_FIELDS = ("iteration", "cost", "cost_change", "gradient_norm", "step_norm", "control", "accepted")


def initial_state(solver, problem: LoopProblem, x0: Float[Array, "batch n"], history: int = 0) -> LoopState:
    """Placeholder state for a batch: the first iteration evaluates x0, so the residual and Jacobian are
    compiled once (in the loop body), not twice. ``history``: how many iterations' figures to keep."""
    batch = x0.shape[0]
    n = problem.tangent_size
    residual = jax.ShapeDtypeStruct((problem.num_residuals,), x0.dtype)
    lin_shape = jax.eval_shape(solver.step_solver.linearize, residual, problem.jacobian)
    lin = jax.tree_util.tree_map(lambda s: jnp.zeros((batch,) + s.shape, s.dtype), lin_shape)
    ones = jnp.ones((batch, n), x0.dtype)
    one = jax.ShapeDtypeStruct((n,), x0.dtype)
    control_shape = jax.eval_shape(solver.init_control, lin_shape, one, one)  # (one problem's: no vmap to trace)
    control = jax.tree_util.tree_map(lambda s: jnp.ones((batch,) + s.shape, s.dtype), control_shape)
    zero_cost = jnp.zeros(batch, x0.dtype)
    counts = jnp.zeros(batch, jnp.int32)
    status = jnp.full(batch, Status.RUNNING, jnp.int32)
    rows = jnp.full((batch, history, len(HISTORY_FIELDS)), jnp.nan, x0.dtype)
    return LoopState(
        x0,
        lin,
        zero_cost,
        zero_cost,
        ones,
        control,
        status,
        counts,
        counts,
        jnp.zeros(batch, bool),
        jnp.zeros((batch, n), bool),
        jnp.arange(batch, dtype=jnp.int32),
        rows,
    )


def _linearize(solver, problem: LoopProblem, x, args, differentiated: bool, box=None):
    # A non-finite point (a NaN start) is evaluated at 0 instead and reported as NaN: evaluating it
    # would put NaN into the residual's intermediates, and a differentiated loop (Unroll) would turn
    # 0·NaN into NaN cotangents for the arguments every problem shares.
    x_finite = jnp.all(jnp.isfinite(x))
    # (differentiated iterations: evaluate's derivatives vanish where its value is not finite)
    evaluate = finite_derivatives(problem.evaluate) if differentiated else problem.evaluate
    residual, jacobian, cost = evaluate(jnp.where(x_finite, x, 0.0), args)
    lin = solver.step_solver.linearize(residual, jacobian)
    # a non-finite entry of r or J shows up in the cost or in diag(JᵀJ) (so does an overflowing one),
    # which are n + 1 numbers instead of m·n
    diagonal = lin.diagonal()
    finite = x_finite & jnp.isfinite(cost) & jnp.all(jnp.isfinite(diagonal))
    # A non-finite trial is never taken, but its values still meet the finite ones in arithmetic that
    # an unrolled backward pass differentiates (0·∞ = NaN in the cotangents of arguments every problem
    # shares): it gets finite placeholders without derivatives, and a NaN cost that says what it is.
    lin = jax.tree_util.tree_map(lambda leaf: jnp.where(finite, leaf, 0.0), lin)
    diagonal = jnp.where(finite, diagonal, 0.0)
    cost = jnp.where(finite, cost, jax.lax.stop_gradient(jnp.where(x_finite, cost, jnp.nan)))
    if box is not None:  # the model of the coordinates not held by a bound
        free = free_coordinates(x, lin.gradient, *box)
        lin = lin.restricted(free)
        diagonal = jnp.where(free, diagonal, 0.0)
    return lin, cost, finite, diagonal


def _first_true(cases) -> Int[Array, ""]:
    """The status of the first condition that holds, else RUNNING (``jnp.select`` would lower to an
    argmax reduction, an extra compiled kernel)."""
    status = jnp.asarray(Status.RUNNING, jnp.int32)
    for condition, value in reversed(cases):
        status = jnp.where(condition, value, status)
    return status


def _select(mask, new, old):
    """``new`` where ``mask`` (a scalar) else ``old``, leaf by leaf."""
    return jax.tree_util.tree_map(lambda n, o: jnp.where(mask, n, o), new, old)


def step(
    solver,
    problem: LoopProblem,
    max_steps: int,
    state: LoopState,
    args,
    differentiated: bool = False,
    any_started: Bool[Array, ""] | None = None,
) -> tuple[LoopState, LogRow]:
    """One trial step of one problem: propose, evaluate r and J once, accept or reject, adapt the control,
    test the tolerances. The first call evaluates x0 instead. A problem that has stopped is left as it is.
    ``differentiated``: the iterations are differentiated (an unrolled adjoint). ``any_started``: whether any
    problem of the batch this step runs in has been evaluated at its start (unbatched under ``vmap``; None:
    not asked); where none has, no step is proposed (see :class:`LoopProblem`'s ``sparse_steps``)."""
    space = problem.space
    started = state.started
    running = started & (state.status == Status.RUNNING)

    def propose():
        return solver.propose(state.lin, state.scale, state.control)

    def placeholder():
        return jnp.zeros(problem.tangent_size, state.x.dtype), state.control

    if any_started is None:
        proposed, proposed_control = propose()
    else:
        proposed, proposed_control = jax.lax.cond(any_started, propose, placeholder)
    # the step actually taken: what survives rounding in x ⊕ δ (all of it is lost at a large |x|)
    trial, taken = space.retract_step(state.x, jnp.where(running, proposed, 0.0))
    box = None if problem.box is None else problem.box(args)
    if box is not None:  # projected onto the box (the predicted decrease below is the projected step's)
        trial = pin_to_box(trial, *box)
        taken = trial - state.x
    trial_lin, trial_cost, finite, trial_diagonal = _linearize(solver, problem, trial, args, differentiated, box)

    predicted = -(jnp.sum(state.lin.gradient * taken) + 0.5 * state.lin.curvature(taken))
    # Near the minimum the cost difference drowns in the rounding noise of the residuals
    # (eps·|model| per residual, far above eps·|r| on small-residual fits), while the Gauss-Newton
    # model is still accurate. For steps the model says gain less than √eps·cost, the decrease is
    # measured by the trapezoidal rule on the gradient, -½(g + g_trial)·δ, which is exact for a
    # quadratic cost and resolves changes far below the cost's noise; a cost that rises by more than
    # that margin still rejects the step.
    difference = state.cost - trial_cost
    margin = jnp.sqrt(jnp.finfo(state.cost.dtype).eps) * state.cost
    small = predicted <= margin
    trapezoid = -0.5 * jnp.sum((state.lin.gradient + trial_lin.gradient) * taken)
    actual = jnp.where(small, trapezoid, difference)
    consistent = finite & (~small | (difference >= -margin))
    # (both operands guarded: ∂(a/p)/∂p = -a/p² would be 0·∞ = NaN at an inconsistent trial's a = -inf)
    usable = consistent & (predicted > 0)
    ratio = jnp.where(usable, jnp.where(usable, actual, 0.0) / jnp.where(usable, predicted, 1.0), -jnp.inf)
    accepted = running & consistent & solver.accepts(ratio, actual, proposed_control)
    updated_control = solver.update_control(proposed_control, accepted, ratio, taken, state.scale)

    take = accepted | ~started
    x = jnp.where(take, trial, state.x)
    lin = _select(take, trial_lin, state.lin)
    cost = jnp.where(take, trial_cost, state.cost)
    diagonal = jnp.where(take, trial_diagonal, state.lin.diagonal())
    scale = solver.update_scale(state.scale, trial_diagonal, accepted, started)
    magnitude = space.magnitude_one(x)  # the parameter sizes of the scale-aware tests at the returned point
    control = _select(
        started, _select(running, updated_control, state.control), solver.init_control(lin, scale, magnitude)
    )

    # A tolerance on the step or the cost change is a claim about the model's minimiser, but the step
    # tested was shortened by the damping / radius / backtracking: a heavily damped step is tiny and
    # gains nothing at a point with a large gradient. So both tests also ask the returned point to be
    # stationary in the tolerance's own units, along every coordinate j (cheap lower bounds on what the
    # undamped model still offers, from g = Jᵀr and diag(JᵀJ) alone):
    #   function:  the best gain along j, g_j²/(2(JᵀJ)_jj) = cos²∠(J_j, r)·cost, is <= ftol·cost;
    #   parameter: the Newton step along j, |g_j|/(JᵀJ)_jj, is within rtol·|x_j| + atol.
    # (written without squaring g: a column whose squared norm underflows to 0 beside a non-zero g_j, a
    # plateau where exp() underflows, is not stationary)
    ftol = solver.function_tolerance
    gradient = jnp.abs(lin.gradient)
    function_stationary = jnp.all(gradient <= jnp.sqrt(2.0 * ftol * cost * diagonal))
    parameter_stationary = jnp.all(gradient <= (solver.rtol * jnp.abs(magnitude) + solver.atol) * diagonal)
    eps = jnp.finfo(cost.dtype).eps
    unchanged = finite & (jnp.abs(actual) <= 2 * eps * state.cost)
    small_step = jnp.all(jnp.abs(taken) <= solver.rtol * jnp.abs(space.magnitude_one(state.x)) + solver.atol)
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
        (small_step & (accepted | unchanged)) | (finite & solver.steps_within_tolerance(control, magnitude, scale))
    )
    # MINPACK's gradient test: cos∠(J_j, r) <= gtol for every column j, or r = 0
    gradient_converged = (cost == 0) | jnp.all(
        gradient <= solver.gradient_tolerance * jnp.sqrt(diagonal) * jnp.sqrt(2.0 * cost)
    )
    # where the whole Jacobian is zero (every exp() underflowed: a plateau far from any minimum) every test
    # above holds trivially, yet nothing is known: no claim of convergence there
    # (with bounds: unless every coordinate is at a bound, where a zero restricted model is a KKT corner; nor where
    # no coordinate may move at all, a graph with every variable held)
    flat = (cost > 0) & jnp.all(diagonal == 0) if problem.movable else jnp.asarray(False)
    # nor where the column of a coordinate that moved the residual before is now exactly zero: the tests hold
    # along it only because its influence underflowed (e^{-b·t} past the dtype's range, float32's at b·t ≈ 88: a
    # decay or peak moved off the data), a plateau whose exact gradient is not zero. (A column zero from the
    # start, a held or unused coordinate, claims nothing either way.)
    # (a column whose squares underflow to a zero diagonal may still move the gradient: that is influence too)
    influence = (diagonal > 0) | (lin.gradient != 0)
    influential = jnp.where(take, state.influential | influence, state.influential)
    vanished = influential & ~influence
    if box is not None:
        flat = flat & ~jnp.all((x <= box[0]) | (x >= box[1]))
        vanished = vanished & ~((x <= box[0]) | (x >= box[1]))  # (held at a bound: restricted out, not lost)
    flat = flat | ((cost > 0) & jnp.any(vanished))
    gradient_converged, function_converged, parameter_converged = (
        test & ~flat for test in (gradient_converged, function_converged, parameter_converged)
    )
    stalled = solver.stalled(control, magnitude, scale)
    num_steps = state.num_steps + running
    outcome = _first_true(
        [
            (gradient_converged, Status.CONVERGED_GRADIENT),
            (function_converged, Status.CONVERGED_FUNCTION),
            (parameter_converged, Status.CONVERGED_PARAMETER),
            # (the residual's fault only where the trial point was finite: a step that overflowed, e.g. λ·D
            # beyond float32's range, stalls like any other)
            (stalled & ~finite & jnp.all(jnp.isfinite(trial)), Status.NONFINITE_RESIDUAL),
            (stalled, Status.STALLED),
            (num_steps >= max_steps, Status.MAX_STEPS),
        ],
    )
    first_outcome = _first_true(
        [
            (~finite, Status.NONFINITE_START),
            (gradient_converged, Status.CONVERGED_GRADIENT),
            (num_steps >= max_steps, Status.MAX_STEPS),
        ],
    )
    status = jnp.where(running, outcome, jnp.where(started, state.status, first_outcome)).astype(jnp.int32)
    new_state = LoopState(
        x,
        lin,
        cost,
        jnp.where(started, state.initial_cost, cost),
        scale,
        control,
        status,
        num_steps,
        state.num_accepted + accepted,
        jnp.ones_like(started),
        influential,
        state.index,
        state.history,
    )
    log = LogRow(
        num_steps,
        running | ~started,
        cost,
        jnp.where(accepted, actual, 0.0),
        # a start that was not finite has no gradient (its linearisation is zeroed to spare its neighbours)
        jnp.where(started | finite, jnp.max(gradient), jnp.nan),
        jnp.max(jnp.abs(taken)),
        solver.control_value(control),
        accepted | ~started,
    )
    if state.history.shape[0]:
        new_state = eqx.tree_at(lambda s: s.history, new_state, _record(state.history, log))
    return new_state, log


def _record(history, log: LogRow):
    """The ring of the last K iterations with this one's row written at ``num_steps % K`` (if it ran)."""
    row = jax.lax.stop_gradient(
        jnp.stack(
            [
                jnp.asarray(value, history.dtype)
                for value in (log.num_steps, log.cost, log.change, log.gradient, log.step, log.control, log.accepted)
            ]
        )
    )
    slot = jnp.mod(log.num_steps, history.shape[0])
    return jnp.where(log.active, history.at[slot].set(row), history)


def ordered_history(history, num_steps) -> Float[Array, "K 7"]:
    """One problem's ring as rows oldest first: the last min(num_steps + 1, K) iterations, then NaN rows."""
    size = history.shape[0]
    recorded = jnp.minimum(num_steps + 1, size)
    position = jnp.arange(size)
    slots = jnp.mod(num_steps + 1 - recorded + position, size)
    return jnp.where((position < recorded)[:, None], history[slots], jnp.nan)


def active(state: LoopState) -> Bool[Array, " batch"]:
    """Problems still to be iterated: not yet evaluated at their start, or running."""
    return ~state.started | (state.status == Status.RUNNING)


def count(mask: Bool[Array, " batch"]) -> Int[Array, ""]:
    # an integer sum: XLA:CPU compiles a boolean reduction over the batch ~3x slower
    return jnp.sum(mask, dtype=jnp.int32)


def take(args, axes, index):
    """The batched array leaves of ``args`` at ``index`` (shared leaves and None placeholders as they are)."""
    return jax.tree_util.tree_map(
        lambda axis, leaf: leaf if axis is None or leaf is None else leaf[index],
        axes,
        args,
        is_leaf=lambda a: a is None,
    )


class _Packing:
    """The batch's loop state as two arrays: every floating leaf side by side in one ``(batch, W)`` array
    of the working dtype, every integer/boolean leaf in one ``(batch, K)`` int32 array.

    The loops carry this form, so an iteration writes two arrays instead of a dozen (every array a
    loop writes is a separately compiled kernel) and moving problems in and out of the working set
    is two gathers and two scatters (XLA:CPU expands every scatter into a loop of its own).
    """

    def __init__(self, template: LoopState):
        leaves, self.treedef = jax.tree_util.tree_flatten(template)
        self.dtype = template.x.dtype
        self.layout = [(leaf.shape[1:], leaf.dtype, jnp.issubdtype(leaf.dtype, jnp.floating)) for leaf in leaves]

    def pack(self, state: LoopState):
        rows = [jnp.reshape(leaf, (leaf.shape[0], -1)) for leaf in jax.tree_util.tree_leaves(state)]
        floats = [row.astype(self.dtype) for row, (_, _, is_float) in zip(rows, self.layout) if is_float]
        ints = [row.astype(jnp.int32) for row, (_, _, is_float) in zip(rows, self.layout) if not is_float]
        return jnp.concatenate(floats, axis=1), jnp.concatenate(ints, axis=1)

    def unpack(self, packed, only: Callable[[LoopState], tuple] | None = None) -> LoopState:
        """The state; with ``only`` (a function picking leaves of a state) those leaves alone, the others None
        (what a loop's condition reads: a handful of columns instead of a program's worth of slices to trace)."""
        floats, ints = packed
        wanted = None
        if only is not None:
            numbered = jax.tree_util.tree_unflatten(self.treedef, list(range(len(self.layout))))
            wanted = set(only(numbered))
        offsets = {True: 0, False: 0}
        leaves = []
        for index, (shape, dtype, is_float) in enumerate(self.layout):
            width = int(np.prod(shape))
            start = offsets[is_float]
            offsets[is_float] += width
            if wanted is not None and index not in wanted:
                leaves.append(None)
                continue
            piece = (floats if is_float else ints)[:, start : start + width]
            leaves.append(jnp.reshape(piece, (piece.shape[0],) + shape).astype(dtype))
        return jax.tree_util.tree_unflatten(self.treedef, leaves)


def _working_set_loop(iterate, is_active, problem_of, packed, args, axes, slots: int):
    """Advance at most ``slots`` unfinished problems at a time and refill finished slots.

    A batched loop costs the whole batch's work every iteration until its slowest problem stops. Here the
    slots take the problems in order, as from a queue: each round iterates the slots until enough of them are
    free to be worth a refill (half of them, or as many as are waiting), writes every slot's problem back,
    and the free slots take the next problems of the queue (with their batched args); a slot the queue does
    not reach keeps its finished problem, which never changes. So the slots hold the first ``slots``
    unfinished problems, and the problems' own iterations are exactly those of the plain loop. (A queue
    rather than a search of the batch every round: no sort of the batch and no count over it, each a program
    XLA compiles apart, and none of their work per round.)
    """
    batch = jax.tree_util.tree_leaves(packed)[0].shape[0]
    # row s < slots: the slots before slot s; the last row: every slot. (Summed as floats over the rows: a row
    # reduction stays in the round's kernels, where XLA:CPU compiles an integer one, or a sum to a scalar, as
    # programs of their own.)
    tally = np.concatenate([np.tril(np.ones((slots, slots), bool), k=-1), np.ones((1, slots), bool)])

    def one_round(carry):
        packed, part, queued = carry
        free = ~is_active(part)
        problem = problem_of(part)
        tallied = jnp.sum(jnp.where(tally & free[None, :], np.float32(1), np.float32(0)), axis=1).astype(jnp.int32)
        # the free slots, in order, take the next problems of the queue while it lasts
        place = queued + tallied[:slots]
        load = free & (place < batch)
        problem = jnp.where(load, place, problem)
        queued = jnp.minimum(queued + tallied[slots], batch)
        part = jax.tree_util.tree_map(
            lambda buffer, kept: jnp.where(load[:, None], buffer[problem], kept), packed, part
        )
        part_args = take(args, axes, problem)

        waiting = batch - queued
        refill_at = jnp.minimum(waiting, max(slots // 2, 1))  # free slots worth a refill

        def keep_going(part):
            running = count(is_active(part))
            return (running > 0) & ((waiting == 0) | (slots - running < refill_at))

        part = jax.lax.while_loop(keep_going, lambda p: iterate(p, part_args), part)
        packed = jax.tree_util.tree_map(
            lambda buffer, new: buffer.at[problem].set(new, unique_indices=True), packed, part
        )
        return packed, part, queued

    first = jax.tree_util.tree_map(lambda buffer: buffer[:slots], packed)
    # (the round that empties the queue iterates its slots until every one has stopped: the loop ends with it)
    return jax.lax.while_loop(lambda carry: carry[2] < batch, one_round, (packed, first, np.int32(slots)))[0]


def run(
    solver,
    problem: LoopProblem,
    args,
    axes,
    state: LoopState,
    max_steps: int,
    *,
    verbose: bool,
    working_set: int | None,
    unroll: bool,
    checkpoint: bool,
    callback: Callable | None = None,
) -> LoopState:
    """Iterate every problem of the batch ``state`` until it stops: the batch layer around :func:`step`.

    ``unroll``: a bounded loop JAX can differentiate (exactly ``max_steps`` iterations after evaluating
    x0; each rematerialised in the backward pass with ``checkpoint``); otherwise a ``while_loop`` over
    the whole batch (``working_set=None``) or over a working set of that many unfinished problems.
    ``callback``: called on the host after every iteration (:mod:`jaxnls._callback`); the problems it
    asks to stop end ``Status.STOPPED``.
    """
    packing = _Packing(state)
    one_step = vmap_traced_once(
        lambda s, a, any_started: step(solver, problem, max_steps, s, a, unroll, any_started), in_axes=(0, axes, None)
    )

    def advance(packed, a):
        state = packing.unpack(packed)
        new_state, log = one_step(state, a, jnp.any(state.started) if problem.sparse_steps else None)
        if verbose:
            jax.debug.callback(_print_row, *jax.tree_util.tree_leaves(log), ordered=True)
        return packing.pack(new_state), log

    def report(packed, log):
        # (outside any checkpointed body: JAX cannot rematerialise an io_callback)
        if callback is None:
            return packed
        state = packing.unpack(packed)
        stop = _callback.ask(callback, type(solver).control_label, state.index, log, state.status)
        return packing.pack(
            eqx.tree_at(lambda s: s.status, state, jnp.where(stop, Status.STOPPED, state.status).astype(jnp.int32))
        )

    def iterate(packed, a):
        return report(*advance(packed, a))

    def is_active(packed):
        return active(packing.unpack(packed, only=lambda state: (state.started, state.status)))

    if verbose:
        jax.debug.callback(_print_header, type(solver).control_label, state.x.shape[0], working_set, ordered=True)
    if unroll:
        differentiated = jax.checkpoint(advance) if checkpoint else advance
        body = lambda p, _: (report(*differentiated(p, args)), None)
        packed = jax.lax.scan(body, packing.pack(state), None, length=max_steps + 1)[0]
    elif working_set is None:
        packed = jax.lax.while_loop(lambda p: count(is_active(p)) > 0, lambda p: iterate(p, args), packing.pack(state))
    else:

        def problem_of(packed):  # (a state's index is its problem's place in the batch)
            return packing.unpack(packed, only=lambda state: (state.index,)).index

        packed = _working_set_loop(iterate, is_active, problem_of, packing.pack(state), args, axes, working_set)
    return packing.unpack(packed)


def _print_header(label, batch_size, working_set):
    if int(batch_size) == 1:
        print(
            f"{'iter':>5} {'cost':>14} {'cost_change':>12} {'|gradient|':>11} {'|step|':>11} "
            f"{label:>11} {'accepted':>8}",
            flush=True,
        )
    else:
        if working_set is not None:
            print(
                f"(a line per iteration of the working set of {int(working_set)} problems; 'iter' is the most "
                "steps any of them has taken)",
                flush=True,
            )
        print(
            f"{'iter':>5} {'running':>8} {'total_cost':>14} {'cost_change':>12} {'max|grad|':>11} "
            f"{'max|step|':>11} {'med ' + label:>12} {'accepted':>8}",
            flush=True,
        )


def _print_row(num_steps, running, cost, change, gradient, step, control, accepted):
    running = np.asarray(running)
    if not running.any():
        return
    if running.size == 1:
        print(
            f"{int(num_steps[0]):>5} {float(cost[0]):>14.6e} {float(change[0]):>12.3e} {float(gradient[0]):>11.3e} "
            f"{float(step[0]):>11.3e} {float(control[0]):>11.3e} {'yes' if accepted[0] else 'no':>8}",
            flush=True,
        )
        return
    live = running
    finite = np.isfinite(cost)

    def largest(values):
        values = values[live & np.isfinite(values)]
        return float(np.max(values)) if values.size else float("nan")

    controls = control[live & np.isfinite(control)]
    print(
        f"{int(np.max(num_steps[live])):>5} {int(live.sum()):>8} {float(np.sum(cost[finite])):>14.6e} "
        f"{float(np.sum(change[np.isfinite(change)])):>12.3e} {largest(gradient):>11.3e} {largest(step):>11.3e} "
        f"{float(np.median(controls)) if controls.size else float('nan'):>12.3e} {int(np.sum(accepted)):>8}",
        flush=True,
    )
