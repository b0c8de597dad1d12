"""(c) Backward pass of each adjoint on the batched curve fit: time and compiled memory.

For ``max_steps`` in (10, 50, 200) and each adjoint, ``jax.jit(jax.grad(loss))`` of an outer loss of the
solution of B curve fits (gradient w.r.t. the data) is compiled and timed. **backward s** = median time of
the pullback alone (``jax.vjp``'s pullback, holding the forward residuals, applied to the cotangent in its own
jit); **grad s** = the whole ``jax.grad`` call (forward + backward); **temp MiB** = XLA's temporary buffer
size of the compiled gradient (``compile().memory_analysis().temp_size_in_bytes``), the memory the
backward pass needs beyond inputs and outputs. **one iteration** = time of one whole-batch solver
iteration (forward loss with Unroll at 10 vs 50 steps, per step), the yardstick of the issue's target
"implicit backward time <= 2 forward iterations".
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from _common import fmt_s, format_table, time_calls
from curvefit import T, make_problems, residual

import jaxnls

STEPS = (10, 50, 200)


def _adjoints():
    return [
        ("Implicit (exact Hessian)", jaxnls.Implicit()),
        ("Implicit (Gauss-Newton)", jaxnls.Implicit(hessian="gauss_newton")),
        ("Unroll (checkpointed)", jaxnls.Unroll()),
        ("Truncated(5)", jaxnls.Truncated(5)),
        ("DirectLossMinimization(1e-4)", jaxnls.DirectLossMinimization(1e-4)),
    ]


def run(batch: int, repeats: int) -> dict:
    _, y, p0 = make_problems(batch)
    t, y, p0 = jnp.asarray(T), jnp.asarray(y), jnp.asarray(p0)
    solver = jaxnls.LevenbergMarquardt(rtol=1e-8, atol=1e-8)
    rows = []
    for steps in STEPS:
        for name, adjoint in _adjoints():

            def loss(y, adjoint=adjoint, steps=steps):
                sol = jaxnls.solve(
                    residual,
                    p0,
                    (t, y),
                    solver=solver,
                    max_steps=steps,
                    batched=True,
                    args_axes=(None, 0),
                    adjoint=adjoint,
                )
                return jnp.sum(sol.params**2)

            forward, grad = jax.jit(loss), jax.jit(jax.grad(loss))
            forward_timing, _ = time_calls(lambda: forward(y), repeats)
            grad_timing, g = time_calls(lambda: grad(y), repeats)
            # the backward pass alone: the pullback (a pytree holding the forward pass's residuals) applied
            # to the cotangent, compiled on its own
            _, pullback = jax.jit(lambda y: jax.vjp(loss, y))(y)
            apply = jax.jit(lambda pullback, cotangent: pullback(cotangent))
            cotangent = jnp.ones((), y.dtype)
            backward_timing, _ = time_calls(lambda: apply(pullback, cotangent), repeats)
            memory = jax.jit(jax.grad(loss)).lower(y).compile().memory_analysis()
            temp = None if memory is None else memory.temp_size_in_bytes / 2**20
            rows.append(
                {
                    "steps": steps,
                    "adjoint": name,
                    "forward_s": forward_timing.median,
                    "grad_s": grad_timing.median,
                    "backward_s": backward_timing.median,
                    "temp_mib": temp,
                    "finite": bool(np.all(np.isfinite(np.asarray(g)))),
                }
            )
            print(
                f"    steps {steps:>3}  {name:<30} forward {fmt_s(forward_timing.median):>8} s   "
                f"grad {fmt_s(grad_timing.median):>8} s   temp {temp if temp is None else round(temp, 1)} MiB",
                flush=True,
            )
    unrolled = {r["steps"]: r["forward_s"] for r in rows if r["adjoint"].startswith("Unroll")}
    iteration = (unrolled[50] - unrolled[10]) / 40
    return {"batch": batch, "rows": rows, "iteration_s": iteration}


def summarize(result: dict) -> str:
    headers = [
        "max_steps",
        "adjoint",
        "forward s",
        "grad s",
        "backward s",
        "backward / iteration",
        "temp MiB",
        "finite",
    ]
    table = [
        [
            str(r["steps"]),
            r["adjoint"],
            fmt_s(r["forward_s"]),
            fmt_s(r["grad_s"]),
            fmt_s(r["backward_s"]),
            f"{r['backward_s'] / result['iteration_s']:.1f}",
            "-" if r["temp_mib"] is None else f"{r['temp_mib']:.1f}",
            "yes" if r["finite"] else "NO",
        ]
        for r in result["rows"]
    ]
    return "\n".join(
        [
            f"(c) adjoints: jax.grad of sum(params**2) w.r.t. the data, batched curve fit B = {result['batch']:,}, "
            f"rtol=atol=1e-8",
            format_table(headers, table, "ll" + "r" * 6),
            f"  one whole-batch solver iteration (Unroll forward, 50 vs 10 steps): {result['iteration_s'] * 1e3:.2f} ms",
        ]
    )
