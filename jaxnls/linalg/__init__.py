"""Structured matrix functions with derivatives that are exact at repeated eigenvalues."""

from ._spectral import SpectralFunction, expm_sym, logm_spd, powm_spd, sqrtm_spd

__all__ = ["SpectralFunction", "expm_sym", "logm_spd", "powm_spd", "sqrtm_spd"]
