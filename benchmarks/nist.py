"""(b) NIST StRD nonlinear regression: 27 problems x 2 starting points, accuracy and total wall time.

Every fit is timed as a user would run it: the first call for a model traces and compiles it (each
NIST problem has its own model function), so the total includes compilation. The model objects that
``jaxnls.io.read_nist`` returns hash by their text, so a problem's second start reuses the first
start's compilation, and so do problems that share a model and data size (Lanczos1-3, Gauss1-3).
The optimistix and scipy wrappers below are keyed by the same model objects, so every contestant gets
exactly the same caching.
"""

from __future__ import annotations

import functools
import glob
import os
import time
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from _common import compile_meter, fmt_s, format_table

import jaxnls
from jaxnls.io import log_relative_error, read_nist

DATA_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "data", "nist")
DIFFICULTIES = ("Lower", "Average", "Higher")
QUICK_PROBLEMS = ("Misra1a",)
TOL = 1e-15
MAX_STEPS = 1000
LRE_CAP = 15.0
GOOD_LRE = 8.0


def load_problems(only=None):
    paths = sorted(glob.glob(os.path.join(DATA_DIR, "*.dat")))
    problems = [read_nist(p) for p in paths]
    if only is not None:
        problems = [p for p in problems if p.name in only]
    order = {d: i for i, d in enumerate(DIFFICULTIES)}
    return sorted(problems, key=lambda p: (order[p.difficulty], p.name))


def min_lre(params, certified) -> float:
    """Smallest LRE over the parameters, capped at 15; below one agreeing digit (or non-finite) counts as 0."""
    lre = float(np.min(log_relative_error(np.asarray(params, dtype=np.float64), certified, cap=LRE_CAP)))
    return lre if lre >= 1.0 else 0.0


# --------------------------------------------------------------------------------------------------
# Contestants: fit(problem, start) -> (params, converged, iterations)


def _jaxnls_solver():
    """The settings of ``jaxnls solve`` and tests/test_nist.py: LM + QR, parameter test rtol=1e-10 alone."""
    from jaxnls.__main__ import make_solver

    return make_solver("lm")


_JAXNLS_SOLVER = _jaxnls_solver()


def fit_jaxnls(problem, start):
    sol = jaxnls.solve(
        problem.residual_fn, jnp.asarray(start), problem.args, solver=_JAXNLS_SOLVER, max_steps=MAX_STEPS
    )
    sol = jax.block_until_ready(sol)
    status = jaxnls.Status(int(sol.status))  # read on the host: no extra eager JAX ops (and compiles) in the timing
    return np.asarray(sol.params), status.converged, int(sol.num_steps), status.name


@eqx.filter_jit
def _optx_fit(fn, y0, args):
    import optimistix as optx

    solver = optx.LevenbergMarquardt(rtol=TOL, atol=TOL)
    sol = optx.least_squares(fn, solver, y0, args, max_steps=MAX_STEPS, throw=False)
    return sol.value, sol.result == optx.RESULTS.successful, sol.stats["num_steps"]


def fit_optimistix(problem, start):
    value, ok, steps = jax.block_until_ready(_optx_fit(problem.residual_fn, jnp.asarray(start), problem.args))
    return np.asarray(value), bool(ok), int(steps), "successful" if bool(ok) else "failed"


@functools.partial(jax.jit, static_argnums=0)
def _jax_residual(fn, p, x, y):
    return fn(p, (x, y))


@functools.partial(jax.jit, static_argnums=0)
def _jax_jacobian(fn, p, x, y):
    return jax.jacfwd(lambda q: fn(q, (x, y)))(p)


def fit_scipy(problem, start):
    from scipy.optimize import least_squares

    fn = problem.residual_fn
    x, y = jnp.asarray(problem.x), jnp.asarray(problem.y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = least_squares(
            lambda p: np.asarray(_jax_residual(fn, p, x, y)),
            np.asarray(start, dtype=np.float64),
            jac=lambda p: np.asarray(_jax_jacobian(fn, p, x, y)),
            method="lm",
            ftol=TOL,
            xtol=TOL,
            gtol=TOL,
            max_nfev=MAX_STEPS,
        )
    return r.x, bool(r.status > 0), int(r.nfev), f"status {r.status}"


CONTESTANTS = {
    "jaxnls LM+QR": fit_jaxnls,
    "optimistix LM": fit_optimistix,
    "scipy lm (jax jac)": fit_scipy,
}


def run(quick: bool = False, log=print) -> dict:
    problems = load_problems(QUICK_PROBLEMS if quick else None)
    meter = compile_meter()
    # Interleaved by problem (every solver fits problem k before any fits problem k+1), so that a shared
    # machine's drifting speed weighs on every solver alike.
    results = {
        name: {"fits": [], "total_wall_s": 0.0, "xla_compile_s": 0.0, "xla_compiles": 0, "trace_s": 0.0, "lower_s": 0.0}
        for name in CONTESTANTS
    }
    for problem in problems:
        for name, fit in CONTESTANTS.items():
            totals = results[name]
            for s in range(2):
                with meter:
                    t0 = time.perf_counter()
                    try:
                        params, converged, iters, status = fit(problem, problem.starts[s])
                    except Exception as err:  # a crash counts as a failed fit, but never stops the suite
                        params, converged, iters, status = np.full(problem.num_params, np.nan), False, -1, repr(err)
                    elapsed = time.perf_counter() - t0
                totals["total_wall_s"] += elapsed
                totals["xla_compile_s"] += meter.seconds["backend"]
                totals["xla_compiles"] += meter.count["backend"]
                totals["trace_s"] += meter.seconds["trace"]
                totals["lower_s"] += meter.seconds["lower"]
                rss = float(problem.rss(params)) if np.all(np.isfinite(params)) else float("nan")
                totals["fits"].append(
                    {
                        "problem": problem.name,
                        "difficulty": problem.difficulty,
                        "start": s + 1,
                        "min_lre": min_lre(params, problem.certified_values),
                        "rss_lre": float(log_relative_error(rss, problem.certified_rss, cap=LRE_CAP)),
                        "converged": converged,
                        "iterations": iters,
                        "status": status,
                        "time_s": elapsed,
                        "params": [float(v) for v in params],
                    }
                )
    for name, totals in results.items():
        good = sum(f["min_lre"] >= GOOD_LRE for f in totals["fits"])
        log(
            f"    {name:<20} {len(totals['fits'])} fits in {totals['total_wall_s']:6.1f} s (XLA compile "
            f"{totals['xla_compile_s']:5.1f} s, {totals['xla_compiles']} compiles)   LRE>=8: {good}/{len(totals['fits'])}"
        )
    return {"problems": [p.name for p in problems], "results": results, "quick": quick}


def summarize(result: dict) -> str:
    names = list(result["results"])
    lines = [
        f"(b) NIST StRD nonlinear regression: {len(result['problems'])} problems x 2 starts; "
        f"jaxnls = `jaxnls solve` settings (LM+QR, rtol=1e-10, atol=ftol=gtol=0), optimistix rtol=atol={TOL:g}, scipy ftol=xtol=gtol={TOL:g}; "
        f"max {MAX_STEPS} steps (scipy: max_nfev); LRE = min over parameters of -log10(|est-cert|/|cert|), "
        f"capped at {LRE_CAP:g}, 0 below 1 digit"
    ]
    # per problem: LRE start1/start2 for each contestant
    by = {n: {(f["problem"], f["start"]): f for f in result["results"][n]["fits"]} for n in names}
    headers = ["problem", "level"] + [f"{n} LRE s1/s2" for n in names]
    rows = []
    for p in result["problems"]:
        f1 = by[names[0]][(p, 1)]
        row = [p, f1["difficulty"]]
        for n in names:
            a, b = by[n][(p, 1)], by[n][(p, 2)]

            def cell(f):
                return f"{f['min_lre']:4.1f}" + ("" if f["converged"] else "*")

            row.append(f"{cell(a)} / {cell(b)}")
        rows.append(row)
    lines.append(format_table(headers, rows, "ll" + "r" * len(names)))
    lines.append("  (* = the solver itself did not report convergence)")
    lines.append("")
    # per difficulty and totals
    headers = ["level", "runs"]
    for n in names:
        headers += [f"{n}: LRE>=8", "mean LRE"]
    rows = []
    for level in DIFFICULTIES + ("ALL",):
        row = [level]
        count = None
        for n in names:
            fits = [f for f in result["results"][n]["fits"] if level == "ALL" or f["difficulty"] == level]
            count = len(fits)
            if not fits:
                break
            good = sum(f["min_lre"] >= GOOD_LRE for f in fits)
            mean = np.mean([f["min_lre"] for f in fits]) if fits else float("nan")
            row += [f"{good}/{count}", f"{mean:.1f}"]
        if count:
            rows.append(row[:1] + [str(count)] + row[1:])
    lines.append(format_table(headers, rows))
    lines.append("")
    headers = [
        "solver",
        "total wall s (all fits, incl. compile)",
        "XLA compile s",
        "#compiles",
        "trace s",
        "solver-reported converged",
        "LRE>=8",
        "max iters",
    ]
    rows = []
    for n in names:
        r = result["results"][n]
        fits = r["fits"]
        rows.append(
            [
                n,
                fmt_s(r["total_wall_s"]),
                fmt_s(r["xla_compile_s"]),
                str(r["xla_compiles"]),
                fmt_s(r["trace_s"]),
                f"{sum(f['converged'] for f in fits)}/{len(fits)}",
                f"{sum(f['min_lre'] >= GOOD_LRE for f in fits)}/{len(fits)}",
                str(max(f["iterations"] for f in fits)),
            ]
        )
    lines.append(format_table(headers, rows))
    lines.append(
        "  XLA compile s / trace s: sums of JAX's own compile-duration events during that solver's fits "
        "(jax.monitoring); scipy's are the jitted residual and jacfwd Jacobian it calls."
    )
    return "\n".join(lines)
