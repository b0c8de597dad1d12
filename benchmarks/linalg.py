"""(e) Structured matrix functions: gradient error vs eigen-gap (JAX's eigh composition vs jaxnls.linalg),
and speed of the gradient against that naive composition.

Error: A = diag(1, 1 + gap, 2) and a rotated copy Q diag(1, 1 + gap, 2) Qᵀ (3×3, float64), loss = Σ W ∘ logm(A);
the gradient's directional derivative along a random symmetric direction is compared with a central
difference with one Richardson step (h = 1e-3, 5e-4; logm is smooth at ties, so this is accurate to ~1e-12)
— relative error, "nan" where the gradient is not finite.
Speed: ``jax.jit(jax.grad(loss))`` for a batch of matrices, loss = Σ W ∘ logm(C + εI) with C = FᵀF/N of random
features (O2P pooling), median of the timed calls after a warm-up call.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from _common import fmt_s, format_table, time_calls

from jaxnls.linalg import logm_spd

GAPS = (1e-1, 1e-3, 1e-6, 1e-9, 1e-12, 0.0)
SPEED_SHAPES = ((256, 8), (256, 32), (64, 128))


def _naive_logm(a):
    lam, u = jnp.linalg.eigh(a)
    return (u * jnp.log(lam)[..., None, :]) @ jnp.swapaxes(u, -1, -2)


def _richardson_difference(loss, a, direction):
    """Central difference with one Richardson step (error O(h⁴)): the truth for the error table."""

    def central(h):
        return (float(loss(jnp.asarray(a + h * direction))) - float(loss(jnp.asarray(a - h * direction)))) / (2 * h)

    return (4.0 * central(5e-4) - central(1e-3)) / 3.0


def _gradient_errors():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    weights = jnp.asarray(rng.standard_normal((3, 3)))
    direction = rng.standard_normal((3, 3))
    direction = direction + direction.T
    rows = []
    for basis_name, basis in (("diagonal", np.eye(3)), ("rotated", q)):
        for gap in GAPS:
            a = basis @ np.diag([1.0, 1.0 + gap, 2.0]) @ basis.T
            row = {"matrix": basis_name, "gap": gap}
            truth = _richardson_difference(lambda m: jnp.sum(weights * logm_spd(m)), a, direction)
            for name, fn in (("jax eigh composition", _naive_logm), ("jaxnls.linalg.logm_spd", logm_spd)):
                g = np.asarray(jax.grad(lambda m, fn=fn: jnp.sum(weights * fn(m)))(jnp.asarray(a)))
                value = float(np.sum(g * direction))
                row[name] = abs(value - truth) / abs(truth) if np.isfinite(value) else float("nan")
            rows.append(row)
    # O2P pooling of a rank-deficient feature matrix (3 features in 6 dimensions, ε = 1e-3): FᵀF/3 + εI has
    # the eigenvalue ε three times, tied up to rounding
    features = rng.standard_normal((3, 6))
    direction_f = rng.standard_normal((3, 6))
    w6 = jnp.asarray(rng.standard_normal((6, 6)))
    row = {"matrix": "O2P 3x6", "gap": 0.0}
    for name, fn in (("jax eigh composition", _naive_logm), ("jaxnls.linalg.logm_spd", logm_spd)):
        loss = lambda f, fn=fn: jnp.sum(w6 * fn(f.T @ f / 3 + 1e-3 * jnp.eye(6)))
        if name == "jax eigh composition":
            truth = _richardson_difference(
                lambda f: jnp.sum(w6 * logm_spd(f.T @ f / 3 + 1e-3 * jnp.eye(6))), features, direction_f
            )
        value = float(np.sum(np.asarray(jax.grad(loss)(jnp.asarray(features))) * direction_f))
        row[name] = abs(value - truth) / abs(truth) if np.isfinite(value) else float("nan")
    rows.append(row)
    return rows


def _speed(repeats):
    rows = []
    for batch, n in SPEED_SHAPES:
        key = jax.random.PRNGKey(n)
        features = jax.random.normal(key, (batch, n // 2, n))  # N = n/2 < d = n: rank-deficient, tied at ε
        weights = jax.random.normal(jax.random.PRNGKey(1), (n, n))
        row = {"batch": batch, "n": n}
        for name, fn in (("naive", _naive_logm), ("ours", logm_spd)):

            def loss(f, fn=fn):
                c = jnp.swapaxes(f, -1, -2) @ f / f.shape[-2] + 1e-3 * jnp.eye(n)
                return jnp.sum(weights * fn(c))

            grad = jax.jit(jax.grad(loss))
            timing, g = time_calls(lambda: grad(features), repeats)
            row[f"{name}_s"] = timing.median
            row[f"{name}_finite"] = bool(np.all(np.isfinite(np.asarray(g))))
        rows.append(row)
    return rows


def run(repeats: int) -> dict:
    return {"errors": _gradient_errors(), "speed": _speed(repeats)}


def summarize(result: dict) -> str:
    def rel(x):
        return "nan" if not np.isfinite(x) else f"{x:.1e}"

    error_table = [
        [r["matrix"], f"{r['gap']:g}", rel(r["jax eigh composition"]), rel(r["jaxnls.linalg.logm_spd"])]
        for r in result["errors"]
    ]
    speed_table = [
        [
            f"{r['batch']}",
            f"{r['n']}",
            fmt_s(r["naive_s"]),
            fmt_s(r["ours_s"]),
            f"{r['ours_s'] / r['naive_s']:.2f}",
            "yes" if r["naive_finite"] else "NO",
            "yes" if r["ours_finite"] else "NO",
        ]
        for r in result["speed"]
    ]
    return "\n".join(
        [
            "(e) logm gradient: relative error of a directional derivative vs central differences (Richardson), "
            "A = diag(1, 1+gap, 2) or Q diag(1, 1+gap, 2) Qᵀ",
            format_table(["A", "gap", "jax eigh composition", "jaxnls.linalg.logm_spd"], error_table, "lrrr"),
            "",
            "    jax.jit(jax.grad) of Σ W∘logm(FᵀF/N + 1e-3 I), N = n/2 (rank-deficient), float64",
            format_table(
                ["batch", "n", "naive s", "ours s", "ours / naive", "naive finite", "ours finite"],
                speed_table,
                "rrrrrrr",
            ),
        ]
    )
