r"""The BLAS behind CHOLMOD's supernodal kernels.

``sparsax``'s wheel links CHOLMOD to the serial, generic ATLAS it bundles, and a supernodal factorisation spends
most of its time in that library's ``dgemm``/``dsyrk``/``dtrsm``/``dpotrf``. On 2 cores the same factorisation of
sphere2500's step system (15,000 unknowns) takes 70 ms with the bundled ATLAS and 16–20 ms with an OpenBLAS;
torus3D's (30,000) 158 and 39 ms (benchmarks/README.md (u)).

So when ``sparsax`` is loaded, jaxnls points CHOLMOD's six BLAS and LAPACK references at SciPy's — the functions
that JAX's own CPU linear algebra calls (``scipy.linalg.cython_blas`` / ``cython_lapack``; an OpenBLAS in SciPy's
wheels) — by rewriting the entries of ``libcholmod``'s global offset table that the dynamic linker filled for them.
Only CHOLMOD's references change: no library enters the global symbol scope, and every other library keeps its own
bindings. :func:`use_blas` (or the environment variable ``JAXNLS_BLAS``) chooses another BLAS the same way, or the
bundled ATLAS back.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib
import importlib.metadata
import mmap
import os
import struct
import sys
import warnings
from types import ModuleType

BLAS_VARIABLE = "JAXNLS_BLAS"
"""The environment variable that names CHOLMOD's BLAS, read when CHOLMOD is first needed (and by ``jaxnls solve``
at its start): what :func:`use_blas` takes — ``scipy`` (the default), ``bundled``, ``mkl``, a path or a name."""

#: What CHOLMOD's supernodal factorisation and solves call (BLAS level 2 and 3, LAPACK's Cholesky).
_SYMBOLS = ("dgemm_", "dsyrk_", "dtrsm_", "dgemv_", "dtrsv_", "dpotrf_")

#: What the default binding takes them from, when no other is named.
DEFAULT_BLAS = "scipy"

#: ELF machine → the relocation types that fill a global offset table entry with a symbol's address
#: (GLOB_DAT, JUMP_SLOT): x86-64 and AArch64.
_SLOT_RELOCATIONS = {62: (6, 7), 183: (1025, 1026)}

_RTLD_DI_LINKMAP = 2

# the label of the BLAS that CHOLMOD's references now point at (None until sparsax is loaded and bound), and
# what the dynamic linker first put in each slot (for "bundled")
_chosen: str | None = None
_linker_bindings: dict[int, int] = {}
# libraries whose functions CHOLMOD may call: held for the process's life (their code must stay mapped)
_held_libraries: list[ctypes.CDLL] = []


def use_blas(library: str | os.PathLike[str]) -> str:
    """Point CHOLMOD's BLAS and LAPACK calls (``SparseDirect``'s factorisation) at ``library``.

    The binding applies from the next CHOLMOD call of the process; call it between solves, not during one. By
    default (``"scipy"``) CHOLMOD calls SciPy's BLAS, the one JAX's CPU linear algebra uses.

    Args:
        library: ``"scipy"`` (SciPy's BLAS and LAPACK, from ``scipy.linalg.cython_blas`` / ``cython_lapack``),
            ``"bundled"`` (the serial ATLAS in ``sparsax``'s wheel), ``"mkl"`` (the ``mkl`` wheel's runtime,
            ``pip install "jaxnls[mkl]"``, else a system ``libmkl_rt``; switched to its sequential, LP64 layers
            unless ``MKL_THREADING_LAYER`` / ``MKL_INTERFACE_LAYER`` say otherwise), a path to a shared library
            that exports the Fortran-style names (``dgemm_``, ``dpotrf_``, …: OpenBLAS, MKL), or a name that
            ``ctypes.util.find_library`` resolves (``"openblas"``).

    Returns:
        What CHOLMOD now calls: ``"scipy"``, ``"bundled"`` or the library's path (as :func:`blas_in_use`).

    Raises:
        TypeError: ``library`` is neither a string nor a path.
        ValueError: the library cannot be found or loaded, or lacks one of the symbols CHOLMOD calls (copies
            with renamed symbols, such as the ``scipy_``-prefixed OpenBLAS inside NumPy's and SciPy's wheels,
            cannot serve: ``"scipy"`` reaches that one through SciPy's own interface).
        RuntimeError: ``sparsax`` is not installed, or CHOLMOD's references cannot be rebound in this process
            (a platform other than Linux on x86-64 or AArch64, or a ``libcholmod`` that is not an ELF library).
    """
    global _chosen
    if not isinstance(library, (str, os.PathLike)):
        raise TypeError(f"use_blas: library must be a path or a name, got {type(library).__name__}")
    library = os.fspath(library)
    if library == "scipy":
        label, pointers = "scipy", _scipy_functions()
    elif library == "bundled":
        label, pointers = "bundled", None
    else:
        label = _locate(library)
        pointers = _library_functions(label)
    try:
        import sparsax  # noqa: F401  (loads libcholmod, whose references are then bound)
    except ImportError as err:
        raise RuntimeError(f"use_blas({library!r}): sparsax (CHOLMOD) is not installed") from err
    _rebind(_cholmod_slots(), pointers)
    _chosen = label
    return label


def blas_in_use() -> str | None:
    """Which BLAS CHOLMOD calls in this process.

    Returns:
        ``"scipy"`` (the default), ``"bundled"`` (``sparsax``'s ATLAS) or the path :func:`use_blas` was given
        (or found for a name); None before CHOLMOD is first loaded.
    """
    return _chosen


def import_sparsax() -> ModuleType:
    """``sparsax``, its CHOLMOD bound to the BLAS that ``JAXNLS_BLAS`` names, else to SciPy's (see the module)."""
    global _chosen
    import sparsax

    if _chosen is None:
        requested = os.environ.get(BLAS_VARIABLE)
        if requested:
            use_blas(requested)
        elif not sys.platform.startswith("linux"):
            _chosen = "bundled"  # (no global offset table to rewrite: the linker's own binding stands)
        else:
            try:
                use_blas(DEFAULT_BLAS)
            except (RuntimeError, ValueError, OSError) as err:
                warnings.warn(
                    f"jaxnls: CHOLMOD stays on the BLAS bundled with sparsax ({err}); its factorisations are "
                    f"3-4x slower than on SciPy's (set {BLAS_VARIABLE}=bundled to choose that and silence this)",
                    RuntimeWarning,
                    stacklevel=2,
                )
                _chosen = "bundled"
    return sparsax


def _scipy_functions() -> dict[str, int]:
    """The addresses of SciPy's BLAS and LAPACK functions that CHOLMOD calls, from the Cython interface that
    SciPy exports for other compiled code (the same that JAX's CPU LAPACK kernels take): C functions with the
    Fortran calling convention, 32-bit integers."""
    # (Cython modules: no Python-level stubs to import them by name from)
    cython_blas = importlib.import_module("scipy.linalg.cython_blas")
    cython_lapack = importlib.import_module("scipy.linalg.cython_lapack")
    name_of = ctypes.pythonapi.PyCapsule_GetName
    name_of.restype, name_of.argtypes = ctypes.c_char_p, [ctypes.py_object]
    pointer_of = ctypes.pythonapi.PyCapsule_GetPointer
    pointer_of.restype, pointer_of.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    functions = {}
    for symbol in _SYMBOLS:
        module = cython_lapack if symbol == "dpotrf_" else cython_blas
        capsule = module.__pyx_capi__[symbol.removesuffix("_")]
        functions[symbol] = pointer_of(capsule, name_of(capsule))
    return functions


def _library_functions(path: str) -> dict[str, int]:
    try:
        handle = ctypes.CDLL(path)  # local scope: nothing else in the process binds to it
    except OSError as err:
        raise ValueError(f"use_blas: cannot load {path!r}: {err}") from err
    missing = [name for name in _SYMBOLS if not hasattr(handle, name)]
    if missing:
        raise ValueError(
            f"use_blas: {path} does not export {', '.join(missing)} (CHOLMOD calls the plain Fortran names; "
            "a BLAS built with prefixed or suffixed names cannot serve)"
        )
    if hasattr(handle, "MKL_Set_Threading_Layer"):
        _mkl_layers(handle)
    _held_libraries.append(handle)
    return {name: ctypes.cast(getattr(handle, name), ctypes.c_void_p).value or 0 for name in _SYMBOLS}


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


def _cholmod_library() -> str:
    """The path of the ``libcholmod`` that ``sparsax`` loaded (read from ``/proc/self/maps``)."""
    import sparsax

    mapped = set()
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                fields = line.split(maxsplit=5)
                if len(fields) == 6 and os.path.basename(fields[5].strip()).startswith("libcholmod"):
                    mapped.add(os.path.realpath(fields[5].strip()))
    except OSError as err:
        raise RuntimeError(f"CHOLMOD's BLAS cannot be rebound here: {err}") from err
    bundled = os.path.realpath(os.path.join(os.path.dirname(os.path.dirname(sparsax.__file__)), "sparsax.libs"))
    own = sorted(path for path in mapped if os.path.dirname(path) == bundled)
    candidates = own or sorted(mapped)
    if len(candidates) != 1:
        raise RuntimeError(f"CHOLMOD's BLAS cannot be rebound: expected one libcholmod mapped, found {candidates}")
    return candidates[0]


def _cholmod_slots() -> dict[str, list[int]]:
    """The addresses of the global offset table entries through which ``libcholmod`` calls each of ``_SYMBOLS``."""
    path = _cholmod_library()
    offsets = _slot_offsets(path, set(_SYMBOLS))
    missing = [name for name in _SYMBOLS if name not in offsets]
    if missing:
        raise RuntimeError(f"CHOLMOD's BLAS cannot be rebound: {path} has no relocation for {', '.join(missing)}")
    base = _load_address(path)
    return {name: [base + offset for offset in found] for name, found in offsets.items()}


def _slot_offsets(path: str, names: set[str]) -> dict[str, list[int]]:
    """From the ELF file's relocation sections: each symbol's global offset table entries, relative to the load
    address."""
    with open(path, "rb") as file:
        image = file.read()
    if image[:4] != b"\x7fELF" or image[4] != 2 or image[5] != 1:
        raise RuntimeError(f"CHOLMOD's BLAS cannot be rebound: {path} is not a 64-bit little-endian ELF library")
    (machine,) = struct.unpack_from("<H", image, 0x12)
    if machine not in _SLOT_RELOCATIONS:
        raise RuntimeError(f"CHOLMOD's BLAS cannot be rebound: unsupported ELF machine {machine} ({path})")
    (section_table,) = struct.unpack_from("<Q", image, 0x28)
    entry_size, count = struct.unpack_from("<HH", image, 0x3A)
    # (sh_name, sh_type, sh_flags, sh_addr, sh_offset, sh_size, sh_link, sh_info, sh_addralign, sh_entsize)
    sections = [struct.unpack_from("<IIQQQQIIQQ", image, section_table + i * entry_size) for i in range(count)]
    found: dict[str, list[int]] = {}
    for _, kind, _, _, offset, size, link, _, _, _ in sections:
        if kind != 4 or link == 0:  # SHT_RELA with a symbol table
            continue
        symbols_offset = sections[link][4]
        strings_offset = sections[sections[link][6]][4]
        for start in range(offset, offset + size, 24):
            slot, info, _ = struct.unpack_from("<QQq", image, start)
            if info & 0xFFFFFFFF not in _SLOT_RELOCATIONS[machine]:
                continue
            (name_offset,) = struct.unpack_from("<I", image, symbols_offset + 24 * (info >> 32))
            name_start = strings_offset + name_offset
            name = image[name_start : image.index(b"\0", name_start)].decode()
            if name in names:
                found.setdefault(name, []).append(slot)
    return found


def _load_address(path: str) -> int:
    """The loaded library's base address (``l_addr`` of its ``link_map``, from ``dlinfo``)."""
    handle = ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
    libc = ctypes.CDLL(None)
    link_map = ctypes.c_void_p()
    found = libc.dlinfo(ctypes.c_void_p(handle._handle), _RTLD_DI_LINKMAP, ctypes.byref(link_map))
    if found != 0 or not link_map.value:
        raise RuntimeError(f"CHOLMOD's BLAS cannot be rebound: dlinfo failed for {path}")
    return ctypes.c_size_t.from_address(link_map.value).value


class _SymbolInfo(ctypes.Structure):
    _fields_ = [
        ("file", ctypes.c_char_p),
        ("file_base", ctypes.c_void_p),
        ("symbol", ctypes.c_char_p),
        ("symbol_address", ctypes.c_void_p),
    ]


def _function_at(address: int) -> tuple[str, str | None]:
    """The shared object containing ``address`` and the exported symbol it lies in (glibc's ``dladdr``)."""
    info = _SymbolInfo()
    if ctypes.CDLL(None).dladdr(ctypes.c_void_p(address), ctypes.byref(info)) == 0:
        return "", None
    return (info.file or b"").decode(), info.symbol.decode() if info.symbol else None


def cholmod_bindings() -> dict[str, str]:
    """Where CHOLMOD's BLAS and LAPACK calls go now: for each function (``dgemm_``, ``dpotrf_``, …), the shared
    object that holds the address in ``libcholmod``'s global offset table entry for it (glibc's ``dladdr``).

    Returns:
        Function name → file: ``sparsax``'s bundled ``libsatlas`` as the dynamic linker bound it,
        SciPy's ``cython_blas`` / ``cython_lapack`` modules by default, or the library given to :func:`use_blas`.

    Raises:
        RuntimeError: as :func:`use_blas`, where the entries cannot be read (or ``sparsax`` is not installed).
    """
    try:
        import sparsax  # noqa: F401
    except ImportError as err:
        raise RuntimeError("cholmod_bindings: sparsax (CHOLMOD) is not installed") from err
    bindings = {}
    for name, slots in _cholmod_slots().items():
        bindings[name] = _function_at(ctypes.c_void_p.from_address(slots[0]).value or 0)[0]
    return bindings


def _rebind(slots: dict[str, list[int]], functions: dict[str, int] | None) -> None:
    """Write ``functions`` (None: what the dynamic linker bound) into the slots, each checked to hold the linker's
    binding of that very symbol or one jaxnls wrote."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    # every entry checked before any is written: CHOLMOD never calls a mixture of two libraries
    for name, addresses in slots.items():
        for address in addresses:
            current = ctypes.c_void_p.from_address(address).value or 0
            if address not in _linker_bindings and _function_at(current)[1] != name:
                raise RuntimeError(
                    f"CHOLMOD's BLAS cannot be rebound: its {name} entry at {address:#x} does not hold {name}"
                )
            if functions is not None and not functions[name]:
                raise RuntimeError(f"CHOLMOD's BLAS cannot be rebound: no address for {name}")
    for name, addresses in slots.items():
        for address in addresses:
            current = ctypes.c_void_p.from_address(address).value or 0
            _linker_bindings.setdefault(address, current)
            target = _linker_bindings[address] if functions is None else functions[name]
            if current == target:
                continue
            page = address & ~(mmap.PAGESIZE - 1)
            protection = _protection(page)
            if not protection & mmap.PROT_WRITE and libc.mprotect(page, mmap.PAGESIZE, protection | mmap.PROT_WRITE):
                raise RuntimeError(f"CHOLMOD's BLAS cannot be rebound: mprotect: {os.strerror(ctypes.get_errno())}")
            ctypes.c_void_p.from_address(address).value = target
            if not protection & mmap.PROT_WRITE:
                libc.mprotect(page, mmap.PAGESIZE, protection)


def _protection(page: int) -> int:
    """The page's current protection, from ``/proc/self/maps``."""
    with open("/proc/self/maps") as maps:
        for line in maps:
            span, permissions = line.split(maxsplit=2)[:2]
            low, high = (int(bound, 16) for bound in span.split("-"))
            if low <= page < high:
                return (
                    (mmap.PROT_READ if permissions[0] == "r" else 0)
                    | (mmap.PROT_WRITE if permissions[1] == "w" else 0)
                    | (mmap.PROT_EXEC if permissions[2] == "x" else 0)
                )
    raise RuntimeError(f"CHOLMOD's BLAS cannot be rebound: page {page:#x} is not mapped")
