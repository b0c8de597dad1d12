"""NIST StRD nonlinear regression: jaxnls reaches the certified values (float64).

One solver configuration for every problem — the one ``jaxnls solve`` uses (``jaxnls.__main__``):
Levenberg-Marquardt on Householder QR, stopping on the parameter test alone (``rtol = 1e-10``,
``atol = ftol = gtol = 0``), at most 3000 steps. The two NIST starting points of a problem are solved
together in one ``batched=True`` call.

Accuracy is measured as NIST recommends, by the log relative error (LRE, the number of agreeing
significant digits) of each parameter; the target is LRE >= 8 for every parameter and for the residual
sum of squares. The certified values carry 11 significant digits, so ~10-11 is the most measurable.
Every lower- and average-difficulty run must reach it; the two higher-difficulty runs that do not are
listed in ``SHORTFALLS`` with the reason, and the test checks they stay honest about it.
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
AVERAGE = [
    "Kirby2",
    "Hahn1",
    "Nelson",
    "MGH17",
    "Lanczos1",
    "Lanczos2",
    "Gauss3",
    "Misra1c",
    "Misra1d",
    "Roszman1",
    "ENSO",
]
HIGHER = ["MGH09", "Thurber", "BoxBOD", "Rat42", "MGH10", "Eckerle4", "Rat43", "Bennett5"]

#: (problem, start) -> why LRE >= 8 is not reached (measured on x86-64 CPU). Only higher difficulty.
SHORTFALLS: dict[tuple[str, int], str] = {}

# Lanczos1's certified RSS, 1.43e-25, comes from residuals of ~8e-14 on data of size ~1: float64
# evaluation of y - f(x) carries ~1e-16 absolute rounding per residual, i.e. ~1e-3 relative, so the
# RSS can agree to about 3 digits and no more (measured: 2.8).
RSS_LRE_TARGET = {"Lanczos1": 2.5}


@functools.cache
def fit(name: str):
    """Both NIST starts of one problem in one batched solve: (problem, params (2, k), status (2,), steps (2,))."""
    problem = read_nist(NIST_DIR / f"{name}.dat")
    sol = jaxnls.solve(
        problem.residual_fn,
        jnp.asarray(problem.starts),
        problem.args,
        solver=make_solver("lm"),
        max_steps=MAX_STEPS,
        batched=True,
        args_axes=None,
    )
    return problem, np.asarray(sol.params), np.asarray(sol.status), np.asarray(sol.num_steps)


def test_x64_enabled():
    assert jnp.asarray(1.0).dtype == jnp.float64


# One test per problem (both starts), so that under pytest-xdist each problem is compiled once.
def _same_worker(names):
    """One xdist group per problem: its tests share the cached batched solve (``fit``) on one worker."""
    return [pytest.param(name, marks=pytest.mark.xdist_group(f"nist-{name}")) for name in names]


@pytest.mark.parametrize("name", _same_worker(LOWER + AVERAGE + HIGHER))
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
            # a wrong answer must not be dressed up: either not converged, or a stationary point
            problem_grad = np.asarray(
                jax.grad(lambda b: 0.5 * jnp.sum(problem.residual_fn(b, problem.args) ** 2))(
                    jnp.asarray(params[start - 1])
                )
            )
            if state.converged and np.max(np.abs(problem_grad)) > 1e-6 * max(rss, 1.0):
                failures.append(f"{where}: wrong answer reported as converged away from a stationary point: {detail}")
            continue
        if lre.min() < 8:
            failures.append(f"{where}: parameters below LRE 8: {detail}")
        if rss_lre < RSS_LRE_TARGET.get(name, 8.0):
            failures.append(f"{where}: RSS {rss:.10e} vs certified {problem.certified_rss:.10e}: {detail}")
        if not state.converged:
            failures.append(f"{where}: right answer but status {state.name}: {detail}")
    for note in notes:
        warnings.warn(note, stacklevel=2)
    assert not failures, "\n".join(failures)


#: NIST certifies standard deviations to ~10 digits; 6 are asked (issue 16). Lanczos1's residuals are at
#: float64 rounding level (RSS 1.4e-25), which leaves its residual variance, and so its deviations, to
#: rounding: not asked.
SD_LRE_TARGET = 6.0


@pytest.mark.parametrize("name", _same_worker([n for n in LOWER + AVERAGE + HIGHER if n != "Lanczos1"]))
def test_certified_standard_deviations(name):
    """jaxnls.covariance's standard errors against NIST's certified standard deviations: at the certified
    values, and at our own solve's answer from each start (the three batched in one call)."""
    problem, params, _, _ = fit(name)
    points = jnp.asarray(np.vstack([problem.certified_values, params]))
    covariances = jaxnls.covariance(problem.residual_fn, points, problem.args, batched=True, args_axes=None)
    for where, errors in zip(
        ("certified values", "our start-1 answer", "our start-2 answer"), covariances.standard_errors
    ):
        lre = log_relative_error(np.asarray(errors), problem.certified_std_devs)
        assert lre.min() >= SD_LRE_TARGET, f"{name} at {where}: LRE per standard deviation {np.round(lre, 2)}"
    assert int(covariances.rank[0]) == len(problem.certified_values)
    # s² = RSS/(m - n) against NIST's certified residual standard deviation (Rat43's file states 9 degrees of
    # freedom for its 15 observations and 4 parameters; its certified residual SD uses 11)
    assert float(covariances.residual_variance[0]) == pytest.approx(problem.certified_residual_sd**2, rel=1e-6)
