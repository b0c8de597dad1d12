"""(a) Batched curve fit: y = a·exp(-b t) + c·sin(d t), 100 points, 4 parameters, B independent problems.

Every contestant gets the same data and starts, rtol = atol = 1e-8 (or the closest equivalent) and an
iteration limit of 256. Final costs are recomputed here, in NumPy float64, from each contestant's
returned parameters with one common formula, so "cost" means the same thing in every row.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from _common import Timing, aot_compile_time, fmt_s, format_table, time_calls

import jaxnls

NUM_POINTS = 100
T = np.linspace(0.0, 10.0, NUM_POINTS)
LOW = np.array([1.0, 0.1, 0.5, 0.8])
HIGH = np.array([3.0, 0.5, 1.5, 1.6])
NOISE = 0.01
RTOL = ATOL = 1e-8
MAX_STEPS = 256
SCIPY_SUBSET = 1024
SEED = 20240601
WHOLE_BATCH_ROW = "jaxnls LM, working_set=None"

_STATUS_ABBREV = {
    jaxnls.Status.CONVERGED_FUNCTION: "F",
    jaxnls.Status.CONVERGED_PARAMETER: "P",
    jaxnls.Status.CONVERGED_GRADIENT: "G",
    jaxnls.Status.MAX_STEPS: "MAX",
    jaxnls.Status.NONFINITE_START: "NFS",
    jaxnls.Status.NONFINITE_RESIDUAL: "NFR",
    jaxnls.Status.STALLED: "STALL",
    jaxnls.Status.RUNNING: "RUN",
}


# --------------------------------------------------------------------------------------------------
# Problem


def model(p, t):
    return p[0] * jnp.exp(-p[1] * t) + p[2] * jnp.sin(p[3] * t)


def residual(p, args):
    """jaxnls / optimistix signature: ``residual(params, (t, y))``."""
    t, y = args
    return model(p, t) - y


def make_problems(batch: int, seed: int = SEED):
    rng = np.random.default_rng(seed + batch)
    truth = LOW + (HIGH - LOW) * rng.random((batch, 4))
    clean = truth[:, 0:1] * np.exp(-truth[:, 1:2] * T) + truth[:, 2:3] * np.sin(truth[:, 3:4] * T)
    y = clean + NOISE * rng.standard_normal((batch, NUM_POINTS))
    p0 = truth * (1.0 + 0.1 * rng.standard_normal((batch, 4)))
    return truth, y, p0


def np_costs(params: np.ndarray, y: np.ndarray) -> np.ndarray:
    """0.5·Σr² per problem, NumPy float64 (the common yardstick for every contestant)."""
    p = np.asarray(params, dtype=np.float64)
    pred = p[:, 0:1] * np.exp(-p[:, 1:2] * T) + p[:, 2:3] * np.sin(p[:, 3:4] * T)
    r = pred - y
    return 0.5 * np.sum(r * r, axis=1)


# --------------------------------------------------------------------------------------------------
# Contestants. Each `make_*` returns a function (p0, t, y) -> outputs, built around a given residual so
# that a fresh closure can be compiled ahead of time without touching the caches of the timed calls.


def make_jaxnls(solver, res=residual, working_set="auto"):
    def run(p0, t, y):
        return jaxnls.solve(
            res,
            p0,
            (t, y),
            solver=solver,
            max_steps=MAX_STEPS,
            batched=True,
            args_axes=(None, 0),
            working_set=working_set,
        )

    return run


def make_optimistix(res=residual):
    import optimistix as optx

    solver = optx.LevenbergMarquardt(rtol=RTOL, atol=ATOL)

    def run(p0, t, y):
        def one(p, yy):
            sol = optx.least_squares(res, solver, p, (t, yy), max_steps=MAX_STEPS, throw=False)
            return sol.value, sol.result == optx.RESULTS.successful, sol.stats["num_steps"]

        return jax.vmap(one)(p0, y)

    return run


def make_jaxopt(res=residual):
    import jaxopt

    lm = jaxopt.LevenbergMarquardt(
        residual_fun=lambda p, t, yy: res(p, (t, yy)),
        tol=RTOL,  # stop_criterion='grad-l2-norm' (default): ||J^T r||_2 <= tol
        maxiter=MAX_STEPS,
        solver="cholesky",  # dense normal equations, as jaxnls' default (jaxopt's default is matrix-free CG)
        materialize_jac=True,
        implicit_diff=False,
        jit=True,
    )

    def run(p0, t, y):
        def one(p, yy):
            out = lm.run(p, t, yy)
            return out.params, out.state.error <= RTOL, out.state.iter_num

        return jax.vmap(one)(p0, y)

    return run


def _scipy_fun(p, t, y):
    return p[0] * np.exp(-p[1] * t) + p[2] * np.sin(p[3] * t) - y


def _scipy_jac(p, t, y):
    e = np.exp(-p[1] * t)
    J = np.empty((t.size, 4))
    J[:, 0] = e
    J[:, 1] = -p[0] * t * e
    J[:, 2] = np.sin(p[3] * t)
    J[:, 3] = p[2] * t * np.cos(p[3] * t)
    return J


def run_scipy(p0: np.ndarray, y: np.ndarray):
    from scipy.optimize import least_squares

    params = np.empty_like(p0)
    converged = np.empty(p0.shape[0], bool)
    nfev = np.empty(p0.shape[0], int)
    for i in range(p0.shape[0]):
        r = least_squares(
            _scipy_fun,
            p0[i],
            jac=_scipy_jac,
            args=(T, y[i]),
            method="lm",
            ftol=RTOL,
            xtol=RTOL,
            gtol=RTOL,
            max_nfev=MAX_STEPS,
        )
        params[i], converged[i], nfev[i] = r.x, r.status > 0, r.nfev
    return params, converged, nfev


# --------------------------------------------------------------------------------------------------
# Driver


def _residual_jacobian_time(batch, t, y, p0, repeats=30):
    """Median wall time of ONE batched residual + Jacobian evaluation (jit ∘ vmap ∘ jacfwd, has_aux)."""

    def rj(p, t, yy):
        def with_aux(q):
            r = residual(q, (t, yy))
            return r, r

        jac, r = jax.jacfwd(with_aux, has_aux=True)(p)
        return r, jac

    f = jax.jit(jax.vmap(rj, in_axes=(0, None, 0)))
    timing, _ = time_calls(lambda: f(p0, t, y), repeats)
    return timing.median


def run_size(batch: int, repeats: int, log=print) -> dict:
    _truth, y_np, p0_np = make_problems(batch)
    t, y, p0 = jnp.asarray(T), jnp.asarray(y_np), jnp.asarray(p0_np)
    rows = {}

    def record(name, timing: Timing, aot, params, converged, iters, status=None, subset=None, scale=1.0, extra=None):
        idx = np.arange(batch) if subset is None else subset
        costs = np_costs(params, y_np[idx])
        rows[name] = {
            "batch": batch,
            "timing": timing.as_dict(),
            "steady_s": timing.median * scale,
            "overhead_s": timing.overhead,
            "aot": aot,
            "costs": costs,
            "subset": idx if subset is not None else None,
            "scale": scale,
            "converged_frac": None if converged is None else float(np.mean(converged)),
            "max_iters": int(np.max(iters)),
            "median_iters": float(np.median(iters)),
            "total_iters": int(np.sum(iters)),
            "status": status,
            **(extra or {}),
        }
        log(
            f"    {name:<28} steady {fmt_s(timing.median * scale):>8} s   first call {fmt_s(timing.first):>8} s   "
            f"max iters {int(np.max(iters))}"
        )

    # jaxnls: the user-facing call (jaxnls.solve has its own filter_jit), four strategies with the default
    # working set, and LM advancing the whole batch every iteration (working_set=None)
    for label, solver, working_set in [
        ("jaxnls LevenbergMarquardt", jaxnls.LevenbergMarquardt(rtol=RTOL, atol=ATOL), "auto"),
        ("jaxnls GaussNewton", jaxnls.GaussNewton(rtol=RTOL, atol=ATOL), "auto"),
        ("jaxnls Dogleg", jaxnls.Dogleg(rtol=RTOL, atol=ATOL), "auto"),
        ("jaxnls IndirectLM", jaxnls.IndirectLevenbergMarquardt(rtol=RTOL, atol=ATOL), "auto"),
        (WHOLE_BATCH_ROW, jaxnls.LevenbergMarquardt(rtol=RTOL, atol=ATOL), None),
    ]:
        run = make_jaxnls(solver, working_set=working_set)
        timing, sol = time_calls(lambda: run(p0, t, y), repeats)
        aot = aot_compile_time(make_jaxnls(solver, res=lambda p, a: residual(p, a), working_set=working_set), p0, t, y)
        status = np.asarray(sol.status)
        codes, counts = np.unique(status, return_counts=True)
        status_text = " ".join(f"{_STATUS_ABBREV[jaxnls.Status(int(c))]}:{n}" for c, n in zip(codes, counts))
        record(
            label,
            timing,
            aot,
            np.asarray(sol.params),
            np.asarray(sol.converged),
            np.asarray(sol.num_steps),
            status_text,
            extra={
                "reported_cost_max_abs_diff": float(
                    np.max(np.abs(np.asarray(sol.cost) - np_costs(np.asarray(sol.params), y_np)))
                )
            },
        )

    # optimistix LM under jax.vmap inside jax.jit
    run = jax.jit(make_optimistix())
    timing, (params, ok, steps) = time_calls(lambda: run(p0, t, y), repeats)
    aot = aot_compile_time(make_optimistix(res=lambda p, a: residual(p, a)), p0, t, y)
    record(
        "optimistix LM (vmap)", timing, aot, np.asarray(params), np.asarray(ok), np.asarray(steps), "result==successful"
    )

    # jaxopt LM under jax.vmap inside jax.jit
    run = jax.jit(make_jaxopt())
    timing, (params, ok, steps) = time_calls(lambda: run(p0, t, y), repeats)
    aot = aot_compile_time(make_jaxopt(res=lambda p, a: residual(p, a)), p0, t, y)
    record("jaxopt LM (vmap)", timing, aot, np.asarray(params), np.asarray(ok), np.asarray(steps), "||J^T r||_2<=1e-8")

    # scipy MINPACK lm in a Python loop (subset above SCIPY_SUBSET problems, time scaled linearly)
    if batch > SCIPY_SUBSET:
        subset = np.sort(np.random.default_rng(SEED).choice(batch, SCIPY_SUBSET, replace=False))
        scale = batch / SCIPY_SUBSET
        label = f"scipy lm loop [{SCIPY_SUBSET} of {batch}, x{scale:g}]"
    else:
        subset, scale, label = None, 1.0, "scipy lm (Python loop)"
    idx = np.arange(batch) if subset is None else subset
    p0_sub, y_sub = p0_np[idx], y_np[idx]
    timing, (params, ok, nfev) = time_calls(lambda: run_scipy(p0_sub, y_sub), repeats)
    record(label, timing, None, params, ok, nfev, "status>0 (nfev)", subset=subset, scale=scale)

    rj = _residual_jacobian_time(batch, t, y, p0)
    log(f"    one batched residual+Jacobian evaluation: {rj * 1e3:.3f} ms")
    return {"batch": batch, "rows": rows, "rj_eval_s": rj}


def summarize(result: dict) -> tuple[str, dict]:
    """The printed table for one batch size and a JSON-friendly copy of the numbers."""
    batch = result["batch"]
    rows = result["rows"]
    ref_name = "jaxnls LevenbergMarquardt"
    ref = rows[ref_name]
    headers = [
        "solver",
        "steady s",
        "spread %",
        "1st-call ovh s",
        "lower+compile s",
        "x LM time",
        "mean cost",
        "max cost",
        "worse/better",
        "conv %",
        "max it",
        "med it",
        "status",
    ]
    table, out = [], {}
    for name, r in rows.items():
        idx = r["subset"] if r["subset"] is not None else np.arange(batch)
        ref_costs = ref["costs"][idx]
        tol = 1e-6 * ref_costs + 1e-12
        worse = int(np.sum(r["costs"] > ref_costs + tol))
        better = int(np.sum(r["costs"] < ref_costs - tol))
        ratio = r["steady_s"] / ref["steady_s"]
        aot = r["aot"]["lower_compile_s"] if r["aot"] else None
        steady = r["timing"]["steady_times_s"]
        spread = 100 * (max(steady) - min(steady)) / r["timing"]["steady_median_s"]
        conv = "-" if r["converged_frac"] is None else f"{100 * r['converged_frac']:.1f}"
        table.append(
            [
                name,
                fmt_s(r["steady_s"]),
                f"{spread:.0f}",
                fmt_s(r["overhead_s"]),
                fmt_s(aot),
                f"{ratio:.2f}",
                f"{np.mean(r['costs']):.4e}",
                f"{np.max(r['costs']):.4e}",
                "-" if name == ref_name else f"{worse}/{better}",
                conv,
                str(r["max_iters"]),
                f"{r['median_iters']:g}",
                r["status"] or "",
            ]
        )
        out[name] = {k: v for k, v in r.items() if k not in ("costs", "subset")}
        out[name].update(
            mean_cost=float(np.mean(r["costs"])),
            max_cost=float(np.max(r["costs"])),
            worse_than_lm=worse,
            better_than_lm=better,
            time_ratio_vs_lm=ratio,
            subset_size=None if r["subset"] is None else len(r["subset"]),
        )
    text = [
        f"(a) batched curve fit  y = a*exp(-b t) + c*sin(d t),  B = {batch:,},  {NUM_POINTS} points, 4 params, "
        f"rtol=atol={RTOL:g}, max 256 steps",
        format_table(headers, table, "l" + "r" * 11 + "l"),
    ]
    text.append("")
    text.append(
        f"  one batched residual+Jacobian evaluation (jit(vmap(jacfwd(has_aux)))): {result['rj_eval_s'] * 1e3:.3f} ms"
    )
    per_iter = {}
    for name in (
        "jaxnls LevenbergMarquardt",
        "jaxnls GaussNewton",
        "jaxnls Dogleg",
        "jaxnls IndirectLM",
        WHOLE_BATCH_ROW,
    ):
        r = rows[name]
        useful = r["total_iters"] / batch  # problem-iterations, in units of one whole-batch iteration
        per_useful = r["steady_s"] / max(useful, 1e-12)
        per_iter[name] = {
            "time_per_useful_iteration_s": per_useful,
            "useful_ratio_to_rj_eval": per_useful / result["rj_eval_s"],
        }
        text.append(
            f"  {name:<27} steady / (sum num_steps / B) = {per_useful * 1e3:8.3f} ms = "
            f"{per_useful / result['rj_eval_s']:5.2f} x one r+J evaluation (cost per iteration of useful work)"
        )
    r = rows[WHOLE_BATCH_ROW]
    it = r["steady_s"] / max(r["max_iters"], 1)
    ratio = it / result["rj_eval_s"]
    per_iter[WHOLE_BATCH_ROW].update(time_per_iteration_s=it, ratio_to_rj_eval=ratio)
    flag = "ok (<= 1.5x)" if ratio <= 1.5 else "ABOVE TARGET 1.5x"
    text.append(
        f"  {WHOLE_BATCH_ROW:<27} time/iteration = steady / max num_steps = {it * 1e3:8.3f} ms = "
        f"{ratio:5.2f} x one r+J evaluation   {flag}"
    )
    out["_per_iteration"] = per_iter
    out["_rj_eval_s"] = result["rj_eval_s"]
    return "\n".join(text), out


NOTES = """\
  Notes: steady s = median of the timed calls after the first (warm-up) call; spread % = (max - min) /
  median of those calls (large = noisy machine); 1st-call ovh = first call minus steady median (tracing +
  compilation as a user sees it); lower+compile = jax.jit(fresh closure).lower(...).compile(), timed
  separately. x LM time = steady time / jaxnls LM steady time (>1: slower than jaxnls LM). Costs
  0.5*sum r^2 are recomputed in NumPy from the returned parameters. worse/better = number of problems whose
  final cost is above/below jaxnls LM's by more than 1e-6 relative. conv % = share of problems the solver
  itself reports converged (jaxnls: status F/P/G; optimistix: RESULTS.successful; jaxopt: gradient l2 norm
  <= 1e-8; scipy: status > 0). Iterations: jaxnls/optimistix num_steps, jaxopt iter_num, scipy nfev. The
  optimistix, jaxopt and "working_set=None" rows advance the whole batch in one compiled loop until its
  slowest problem stops, so their time follows max it; the default jaxnls rows (working_set="auto", here
  max(64, B//64) slots on a CPU) advance a refilled working set, so their time follows the sum of the
  problems' iterations. lower+compile is measured inside a caller's jax.jit (XLA's default emitters);
  1st-call ovh is jaxnls.solve called directly (its own jit, classic XLA:CPU emitters). scipy rows use an analytic NumPy Jacobian; above 1,024 problems scipy is
  timed on a fixed random subset of 1,024 and its time multiplied by B/1024 (costs, conv % and iterations
  are then over the subset)."""
