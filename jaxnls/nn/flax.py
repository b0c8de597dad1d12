"""``flax.nnx`` wrapper of :class:`jaxnls.nn.NLLSLayer` (optional: ``pip install "jaxnls[flax]"``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flax import nnx
from jaxtyping import PyTree

from .._driver import UNSET, resolve_args_axes
from .._solution import Solution
from .._solve import solve
from ..adjoint import AbstractAdjoint, Implicit
from ..solvers import AbstractLeastSquaresSolver, LevenbergMarquardt


class NLLSLayer(nnx.Module):
    """``layer(params0, args) -> Solution`` for flax.nnx models.

    ``residual_fn`` is an ``nnx.Module`` (or a plain function) called as ``residual_fn(params, args)`` for one
    problem. Its ``nnx.Param`` state travels to the solver as data, so ``nnx.grad`` / ``nnx.value_and_grad``
    of a loss of the layer's output reach it through the adjoint (default :class:`jaxnls.Implicit`).
    Other arguments as in :func:`jaxnls.solve`; the residual's state is shared by every problem of a batch.
    """

    def __init__(
        self,
        residual_fn: nnx.Module | Callable[[PyTree, Any], PyTree],
        *,
        solver: AbstractLeastSquaresSolver = LevenbergMarquardt(),
        adjoint: AbstractAdjoint = Implicit(),
        max_steps: int = 256,
        batched: bool = False,
        args_axes: PyTree = UNSET,
    ):
        self.residual_fn = residual_fn
        self.solver = solver
        self.adjoint = adjoint
        self.max_steps = max_steps
        self.batched = batched
        self.args_axes = args_axes

    def __call__(self, params0: PyTree, args: PyTree = None) -> Solution:
        if isinstance(self.residual_fn, nnx.Module):
            graphdef, state = nnx.split(self.residual_fn)

            def residual(params, state_and_args):
                state, args = state_and_args
                return nnx.merge(graphdef, state)(params, args)

            data = (state, args)
        else:
            residual, data = (lambda params, state_and_args: self.residual_fn(params, state_and_args[1])), (None, args)
        args_axes = resolve_args_axes(self.args_axes, args, self.batched)
        return solve(
            residual,
            params0,
            data,
            solver=self.solver,
            adjoint=self.adjoint,
            max_steps=self.max_steps,
            batched=self.batched,
            args_axes=(None, args_axes),
        )
