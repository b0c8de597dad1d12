"""Trust-region and line-search strategies around the Gauss-Newton model."""

from ._base import AbstractLeastSquaresSolver
from .dogleg import Dogleg
from .gauss_newton import GaussNewton
from .levenberg_marquardt import IndirectLevenbergMarquardt, LevenbergMarquardt

__all__ = ["AbstractLeastSquaresSolver", "Dogleg", "GaussNewton", "IndirectLevenbergMarquardt", "LevenbergMarquardt"]
