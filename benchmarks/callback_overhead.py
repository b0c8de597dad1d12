"""What a per-iteration callback and a history cost: the batched curve fit of benchmark (a) (B = 1,024, LM,
float64) without either, with a no-op callback, with a ProgressLine writing to a non-terminal (both are host
round trips; the command line passes no callback when stderr is not a terminal) and with history=32 (kept in
the compiled loop). Median of 7 calls after a warm-up.

    python benchmarks/callback_overhead.py
"""

import time

import jax
import jax.numpy as jnp
import numpy as np

jax.config.update("jax_enable_x64", True)

import jaxnls  # noqa: E402

T = jnp.linspace(0.0, 10.0, 100)
P_TRUE = np.array([2.0, 0.3, 0.5, 1.5])
BATCH = 1024


def residual(p, args):
    t, y = args
    return p[0] * jnp.exp(-p[1] * t) + p[2] * jnp.sin(p[3] * t) - y


def main():
    rng = np.random.default_rng(0)
    clean = P_TRUE[0] * np.exp(-P_TRUE[1] * T) + P_TRUE[2] * np.sin(P_TRUE[3] * T)
    y = jnp.asarray(clean + 0.02 * rng.standard_normal((BATCH, T.size)))
    p0 = jnp.asarray(P_TRUE * (1 + 0.1 * rng.standard_normal((BATCH, 4))))
    baseline = None
    for name, callback, history in (
        ("no callback", None, 0),
        ("no-op callback", lambda info: None, 0),
        ("ProgressLine, not a terminal", jaxnls.ProgressLine(), 0),
        ("history=32", None, 32),
    ):

        def run():
            return jax.block_until_ready(
                jaxnls.solve(
                    residual, p0, (T, y), batched=True, args_axes=(None, 0), callback=callback, history=history
                )
            )

        run()
        times = []
        for _ in range(7):
            start = time.perf_counter()
            sol = run()
            times.append(time.perf_counter() - start)
        median = float(np.median(times))
        baseline = baseline or median
        iterations = int(np.max(sol.num_steps)) + 1
        extra = (median - baseline) / iterations * 1e3
        print(
            f"{name:30s} {median * 1e3:7.1f} ms   {iterations} loop iterations   "
            f"{extra:+.2f} ms per iteration vs neither"
        )


if __name__ == "__main__":
    main()
