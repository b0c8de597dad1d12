"""Step solvers for the (damped) Gauss-Newton system ``(JᵀJ + diag(d)) δ = -Jᵀr``."""

from ._dense import AbstractLinearSolver, Cholesky, Linearization, QR

__all__ = ["AbstractLinearSolver", "Cholesky", "Linearization", "QR"]
