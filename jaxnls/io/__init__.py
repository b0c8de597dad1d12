"""Readers for reference problem files."""

from .nist import NistFormatError, NistModel, NistProblem, log_relative_error, parse_nist, read_nist

__all__ = ["NistFormatError", "NistModel", "NistProblem", "log_relative_error", "parse_nist", "read_nist"]
