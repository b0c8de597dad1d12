"""The documentation: every notebook runs top to bottom, the site builds offline with ``mkdocs build --strict``
from those executed notebooks, the API reference names every public name, and the code in the pages runs.

Each notebook is executed once (nbclient, kernel python3, in notebooks/) and its executed copy written to
build/notebooks/ (git-ignored; the committed notebook is never touched); the site build renders those copies
(docs/_hooks.py), so CI runs no notebook twice. The whole module is one xdist group: the notebooks run first,
then the build, on one worker.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import os
import pkgutil
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import WITHOUT_LLVM_PASSES

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
CELL_TIMEOUT = 1800  # seconds per cell (the longest takes ~20 s on 2 cores)
#: The suite's flag that compiles without LLVM's optimisation passes (conftest.WITHOUT_LLVM_PASSES) is left out of
#: the kernels of the notebooks whose solves run long enough for the passes to pay: the pose
#: graph's w10000 solves took the notebook 50-56 s with it, 34-39 s without; the others run faster with it
#: (03: 17 vs 34 s, 04: 14 vs 17 s, 05: 24 vs 31 s; benchmarks/README.md (au)).
OPTIMISED_NOTEBOOKS = {"06_pose_graph.ipynb"}

pytestmark = pytest.mark.xdist_group("docs")


def _load_hooks():
    """docs/_hooks.py, which decides which executed copy the site renders (the same rule here)."""
    spec = importlib.util.spec_from_file_location("jaxnls_docs_hooks", DOCS / "_hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


hooks = _load_hooks()


def execute_notebook(notebook: Path) -> None:
    """Run ``notebook`` top to bottom in a fresh python3 kernel (cwd: its folder) and write the executed copy,
    tagged with the digest of the notebook it came from, to build/notebooks/; a failing cell fails the test
    with the cell's source and error."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(notebook, as_version=4)
    client = NotebookClient(
        nb,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        resources={"metadata": {"path": str(notebook.parent)}},
        coalesce_streams=True,  # a progress bar's redraws (carriage returns) kept as its last line
    )
    env = dict(os.environ)
    if notebook.name in OPTIMISED_NOTEBOOKS:
        env["XLA_FLAGS"] = " ".join(flag for flag in env.get("XLA_FLAGS", "").split() if flag != WITHOUT_LLVM_PASSES)
    try:
        client.execute(env=env)
    except CellExecutionError as err:
        message = re.sub(r"\x1b\[[0-9;]*m", "", str(err))  # the traceback without its terminal colours
        pytest.fail(f"{notebook.name}: a cell failed\n{message}", pytrace=False)
    nb.metadata[hooks.METADATA_KEY] = {"source_sha256": hooks.source_sha256(notebook)}
    hooks.EXECUTED.mkdir(parents=True, exist_ok=True)
    partial = hooks.EXECUTED / f".{notebook.name}.{os.getpid()}.partial"
    nbformat.write(nb, partial)
    os.replace(partial, hooks.EXECUTED / notebook.name)  # whole or not at all


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs(notebook):
    execute_notebook(notebook)


# a control character other than a line break in prose: the trace of a LaTeX escape read as a Python or JSON escape
# (``$\rho`` written into a notebook's JSON as ``"$\rho"`` becomes a carriage return and "ho"; ``\top`` a tab)
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]")


def test_notebooks_and_pages_hold_no_control_characters():
    texts = {f"{nb.name} cell {i}": "".join(cell["source"]) for nb in NOTEBOOKS for i, cell in enumerate(_cells(nb))}
    texts.update({str(page.relative_to(ROOT)): page.read_text(encoding="utf-8") for page in _pages()})
    found = [
        f"{where}: {text[max(0, m.start() - 30) : m.end() + 20]!r}"
        for where, text in texts.items()
        for m in _CONTROL.finditer(text)
    ]
    assert not found, "control characters (a LaTeX escape read as a string escape?):\n" + "\n".join(found)


def _cells(notebook: Path) -> list[dict]:
    return json.loads(notebook.read_text(encoding="utf-8"))["cells"]


def _pages() -> list[Path]:
    return [*sorted(DOCS.rglob("*.md")), ROOT / "README.md", ROOT / "CHANGELOG.md", ROOT / "benchmarks" / "README.md"]


# ------------------------------------------------------------------------------------------------ the site

# a reference that makes a browser fetch something from another host: scripts, stylesheets, fonts, images,
# frames and ES-module imports, with or without a scheme
_EXTERNAL = re.compile(
    r"""<(?:script|img|iframe|source|audio|video)\b[^>]*\bsrc\s*=\s*["']?(?:https?:)?//"""
    r"""|<link\b[^>]*\bhref\s*=\s*["']?(?:https?:)?//"""
    r"""|\bimport\(\s*["'](?:https?:)?//|@import\s+(?:url\()?\s*["']?(?:https?:)?//|\burl\(\s*["']?(?:https?:)?//""",
    re.IGNORECASE,
)

# mkdocs run with every outgoing connection refused: the build must not need the network
_OFFLINE_MKDOCS = """
import socket, sys, runpy

def refuse(*args, **kwargs):
    raise OSError("tests/test_docs.py: the docs build must not use the network")

socket.socket.connect = socket.socket.connect_ex = refuse
socket.create_connection = socket.getaddrinfo = refuse
sys.argv = ["mkdocs", *sys.argv[1:]]
runpy.run_module("mkdocs", run_name="__main__")
"""


def test_site_builds_offline_with_strict(tmp_path):
    for notebook in NOTEBOOKS:  # run alone (or after a notebook changed): execute what has no current copy
        if hooks.executed_copy(notebook) is None:
            execute_notebook(notebook)
    site = tmp_path / "site"
    env = {**os.environ, hooks.REQUIRE_EXECUTED: "1", "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [sys.executable, "-c", _OFFLINE_MKDOCS, "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout[-5000:]}\n{result.stderr[-20000:]}"

    pages = {p.relative_to(site).as_posix(): p.read_text(encoding="utf-8") for p in site.rglob("*.html")}
    fetching = {name: _EXTERNAL.findall(text)[:3] for name, text in pages.items() if _EXTERNAL.search(text)}
    assert not fetching, f"pages that load something from another host: {fetching}"
    for notebook in NOTEBOOKS:  # rendered from the executed copies: with their outputs
        page = pages[f"notebooks/{notebook.stem}/index.html"]
        assert "jp-OutputArea-output" in page, f"{notebook.name} was rendered without outputs"
    benchmarks = pages["benchmarks/index.html"]  # benchmarks/README.md included, not copied
    first_line = (ROOT / "benchmarks" / "README.md").read_text(encoding="utf-8").splitlines()[0].lstrip("# ")
    assert first_line in benchmarks


# ----------------------------------------------------------------------------------------- API reference


def _all_of(path: Path) -> list[str] | None:
    """A module's ``__all__`` read from its source (nothing imported: jaxnls.nn.flax needs flax)."""
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        targets = (
            node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        )
        if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
            return list(ast.literal_eval(node.value))
    return None


def public_modules() -> dict[str, list[str]]:
    """Every public module of jaxnls (no part of its name starts with ``_``) that has an ``__all__``."""
    import jaxnls

    found = {"jaxnls": _all_of(Path(jaxnls.__file__))}
    for info in pkgutil.walk_packages(jaxnls.__path__, "jaxnls."):
        if any(part.startswith("_") for part in info.name.split(".")):
            continue
        origin = importlib.util.find_spec(info.name).origin
        names = _all_of(Path(origin)) if origin else None
        if names is not None:
            found[info.name] = names
    return found


def _api_pages() -> tuple[set[str], str]:
    """The identifiers of the ``::: identifier`` directives of docs/api/*.md, and the pages' text."""
    text = "\n".join(p.read_text(encoding="utf-8") for p in sorted((DOCS / "api").glob("*.md")))
    return set(re.findall(r"^:::\s+([\w.]+)\s*$", text, re.MULTILINE)), text


def _resolve(identifier: str):
    module, _, name = identifier.rpartition(".")
    try:
        return importlib.import_module(identifier)
    except ImportError:
        return getattr(importlib.import_module(module), name)


def test_api_reference_names_every_public_name():
    """Each name of a public ``__all__`` is rendered (``::: module.name``), or is the same object as one that is
    and either appears as ``module.name`` in the reference or is re-exported by the module's parent package
    (jaxnls.io.nist.read_nist is jaxnls.io.read_nist). Each public subpackage has its page."""
    directives, text = _api_pages()
    modules = public_modules()
    assert {"jaxnls", "jaxnls.graph", "jaxnls.io", "jaxnls.linalg", "jaxnls.meta", "jaxnls.swat"} <= set(modules)
    rendered = [_resolve(identifier) for identifier in directives if not identifier.startswith("jaxnls.nn.flax")]
    missing = []
    for module_name, names in modules.items():
        if module_name.count(".") == 1 and module_name not in directives:
            missing.append(f"{module_name} (no page: `::: {module_name}`)")
        parent = module_name.rpartition(".")[0]
        for name in names:
            qualified = f"{module_name}.{name}"
            if qualified in directives:
                continue
            obj = getattr(importlib.import_module(module_name), name)
            same_as_rendered = any(obj is other for other in rendered)
            reexported = parent in modules and name in modules[parent] and same_as_rendered
            if not (same_as_rendered and (re.search(rf"\b{re.escape(qualified)}\b", text) or reexported)):
                missing.append(qualified)
    assert not missing, f"public names missing from docs/api/*.md: {missing}"


# ---------------------------------------------------------------------------------- code in the doc pages

_FENCE = re.compile(
    r"^(?P<indent>[ \t]*)```(?P<info>[^\n`]*)\n(?P<code>.*?)^(?P=indent)```[ \t]*$", re.MULTILINE | re.DOTALL
)
SKIP = "<!-- skip -->"  # on the line before a ```python block: shown, not run (CONTRIBUTING.md)


def python_blocks(page: Path) -> list[tuple[int, str]]:
    """The ```python blocks of a page that run, as (line number, dedented code), in page order."""
    text = page.read_text(encoding="utf-8")
    blocks = []
    for match in _FENCE.finditer(text):
        if match["info"].strip().split(" ")[0] != "python":
            continue
        before = text[: match.start()].rstrip().splitlines()
        if before and before[-1].strip() == SKIP:
            continue
        line = text.count("\n", 0, match.start("code")) + 1
        blocks.append((line, textwrap.dedent(match["code"])))
    return blocks


PAGES = [p for p in sorted(DOCS.rglob("*.md")) if python_blocks(p)]


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(DOCS).as_posix() for p in PAGES])
def test_page_code_runs(page, tmp_path):
    """A page's python blocks, in order, as one script in a fresh interpreter (from the repository root, so
    tests/data is where the pages say): what a reader who pastes them one after another gets."""
    script = tmp_path / f"{page.stem}.py"
    script.write_text(
        "\n".join(f"# {page.relative_to(ROOT)}, line {line}\n{code}" for line, code in python_blocks(page)),
        encoding="utf-8",
    )
    result = subprocess.run(
        [sys.executable, str(script)], cwd=ROOT, capture_output=True, text=True, timeout=900, env=dict(os.environ)
    )
    assert result.returncode == 0, f"{page.relative_to(ROOT)}'s code failed:\n{result.stderr[-8000:]}"
