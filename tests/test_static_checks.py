"""Static checks of the source tree: pyright (basic mode, configured in pyrightconfig.json) finds no type
error in the package, and ruff's linter and formatter (configured in pyproject.toml) pass on the tree.

Both tools run as subprocesses of the running interpreter (``python -m pyright``, ``python -m ruff``) from
the repository root; a test is skipped, saying so, where its tool is not installed (both come with the
``test`` extra). pyright is told to resolve imports in this interpreter's environment, whatever is on PATH,
and not to look for a newer release (no network).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.xdist_group("static")


def _require(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed (pip install -e '.[test]' installs it)")


def _run(*command: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *command], cwd=ROOT, capture_output=True, text=True, timeout=600, env=env
    )


# (slow: ~25 s: pyright over the whole project; ruff's checks stay in the default set; moved out of the default set to
# keep it within 10 minutes on 2 cores, benchmarks/README.md (at); CI runs the slow set)
@pytest.mark.slow
def test_pyright_reports_no_errors():
    _require("pyright")
    assert (ROOT / "pyrightconfig.json").is_file()
    env = dict(os.environ, PYRIGHT_PYTHON_IGNORE_WARNINGS="1")  # no version check against PyPI
    result = _run("pyright", "--outputjson", "--pythonpath", sys.executable, env=env)
    try:
        report = json.loads(result.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"pyright did not run (exit {result.returncode}):\n{result.stdout}\n{result.stderr}")
    errors = [d for d in report["generalDiagnostics"] if d["severity"] == "error"]
    if importlib.util.find_spec("flax") is None:
        # flax is an optional extra ("jaxnls[flax]"); without it pyright resolves ``from flax import nnx`` in
        # jaxnls/nn/flax.py to that file itself and cannot know nnx's types: that module is checked where
        # flax is installed
        errors = [d for d in errors if Path(d["file"]).resolve() != ROOT / "jaxnls" / "nn" / "flax.py"]
    lines = [
        f"{Path(d['file']).relative_to(ROOT)}:{d['range']['start']['line'] + 1}:"
        f"{d['range']['start']['character'] + 1}: {d['message']} ({d.get('rule', 'no rule')})"
        for d in errors
    ]
    assert report["summary"]["filesAnalyzed"] > 0, result.stdout
    assert not errors, f"pyright {report['version']}:\n" + "\n".join(lines)


def test_ruff_check_passes():
    _require("ruff")
    result = _run("ruff", "check", "--output-format", "concise", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format_check_passes():
    _require("ruff")
    result = _run("ruff", "format", "--check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def _public_modules():
    import pkgutil

    import jaxnls

    modules = [jaxnls]
    for info in pkgutil.walk_packages(jaxnls.__path__, "jaxnls."):
        if any(part.startswith("_") for part in info.name.split(".")) or importlib.util.find_spec(info.name) is None:
            continue
        try:
            module = importlib.import_module(info.name)
        except ImportError:  # an optional extra's module (jaxnls.nn.flax without flax)
            continue
        if hasattr(module, "__all__"):
            modules.append(module)
    return modules


def _unannotated(qualname: str, function) -> list[str]:
    """The parameters (but self / cls) and the return of ``function`` that carry no annotation."""
    import inspect

    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):  # a builtin without a signature
        return []
    missing = [
        f"{qualname}: parameter {name}"
        for name, parameter in signature.parameters.items()
        if name not in ("self", "cls") and parameter.annotation is inspect.Parameter.empty
    ]
    if signature.return_annotation is inspect.Signature.empty and function.__name__ != "__init__":
        missing.append(f"{qualname}: return")
    return missing


def _api_annotation_gaps(names: dict[str, object]) -> list[str]:
    """Every public function, hand-written constructor and public method (properties included) of the
    given ``qualified name -> object`` map that lacks an annotation. Module fields need no check here:
    Equinox modules and dataclasses declare every field with its type."""
    import enum
    import inspect
    import types

    gaps = []
    for qualname, obj in names.items():
        if isinstance(obj, types.ModuleType):
            continue
        if inspect.isfunction(obj):
            gaps += _unannotated(qualname, obj)
        elif inspect.isclass(obj) and not issubclass(obj, enum.Enum):
            for name, member in vars(obj).items():
                if name.startswith("_") and name != "__init__":
                    continue
                function = member.fget if isinstance(member, property) else getattr(member, "__func__", member)
                generated = getattr(function, "__module__", None) != obj.__module__  # a dataclass's __init__
                if inspect.isfunction(function) and not generated:
                    gaps += _unannotated(f"{qualname}.{name}", function)
    return gaps


def test_public_api_is_annotated():
    names = {f"{m.__name__}.{n}": getattr(m, n) for m in _public_modules() for n in m.__all__}
    assert len(names) > 100, sorted(names)
    gaps = _api_annotation_gaps(names)
    assert not gaps, "unannotated public API:\n" + "\n".join(sorted(set(gaps)))


def test_the_annotation_check_finds_gaps():
    def typed(x: int, *, y: float = 0.0) -> float:
        return x + y

    def untyped(x, y: float = 0.0):
        return x

    class Config:
        def __init__(self, size):
            self.size = size

        def scaled(self, factor: float) -> float:
            return self.size * factor

        @property
        def doubled(self):
            return 2 * self.size

    gaps = _api_annotation_gaps({"typed": typed, "untyped": untyped, "Config": Config})
    assert sorted(gaps) == [
        "Config.__init__: parameter size",
        "Config.doubled: return",
        "untyped: parameter x",
        "untyped: return",
    ]
