"""Structured matrix functions with derivatives that are exact at repeated eigenvalues."""

from ._decompositions import eigh, svd
from ._newton_schulz import sqrtm_newton_schulz
from ._spectral import SpectralFunction, expm_sym, logm_spd, matrix_function, powm_spd, sqrtm_spd, top_k_projector

__all__ = [
    "SpectralFunction",
    "eigh",
    "expm_sym",
    "logm_spd",
    "matrix_function",
    "powm_spd",
    "sqrtm_newton_schulz",
    "sqrtm_spd",
    "svd",
    "top_k_projector",
]
