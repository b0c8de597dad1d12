"""Time per iteration of each jaxnls strategy on the batched curve fit of (a), the whole batch advancing together.

``python benchmarks/per_iteration.py [--batch 1024] [--repeats 7]``: with ``working_set=None`` every iteration
does the same work (the whole batch) until the slowest problem stops, so steady time / max iterations is the
cost of one iteration, independent of how many iterations the stopping rules let each problem take. Use it
beside (a)'s rows (whose default working set makes the time follow the sum of the problems' iterations) to
tell a slower loop from a loop that iterates longer.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

from _common import time_calls  # noqa: E402
from curvefit import ATOL, RTOL, T, make_jaxnls, make_problems  # noqa: E402

import jaxnls  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    _, y, p0 = make_problems(args.batch)
    t, y, p0 = jnp.asarray(T), jnp.asarray(y), jnp.asarray(p0)
    print(f"jaxnls from {jaxnls.__file__}; B = {args.batch:,}, rtol = atol = {RTOL:g}, working_set=None")
    print(f"{'strategy':<28} {'steady s':>9} {'max it':>7} {'sum it':>8} {'ms / iteration':>15}")
    for name in ("LevenbergMarquardt", "GaussNewton", "Dogleg", "IndirectLevenbergMarquardt"):
        run = make_jaxnls(getattr(jaxnls, name)(rtol=RTOL, atol=ATOL), working_set=None)
        timing, sol = time_calls(lambda: run(p0, t, y), args.repeats)
        steps = np.asarray(sol.num_steps)
        print(
            f"{name:<28} {timing.median:>9.3f} {steps.max():>7} {steps.sum():>8} {timing.median / steps.max() * 1e3:>15.3f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
