r"""A CORNN-style suite of 2-D regression tasks, regenerated from the formulas of classic test functions.

Each task samples inputs uniformly on the function's usual domain, evaluates the formula, and scales
inputs and outputs linearly to [-1, 1] (the output scale is fixed by the training split and applied to
both splits). Nothing is downloaded or vendored.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
from jaxtyping import Float


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
    """A 2-D test function and the input domain it is sampled on.

    Attributes:
        formula: ``formula(x, y) -> values``, elementwise on NumPy arrays.
        domain: ``((x_low, x_high), (y_low, y_high))``.
    """

    formula: Callable[[np.ndarray, np.ndarray], np.ndarray]
    domain: tuple[tuple[float, float], tuple[float, float]]


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
"""The task suite: name -> formula and its customary input domain (the names :func:`make_task` takes)."""


@dataclasses.dataclass(frozen=True)
class RegressionTask:
    """One sampled task: train and test splits, inputs and outputs scaled to [-1, 1] by the training split.

    Attributes:
        name: the test function's name (a key of :data:`TEST_FUNCTIONS`).
        x_train: ``(n_train, 2)`` inputs in [-1, 1].
        y_train: ``(n_train,)`` outputs, spanning [-1, 1] exactly.
        x_test: ``(n_test, 2)`` inputs in [-1, 1].
        y_test: ``(n_test,)`` outputs, on the training split's scale (possibly slightly beyond [-1, 1]).
    """

    name: str
    x_train: Float[np.ndarray, "n_train 2"]  # in [-1, 1]
    y_train: Float[np.ndarray, " n_train"]  # in [-1, 1]
    x_test: Float[np.ndarray, "n_test 2"]
    y_test: Float[np.ndarray, " n_test"]


def make_task(name: str, seed: int = 0, num_train: int = 3750, num_test: int = 1250) -> RegressionTask:
    """Sample one task: uniform inputs on the function's domain, inputs and outputs scaled to [-1, 1].

    Args:
        name: a key of :data:`TEST_FUNCTIONS`, e.g. ``"ackley"``.
        seed: the NumPy random seed (the same seed gives the same task).
        num_train: training points, >= 2 (default 3750).
        num_test: test points, >= 1 (default 1250).

    Returns:
        The :class:`RegressionTask` (float64 NumPy arrays).

    Raises:
        ValueError: an unknown ``name``, or too few points.
    """
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
