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

from . import graph, linalg, manifolds, meta, nn, optim

__version__ = "0.1.0"
