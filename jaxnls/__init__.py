"""jaxnls: batched, jit-compiled, differentiable nonlinear least squares in JAX."""

from ._callback import IterationInfo
from ._covariance import Covariance, covariance
from ._progress import Progress, ProgressLine
from ._solution import History, Solution
from ._solve import solve
from ._status import Status
from .adjoint import AbstractAdjoint, DirectLossMinimization, Implicit, Truncated, Unroll
from .linear import QR, AbstractLinearSolver, Cholesky
from .solvers import AbstractLeastSquaresSolver, Dogleg, GaussNewton, IndirectLevenbergMarquardt, LevenbergMarquardt

__all__ = [
    "QR",
    "AbstractAdjoint",
    "AbstractLeastSquaresSolver",
    "AbstractLinearSolver",
    "Cholesky",
    "Covariance",
    "DirectLossMinimization",
    "Dogleg",
    "GaussNewton",
    "History",
    "Implicit",
    "IndirectLevenbergMarquardt",
    "IterationInfo",
    "LevenbergMarquardt",
    "Progress",
    "ProgressLine",
    "Solution",
    "Status",
    "Truncated",
    "Unroll",
    "covariance",
    "graph",
    "linalg",
    "manifolds",
    "meta",
    "nn",
    "optim",
    "solve",
]

from typing import TYPE_CHECKING

from . import graph, linalg, manifolds

if TYPE_CHECKING:
    from types import ModuleType

    from . import meta, nn, optim

__version__ = "0.1.0"

#: Subpackages imported on first use: they bring optax, which a least-squares solve never needs (~40 ms of
#: every ``import jaxnls``, the command line's included).
_ON_FIRST_USE = ("meta", "nn", "optim")


def __getattr__(name: str) -> "ModuleType":
    if name in _ON_FIRST_USE:
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
