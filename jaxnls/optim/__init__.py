"""Higher-order gradient-flow integrators as optax transformations, fixed-step and adaptive."""

from ._adaptive import AdaptiveState, bogacki_shampine, heun_euler
from ._integrators import adams_bashforth, euler, heun, midpoint, rk4, taylor2

__all__ = [
    "AdaptiveState",
    "adams_bashforth",
    "bogacki_shampine",
    "euler",
    "heun",
    "heun_euler",
    "midpoint",
    "rk4",
    "taylor2",
]
