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
