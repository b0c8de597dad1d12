"""LevenbergMarquardt's long first trial against its absence and two weaker forms of it (issue 14, (as)).

The dense LevenbergMarquardt's first trial (``long_first_trial``, on by default in ``jaxnls.solve``): where the
Gauss-Newton step from the start is longer than the start in the scaled norm, ‖D^½δ‖ > ‖D^½x₀‖, that step cut to
‖D^½x₀‖, kept only where it decreases the cost by at least what the λ0-damped step's model promises. Measured for
each variant, against ``long_first_trial=False`` (the rule before it):

- NIST StRD, 27 problems × 2 starts, ``rtol = atol = 1e-15``, 1,000 steps: runs with LRE >= 8 on every parameter;
- the benchmark curve fits (benchmarks/curvefit.py: B = 1,024, started 10% off, its tolerances), three random
  sets: problems ending at a cost more than 1e-6 (relative) above / below the rule without the trial;
- far starts (benchmarks/false_claims.py's four families, seeds 0 and 1, float64, 200 steps: 4,096 problems
  started e^N(0,1) off with a sign flipped one time in ten): problems whose final cost differs by more than 1%
  (a different minimum; runs at MAX_STEPS in both are left out, one step fewer to crawl is not a basin).

The two weaker forms, subclasses here: ``KeptOnRatio`` keeps the long trial whenever its gain ratio passes the
ordinary acceptance (ρ > 1e-3), without comparing it with the damped step; ``TriedAtEveryStart`` tries the
Gauss-Newton step (cut to ‖D^½x₀‖) at every start, also where it is shorter, with the default's test.

    python benchmarks/lm_first_trial.py
"""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

import jaxnls
from jaxnls.solvers import AbstractLeastSquaresSolver

jax.config.update("jax_enable_x64", True)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import curvefit  # noqa: E402
import false_claims  # noqa: E402
from lm_damping import nist_runs  # noqa: E402

CURVEFIT_SEEDS = (curvefit.SEED, 1, 2)
FAR_SEEDS = (0, 1)


class KeptOnRatio(jaxnls.LevenbergMarquardt):
    """The long first trial kept on the ordinary acceptance alone (ρ > 1e-3)."""

    def accepts(self, ratio, decrease, control):
        return AbstractLeastSquaresSolver.accepts(self, ratio, decrease, control)


class TriedAtEveryStart(jaxnls.LevenbergMarquardt):
    """The Gauss-Newton step, cut to ‖D^½x₀‖ where longer, as the first trial at every start (its own second
    solve here: a benchmark, not the library's one solve of two dampings)."""

    def propose(self, lin, scale, control):
        step, proposed = super().propose(lin, scale, control)
        radius, long = proposed[2], proposed[3]
        gauss_newton = self.step_solver.solve(lin, jnp.zeros_like(scale))
        length = jnp.linalg.norm(jnp.sqrt(scale) * gauss_newton)
        pending = (radius > 0) & jnp.isfinite(length)
        cut = jnp.minimum(1.0, radius / jnp.where(length > 0, length, 1.0))
        step = jnp.where(pending, gauss_newton * cut, step)
        return step, (*proposed[:3], long._replace(pending=pending))


VARIANTS = {
    "long first trial (the default)": lambda **kw: jaxnls.LevenbergMarquardt(**kw),
    "kept on ρ > 1e-3 alone": lambda **kw: KeptOnRatio(**kw),
    "tried at every start": lambda **kw: TriedAtEveryStart(**kw),
    "without (long_first_trial=False)": lambda **kw: jaxnls.LevenbergMarquardt(**kw, long_first_trial=False),
}


def curvefit_outcomes(make) -> list[tuple[np.ndarray, np.ndarray]]:
    """(final costs, steps) of each random set."""
    t = jnp.asarray(curvefit.T)
    outcomes = []
    for seed in CURVEFIT_SEEDS:
        _, y, p0 = curvefit.make_problems(1024, seed)
        sol = curvefit.make_jaxnls(make(rtol=curvefit.RTOL, atol=curvefit.ATOL))(jnp.asarray(p0), t, jnp.asarray(y))
        outcomes.append((curvefit.np_costs(np.asarray(sol.params), y), np.asarray(sol.num_steps)))
    return outcomes


def far_outcomes(make) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(final costs, statuses, steps) of each far-start batch."""
    outcomes = []
    for seed in FAR_SEEDS:
        for _name, model, start, y in false_claims.families(seed):
            sol = jaxnls.solve(
                model,
                jnp.asarray(start),
                (jnp.asarray(false_claims.T), jnp.asarray(y)),
                solver=make(),
                batched=True,
                args_axes=(None, 0),
                max_steps=200,
            )
            x = jnp.asarray(sol.params)
            r = np.asarray(jax.vmap(lambda p, data: model(p, (false_claims.T, data)))(x, jnp.asarray(y)))
            outcomes.append((0.5 * np.sum(r * r, axis=1), np.asarray(sol.status), np.asarray(sol.num_steps)))
    return outcomes


def main() -> None:
    print(f"jaxnls from {jaxnls.__file__}", flush=True)
    reference_name = "without (long_first_trial=False)"
    reference_fits = curvefit_outcomes(VARIANTS[reference_name])
    reference_far = far_outcomes(VARIANTS[reference_name])
    for name, make in VARIANTS.items():
        solved, lost, nist_steps = nist_runs(lambda: make(rtol=1e-15, atol=1e-15))
        fits = curvefit_outcomes(make)
        worse = better = 0
        for (cost, _), (base, _) in zip(fits, reference_fits):
            margin = 1e-6 * base + 1e-12
            worse += int(np.sum(cost > base + margin))
            better += int(np.sum(cost < base - margin))
        fit_steps = sum(int(np.sum(steps)) for _, steps in fits)
        far = far_outcomes(make)
        far_worse = far_better = 0
        for (cost, status, _), (base, base_status, _) in zip(far, reference_far):
            counted = ~((status == jaxnls.Status.MAX_STEPS) & (base_status == jaxnls.Status.MAX_STEPS))
            margin = 1e-2 * np.abs(base) + 1e-9
            far_worse += int(np.sum(counted & (cost > base + margin)))
            far_better += int(np.sum(counted & (cost < base - margin)))
        far_steps = sum(int(np.sum(steps)) for _, _, steps in far)
        print(
            f"{name}: NIST LRE >= 8 on {solved}/54 ({int(nist_steps.sum())} steps; lost: {', '.join(lost) or 'none'}); "
            f"curve fits, 3 × 1,024: {worse} worse / {better} better, {fit_steps} steps; far starts, 4,096: "
            f"{far_worse} worse / {far_better} better, {far_steps} steps",
            flush=True,
        )


if __name__ == "__main__":
    main()
