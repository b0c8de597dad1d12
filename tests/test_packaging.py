"""The wheel a user installs: built from the source tree, installed into a fresh virtual environment, and
``jaxnls demo`` (the README's main job) run from that environment's own entry point.

The fresh environment borrows the running interpreter's dependencies (jax, equinox, ...) through a path
file, so nothing is downloaded; jaxnls itself must come from the wheel, which the test checks by where it
is imported from. The wheel is built from a copy of the tree so the checkout gains no build folders.
"""

from __future__ import annotations

import email.parser
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
#: What the wheel must carry besides the Python modules (package data read at run time, the typing marker,
#: the licence).
PACKAGE_DATA = ("jaxnls/py.typed", "jaxnls/data/Eckerle4.dat", "jaxnls/data/README.md", "jaxnls/swat/pretrained.eqx")

pytestmark = pytest.mark.xdist_group("packaging")


def _run(command, **kwargs):
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, **kwargs)
    assert result.returncode == 0, f"{' '.join(map(str, command))} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    source = tmp_path_factory.mktemp("source")
    shutil.copytree(ROOT / "jaxnls", source / "jaxnls", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    dist = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-w", str(dist)])
    (built,) = dist.glob("jaxnls-*.whl")
    return built


def test_wheel_carries_package_data_licence_and_entry_point(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (metadata_name,) = (n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = email.parser.Parser().parsestr(archive.read(metadata_name).decode())
        (entry_points_name,) = (n for n in names if n.endswith(".dist-info/entry_points.txt"))
        entry_points = archive.read(entry_points_name).decode()
    assert set(PACKAGE_DATA) <= names, set(PACKAGE_DATA) - names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), sorted(names)
    assert metadata["License-Expression"] == "Apache-2.0"
    assert "jaxnls = jaxnls.__main__:console" in entry_points
    # the sources of the modules the package imports are all there (nothing left to the checkout)
    sources = {p.relative_to(ROOT).as_posix() for p in (ROOT / "jaxnls").rglob("*.py")}
    assert sources <= names, sources - names


def _wheel_version(wheel: Path) -> str:
    with zipfile.ZipFile(wheel) as archive:
        (metadata_name,) = (n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        return email.parser.Parser().parsestr(archive.read(metadata_name).decode())["Version"]


def test_wheel_installs_in_a_fresh_environment_and_runs_the_demo(wheel, tmp_path):
    environment = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(environment)])
    python = environment / "bin" / "python"
    own_site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    # the wheel first, while the environment sees nothing else (pip would take a jaxnls installed in this
    # interpreter's site-packages for the requirement already satisfied) ...
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)])
    # ... then the dependencies from this interpreter's site-packages, after the fresh environment's own
    (own_site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    located = _run([python, "-c", "import jaxnls; print(jaxnls.__file__, jaxnls.__version__)"], cwd=tmp_path)
    imported_from, version = located.stdout.split()
    assert Path(imported_from).is_relative_to(own_site), imported_from
    assert version == _wheel_version(wheel)  # jaxnls.__version__ and pyproject's version agree

    demo = _run([environment / "bin" / "jaxnls", "demo"], cwd=tmp_path)
    assert "(1024 converged fits of 1024)" in demo.stdout, demo.stdout


def test_importing_jaxnls_leaves_optax_until_a_subpackage_that_needs_it_is_used():
    code = (
        "import sys, jaxnls\n"
        "assert 'optax' not in sys.modules and 'jaxnls.meta' not in sys.modules\n"
        "from jaxnls import meta\n"
        "assert 'optax' in sys.modules and jaxnls.meta is meta and jaxnls.optim.__name__ == 'jaxnls.optim'\n"
        "assert jaxnls.nn is sys.modules['jaxnls.nn']\n"
        "try:\n    jaxnls.no_such_name\nexcept AttributeError as err:\n    assert 'no_such_name' in str(err)\n"
        "else:\n    raise SystemExit('no AttributeError')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert done.returncode == 0, done.stderr
