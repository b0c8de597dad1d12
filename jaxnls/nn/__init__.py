"""Neural-network layers: a differentiable solve (:class:`NLLSLayer`) and structured matrix layers."""

from ._layer import NLLSLayer
from ._matrix_layers import NormalizedCut, O2PPooling

__all__ = ["NLLSLayer", "NormalizedCut", "O2PPooling"]
