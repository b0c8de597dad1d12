"""jaxnls.swat task suite: the formulas against the published minima of the classic test functions
(closed forms), the splits and the scaling."""

import numpy as np
import pytest

from jaxnls.swat import TEST_FUNCTIONS, make_task

#: name -> (a global minimiser, the minimum value), from the functions' standard references.
KNOWN_MINIMA = {
    "ackley": ((0.0, 0.0), 0.0),
    "rastrigin": ((0.0, 0.0), 0.0),
    "rosenbrock": ((1.0, 1.0), 0.0),
    "himmelblau": ((3.0, 2.0), 0.0),
    "beale": ((3.0, 0.5), 0.0),
    "booth": ((1.0, 3.0), 0.0),
    "matyas": ((0.0, 0.0), 0.0),
    "three_hump_camel": ((0.0, 0.0), 0.0),
    "six_hump_camel": ((0.0898, -0.7126), -1.0316),
    "branin": ((np.pi, 2.275), 0.397887),
}


@pytest.mark.parametrize("name", sorted(TEST_FUNCTIONS))
def test_formulas_reach_their_published_minima(name):
    (x, y), value = KNOWN_MINIMA[name]
    spec = TEST_FUNCTIONS[name]
    np.testing.assert_allclose(spec.formula(np.array(x), np.array(y)), value, atol=1e-4)
    # and it is a minimum on a grid over the domain
    gx, gy = np.meshgrid(np.linspace(*spec.domain[0], 301), np.linspace(*spec.domain[1], 301))
    assert spec.formula(gx, gy).min() >= value - 1e-3


def test_splits_sizes_scaling_and_reproducibility():
    task = make_task("himmelblau", seed=3)
    assert task.x_train.shape == (3750, 2) and task.x_test.shape == (1250, 2)
    assert task.y_train.shape == (3750,) and task.y_test.shape == (1250,)
    assert task.x_train.min() >= -1 and task.x_train.max() <= 1
    np.testing.assert_allclose([task.y_train.min(), task.y_train.max()], [-1.0, 1.0])
    again = make_task("himmelblau", seed=3)
    assert np.array_equal(task.x_test, again.x_test)
    assert not np.array_equal(task.x_test, make_task("himmelblau", seed=4).x_test)
    with pytest.raises(ValueError, match="unknown task"):
        make_task("sphere")
