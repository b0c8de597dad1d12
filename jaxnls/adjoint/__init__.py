"""How ``jaxnls.solve`` differentiates its solution (``solve(..., adjoint=...)``)."""

from ._implicit import AbstractAdjoint, DirectLossMinimization, Implicit
from ._iterative import Truncated, Unroll

__all__ = ["AbstractAdjoint", "DirectLossMinimization", "Implicit", "Truncated", "Unroll"]
