"""The BLAS behind CHOLMOD (jaxnls.graph.use_blas): the dynamic linker's own account (``LD_DEBUG=bindings``) of
which library CHOLMOD's ``dgemm_``/``dpotrf_`` references were bound to, matched by ``cholmod_bindings`` (glibc's
``dladdr`` of what those references hold) before jaxnls rebinds them; then where they lead by default (SciPy's
BLAS), on request (the bundled ATLAS, a library by path, MKL) and after switching back and forth; QDLDL's solve of
the same graph as the reference answer; refusals named. Each case runs in a fresh process."""

import glob
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("sparsax") is None or not sys.platform.startswith("linux"),
    reason="sparsax (CHOLMOD) and glibc's LD_DEBUG are needed",
)

GRAPH = os.path.join(os.path.dirname(__file__), "data", "graphs", "Klaus3.g2o")

# Solve one pose graph with CHOLMOD and with QDLDL (float64); print what a test compares.
SOLVE = """
import json, sys
import jax
jax.config.update("jax_enable_x64", True)
import numpy as np
import jaxnls
import jaxnls.graph as jg
from jaxnls.io import read_pose_graph
problem = jg.pose_graph_problem(read_pose_graph(sys.argv[1]))
costs = {}
for factorization in ("cholmod", "qdldl"):
    solver = jaxnls.Dogleg(linear_solver=jg.SparseDirect(factorization=factorization))
    costs[factorization] = float(jg.solve(problem, solver=solver).cost)
from scipy.linalg import cython_blas, cython_lapack
print(json.dumps({
    "costs": costs, "blas": jg.blas_in_use(), "bindings": jg.cholmod_bindings(),
    "scipy": [cython_blas.__file__, cython_lapack.__file__],
}))
"""


def _run(script, *args, env=None):
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        capture_output=True,
        text=True,
        env={key: value for key, value in {**os.environ, **(env or {})}.items() if value is not None},
        timeout=300,
    )
    return result


def _bundled_blas_folder():
    import sparsax

    return os.path.join(os.path.dirname(os.path.dirname(sparsax.__file__)), "sparsax.libs")


def _bindings(log_prefix, symbol):
    """The files that libcholmod's references to ``symbol`` were bound to, from LD_DEBUG's log files."""
    targets = set()
    for log in glob.glob(log_prefix + ".*"):
        with open(log, errors="replace") as lines:
            for line in lines:
                if "binding file" in line and "libcholmod" in line and f"`{symbol}'" in line:
                    targets.add(line.split(" to ")[1].split(" [")[0])
    return targets


def _mkl_runtime():
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        files = distribution("mkl").files or []
    except PackageNotFoundError:
        return None
    (runtime,) = [f for f in files if os.path.basename(str(f)).startswith("libmkl_rt.so")]
    return os.path.realpath(str(runtime.locate()))


# (bundled and mkl, ~7 s each, then copy (stop 44): moved out of the default set to keep it within 10 minutes on 2
# cores, benchmarks/README.md (at), (av); CI runs the slow set)
@pytest.mark.parametrize(
    "chosen",
    [
        "default",
        pytest.param("bundled", marks=pytest.mark.slow),
        pytest.param("copy", marks=pytest.mark.slow),
        pytest.param("mkl", marks=pytest.mark.slow),
    ],
)
def test_cholmod_calls_the_blas_chosen(tmp_path, chosen):
    """The dynamic linker binds CHOLMOD's BLAS and LAPACK references to the ATLAS in sparsax.libs (its log); by
    default jaxnls then points them at SciPy's ``cython_blas`` / ``cython_lapack`` functions; with
    ``JAXNLS_BLAS=bundled`` they stay where the linker put them (which is what ``cholmod_bindings`` reads there: the
    same file as the linker's log names); with a path to a copy of that ATLAS placed elsewhere (a BLAS that exists
    on every machine that has sparsax), they lead to the copy; with ``mkl`` (where the mkl wheel is installed: the
    ``mkl`` extra), to that wheel's runtime, switched to its sequential layer (one thread). Every way the graph's
    CHOLMOD solve ends at QDLDL's cost."""
    bundled = _bundled_blas_folder()
    env: dict[str, str | None] = {"LD_DEBUG": "bindings", "LD_DEBUG_OUTPUT": str(tmp_path / "ld")}
    env["JAXNLS_BLAS"] = "bundled" if chosen == "bundled" else None  # (None: removed from the child's environment)
    script = SOLVE
    blas = None
    if chosen == "mkl":
        blas = _mkl_runtime()
        if blas is None:
            pytest.skip("the mkl wheel is not installed (pip install 'jaxnls[mkl]')")
        env["JAXNLS_BLAS"] = "mkl"
        env["MKL_THREADING_LAYER"] = None
        script = SOLVE + (
            "import ctypes\n"
            "assert ctypes.CDLL(jg.blas_in_use()).MKL_Get_Max_Threads() == 1, 'MKL not on its sequential layer'\n"
        )
    if chosen == "copy":
        copies = tmp_path / "blas"
        copies.mkdir()
        for name in ("libquadmath", "libgfortran"):
            (original,) = glob.glob(os.path.join(bundled, name + "-*"))
            shutil.copy(original, copies / ("copied-" + os.path.basename(original)))
        (original,) = glob.glob(os.path.join(bundled, "libsatlas-*"))
        blas = str(copies / "copied-blas.so")
        with open(original, "rb") as source, open(blas, "wb") as copy:
            # another soname of the same length, so that sparsax's own dependency on the bundled file is not
            # met by the copy (glibc matches loaded libraries by soname)
            image = source.read()
            soname = os.path.basename(original).encode()
            assert image.count(soname) == 1
            copy.write(image.replace(soname, b"x" * len(soname)))
        env["JAXNLS_BLAS"] = blas
        # the copy's own dependencies are found by soname once loaded from the copies' folder
        script = (
            "import ctypes, glob\n"
            f"for name in ('libquadmath', 'libgfortran'): ctypes.CDLL(glob.glob({str(copies)!r} + '/copied-' + name + '-*')[0])\n"
            + textwrap.dedent(SOLVE)
        )
    result = _run(script, GRAPH, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["costs"]["cholmod"] == pytest.approx(report["costs"]["qdldl"], rel=1e-9)
    bindings = {name: os.path.realpath(path) for name, path in report["bindings"].items()}
    assert sorted(bindings) == sorted(["dgemm_", "dsyrk_", "dtrsm_", "dgemv_", "dtrsv_", "dpotrf_"])
    for symbol in ("dgemm_", "dpotrf_", "dtrsm_"):
        bound = _bindings(str(tmp_path / "ld"), symbol)
        assert len(bound) == 1, (symbol, bound)
        (linked,) = bound
        assert os.path.dirname(os.path.realpath(linked)) == os.path.realpath(bundled)
        if chosen == "bundled":
            assert bindings[symbol] == os.path.realpath(linked) and report["blas"] == "bundled"
        elif chosen == "default":
            blas_module, lapack_module = (os.path.realpath(path) for path in report["scipy"])
            assert bindings[symbol] == (lapack_module if symbol == "dpotrf_" else blas_module)
            assert report["blas"] == "scipy"
        else:
            assert bindings[symbol] == os.path.realpath(blas) and report["blas"] == os.path.realpath(blas)


REFUSALS = """
import glob, json, os, sys
import jaxnls.graph as jg
out = {}
def attempt(name, library):
    try:
        jg.use_blas(library)
        out[name] = "accepted"
    except (ValueError, RuntimeError) as err:
        out[name] = f"{type(err).__name__}: {err}"
import numpy
# the renamed OpenBLAS that SciPy's or NumPy's wheel bundles (scipy.libs / numpy.libs beside the packages)
site = os.path.dirname(os.path.dirname(numpy.__file__))
prefixed = sorted(glob.glob(os.path.join(site, "scipy.libs", "libscipy_openblas*.so*")))
prefixed += sorted(glob.glob(os.path.join(site, "numpy.libs", "libscipy_openblas*.so*")))
prefixed = prefixed[0]
attempt("prefixed", prefixed)
import pathlib
attempt("prefixed as a Path", pathlib.Path(prefixed))
try:
    jg.use_blas(None)
except TypeError as err:
    out["None"] = str(err)
attempt("missing file", "/no/such/libblas.so")
attempt("unknown name", "no-such-blas-library")
out["blas_in_use"] = jg.blas_in_use()
from scipy.linalg import cython_blas
site_of = lambda path: os.path.dirname(os.path.realpath(path))
out["switches"] = []
for choice in ("bundled", "scipy", "bundled"):
    jg.use_blas(choice)
    out["switches"].append([jg.blas_in_use(), site_of(jg.cholmod_bindings()["dgemm_"])])
out["sites"] = {"scipy": site_of(cython_blas.__file__), "bundled": os.path.join(site, "sparsax.libs")}
print(json.dumps(out))
"""


def test_a_blas_that_cannot_serve_is_refused_by_name_and_a_choice_can_be_changed():
    """The scipy_-prefixed OpenBLAS inside SciPy's wheel lacks the plain names (refused, naming them); a missing
    file and an unknown name are named, and nothing was bound by any of them; between solves CHOLMOD's calls can be
    moved to the bundled ATLAS, back to SciPy's and back again."""
    result = _run(REFUSALS)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["prefixed"].startswith("ValueError") and "does not export dgemm_, dsyrk_" in out["prefixed"]
    assert out["prefixed as a Path"] == out["prefixed"]
    assert out["None"] == "use_blas: library must be a path or a name, got NoneType"
    assert "no such file: /no/such/libblas.so" in out["missing file"]
    assert "no library named 'no-such-blas-library'" in out["unknown name"]
    assert out["blas_in_use"] is None
    sites = {name: os.path.realpath(path) for name, path in out["sites"].items()}
    assert [[label, os.path.realpath(site)] for label, site in out["switches"]] == [
        ["bundled", sites["bundled"]],
        ["scipy", sites["scipy"]],
        ["bundled", sites["bundled"]],
    ]


def test_the_command_line_refuses_a_blas_that_cannot_serve_before_solving():
    """``JAXNLS_BLAS`` naming a missing library: ``jaxnls solve`` of a pose graph exits 2 with the variable and the
    reason on stderr (a bad setting, like a bad option), not a traceback from inside the solve."""
    result = subprocess.run(
        [sys.executable, "-m", "jaxnls", "solve", GRAPH],
        capture_output=True,
        text=True,
        env={**os.environ, "JAXNLS_BLAS": "/no/such/libblas.so"},
        timeout=300,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "jaxnls: JAXNLS_BLAS: use_blas: no such file: /no/such/libblas.so" in result.stderr
    assert "Traceback" not in result.stderr
