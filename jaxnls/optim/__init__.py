"""Higher-order gradient-flow integrators as optax transformations."""

from ._integrators import adams_bashforth, euler, heun, midpoint, rk4, taylor2

__all__ = ["adams_bashforth", "euler", "heun", "midpoint", "rk4", "taylor2"]
