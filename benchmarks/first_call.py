"""(aw) The batched curve fit's first call, each in a fresh process: what a user's first ``jaxnls.solve`` of a
kind and size costs, split into JAX's tracing and lowering, XLA's compile and the rest (the run, the checks
before the solve), from JAX's monitoring events.

Every round starts ``--rounds`` fresh Python processes one after the other, one per package given (``--trees``:
directories put first on ``PYTHONPATH``, so a checkout of an earlier revision can be measured against this one
with the same script and problem), alternating the trees so that the machine's drift weighs on each alike. Each
process builds benchmarks/curvefit.py's problems (B = 1,024 by default, float64 as in run.py), makes JAX's own
first use outside the timed call (placing the data), and times the first call of one strategy, then five steady
calls. Prints every process's figures and, per tree, their medians.

    python benchmarks/first_call.py --rounds 7 [--trees .,/tmp/before] [--solver LM] [--batch 1024]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

SOLVERS = {"LM": "LevenbergMarquardt", "GN": "GaussNewton", "DL": "Dogleg", "ILM": "IndirectLevenbergMarquardt"}
FIELDS = ("first", "trace", "lower", "compile", "rest", "steady")


def measure(solver: str, batch: int) -> dict:
    """One first call (and five steady calls) in this process."""
    import jax

    jax.config.update("jax_enable_x64", True)
    events: list[tuple[str, float, str]] = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda name, secs, **kw: events.append((name.rsplit("/", 1)[-1], secs, str(kw.get("fun_name"))))
    )
    import curvefit
    import jax.numpy as jnp

    import jaxnls

    _, y, p0 = curvefit.make_problems(batch)
    t, y, p0 = jnp.asarray(curvefit.T), jnp.asarray(y), jnp.asarray(p0)
    run = curvefit.make_jaxnls(getattr(jaxnls, SOLVERS[solver])(rtol=curvefit.RTOL, atol=curvefit.ATOL))
    events.clear()
    start = time.perf_counter()
    solution = jax.block_until_ready(run(p0, t, y))
    first = time.perf_counter() - start
    steady = []
    for _ in range(5):
        start = time.perf_counter()
        jax.block_until_ready(run(p0, t, y))
        steady.append(time.perf_counter() - start)

    def phase(name: str) -> float:  # the solve's own program (its name holds "solve")
        return sum(secs for event, secs, fun in events if event == name and "solve" in fun)

    figures = {
        "first": first,
        "trace": phase("jaxpr_trace_duration"),
        "lower": phase("jaxpr_to_mlir_module_duration"),
        "compile": phase("backend_compile_duration"),
        "steady": statistics.median(steady),
        "steps": int(solution.num_steps.sum()),
        "cost": float(solution.cost.sum()),
    }
    figures["rest"] = first - figures["trace"] - figures["lower"] - figures["compile"]
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--trees", default=".", help="comma-separated package directories (default: this checkout)")
    parser.add_argument("--solver", choices=sorted(SOLVERS), default="LM")
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.child:
        print(json.dumps(measure(options.solver, options.batch)))
        return
    here = os.path.dirname(os.path.abspath(__file__))
    trees = [os.path.abspath(os.path.join(here, "..") if tree == "." else tree) for tree in options.trees.split(",")]
    command = [sys.executable, os.path.abspath(__file__), "--child", "--solver", options.solver]
    command += ["--batch", str(options.batch)]
    results: dict[str, list[dict]] = {tree: [] for tree in trees}
    for round_ in range(options.rounds):
        for tree in trees:
            environment = dict(os.environ, PYTHONPATH=os.pathsep.join([tree, here]))
            output = subprocess.run(command, env=environment, cwd=here, capture_output=True, text=True, check=True)
            figures = json.loads(output.stdout.strip().splitlines()[-1])
            results[tree].append(figures)
            print(f"round {round_ + 1} {tree}: " + "  ".join(f"{k} {figures[k]:.3f}" for k in FIELDS), flush=True)
    print(f"\nmedians over {options.rounds} fresh processes ({options.solver}, B = {options.batch:,}, float64):")
    for tree, rows in results.items():
        medians = "  ".join(f"{k} {statistics.median(row[k] for row in rows):.3f}" for k in FIELDS)
        print(f"  {tree}: {medians}  (steps {rows[0]['steps']}, cost {rows[0]['cost']:.10e})")


if __name__ == "__main__":
    main()
