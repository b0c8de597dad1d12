"""Why a solve stopped: one integer code per problem, readable names and messages."""

from __future__ import annotations

import enum


class Status(enum.IntEnum):
    """Termination reason of one problem, stored per batch element in ``Solution.status``.

    Codes 1-3 are convergence; everything else means the answer is not a certified minimum.
    """

    RUNNING = 0
    CONVERGED_FUNCTION = 1
    CONVERGED_PARAMETER = 2
    CONVERGED_GRADIENT = 3
    MAX_STEPS = 4
    NONFINITE_START = 5
    NONFINITE_RESIDUAL = 6
    STALLED = 7
    STOPPED = 8

    @property
    def message(self) -> str:
        return _MESSAGES[self]

    @property
    def converged(self) -> bool:
        return self in CONVERGED


CONVERGED = (Status.CONVERGED_FUNCTION, Status.CONVERGED_PARAMETER, Status.CONVERGED_GRADIENT)

_MESSAGES = {
    Status.RUNNING: "still running (the solve was interrupted)",
    Status.CONVERGED_FUNCTION: "function tolerance reached: relative cost change below ftol",
    Status.CONVERGED_PARAMETER: "parameter tolerance reached: |step| <= rtol*|x| + atol",
    Status.CONVERGED_GRADIENT: "gradient tolerance reached: every Jacobian column is orthogonal to the residual to gtol",
    Status.MAX_STEPS: "maximum number of steps reached before any tolerance was met",
    Status.NONFINITE_START: "the initial parameters or the residual/Jacobian at them are not finite",
    Status.NONFINITE_RESIDUAL: "every nearby trial point gave a non-finite residual or Jacobian",
    Status.STALLED: "no step decreases the cost any more (damping/radius/step length at its limit) "
    "before a tolerance was met",
    Status.STOPPED: "stopped at the callback's request before a tolerance was met",
}

MESSAGES: tuple[str, ...] = tuple(_MESSAGES[s] for s in Status)
