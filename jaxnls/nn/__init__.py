"""Neural-network layers built on :func:`jaxnls.solve`."""

from ._layer import NLLSLayer

__all__ = ["NLLSLayer"]
