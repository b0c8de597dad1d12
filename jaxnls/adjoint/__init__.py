"""How ``jaxnls.solve`` differentiates its solution (``solve(..., adjoint=...)``)."""

from ._implicit import AbstractAdjoint, Implicit

__all__ = ["AbstractAdjoint", "Implicit"]
