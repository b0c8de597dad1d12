"""How ``jaxnls.solve`` differentiates its solution (``solve(..., adjoint=...)``)."""

from ._implicit import AbstractAdjoint, Implicit
from ._iterative import Truncated, Unroll

__all__ = ["AbstractAdjoint", "Implicit", "Truncated", "Unroll"]
