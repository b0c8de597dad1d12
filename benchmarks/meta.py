"""(d) Meta-gradients through T inner optimiser steps: mixed (forward-over-reverse) vs reverse mode.

Inner model: MLP 64-256-256-1 (tanh), a per-example weighted squared error on a batch of B examples per
step; meta-parameters η = (log learning rate, log weight decay, one weight per batch position); inner
optimiser SGD or Adam (with decoupled weight decay); outer loss: squared error of θ_T on 256 held-out
examples. For each (optimiser, B, T) both modes' ``jax.jit(jax.grad(outer))`` is compiled: **temp MiB** =
XLA's temporary buffer size (``compile().memory_analysis().temp_size_in_bytes``), **grad s** = median
wall time of the compiled meta-gradient after a warm-up call; the two modes' meta-gradients are
compared (max relative difference).
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _common import fmt_s, format_table, time_calls

from jaxnls.meta import unroll

SIZES = (64, 256, 256, 1)
BATCHES = (256, 1024, 4096)
STEPS = (2, 4, 8)
OPTIMIZERS = {"sgd": lambda lr: optax.sgd(lr), "adam": lambda lr: optax.adam(lr)}


def _mlp(params, x):
    for w, b in params[:-1]:
        x = jnp.tanh(x @ w + b)
    w, b = params[-1]
    return (x @ w + b)[..., 0]


def _inner_loss(theta, eta, batch):
    x, y = batch
    return jnp.mean(jax.nn.softplus(eta["weights"]) * (_mlp(theta, x) - y) ** 2)


def _problem(batch: int, steps: int, dtype):
    keys = jax.random.split(jax.random.PRNGKey(0), 5)
    theta0 = []
    for k, (fan_in, fan_out) in zip(jax.random.split(keys[0], len(SIZES) - 1), itertools.pairwise(SIZES)):
        theta0.append((jax.random.normal(k, (fan_in, fan_out), dtype) / np.sqrt(fan_in), jnp.zeros(fan_out, dtype)))
    target = lambda x: jnp.sin(x[..., 0]) + x[..., 1] * x[..., 2]
    xs = jax.random.normal(keys[1], (steps, batch, SIZES[0]), dtype)
    xv = jax.random.normal(keys[2], (256, SIZES[0]), dtype)
    eta = {
        "log_lr": jnp.asarray(np.log(0.01), dtype),
        "log_wd": jnp.asarray(np.log(1e-4), dtype),
        "weights": jnp.zeros((batch,), dtype),
    }
    return theta0, (xs, target(xs)), (xv, target(xv)), eta


def run(quick: bool, repeats: int) -> dict:
    batches, steps_list = ((256, 1024), (2, 4)) if quick else (BATCHES, STEPS)
    rows = []
    for name, make_inner_optimizer in OPTIMIZERS.items():

        def make_optimizer(eta, make_inner_optimizer=make_inner_optimizer):
            return optax.chain(
                optax.add_decayed_weights(jnp.exp(eta["log_wd"])), make_inner_optimizer(jnp.exp(eta["log_lr"]))
            )

        for batch in batches:
            for steps in steps_list:
                theta0, data, (xv, yv), eta = _problem(batch, steps, jnp.float32)
                row = {"optimizer": name, "batch": batch, "steps": steps}
                grads = {}
                for mode in ("reverse", "mixed"):
                    run_inner = unroll(_inner_loss, make_optimizer, steps, mode=mode)

                    def outer(eta, run_inner=run_inner):
                        return jnp.mean((_mlp(run_inner(theta0, eta, data), xv) - yv) ** 2)

                    compiled = jax.jit(jax.grad(outer)).lower(eta).compile()
                    memory = compiled.memory_analysis()
                    timing, grads[mode] = time_calls(lambda: compiled(eta), repeats)
                    row[f"{mode}_temp_mib"] = None if memory is None else memory.temp_size_in_bytes / 2**20
                    row[f"{mode}_s"] = timing.median
                diffs = [
                    float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / (np.max(np.abs(np.asarray(b))) + 1e-30))
                    for a, b in zip(
                        jax.tree_util.tree_leaves(grads["mixed"]), jax.tree_util.tree_leaves(grads["reverse"])
                    )
                ]
                row["max_rel_diff"] = max(diffs)
                rows.append(row)
                print(
                    f"    {name:<5} B {batch:>5} T {steps}  reverse {row['reverse_temp_mib']:8.1f} MiB "
                    f"{fmt_s(row['reverse_s']):>8} s   mixed {row['mixed_temp_mib']:8.1f} MiB {fmt_s(row['mixed_s']):>8} s",
                    flush=True,
                )
    return {"rows": rows}


def summarize(result: dict) -> str:
    headers = [
        "optimizer",
        "batch",
        "T",
        "reverse temp MiB",
        "mixed temp MiB",
        "memory ratio",
        "reverse grad s",
        "mixed grad s",
        "time ratio",
        "max rel diff",
    ]
    table = [
        [
            r["optimizer"],
            f"{r['batch']:,}",
            str(r["steps"]),
            f"{r['reverse_temp_mib']:.1f}",
            f"{r['mixed_temp_mib']:.1f}",
            f"{r['reverse_temp_mib'] / r['mixed_temp_mib']:.1f}x",
            fmt_s(r["reverse_s"]),
            fmt_s(r["mixed_s"]),
            f"{r['mixed_s'] / r['reverse_s']:.2f}",
            f"{r['max_rel_diff']:.1e}",
        ]
        for r in result["rows"]
    ]
    return "\n".join(
        [
            "(d) meta-gradients: MLP 64-256-256-1, float32, jax.jit(jax.grad(outer)) through T inner steps; "
            "memory ratio = reverse / mixed temp; time ratio = mixed / reverse",
            format_table(headers, table, "l" + "r" * 9),
        ]
    )
