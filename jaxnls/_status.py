"""Why a solve stopped: one integer code per problem, readable names and messages."""

from __future__ import annotations

import enum


class Status(enum.IntEnum):
    """Termination reason of one problem, stored per batch element in ``Solution.status``.

    Codes 1-3 are convergence; everything else means the answer is not a certified minimum.

    Attributes:
        RUNNING: 0, not finished (a solve interrupted, or a problem still in the loop).
        CONVERGED_FUNCTION: 1, the function tolerance ``ftol`` was reached: the last step changed the cost by
            at most ``ftol·cost`` and no coordinate direction offers more.
        CONVERGED_PARAMETER: 2, the parameter tolerance was reached: ``|δ_j| <= rtol·|x_j| + atol`` for every
            coordinate, for the step taken and the Newton step along each coordinate.
        CONVERGED_GRADIENT: 3, the gradient tolerance was reached: ``|J_jᵀr| <= gtol·‖J_j‖·‖r‖`` for every
            column j, or ``r = 0``.
        MAX_STEPS: 4, ``max_steps`` iterations ran before any tolerance was met.
        NONFINITE_START: 5, the starting parameters, or the residual or Jacobian there, are not finite (or,
            inside a caller's jit, where bounds cannot be refused, the problem's box holds no point).
        NONFINITE_RESIDUAL: 6, every nearby trial point gave a non-finite residual or Jacobian.
        STALLED: 7, no step decreases the cost any more (damping, radius or step length at its limit)
            before a tolerance was met. A test that holds only because the residual stopped depending on a
            coordinate it depended on earlier in the solve (its Jacobian column is now exactly zero: e^{-b·t}
            underflowed, a decay or a peak moved off the data), or on every coordinate, claims nothing: such a
            plateau ends here.
        STOPPED: 8, the ``callback`` asked to stop before a tolerance was met.
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
        """A one-line explanation of this status (as :meth:`jaxnls.Solution.summary` prints it)."""
        return _MESSAGES[self]

    @property
    def converged(self) -> bool:
        """True for the ``CONVERGED_*`` codes."""
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
