"""(av) LLVM's optimisation level of a large dense solve: XLA's default 3 against 2, alternated in one process.

Each round compiles a fresh batched curve fit (benchmarks/curvefit.py's problem) at each level in turn, by setting
``jaxnls._driver.LARGE_DENSE_SOLVE_LEVEL`` and clearing the top-level jit cache, then times five steady calls.
Prints, per strategy and level, the medians over the rounds after the first: first call, XLA's compile time (JAX's
``backend_compile_duration`` events) and the steady call.

    python benchmarks/llvm_level.py --solvers LM,GN,DL,ILM --rounds 7 [--x64] [--batch 1024]
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

SOLVERS = {"LM": "LevenbergMarquardt", "GN": "GaussNewton", "DL": "Dogleg", "ILM": "IndirectLevenbergMarquardt"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--solvers", default="LM,GN,DL,ILM")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--levels", default="3,2")
    parser.add_argument("--x64", action="store_true", help="float64 (the benchmark's precision); float32 otherwise")
    options = parser.parse_args()
    if "xla_backend_optimization_level" in os.environ.get("XLA_FLAGS", ""):
        # jaxnls keeps a level XLA_FLAGS names, so every row would compile at that level
        parser.error("XLA_FLAGS names an optimisation level: unset it to compare the levels")
    if options.x64:
        jax.config.update("jax_enable_x64", True)
    events: list[tuple[str, float]] = []
    jax.monitoring.register_event_duration_secs_listener(lambda name, secs, **_: events.append((name, secs)))

    import curvefit

    import jaxnls
    from jaxnls import _driver

    _, y, p0 = curvefit.make_problems(options.batch)
    t, y, p0 = jnp.asarray(curvefit.T), jnp.asarray(y), jnp.asarray(p0)
    jax.block_until_ready(jax.jit(lambda a: a @ a.T)(jnp.ones((4, 4))))  # JAX's own first use, outside the rows
    results: dict[tuple[str, int], list[tuple[float, float, float]]] = {}
    for round_ in range(options.rounds):
        for level in map(int, options.levels.split(",")):
            _driver.LARGE_DENSE_SOLVE_LEVEL = level
            _driver._top_level.cache_clear()
            for name in options.solvers.split(","):
                solver = getattr(jaxnls, SOLVERS[name])(rtol=curvefit.RTOL, atol=curvefit.ATOL)

                def residual(p, args, _key=(round_, level, name)):  # a fresh function: a fresh compilation
                    return curvefit.model(p, args[0]) - args[1]

                run = curvefit.make_jaxnls(solver, res=residual)
                events.clear()
                start = time.perf_counter()
                jax.block_until_ready(run(p0, t, y).params)
                first = time.perf_counter() - start
                compile_s = sum(secs for event, secs in events if event.endswith("backend_compile_duration"))
                steady = []
                for _ in range(5):
                    start = time.perf_counter()
                    jax.block_until_ready(run(p0, t, y).params)
                    steady.append(time.perf_counter() - start)
                results.setdefault((name, level), []).append((first, compile_s, float(np.median(steady))))
    print(f"B = {options.batch}, {'float64' if options.x64 else 'float32'}, medians over rounds 2-{options.rounds}")
    for (name, level), rows in sorted(results.items()):
        first, compile_s, steady = np.median(np.asarray(rows[1:]), axis=0)
        print(f"  {name:4s} level {level}: first {first:.3f} s  compile {compile_s:.3f} s  steady {steady:.4f} s")


if __name__ == "__main__":
    main()
