"""What the first derivative through a small graph solve costs: trace, compile and run, one fresh process per
variant (benchmarks/README.md (ap)).

The graph is docs/factor_graphs.md's: four SE(2) poses on a square, four ``between`` edges, pose 0 held; the
derivative is that of one coordinate of the solution with respect to the edges' measurement errors. Each
variant runs in its own interpreter (JAX keeps compiled programs per process), timing the first call and a
second one, and sums JAX's own compile-time events (``jax.monitoring``).

    python benchmarks/graph_first_gradient.py
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

VARIANTS = ("solve", "grad (Implicit, exact Hessian)", "grad (Implicit, Gauss-Newton)", "jvp (Implicit, exact Hessian)")


def measure(variant: str) -> dict:
    import jax
    import jax.monitoring
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)
    import jaxlie

    import jaxnls
    from jaxnls import graph

    compiles = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda name, seconds, **_: compiles.append(seconds) if name.endswith("backend_compile_duration") else None
    )
    edges = jnp.array([[0, 1], [1, 2], [2, 3], [3, 0]])
    step = jnp.array([1.0, 0.0, jnp.pi / 2])
    start = jaxlie.SE2.from_xy_theta(
        jnp.array([0.0, 0.8, 1.3, 0.2]), jnp.array([0.0, 0.3, 0.8, 1.1]), jnp.array([0.0, 1.2, 3.0, 4.9])
    )
    noise = jnp.array([[0.0, 0.0, 0.0], [0.05, -0.02, 0.03], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    hessian = "gauss_newton" if "Gauss-Newton" in variant else "exact"

    def corner(noise):
        measured = jaxlie.SE2.from_xy_theta(*(step + noise).T)
        problem = graph.FactorGraph(
            {"pose": start}, [graph.CostGroup(graph.between, ("pose", "pose"), edges, measured)], fixed={"pose": [0]}
        )
        return graph.solve(problem, adjoint=jaxnls.Implicit(hessian=hessian)).params["pose"].translation()[2, 0]

    call = {
        "solve": lambda: corner(noise),
        "grad": lambda: jax.grad(corner)(noise),
        "jvp": lambda: jax.jvp(corner, (noise,), (noise,)),
    }[variant.split()[0]]
    times = []
    for _ in range(2):
        begin = time.perf_counter()
        jax.block_until_ready(call())
        times.append(time.perf_counter() - begin)
    return {"first": times[0], "second": times[1], "compiles": len(compiles), "compile_s": sum(compiles)}


def main():
    if len(sys.argv) > 2 and sys.argv[1] == "--variant":
        print(json.dumps(measure(sys.argv[2])))
        return
    print(f"{'variant':<34} {'first call s':>12} {'second s':>9} {'programs':>9} {'compiling s':>12}")
    for variant in VARIANTS:
        out = subprocess.run(
            [sys.executable, __file__, "--variant", variant], capture_output=True, text=True, check=True
        ).stdout
        result = json.loads(out.strip().splitlines()[-1])
        print(
            f"{variant:<34} {result['first']:>12.2f} {result['second']:>9.3f} {result['compiles']:>9d} "
            f"{result['compile_s']:>12.2f}"
        )


if __name__ == "__main__":
    main()
