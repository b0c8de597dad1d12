"""Per-call time of ``jaxnls.covariance`` (NIST Roszman1, three points batched, four calls) and of
``jaxnls.graph.marginal_covariance`` (w100, one pose per call, nine calls): the first call (compilation
included) and the median of the later ones.

    python benchmarks/covariance_calls.py      # from the repository root (it reads tests/data)
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxnls
from jaxnls import graph
from jaxnls.io import read_nist, read_pose_graph

jax.config.update("jax_enable_x64", True)
p = read_nist("tests/data/nist/Roszman1.dat")
pts = jnp.asarray(np.vstack([p.certified_values, p.starts]))
times = []
for _ in range(4):
    t = time.perf_counter()
    jax.block_until_ready(jaxnls.covariance(p.residual_fn, pts, p.args, batched=True, args_axes=None))
    times.append(time.perf_counter() - t)
print(f"covariance: first {times[0]:.3f} s, then median {np.median(times[1:]):.4f} s")
fg = graph.pose_graph_problem(read_pose_graph("tests/data/graphs/w100.graph"))
sol = jax.block_until_ready(graph.solve(fg))
times = []
for i in range(0, 100, 12):
    t = time.perf_counter()
    graph.marginal_covariance(fg, [("pose", i)], at=sol.params)
    times.append(time.perf_counter() - t)
print(f"marginal_covariance: first {times[0]:.3f} s, then median {np.median(times[1:]):.4f} s")
