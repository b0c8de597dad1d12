"""False convergence claims on random curve fits: every CONVERGED_* status rechecked in float64 (issue 14, (ar)).

Four model families (two exponentials, a Gaussian peak on an offset, a rational function, a sine), 512 problems
each: parameters drawn in [0.2, 3], 40 samples on [0, 4], noise of 0, 0.05 or 0.5, starts e^N(0,1) off with a sign
flipped one time in ten. Each batch is solved in float64 and float32 with every strategy (200 steps). A claim is
false where, recomputed in float64 at the returned point, a CONVERGED_FUNCTION / GRADIENT point has a gradient
cosine cos∠(J_j, r) above 1e-3, or a CONVERGED_PARAMETER point a Newton step |g_j|/‖J_j‖² along some coordinate
above 1.5·(rtol·|x_j| + atol), each beyond the rounding level of the solve's dtype (eps·(m + (‖y‖ + ‖J|x|‖)/‖r‖)
on the cosine, as tests/test_convergence.py's NIST checks). Columns are scaled before squaring, so one whose
squares underflow is measured like any other.

    python benchmarks/false_claims.py            # seed 0
    python benchmarks/false_claims.py --seed 1 --show 3   # and three false claims of each solve, described
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

import jaxnls

jax.config.update("jax_enable_x64", True)

T = np.linspace(0.0, 4.0, 40)
BATCH = 512


def two_exponentials(p, args):
    t, y = args
    return p[0] * jnp.exp(-p[1] * t) + p[2] * jnp.exp(-p[3] * t) - y


def gaussian_peak(p, args):
    t, y = args
    return p[0] * jnp.exp(-0.5 * ((t - p[1]) / p[2]) ** 2) + p[3] - y


def rational(p, args):
    t, y = args
    return (p[0] + p[1] * t) / (1 + p[2] * t + p[3] * t**2) - y


def sine(p, args):
    t, y = args
    return p[0] * jnp.sin(p[1] * t + p[2]) + p[3] - y


MODELS = {"two exponentials": two_exponentials, "gaussian peak": gaussian_peak, "rational": rational, "sine": sine}
SOLVERS = (jaxnls.LevenbergMarquardt, jaxnls.IndirectLevenbergMarquardt, jaxnls.Dogleg, jaxnls.GaussNewton)


def false_claims(model, solver, start, y, dtype, show: int = 0) -> tuple[int, int]:
    """(false claims, claims) of one batch solve; ``show``: print that many of the false ones."""
    sol = jaxnls.solve(
        model,
        jnp.asarray(start, dtype),
        (jnp.asarray(T, dtype), jnp.asarray(y, dtype)),
        solver=solver,
        batched=True,
        args_axes=(None, 0),
        max_steps=200,
    )
    x = np.asarray(sol.params, np.float64)
    exact = jax.vmap(lambda p, data: (model(p, (T, data)), jax.jacfwd(model)(p, (T, data))))
    r, jac = (np.asarray(a) for a in exact(jnp.asarray(x), jnp.asarray(y)))
    gradient = np.einsum("bmn,bm->bn", jac, r)
    r_norm = np.linalg.norm(r, axis=1)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        column_scale = np.max(np.abs(jac), axis=1)
        unit = jac / np.where(column_scale > 0, column_scale, 1.0)[:, None, :]
        unit_norm = np.linalg.norm(unit, axis=1)
        cosine = np.where(gradient == 0, 0.0, np.abs(np.einsum("bmn,bm->bn", unit, r)) / (unit_norm * r_norm[:, None]))
        newton = np.where(gradient == 0, 0.0, np.abs(gradient) / (column_scale * unit_norm) ** 2)
        x_norm = np.linalg.norm(column_scale * unit_norm * np.abs(x), axis=1)
        floor = float(jnp.finfo(dtype).eps) * (r.shape[1] + (np.linalg.norm(y, axis=1) + x_norm) / r_norm)
        newton_bound = 1.5 * (solver.rtol * np.abs(x) + solver.atol) + (floor * r_norm)[:, None] / (
            column_scale * unit_norm
        )
    status = np.asarray(sol.status)
    parameter = status == jaxnls.Status.CONVERGED_PARAMETER
    stationary = np.where(
        parameter, np.all(newton <= newton_bound, axis=1), np.all(cosine <= 1e-3 + floor[:, None], axis=1)
    )
    holds = (r_norm == 0) | stationary  # (r = 0 in float64 at the returned point: every claim holds)
    claimed = np.asarray(sol.converged)
    for i in np.flatnonzero(claimed & ~holds)[:show]:
        print(
            f"    {type(solver).__name__} problem {i}: {jaxnls.Status(int(status[i])).name}, cost {float(sol.cost[i]):.4g}"
            f", x = {np.array2string(x[i], precision=4)}, cos = {np.array2string(cosine[i], precision=2)}, Newton "
            f"step / bound = {np.array2string(newton[i] / newton_bound[i], precision=2)}"
        )
    return int(np.sum(claimed & ~holds)), int(np.sum(claimed))


def families(seed: int):
    """(name, model, starts (BATCH, 4), data (BATCH, 40)) of each family, drawn as the module docstring says."""
    rng = np.random.default_rng(seed)
    for name, model in MODELS.items():
        truth = rng.uniform(0.2, 3.0, size=(BATCH, 4))
        y = np.asarray(jax.vmap(lambda p: model(p, (T, jnp.zeros_like(T))))(jnp.asarray(truth)))
        y = y + 0.05 * rng.standard_normal(y.shape) * rng.choice([0.0, 1.0, 10.0], size=(BATCH, 1))
        start = truth * np.exp(rng.normal(0, 1.0, size=truth.shape))
        start = start * rng.choice([1, -1], size=truth.shape, p=[0.9, 0.1])
        yield name, model, start, y


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--show", type=int, default=0, help="print this many false claims of each solve")
    options = parser.parse_args()
    seed = options.seed
    print(f"false claims / claims, {BATCH} problems per family, seed {seed} (jaxnls from {jaxnls.__file__})")
    for name, model, start, y in families(seed):
        for dtype in (jnp.float64, jnp.float32):
            cells = []
            for solver_class in SOLVERS:
                bad, claims = false_claims(model, solver_class(), start, y, dtype, options.show)
                cells.append(f"{solver_class.__name__} {bad}/{claims}")
            print(f"{name:17s} {jnp.dtype(dtype).name}: " + ", ".join(cells), flush=True)


if __name__ == "__main__":
    main()
