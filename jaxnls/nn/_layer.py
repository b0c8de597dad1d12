"""An Equinox layer whose forward pass is a nonlinear least-squares solve."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
from jaxtyping import PyTree

from .._driver import UNSET, resolve_args_axes
from .._solution import Solution
from .._solve import solve
from ..adjoint import AbstractAdjoint, Implicit
from ..solvers import AbstractLeastSquaresSolver, LevenbergMarquardt


class NLLSLayer(eqx.Module):
    r"""``layer(params0, args) -> Solution``: solve :math:`\min_x \tfrac12\|r(x, \text{args})\|^2` as a
    differentiable layer.

    ``residual_fn(params, args)`` describes one problem, as for :func:`jaxnls.solve`. It may be an
    ``equinox.Module`` (a learnable cost: weights, a network): its array leaves are trainable — the
    adjoint differentiates the solution with respect to them and to the floating arrays in ``args``,
    so ``eqx.filter_grad`` / ``eqx.filter_value_and_grad`` of a loss of the layer's output give their
    gradients, e.g. in an optax training loop.

    Attributes:
        residual_fn: function or Equinox module ``(params, args) -> residuals``.
        solver: as in :func:`jaxnls.solve` (default :class:`~jaxnls.LevenbergMarquardt`).
        adjoint: as in :func:`jaxnls.solve` (default :class:`~jaxnls.Implicit`).
        max_steps: as in :func:`jaxnls.solve` (default 256; static).
        batched: as in :func:`jaxnls.solve` (default False; static).
        args_axes: as in :func:`jaxnls.solve`, for ``args`` (static); the residual module's own arrays are
            shared by every problem of a batch.
    """

    residual_fn: Callable[[PyTree, Any], PyTree]
    solver: AbstractLeastSquaresSolver = LevenbergMarquardt()
    adjoint: AbstractAdjoint = Implicit()
    max_steps: int = eqx.field(static=True, default=256)
    batched: bool = eqx.field(static=True, default=False)
    args_axes: PyTree = eqx.field(static=True, default=UNSET)

    def __call__(self, params0: PyTree, args: PyTree = None) -> Solution:
        # the residual travels in args, so that its arrays are differentiated like any other data
        args_axes = resolve_args_axes(self.args_axes, args, self.batched)
        return solve(
            _call_residual,
            params0,
            (self.residual_fn, args),
            solver=self.solver,
            adjoint=self.adjoint,
            max_steps=self.max_steps,
            batched=self.batched,
            args_axes=(None, args_axes),
        )


def _call_residual(params, residual_and_args):
    residual_fn, args = residual_and_args
    return residual_fn(params, args)
