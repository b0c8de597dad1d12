"""Step solvers for the (damped) Gauss-Newton system ``(JᵀJ + diag(d)) δ = -Jᵀr``."""

from ._dense import QR, AbstractLinearization, AbstractLinearSolver, Cholesky, Linearization, pivot_floor

__all__ = ["QR", "AbstractLinearSolver", "AbstractLinearization", "Cholesky", "Linearization", "pivot_floor"]
