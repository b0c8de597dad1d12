r"""A CORNN-style suite of 2-D regression tasks, regenerated from the formulas of classic test functions.

Each task samples inputs uniformly on the function's usual domain, evaluates the formula, and scales
inputs and outputs linearly to [-1, 1] (the output scale is fixed by the training split and applied to
both splits). Nothing is downloaded or vendored.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np


def _ackley(x, y):
    return (
        -20.0 * np.exp(-0.2 * np.sqrt(0.5 * (x**2 + y**2)))
        - np.exp(0.5 * (np.cos(2 * np.pi * x) + np.cos(2 * np.pi * y)))
        + np.e
        + 20.0
    )


def _rastrigin(x, y):
    return 20.0 + x**2 - 10.0 * np.cos(2 * np.pi * x) + y**2 - 10.0 * np.cos(2 * np.pi * y)


def _rosenbrock(x, y):
    return (1.0 - x) ** 2 + 100.0 * (y - x**2) ** 2


def _himmelblau(x, y):
    return (x**2 + y - 11.0) ** 2 + (x + y**2 - 7.0) ** 2


def _beale(x, y):
    return (1.5 - x + x * y) ** 2 + (2.25 - x + x * y**2) ** 2 + (2.625 - x + x * y**3) ** 2


def _booth(x, y):
    return (x + 2 * y - 7.0) ** 2 + (2 * x + y - 5.0) ** 2


def _matyas(x, y):
    return 0.26 * (x**2 + y**2) - 0.48 * x * y


def _three_hump_camel(x, y):
    return 2 * x**2 - 1.05 * x**4 + x**6 / 6 + x * y + y**2


def _six_hump_camel(x, y):
    return (4 - 2.1 * x**2 + x**4 / 3) * x**2 + x * y + (-4 + 4 * y**2) * y**2


def _branin(x, y):
    b, c, r, s, t = 5.1 / (4 * np.pi**2), 5 / np.pi, 6.0, 10.0, 1 / (8 * np.pi)
    return (y - b * x**2 + c * x - r) ** 2 + s * (1 - t) * np.cos(x) + s


@dataclasses.dataclass(frozen=True)
class TaskFunction:
    formula: Callable[[np.ndarray, np.ndarray], np.ndarray]
    domain: tuple[tuple[float, float], tuple[float, float]]


#: name -> formula and its customary input domain.
TEST_FUNCTIONS: dict[str, TaskFunction] = {
    "ackley": TaskFunction(_ackley, ((-5.0, 5.0), (-5.0, 5.0))),
    "rastrigin": TaskFunction(_rastrigin, ((-5.12, 5.12), (-5.12, 5.12))),
    "rosenbrock": TaskFunction(_rosenbrock, ((-2.0, 2.0), (-1.0, 3.0))),
    "himmelblau": TaskFunction(_himmelblau, ((-5.0, 5.0), (-5.0, 5.0))),
    "beale": TaskFunction(_beale, ((-4.5, 4.5), (-4.5, 4.5))),
    "booth": TaskFunction(_booth, ((-10.0, 10.0), (-10.0, 10.0))),
    "matyas": TaskFunction(_matyas, ((-10.0, 10.0), (-10.0, 10.0))),
    "three_hump_camel": TaskFunction(_three_hump_camel, ((-5.0, 5.0), (-5.0, 5.0))),
    "six_hump_camel": TaskFunction(_six_hump_camel, ((-3.0, 3.0), (-2.0, 2.0))),
    "branin": TaskFunction(_branin, ((-5.0, 10.0), (0.0, 15.0))),
}


@dataclasses.dataclass(frozen=True)
class RegressionTask:
    name: str
    x_train: np.ndarray  # (n_train, 2) in [-1, 1]
    y_train: np.ndarray  # (n_train,) in [-1, 1]
    x_test: np.ndarray
    y_test: np.ndarray


def make_task(name: str, seed: int = 0, num_train: int = 3750, num_test: int = 1250) -> RegressionTask:
    """Sample one task: uniform inputs on the function's domain, inputs and outputs scaled to [-1, 1]."""
    if name not in TEST_FUNCTIONS:
        raise ValueError(f"unknown task {name!r}; choose from {sorted(TEST_FUNCTIONS)}")
    if num_train < 2 or num_test < 1:
        raise ValueError(f"need num_train >= 2 and num_test >= 1, got {num_train}, {num_test}")
    spec = TEST_FUNCTIONS[name]
    rng = np.random.default_rng(seed)
    low = np.array([spec.domain[0][0], spec.domain[1][0]])
    high = np.array([spec.domain[0][1], spec.domain[1][1]])
    raw = rng.uniform(low, high, size=(num_train + num_test, 2))
    values = spec.formula(raw[:, 0], raw[:, 1])
    scaled_x = 2.0 * (raw - low) / (high - low) - 1.0
    lo, hi = values[:num_train].min(), values[:num_train].max()
    scaled_y = 2.0 * (values - lo) / (hi - lo) - 1.0
    return RegressionTask(name, scaled_x[:num_train], scaled_y[:num_train], scaled_x[num_train:], scaled_y[num_train:])
