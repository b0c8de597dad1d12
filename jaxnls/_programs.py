r"""Traced solve programs kept on disk between processes (``jax.export``), so that a run of a problem of a kind
and size seen before skips Python tracing and lowering, not only XLA's compilation.

JAX's persistent compilation cache (which the command line turns on) keys compiled programs on their lowered
module, so every process still traces the solve to find its key: on the 16-camera BAL problem 0.5–0.7 s of a
2 s command. A :class:`ProgramStore` keeps the lowered module itself, serialised, under a key computed without
tracing from everything the trace depends on:

- this package's source (a fingerprint of every ``.py`` file in it), the versions of JAX, jaxlib and the packages
  the solve's code comes from (equinox, lineax, jaxlie, optax, sparsax, qdldl), the backend, float64 on or off and
  the compiler options;
- the arguments' static part — the pytree structure with every static field (functions by module, name and
  code; index arrays by content) — and the shapes and dtypes of their arrays.

Anything the key cannot describe (a closure over values it cannot see, an object whose only description is its
memory address) is not stored: the call runs as a plain ``jax.jit`` call. So is a program JAX cannot serialise
(host callbacks: a progress display, ``verbose``, ``throw``, QDLDL's host factorisation), once, after which its
key is remembered as such. Files are written atomically; a file that cannot be read is replaced.

The store is for programs built from this package's own functions (the command line's file problems): a user's
residual function edited between runs would keep its name, and is keyed by its code, but not by the functions
and globals it calls.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import hashlib
import importlib.metadata
import json
import os
import types
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np

from .io import write_atomically

#: The store of the running solve's caller (the command line sets it for its process's solves).
_ACTIVE: contextvars.ContextVar[ProgramStore | None] = contextvars.ContextVar("jaxnls_program_store", default=None)


class _ArraySlot:
    """Where an array of the arguments was: the program's inputs, not part of its key."""

    def __repr__(self):
        return "<array>"


_SLOT = _ArraySlot()


class Unkeyable(Exception):
    """The arguments hold something a key cannot describe reliably across processes."""


@contextlib.contextmanager
def stored_programs(folder: str | os.PathLike[str] | None) -> Iterator[ProgramStore | None]:
    """Within the block, top-level solves that can be stored are exported to / loaded from ``folder`` (None:
    nothing is stored). Needs the ``flatbuffers`` package (JAX's serialisation); without it nothing is stored."""
    store = None
    if folder is not None and _serialisation_available():
        store = ProgramStore(folder)
    token = _ACTIVE.set(store)
    try:
        yield store
    finally:
        _ACTIVE.reset(token)


def active_store() -> ProgramStore | None:
    """The store set by :func:`stored_programs` around this call, or None."""
    return _ACTIVE.get()


class ProgramStore:
    """Exported programs in one folder, one file per key (``KEY.program``), with ``KEY.unexportable`` marking a
    program JAX could not serialise.

    Args:
        folder: the folder (created on the first write).

    Attributes:
        folder: as given.
        loaded: keys loaded from disk in this process (what the tests and the command line's report read).
        exported: keys exported and written in this process.
    """

    def __init__(self, folder: str | os.PathLike[str]):
        self.folder = os.fspath(folder)
        self.loaded: list[str] = []
        self.exported: list[str] = []

    def call(
        self,
        fn: Callable[..., Any],
        args: tuple,
        *,
        compiler_options: dict,
        to_arrays: Callable[[Any], tuple[Any, dict]],
        from_arrays: Callable[[Any, dict], Any],
        fallback: Callable[[], Any],
        allowed_custom_calls: tuple[str, ...] = (),
    ) -> Any:
        """``fn(*args)`` as the store has it, or exported and stored now.

        ``to_arrays(output) -> (arrays, meta)`` splits ``fn``'s output into a tree of arrays in dicts, lists and
        tuples (what ``jax.export`` serialises) and a JSON-able ``meta`` of its static parts, read at trace time;
        ``from_arrays(arrays, meta)`` rebuilds it. ``fallback()`` is the plain call, for arguments the store
        cannot key and programs JAX cannot serialise.
        """
        dynamic, static = _partition(args)
        try:
            key = _key(dynamic, static, compiler_options)
        except Unkeyable:
            return fallback()
        program_path = os.path.join(self.folder, key + ".program")
        if os.path.exists(os.path.join(self.folder, key + ".unexportable")):
            return fallback()
        stored = self._read(program_path)
        if stored is None:
            stored = self._export(fn, dynamic, static, to_arrays, allowed_custom_calls, key)
            if stored is None:
                return fallback()
        else:
            self.loaded.append(key)
        exported, meta = stored
        arrays = jax.jit(exported.call, compiler_options=compiler_options or None)(dynamic)
        return from_arrays(arrays, meta)

    def _read(self, path: str):
        from jax import export

        try:
            with open(path, "rb") as f:
                meta = json.loads(f.readline().decode())
                return export.deserialize(bytearray(f.read())), meta
        except FileNotFoundError:
            return None
        except Exception:  # a truncated or foreign file: export again and replace it
            return None

    def _export(self, fn, dynamic, static, to_arrays, allowed_custom_calls, key):
        from jax import export

        meta: dict = {}

        def flat(dynamic):
            arrays, meta_now = to_arrays(fn(*_combine(dynamic, static)))
            meta.update(meta_now)
            return arrays

        checks = [export.DisabledSafetyCheck.custom_call(name) for name in allowed_custom_calls]
        try:
            exported = export.export(jax.jit(flat), disabled_checks=checks)(dynamic)
            blob = exported.serialize()
        except Exception:  # host callbacks and other custom calls cannot be serialised: remember, run plainly
            self._write(key + ".unexportable", b"")
            return None
        self._write(key + ".program", json.dumps(meta).encode() + b"\n" + bytes(blob))
        self.exported.append(key)
        return exported, meta

    def _write(self, name: str, content: bytes) -> None:
        try:
            os.makedirs(self.folder, exist_ok=True)
            write_atomically(os.path.join(self.folder, name), content)
        except OSError:  # a read-only or full cache folder: the run goes on without storing
            pass


def program_key(args: tuple, compiler_options: dict) -> str:
    """The store's key of a call with ``args`` (see the module docstring), a hex SHA-256.

    Raises:
        Unkeyable: ``args`` hold something without a description that is stable across processes.
    """
    return _key(*_partition(args), compiler_options)


def _key(dynamic: list, static: tuple, compiler_options: dict) -> str:
    avals = [(tuple(leaf.shape), str(leaf.dtype), bool(getattr(leaf, "weak_type", False))) for leaf in dynamic]
    description = {
        "package": _package_fingerprint(),
        "jax": jax.__version__,
        "jaxlib": importlib.metadata.version("jaxlib"),
        "packages": _package_versions(),
        "backend": jax.default_backend(),
        "x64": bool(jax.config.read("jax_enable_x64")),
        "compiler_options": sorted((str(k), repr(v)) for k, v in compiler_options.items()),
        "static": _describe_treedef(jax.tree_util.tree_structure(static)),
        "static_leaves": [_describe(leaf) for leaf in jax.tree_util.tree_leaves(static)],
        "arrays": avals,
    }
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()


def _partition(args: tuple) -> tuple[list, tuple]:
    """The array leaves of ``args`` (what the program takes), and ``args`` with each replaced by a slot marker."""
    leaves, treedef = jax.tree_util.tree_flatten(args)
    is_array = [isinstance(leaf, (jax.Array, np.ndarray)) for leaf in leaves]
    dynamic = [leaf for leaf, array in zip(leaves, is_array) if array]
    static = jax.tree_util.tree_unflatten(treedef, [_SLOT if array else leaf for leaf, array in zip(leaves, is_array)])
    return dynamic, static


def _combine(dynamic: list, static: tuple) -> tuple:
    leaves, treedef = jax.tree_util.tree_flatten(static)
    supply = iter(dynamic)
    return jax.tree_util.tree_unflatten(treedef, [next(supply) if leaf is _SLOT else leaf for leaf in leaves])


def _describe_treedef(treedef) -> Any:
    if treedef.num_nodes == 1 and treedef.num_leaves == 1:
        return "*"
    node_type, aux = treedef.node_data()
    return [_describe(node_type), _describe(aux), [_describe_treedef(child) for child in treedef.children()]]


def _describe(obj: Any) -> Any:
    """A JSON-able description of ``obj`` that is the same in every process exactly when ``obj`` would trace the
    same program; raises :class:`Unkeyable` where there is none."""
    if obj is _SLOT:
        return "<array>"
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return [type(obj).__name__, repr(obj)]
    if isinstance(obj, (tuple, list)):
        return [type(obj).__name__, [_describe(item) for item in obj]]
    if isinstance(obj, dict):
        return ["dict", sorted((repr(k), _describe(v)) for k, v in obj.items())]
    if isinstance(obj, (np.ndarray, np.generic, jax.Array)):  # (a constant a function closes over, say)
        array = np.ascontiguousarray(obj)
        return ["array", array.shape, array.dtype.str, hashlib.sha256(array.tobytes()).hexdigest()]
    if hasattr(obj, "content_key"):  # an index array held as a static value (jaxnls.graph)
        return ["content", repr(obj.content_key)]
    if isinstance(obj, type):
        return ["type", obj.__module__, obj.__qualname__]
    if isinstance(obj, np.dtype):
        return ["dtype", obj.str]
    if isinstance(obj, types.FunctionType):
        return [
            "function",
            obj.__module__,
            obj.__qualname__,
            _describe_code(obj.__code__),
            [_describe(cell.cell_contents) for cell in obj.__closure__ or ()],
            _describe(obj.__defaults__),
        ]
    if isinstance(obj, functools.partial):
        return ["partial", _describe(obj.func), _describe(obj.args), _describe(obj.keywords)]
    text = repr(obj)
    if " at 0x" in text or " object at " in text or "..." in text:  # an address, or a summary that elides
        raise Unkeyable(f"no stable description of {type(obj).__qualname__}")
    return ["repr", type(obj).__module__, type(obj).__qualname__, text]


def _describe_code(code: types.CodeType) -> str:
    parts = [code.co_code, repr(code.co_names).encode()]
    for const in code.co_consts:
        parts.append(_describe_code(const).encode() if isinstance(const, types.CodeType) else repr(const).encode())
    return hashlib.sha256(b"\0".join(parts)).hexdigest()


#: Packages whose code the traced solve contains (sparsax: whether CHOLMOD's FFI is there to call at all).
_TRACED_PACKAGES = ("equinox", "lineax", "jaxlie", "optax", "sparsax", "qdldl")


@functools.cache
def _package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in _TRACED_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


@functools.cache
def _package_fingerprint() -> str:
    root = os.path.dirname(os.path.abspath(__file__))
    digest = hashlib.sha256()
    for folder, subfolders, files in sorted(os.walk(root)):
        subfolders.sort()
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                digest.update(os.path.relpath(path, root).encode() + b"\0")
                with open(path, "rb") as f:
                    digest.update(f.read())
    return digest.hexdigest()


@functools.cache
def _serialisation_available() -> bool:
    try:
        import flatbuffers  # noqa: F401  # jax.export's serialisation needs it
    except ImportError:
        return False
    return True
