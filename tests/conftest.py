"""Shared test set-up: float64 on, strict rank promotion, and central-difference helpers."""

import atexit
import gc
import os
import shutil
import tempfile

# Two pytest-xdist workers share the cores. OpenBLAS (scipy's LAPACK, which JAX's CPU eigh, Cholesky and LU call)
# would start a thread per core in each worker and spin against the other worker's threads: a notebook cell that
# takes 4 s alone took 26 s beside another worker. Set before numpy / scipy load it; notebook kernels inherit it.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

# XLA:CPU's classic elemental emitters, the option every top-level solve already compiles with (jaxnls._driver),
# for everything else the tests compile too: solves nested in jax.grad / jax.jit and eager operations, whose
# programs JAX compiles with XLA's defaults. The suite is mostly compilation, and these compile in about 60% of
# the time (tests/test_graph_adjoint.py: 64 -> 42 s). test_solve.py::test_nested_solve_under_xla_defaults (slow) runs
# one nested solve without either flag below. Before jax loads XLA; notebook kernels and subprocesses inherit them
# (the kernels of tests/test_docs.py's OPTIMISED_NOTEBOOKS all but the next one).
# And without LLVM's optimisation passes (what small top-level solves already compile with): the suite's programs
# are compiled once and run for milliseconds; skipping the passes took 15-25% off the in-process tests
# (tests/test_adjoint.py + test_meta.py 117 -> 92 s, the graph files 194 -> 168 s; benchmarks/README.md (at)).
# (Not XLA's code-generation parts: top-level solves compile in one per core (jaxnls._driver), everything else in
# XLA's 32 as for a user; in 2 parts the SWAT search of test_swat_search.py (slow) lands on a network 16 times
# worse than the dense one, benchmarks/README.md (au).)
#: The suite's flag that compiles without LLVM's optimisation passes (tests/test_docs.py leaves it out of some kernels)
WITHOUT_LLVM_PASSES = "--xla_backend_optimization_level=0"
#: Every flag the suite adds (test_solve.py::test_nested_solve_under_xla_defaults takes them out again)
SUITE_XLA_FLAGS = ("--xla_cpu_use_fusion_emitters=false", WITHOUT_LLVM_PASSES)
os.environ["XLA_FLAGS"] = " ".join(filter(None, [os.environ.get("XLA_FLAGS", ""), *SUITE_XLA_FLAGS]))

import jax
import numpy as np
import pytest
from hypothesis import settings

# Reproducible property tests: the same examples on every run (set HYPOTHESIS_PROFILE=explore to search anew).
settings.register_profile("derandomized", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "derandomized"))

# the command line's persistent compilation cache goes to a temporary folder, not the user's ~/.cache
if "JAXNLS_CACHE_DIR" not in os.environ:
    os.environ["JAXNLS_CACHE_DIR"] = tempfile.mkdtemp(prefix="jaxnls-test-cache-")
    atexit.register(shutil.rmtree, os.environ["JAXNLS_CACHE_DIR"], ignore_errors=True)

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """After each test module, JAX's caches let go of the programs it compiled. On XLA:CPU each compiled solve
    keeps ~110 memory mappings of its machine code (XLA's default 32 code-generation parts, several sections each;
    ~19 for a top-level solve in 2 parts) for as long as a jit cache holds it; a pytest-xdist worker that had
    compiled ~600 solves in 32 parts reached Linux's default vm.max_map_count (65,530), and the next compile died of
    a segmentation fault inside XLA (twice, in two full runs: one worker at 43,000 mappings when the other crashed).
    Programs shared across modules compile again."""
    yield
    jax.clear_caches()
    gc.collect()


def central_difference(fn, x, eps=1e-6):
    """Jacobian of ``fn`` at ``x`` by central differences (float64 numpy), for checking autodiff."""
    x = np.asarray(x, dtype=np.float64)
    columns = []
    for i in range(x.size):
        dx = np.zeros_like(x)
        dx.flat[i] = eps * max(1.0, abs(x.flat[i]))
        columns.append((np.asarray(fn(x + dx)) - np.asarray(fn(x - dx))) / (2 * dx.flat[i]))
    return np.stack(columns, axis=-1)


def directional_difference(fn, x, direction, step=1e-5):
    """Central difference of ``fn`` at ``x`` along ``direction``."""
    return (fn(x + step * direction) - fn(x - step * direction)) / (2 * step)


def gradient_cosines(residual_fn, x):
    """MINPACK's gradient cosines cos∠(J_j, r) = |J_jᵀr| / (‖J_j‖ ‖r‖) at ``x`` (zero columns count as orthogonal),
    from ``jax.jacfwd`` of ``residual_fn``."""
    point = jax.numpy.asarray(x)
    r = np.asarray(residual_fn(point))
    jac = np.asarray(jax.jacfwd(residual_fn)(point))
    norms = np.linalg.norm(jac, axis=0) * np.linalg.norm(r)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(norms > 0, np.abs(jac.T @ r) / norms, 0.0)


def cosine_resolution(residual_fn, x, draws=8, ulps=4, seed=0):
    """How far the gradient cosines move when ``x`` moves by up to ``ulps`` units in its last place (``draws``
    random moves; the largest change per column). Below it float64 cannot tell a stationary point from its
    neighbours — a small residual computed as the difference of large terms carries their rounding (on NIST's
    Lanczos3, ‖r‖ ~ 1e-4 against data ~ 1, a cosine of ~1e-11) — so a claimed test is judged at the cosine less
    this resolution. Another machine's arithmetic (another CPU's vector width, XLA's fused multiply-adds) lands
    anywhere within it: a test with a fixed slack passed on one machine and failed on another."""
    x = np.asarray(x, np.float64)
    at = gradient_cosines(residual_fn, x)
    rng = np.random.default_rng(seed)
    spread = np.zeros_like(at)
    for _ in range(draws):
        moved = x + rng.integers(-ulps, ulps + 1, x.shape) * np.spacing(x)
        spread = np.maximum(spread, np.abs(gradient_cosines(residual_fn, moved) - at))
    return spread
