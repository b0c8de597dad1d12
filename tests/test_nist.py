"""NIST StRD nonlinear regression: jaxnls reaches the certified values (float64).

One solver configuration for every problem — the one ``jaxnls solve`` uses (``jaxnls.__main__``):
Levenberg-Marquardt on Householder QR, ``rtol = gtol = machine epsilon``, ``atol = 0``, at most 3000
steps. The two NIST starting points of a problem are solved together in one ``batched=True`` call.

Accuracy is measured as NIST recommends, by the log relative error (LRE, the number of agreeing
significant digits) of each parameter; the target is LRE >= 8 for every parameter. The certified
values carry 11 significant digits, so ~10-11 is the most that can be measured.

Known shortfalls are listed in ``SHORTFALLS`` with the measured value and the reason; for the
lower/average ones the test checks that they stay near misses (LRE >= 6, RSS LRE >= 8). There is one
test per problem (both starts), so that under pytest-xdist each problem is compiled once. The
cost-resolution shortfalls share one cause: the loop accepts a step only when the cost measurably
decreases, and stops when the relative cost change reaches rounding. Near the minimum the cost excess
is quadratic in the parameter error, so a cost-based loop cannot resolve the parameters beyond about
``sigma_i * sqrt(eps * dof)`` (sigma_i the certified standard deviation, dof the degrees of freedom)
— e.g. ENSO's b8 has sigma/|b8| = 2.4 and dof = 159, a limit of ~4e-7 relative, LRE ~6.5. Where the
residuals are small beside the data (Lanczos: residuals ~3e-5 on data ~1; Thurber: ~13 on ~1000) the
cost's rounding is ~eps*|f|/|r| relative rather than eps, and the limit is correspondingly worse. Undamped
Gauss-Newton steps taken without a cost test do reach LRE >= 8 from the same end points (the test
checks this), so the digits are in the gradient; the cost-based acceptance cannot see them.
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxnls
from jaxnls.__main__ import MAX_STEPS, make_solver
from jaxnls.io import log_relative_error, read_nist

NIST_DIR = Path(__file__).parent / "data" / "nist"

LOWER = ["Misra1a", "Chwirut2", "Chwirut1", "Lanczos3", "Gauss1", "Gauss2", "DanWood", "Misra1b"]
AVERAGE = ["Kirby2", "Hahn1", "Nelson", "MGH17", "Lanczos1", "Lanczos2", "Gauss3", "Misra1c", "Misra1d",
           "Roszman1", "ENSO"]
HIGHER = ["MGH09", "Thurber", "BoxBOD", "Rat42", "MGH10", "Eckerle4", "Rat43", "Bennett5"]

_COST_LIMIT = ("stops at the float64 resolution of the cost: LRE {lre} (limit ~sigma*sqrt(eps*dof), see the "
               "module docstring)")

#: (problem, start) -> why LRE >= 8 is not reached, with the value measured on x86-64 CPU.
SHORTFALLS = {
    ("ENSO", 1): _COST_LIMIT.format(lre="6.8 on b8 (sigma/|b8| = 2.4)"),
    ("ENSO", 2): _COST_LIMIT.format(lre="6.8 on b8 (sigma/|b8| = 2.4)"),
    ("Lanczos2", 2): _COST_LIMIT.format(lre="7.98"),
    ("Lanczos3", 2): _COST_LIMIT.format(lre="6.8") + "; Lanczos residuals (~3e-5) are ~1e-5 of the data, so "
                     "the cost carries ~1e-11 relative rounding, far above eps",
    ("MGH09", 1): _COST_LIMIT.format(lre="7.8 on b2 (sigma/|b2| = 1.03)"),
    ("Thurber", 1): _COST_LIMIT.format(lre="7.9 on b7"),
    ("BoxBOD", 1): "converges (CONVERGED_FUNCTION) to the plateau b2 ≈ 115, where exp(-b2*x) ≈ 0 and "
                   "b1 = mean(y): RSS 9771.5 vs certified 1168.0",
    ("MGH10", 1): "MAX_STEPS: from b = (2, 4e5, 2.5e4) the iterates drift to b1 -> 0 with exp(b2/(x+b3)) huge "
                  "(gradient ~1e47) and never enter the basin of the certified minimum",
}

#: (problem, start) whose solve does not end with a converged status although the answer is right.
STATUS_SHORTFALLS = {
    ("Lanczos1", 1): "STALLED at LRE 10.5: zero-residual problem (cost ~1e-26); the rejected-step "
                     "convergence guard compares the steepest-descent gain (gradient rounding noise, ~1e-32) "
                     "with rtol*cost (~1e-42) and never passes",
    ("Lanczos1", 2): "same as start 1",
}

# Lanczos1's certified RSS, 1.43e-25, comes from residuals of ~8e-14 on data of size ~1: float64
# evaluation of y - f(x) carries ~1e-16 absolute rounding per residual, i.e. ~1e-3 relative, so the
# RSS can agree to about 3 digits and no more (measured: 2.8).
RSS_LRE_TARGET = {"Lanczos1": 2.5}


@functools.lru_cache(maxsize=None)
def fit(name: str):
    """Both NIST starts of one problem in one batched solve: (problem, params (2, k), status (2,), steps (2,))."""
    problem = read_nist(NIST_DIR / f"{name}.dat")
    sol = jaxnls.solve(problem.residual_fn, jnp.asarray(problem.starts), problem.args, solver=make_solver("lm"),
                       max_steps=MAX_STEPS, batched=True, args_axes=None)
    return problem, np.asarray(sol.params), np.asarray(sol.status), np.asarray(sol.num_steps)


def _gauss_newton_polish(problem, params, iterations=20):
    """Undamped Gauss-Newton steps (least squares on J, no cost test), outside jaxnls' loop."""

    @jax.jit
    def step(b, args):
        r, jac = problem.residual_fn(b, args), jax.jacfwd(problem.residual_fn)(b, args)
        return b + jnp.linalg.lstsq(jac, -r)[0]

    x = jnp.asarray(params)
    for _ in range(iterations):
        x = step(x, problem.args)
    return np.asarray(x)


def test_x64_enabled():
    assert jnp.asarray(1.0).dtype == jnp.float64


# One test per problem (both starts), so that under pytest-xdist each problem is compiled once.
@pytest.mark.parametrize("name", LOWER + AVERAGE + HIGHER)
def test_certified_values(name):
    problem, params, status, steps = fit(name)
    failures, notes = [], []
    for start in (1, 2):
        key = (name, start)
        where = f"{name} start {start}"
        lre = problem.lre(params[start - 1])
        rss = float(problem.rss(params[start - 1]))
        rss_lre = float(log_relative_error(rss, problem.certified_rss))
        state = jaxnls.Status(int(status[start - 1]))
        detail = f"LRE per parameter {np.round(lre, 2)}, RSS LRE {rss_lre:.2f}, {state.name}, {steps[start - 1]} steps"
        if key in SHORTFALLS:
            if lre.min() >= 8:
                notes.append(f"{where} now reaches LRE >= 8 ({detail}): remove it from SHORTFALLS")
            if name in HIGHER:
                continue  # reported, not tested
            # Lower/average shortfalls: the right minimum, a couple of digits short ...
            if lre.min() < 6 or rss_lre < 8:
                failures.append(f"{where}: known shortfall got worse: {detail}")
            # ... and the digits are there to be had: Gauss-Newton steps from the same point reach 8.
            polished = problem.lre(_gauss_newton_polish(problem, params[start - 1]))
            if polished.min() < 8:
                failures.append(f"{where}: Gauss-Newton polish reaches only LRE {polished.min():.2f}")
            continue
        if lre.min() < 8:
            failures.append(f"{where}: parameters below LRE 8: {detail}")
        if rss_lre < RSS_LRE_TARGET.get(name, 8.0):
            failures.append(f"{where}: RSS {rss:.10e} vs certified {problem.certified_rss:.10e}: {detail}")
        if not state.converged and key not in STATUS_SHORTFALLS:
            failures.append(f"{where}: right answer but status {state.name}: {detail}")
    for note in notes:
        warnings.warn(note)
    assert not failures, "\n".join(failures)
