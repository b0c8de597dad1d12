"""How ``jaxnls.solve`` differentiates its solution (``solve(..., adjoint=...)``)."""

from ._implicit import AbstractAdjoint, AbstractAdjointProblem, DenseProblem, DirectLossMinimization, Implicit
from ._iterative import Truncated, Unroll

__all__ = [
    "AbstractAdjoint",
    "AbstractAdjointProblem",
    "DenseProblem",
    "DirectLossMinimization",
    "Implicit",
    "Truncated",
    "Unroll",
]
