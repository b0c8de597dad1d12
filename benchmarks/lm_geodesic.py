"""Geodesic acceleration (Transtrum & Sethna 2012) against MGH10's crawl: the 54 NIST StRD runs (issue 14, (aj)).

``LevenbergMarquardt(rtol=1e-15, atol=1e-15)`` without its long first trial (``long_first_trial=False``, the rule of
2026-12-02; the trial was added later, (as)) reaches LRE >= 8 on 53 of the 54 runs within 1,000 steps; from MGH10's
start 1 it follows a curved valley (b1 e^{b2/(x+b3)} ≈ y) for ~7,600 steps. Geodesic acceleration is the remedy the
literature gives for LM in narrow curved valleys: with the velocity v = -(JᵀJ + λD)⁻¹Jᵀr, the second directional
derivative r_vv = d²r(x + tv)/dt² at t = 0 (forward over forward mode here) gives the acceleration
a = -(JᵀJ + λD)⁻¹Jᵀr_vv, the trial is x + v + a/2, and it is rejected when 2‖a‖_D > α‖v‖_D.

It needs the residual function inside the step, which our strategies do not see, so this script is a model of our
loop rather than the library: Nielsen's λ rule from λ0 = 0.1, D the running maximum of diag(JᵀJ), acceptance at
ρ > 1e-3, and our measurement of the decrease near the minimum (the trapezoidal rule on the gradient when the model
promises less than √ε·cost). The model runs 1,000 steps (no stopping test) and reports the first step at which
every parameter agrees with the certified values to 8 digits. With ``plain`` it is our LM without the long first trial: the
count it prints is the library's then (53/54, MGH10 start 1 lost).

    python benchmarks/lm_geodesic.py plain
    python benchmarks/lm_geodesic.py geodesic --alpha 0.25 0.5 0.75 1 2
    python benchmarks/lm_geodesic.py geodesic --trace MGH10   # its start-1 iterates every 60 steps

Two more modes put the second-order term the Gauss-Newton model leaves out, S = Σ rᵢ∇²rᵢ (exact, from the Hessian of
the cost), into the damped system: ``newton`` always ((JᵀJ + S + λD)δ = -Jᵀr, a failed Cholesky factorisation of an
indefinite matrix counting as a rejected step), ``switch`` as NL2SOL chooses (Dennis, Gay & Welsch 1981): each step
uses whichever model, with or without S, predicted the previous trial's actual decrease more closely (the first step
Gauss-Newton). Along MGH10's valley the residuals are large (cost ~7.5e5 against 44 at the minimum), where S is the
model's dominant error, so these test whether curvature information lengthens the steps there (issue 14, (ao)).

    python benchmarks/lm_geodesic.py newton
    python benchmarks/lm_geodesic.py switch
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from nist import load_problems  # noqa: E402

STEPS = 1000
LRE_TARGET = 8.0
EPS = float(np.finfo(np.float64).eps)


MODES = ("plain", "geodesic", "newton", "switch")


def model_solve(residual_fn, args, mode: str, alpha: float, first_damping: float = 0.1):
    """A jitted ``x0 -> (iterates, accepted)`` of the model loop in one of ``MODES``, ``STEPS`` steps (module
    docstring)."""
    geodesic = mode == "geodesic"

    def residual(x):
        return residual_fn(x, args)

    def cost_of(x):
        r = residual(x)
        return 0.5 * r @ r

    def step(carry, _):
        x, damping, growth, scale, with_curvature = carry
        r = residual(x)
        jacobian = jax.jacfwd(residual)(x)
        gradient = jacobian.T @ r
        normal = jacobian.T @ jacobian
        scale = jnp.maximum(scale, jnp.diag(normal))
        hessian = jax.hessian(cost_of)(x) if mode in ("newton", "switch") else normal
        model = jnp.where(with_curvature, hessian, normal)
        lower = jnp.linalg.cholesky(model + damping * jnp.diag(scale))
        factored = jnp.all(jnp.isfinite(lower))
        factor = (jnp.where(factored, lower, jnp.eye(x.shape[0])), True)
        velocity = jnp.where(factored, -jax.scipy.linalg.cho_solve(factor, gradient), 0.0)
        if geodesic:
            second = jax.jvp(lambda y: jax.jvp(residual, (y,), (velocity,))[1], (x,), (velocity,))[1]
            acceleration = -jax.scipy.linalg.cho_solve(factor, jacobian.T @ second)
            d = jnp.sqrt(scale)
            small_enough = 2 * jnp.linalg.norm(d * acceleration) <= alpha * jnp.linalg.norm(d * velocity)
            trial_step = velocity + 0.5 * acceleration
        else:
            small_enough = jnp.asarray(True)
            trial_step = velocity
        trial = x + trial_step
        cost = 0.5 * r @ r
        trial_r = residual(trial)
        trial_cost = 0.5 * trial_r @ trial_r
        predicted = -(gradient @ trial_step + 0.5 * trial_step @ model @ trial_step)
        trial_gradient = jax.jacfwd(residual)(trial).T @ trial_r
        near = predicted <= jnp.sqrt(EPS) * cost
        actual = jnp.where(near, -0.5 * jnp.sum((gradient + trial_gradient) * trial_step), cost - trial_cost)
        consistent = factored & jnp.isfinite(trial_cost) & (~near | (cost - trial_cost >= -jnp.sqrt(EPS) * cost))
        ratio = jnp.where(consistent, actual / predicted, -jnp.inf)
        accepted = small_enough & consistent & (ratio > 1e-3)
        clipped = jnp.clip(jnp.nan_to_num(ratio, nan=0.0), 0.0, 1.0)
        damping = jnp.where(
            accepted, damping * jnp.maximum(1 / 3, 1 - (2 * clipped - 1) ** 3), jnp.maximum(damping * growth, EPS)
        )
        growth = jnp.where(accepted, 2.0, 2.0 * growth)
        x = jnp.where(accepted, trial, x)
        if mode == "switch":  # NL2SOL: the model that predicted this trial's decrease better takes the next step
            predictions = [-(gradient @ trial_step + 0.5 * trial_step @ m @ trial_step) for m in (normal, hessian)]
            closer = jnp.abs(predictions[1] - (cost - trial_cost)) < jnp.abs(predictions[0] - (cost - trial_cost))
            with_curvature = jnp.where(factored & jnp.isfinite(trial_cost), closer, with_curvature)
        return (x, damping, growth, scale, with_curvature), (x, accepted)

    @jax.jit
    def run(x0):
        carry = (x0, jnp.asarray(first_damping), jnp.asarray(2.0), jnp.zeros_like(x0), jnp.asarray(mode == "newton"))
        return jax.lax.scan(step, carry, None, length=STEPS)[1]

    return run


def count(mode: str, alpha: float) -> tuple[int, list[str], dict[str, int]]:
    reached, lost, hardest = 0, [], {}
    for problem in load_problems():
        run = model_solve(problem.residual_fn, problem.args, mode, alpha)
        for start_index, start in enumerate(problem.starts):
            iterates, _ = run(jnp.asarray(start))
            lre = np.array([problem.lre(x).min() for x in np.asarray(iterates)])
            hits = np.flatnonzero(lre >= LRE_TARGET)
            label = f"{problem.name} {start_index + 1}"
            if hits.size:
                reached += 1
                hardest[label] = int(hits[0]) + 1
            else:
                lost.append(f"{label} (LRE {lre[-1]:.1f})")
    return reached, lost, hardest


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=MODES)
    parser.add_argument("--alpha", type=float, nargs="+", default=[0.75], help="the acceleration ratio bound α")
    parser.add_argument("--trace", metavar="NAME", help="print one problem's start-1 iterates instead of counting")
    options = parser.parse_args()
    if options.trace:
        (problem,) = load_problems(only=[options.trace])
        run = model_solve(problem.residual_fn, problem.args, options.mode, options.alpha[0])
        iterates, accepted = run(jnp.asarray(problem.starts[0]))
        for k in range(0, STEPS, 60):
            x = np.asarray(iterates[k])
            cost = 0.5 * float(np.sum(np.asarray(problem.residual_fn(jnp.asarray(x), problem.args)) ** 2))
            print(
                f"step {k + 1:4d}  x = {np.array2string(x, precision=4)}  cost {cost:.6g}  accepted {bool(accepted[k])}"
            )
        return
    for alpha in options.alpha if options.mode == "geodesic" else [0.0]:
        reached, lost, hardest = count(options.mode, alpha)
        slowest = sorted(hardest.items(), key=lambda item: -item[1])[:3]
        where = f", α = {alpha:g}" if options.mode == "geodesic" else ""
        print(
            f"{options.mode}{where}: LRE >= {LRE_TARGET:g} within {STEPS} steps on {reached}/54; lost: "
            f"{', '.join(lost) or 'none'}; slowest reached: {', '.join(f'{k} at step {v}' for k, v in slowest)}"
        )


if __name__ == "__main__":
    main()
