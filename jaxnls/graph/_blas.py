r"""The BLAS behind CHOLMOD's supernodal kernels.

``sparsax``'s wheel links CHOLMOD to the serial, generic ATLAS it bundles, and a supernodal factorisation
spends most of its time in that library's ``dgemm``/``dsyrk``/``dtrsm``/``dpotrf``. A process can give CHOLMOD
another BLAS — OpenBLAS, or MKL with its sequential threading layer — by loading it into the global symbol
scope before ``sparsax``'s extension loads: the dynamic linker binds an undefined symbol to the first
definition in the global scope before it looks at the library's own dependencies. On 2 cores the same
factorisation of sphere2500's step system (15,000 unknowns) takes 70 ms with the bundled ATLAS and 16–20 ms
with Debian's OpenBLAS (``libopenblas0-pthread``); torus3D's (30,000) 158 and 39 ms.

:func:`use_blas`, or the environment variable ``JAXNLS_BLAS`` (read when CHOLMOD is first needed), does this.
Loading a library into the global scope also serves any library loaded after it that leaves the same
symbols undefined, which is why it is a choice the user makes and not a default.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.metadata
import importlib.util
import os
import sys
from types import ModuleType

BLAS_VARIABLE = "JAXNLS_BLAS"
"""The environment variable that names a BLAS for CHOLMOD, read when CHOLMOD is first needed (and by ``jaxnls
solve`` at its start): what :func:`use_blas` takes — a path, ``mkl``, or a name such as ``openblas``."""

#: What CHOLMOD's supernodal factorisation and solves call (BLAS level 2 and 3, LAPACK's Cholesky).
_SYMBOLS = ("dgemm_", "dsyrk_", "dtrsm_", "dgemv_", "dtrsv_", "dpotrf_")

#: sparsax's compiled extension: once it is loaded, CHOLMOD's symbols are bound.
_EXTENSION = "sparsax_cpp"

_chosen: str | None = None


def use_blas(library: str | os.PathLike[str]) -> str:
    """Make CHOLMOD (``SparseDirect``'s factorisation) call ``library``'s BLAS and LAPACK instead of the serial
    ATLAS bundled with ``sparsax``.

    Call it before the first CHOLMOD solve of the process (or set ``JAXNLS_BLAS`` to the same value). The
    library must export the Fortran-style names (``dgemm_``, ``dpotrf_``, …): OpenBLAS
    (``/usr/lib/x86_64-linux-gnu/libopenblas.so.0``) or MKL's ``libmkl_rt``. Copies with renamed symbols, such as the
    ``scipy_``-prefixed OpenBLAS inside NumPy and SciPy wheels, cannot serve. ``"mkl"`` names the ``mkl`` wheel's
    runtime (``pip install "jaxnls[mkl]"``: a BLAS from wheels alone); MKL is switched to its sequential, LP64
    layers unless ``MKL_THREADING_LAYER`` / ``MKL_INTERFACE_LAYER`` say otherwise.

    Args:
        library: a path to the shared library, ``"mkl"``, or a name that ``ctypes.util.find_library`` resolves
            (``"openblas"``).

    Returns:
        The path or soname that was loaded.

    Raises:
        TypeError: ``library`` is neither a string nor a path.
        ValueError: the library cannot be found or loaded, or lacks one of the symbols CHOLMOD calls.
        RuntimeError: ``sparsax`` is already loaded, or another library was chosen before (a process binds
            CHOLMOD's symbols once).
    """
    global _chosen
    if not isinstance(library, (str, os.PathLike)):
        raise TypeError(f"use_blas: library must be a path or a name, got {type(library).__name__}")
    library = os.fspath(library)
    path = _locate(library)
    if _chosen == path:
        return path
    if _chosen is not None:  # the first library in the global scope is the one the linker would bind to
        raise RuntimeError(f"use_blas({library!r}): this process already chose {_chosen} for CHOLMOD")
    if _EXTENSION in sys.modules:
        raise RuntimeError(
            f"use_blas({library!r}): sparsax is already loaded, so CHOLMOD's BLAS is fixed for this process; "
            f"call use_blas (or set {BLAS_VARIABLE}) before the first CHOLMOD solve or `import sparsax`"
        )
    try:
        handle = ctypes.CDLL(path)  # local scope first: nothing is interposed unless the library qualifies
    except OSError as err:
        raise ValueError(f"use_blas: cannot load {library!r}: {err}") from err
    missing = [name for name in _SYMBOLS if not hasattr(handle, name)]
    if missing:
        raise ValueError(
            f"use_blas: {path} does not export {', '.join(missing)} (CHOLMOD calls the plain Fortran names; "
            "a BLAS built with prefixed or suffixed names cannot serve)"
        )
    if hasattr(handle, "MKL_Set_Threading_Layer"):
        _mkl_layers(handle)
    ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
    _chosen = path
    return path


def blas_in_use() -> str | None:
    """Which BLAS CHOLMOD calls in this process.

    Returns:
        The library :func:`use_blas` (or ``JAXNLS_BLAS``) gave CHOLMOD, or None: ``sparsax``'s bundled ATLAS.
    """
    return _chosen


def import_sparsax() -> ModuleType:
    """``sparsax``, after loading the BLAS that ``JAXNLS_BLAS`` names (if set) so that CHOLMOD binds to it."""
    requested = os.environ.get(BLAS_VARIABLE)
    if requested and _chosen is None and importlib.util.find_spec("sparsax") is not None:
        use_blas(requested)
    import sparsax

    return sparsax


def _mkl_layers(handle: ctypes.CDLL) -> None:
    """MKL's single dynamic library picks its threading and integer layers at run time: the sequential one (its
    OpenMP threads compete with XLA's: ~15× slower here) and LP64 (CHOLMOD passes 32-bit integers), unless the
    user's environment says otherwise."""
    if "MKL_INTERFACE_LAYER" not in os.environ:
        handle.MKL_Set_Interface_Layer(0)  # MKL_INTERFACE_LP64
    if "MKL_THREADING_LAYER" not in os.environ:
        handle.MKL_Set_Threading_Layer(1)  # MKL_THREADING_SEQUENTIAL


def _mkl_runtime() -> str:
    """``libmkl_rt`` of the ``mkl`` wheel (``pip install "jaxnls[mkl]"``), else of the system."""
    try:
        distribution = importlib.metadata.distribution("mkl")
    except importlib.metadata.PackageNotFoundError:
        pass
    else:
        for file in distribution.files or []:
            if os.path.basename(str(file)).startswith("libmkl_rt.so"):
                return os.path.realpath(str(distribution.locate_file(file)))
    found = ctypes.util.find_library("mkl_rt")
    if found is None:
        raise ValueError("use_blas('mkl'): neither the mkl wheel (pip install 'jaxnls[mkl]') nor a system libmkl_rt")
    return found


def _locate(library: str) -> str:
    if library == "mkl":
        return _mkl_runtime()
    if os.sep in library or os.path.exists(library):
        if not os.path.exists(library):
            raise ValueError(f"use_blas: no such file: {library}")
        return os.path.realpath(library)
    found = ctypes.util.find_library(library.removeprefix("lib"))
    if found is None:
        raise ValueError(f"use_blas: no library named {library!r} on this system (give a path instead)")
    return found
