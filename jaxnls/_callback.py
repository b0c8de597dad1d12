r"""The per-iteration callback: what the compiled loop reports to the host, and the stop requests it takes back.

``callback=fn`` (in :func:`jaxnls.solve` and :func:`jaxnls.graph.solve`) is called once per loop iteration,
on the host, with an :class:`IterationInfo` of the problems that iteration advanced, and may return which of
them to stop. The call is an ``io_callback`` inside the compiled loop: the loop waits for it, so a slow
callback slows the solve, and the function is part of the compilation key (a new function compiles anew).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import io_callback
from jaxtyping import Array, Bool

from ._status import Status


class IterationInfo(NamedTuple):
    """One loop iteration, for the problems it advanced (NumPy arrays of equal length k, row i one problem).

    Iteration 0 is the evaluation of the start: ``cost`` is the initial cost and nothing was stepped.

    Attributes:
        problem: the problems' indices in the batch (``0`` for an unbatched solve).
        iteration: the steps each problem has taken, this one included.
        cost: ½‖r‖² at each problem's current point (after this trial was accepted or rejected).
        cost_change: the decrease this step achieved (0 where the trial was rejected).
        gradient_norm: ``max|Jᵀr|`` at the current point.
        step_norm: ``max|δ|`` of the step tried.
        control: the strategy's damping λ (Levenberg-Marquardt), trust radius (Dogleg, IndirectLM) or step
            length (Gauss-Newton); ``control_name`` says which.
        accepted: whether the trial was taken.
        status: each problem's :class:`jaxnls.Status` code after this iteration (``RUNNING`` = 0 while it
            goes on).
        control_name: ``"damping"``, ``"radius"`` or ``"step"``.
    """

    problem: np.ndarray
    iteration: np.ndarray
    cost: np.ndarray
    cost_change: np.ndarray
    gradient_norm: np.ndarray
    step_norm: np.ndarray
    control: np.ndarray
    accepted: np.ndarray
    status: np.ndarray
    control_name: str


def check_callback(callback, caller: str):
    """A TypeError naming ``caller`` unless ``callback`` is None or callable."""
    if callback is not None and not callable(callback):
        raise TypeError(f"{caller}: callback must be a function of a jaxnls.IterationInfo (or None), got {callback!r}")


def ask(callback: Callable, control_name: str, index, log, status) -> Bool[Array, " batch"]:
    """Report an iteration (the batch's ``log`` rows, their problem ``index`` and ``status``) to
    ``callback`` on the host; True where it asked to stop a problem that is still running."""
    values = jax.lax.stop_gradient(
        (
            index,
            log.num_steps,
            log.active,
            log.cost,
            log.change,
            log.gradient,
            log.step,
            log.control,
            log.accepted,
            status,
        )
    )
    shape = jax.ShapeDtypeStruct(status.shape, jnp.bool_)
    stop = io_callback(lambda *v: _on_host(callback, control_name, *v), shape, *values)
    return stop & (status == Status.RUNNING)


def _on_host(callback, control_name, index, steps, active, cost, change, gradient, step, control, accepted, status):
    active = np.asarray(active, bool)
    stop = np.zeros(active.shape, bool)
    if not active.any():
        return stop
    info = IterationInfo(
        problem=np.asarray(index)[active],
        iteration=np.asarray(steps)[active],
        cost=np.asarray(cost)[active],
        cost_change=np.asarray(change)[active],
        gradient_norm=np.asarray(gradient)[active],
        step_norm=np.asarray(step)[active],
        control=np.asarray(control)[active],
        accepted=np.asarray(accepted, bool)[active],
        status=np.asarray(status)[active],
        control_name=control_name,
    )
    request = callback(info)
    if request is None:
        return stop
    request = np.asarray(request)
    if request.dtype != bool or request.shape not in ((), (info.problem.size,)):
        raise ValueError(
            f"a jaxnls callback must return None, a bool, or a bool array of shape "
            f"({info.problem.size},) (one per problem in the IterationInfo); got {request!r}"
        )
    stop[active] = request
    return stop
