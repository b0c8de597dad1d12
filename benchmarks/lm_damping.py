"""Levenberg-Marquardt's first damping and damping matrix against the 54 NIST StRD runs (issue 14, section (ag)).

``LevenbergMarquardt(rtol=1e-15, atol=1e-15)`` with ``max_steps=1000`` for each first damping λ0 given, and the same
with Ceres' damping matrix (``--ceres``): the count of runs with LRE >= 8 on every parameter and the runs lost, and
with ``--curvefit`` how the Ceres-style rule's batch of 1,024 curve fits (benchmarks/curvefit.py's problems, its
tolerances) compares with our LM's final costs.

    python benchmarks/lm_damping.py --lam0 0.1 1e-12 1e-8
    python benchmarks/lm_damping.py --ceres --lam0 1e-4 0.1 --curvefit
    python benchmarks/lm_damping.py --levenberg --lam0 1e-6 1e-3 1

Ceres' rule (``trust_region_minimizer.cc`` / ``levenberg_marquardt_strategy.cc`` of Ceres 2.1, Jacobi scaling on):
the Jacobian's columns are scaled by 1 / (1 + ‖J_j(x₀)‖), fixed at the start, and damped with the current squared
column norms of the scaled Jacobian clamped to [1e-6, 1e32]; in the original variables the damping matrix is
clip(diag(JᵀJ), 1e-6·w, 1e32·w) with w_j = (1 + ‖J_j(x₀)‖)². λ follows Nielsen's rule in both.

``--levenberg``: the textbook algorithm of Madsen, Nielsen & Tingleff (2004, Algorithm 3.16), Levenberg's damping
λ·I instead of a diagonal scaling, from λ0 = τ·max_j (J₀ᵀJ₀)_jj with τ the ``--lam0`` values, Nielsen's rule
unchanged (issue 14, (aq)).

Every rule is measured without the long first trial (``long_first_trial=False``), as it was before that trial was
added ((as)): these are rules for λ alone.
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

import jaxnls

jax.config.update("jax_enable_x64", True)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import curvefit  # noqa: E402
from nist import load_problems  # noqa: E402

LRE_TARGET = 8.0


class CeresDampingLM(jaxnls.LevenbergMarquardt):
    """Nielsen's λ on Ceres' damping matrix (module docstring); the control carries w = (1 + ‖J_j(x₀)‖)²."""

    def init_control(self, lin, scale, x):
        damping, growth = super().init_control(lin, scale, x)
        return damping, growth, (1.0 + jnp.sqrt(lin.diagonal())) ** 2

    def propose(self, lin, scale, control):
        damping, _, weight = control
        matrix = jnp.clip(lin.diagonal(), 1e-6 * weight, 1e32 * weight)
        return self.step_solver.solve(lin, damping * matrix), control

    def update_control(self, control, accepted, ratio, step, scale):
        damping, growth = super().update_control(control[:2], accepted, ratio, step, scale)
        return damping, growth, control[2]


class LevenbergIdentityLM(jaxnls.LevenbergMarquardt):
    """Nielsen's λ on Levenberg's damping matrix I, λ0 = τ·max diag(J₀ᵀJ₀) with τ = ``initial_damping``."""

    def init_control(self, lin, scale, x):
        damping, growth = super().init_control(lin, scale, x)
        return damping * jnp.max(lin.diagonal()), growth

    def propose(self, lin, scale, control):
        return self.step_solver.solve(lin, control[0] * jnp.ones_like(scale)), control


def nist_runs(make_solver) -> tuple[int, list[str], np.ndarray]:
    """The 54 NIST runs with ``make_solver()`` (both starts of a problem in one batched solve, 1,000 steps): how many
    reach LRE >= 8 on every parameter, the runs lost (status, steps, LRE), and every run's step count."""
    solved, lost, steps = 0, [], []
    for problem in load_problems():
        sol = jaxnls.solve(
            problem.residual_fn,
            jnp.asarray(problem.starts),
            problem.args,
            solver=make_solver(),
            max_steps=1000,
            batched=True,
            args_axes=None,
        )
        for start in range(2):
            lre = float(np.min(problem.lre(np.asarray(sol.params[start]))))
            steps.append(int(sol.num_steps[start]))
            if lre >= LRE_TARGET:
                solved += 1
            else:
                status = jaxnls.Status(int(sol.status[start])).name
                lost.append(f"{problem.name} {start + 1} ({status}, {int(sol.num_steps[start])} steps, LRE {lre:.1f})")
    return solved, lost, np.asarray(steps)


def nist_row(solver_class, lam0: float) -> tuple[int, list[str], int]:
    solved, lost, steps = nist_runs(
        lambda: solver_class(rtol=1e-15, atol=1e-15, initial_damping=lam0, long_first_trial=False)
    )
    return solved, lost, int(steps.max())


def curvefit_row(lam0: float) -> str:
    _, y, p0 = curvefit.make_problems(1024)
    t = jnp.asarray(curvefit.T)
    tolerances = dict(rtol=curvefit.RTOL, atol=curvefit.ATOL)
    ours = curvefit.make_jaxnls(jaxnls.LevenbergMarquardt(**tolerances, long_first_trial=False))(
        jnp.asarray(p0), t, jnp.asarray(y)
    )
    theirs = curvefit.make_jaxnls(CeresDampingLM(**tolerances, initial_damping=lam0, long_first_trial=False))(
        jnp.asarray(p0), t, jnp.asarray(y)
    )
    ours_cost = curvefit.np_costs(np.asarray(ours.params), y)
    cost = curvefit.np_costs(np.asarray(theirs.params), y)
    margin = 1e-6 * ours_cost + 1e-12
    worse, better = int(np.sum(cost > ours_cost + margin)), int(np.sum(cost < ours_cost - margin))
    return f"curve fits, B = 1,024: {worse} worse / {better} better than our LM, at most {int(np.max(theirs.num_steps))} iterations"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lam0", type=float, nargs="+", default=[0.1], help="first dampings to measure")
    parser.add_argument("--ceres", action="store_true", help="Ceres' damping matrix instead of the running max")
    parser.add_argument("--curvefit", action="store_true", help="with --ceres: also the curve-fit batch")
    parser.add_argument("--levenberg", action="store_true", help="Levenberg's damping λ·I, λ0 = τ·max diag(JᵀJ)")
    args = parser.parse_args()
    if args.ceres and args.levenberg:
        parser.error("--ceres and --levenberg are two damping matrices: one at a time")
    solver_class = (
        CeresDampingLM if args.ceres else LevenbergIdentityLM if args.levenberg else jaxnls.LevenbergMarquardt
    )
    for lam0 in args.lam0:
        solved, lost, most = nist_row(solver_class, lam0)
        print(
            f"{solver_class.__name__}, λ0 = {lam0:g}: LRE >= 8 on {solved}/54, at most {most} steps; lost: "
            f"{', '.join(lost) or 'none'}",
            flush=True,
        )
        if args.ceres and args.curvefit:
            print("   ", curvefit_row(lam0), flush=True)


if __name__ == "__main__":
    main()
