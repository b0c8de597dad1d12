"""MkDocs hooks (``hooks:`` in mkdocs.yml): the notebooks as pages, without CDN scripts.

The notebooks live in ``notebooks/``, outside the docs folder. Each becomes the page ``notebooks/NAME/``,
rendered by mkdocs-jupyter (``execute: false``) from the copy that tests/test_docs.py executed and wrote to
``build/notebooks/NAME.ipynb``. That copy records the SHA-256 of the notebook it was executed from and is
used only while it matches. A notebook without a current executed copy is rendered as committed (with the
outputs saved in it) and the build says so, or, with ``JAXNLS_DOCS_REQUIRE_EXECUTED=1`` (the test's build),
fails.

nbconvert's page template loads MathJax and mermaid.js from a CDN; both are removed from the notebook
pages (the site makes no network requests; TeX in markdown cells shows as written).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.plugins import event_priority
from mkdocs.structure.files import File

log = logging.getLogger("mkdocs.hooks.jaxnls")

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
EXECUTED = ROOT / "build" / "notebooks"  # where tests/test_docs.py writes the executed copies
REQUIRE_EXECUTED = "JAXNLS_DOCS_REQUIRE_EXECUTED"
METADATA_KEY = "jaxnls_docs"  # notebook metadata of an executed copy: {"source_sha256": ...}

# nbconvert's lab template: the MathJax loader and configuration, and the mermaid.js module loader
_CDN_BLOCKS = (
    re.compile(r"<!-- Load mathjax -->.*?<!-- End of mathjax configuration -->", re.DOTALL),
    re.compile(r'<script type="module">(?:(?!</script>).)*?mermaid.*?<!-- End of mermaid configuration -->', re.DOTALL),
)


def source_sha256(notebook: Path) -> str:
    """The digest an executed copy records of the notebook it was executed from."""
    return hashlib.sha256(notebook.read_bytes()).hexdigest()


def executed_copy(notebook: Path, folder: Path = EXECUTED) -> Path | None:
    """``folder / notebook.name`` if it was executed from the notebook as it is now, else None."""
    copy = folder / notebook.name
    try:
        metadata = json.loads(copy.read_text(encoding="utf-8")).get("metadata", {})
    except (OSError, ValueError):
        return None
    if metadata.get(METADATA_KEY, {}).get("source_sha256") != source_sha256(notebook):
        return None
    return copy


@event_priority(100)  # before mkdocs-jupyter's on_files turns the .ipynb files into pages
def on_files(files, config):
    required = os.environ.get(REQUIRE_EXECUTED, "") not in ("", "0")
    for notebook in sorted(NOTEBOOKS.glob("*.ipynb")):
        source = executed_copy(notebook, EXECUTED)
        if source is None:
            if required:
                raise PluginError(
                    f"{REQUIRE_EXECUTED}: {EXECUTED} has no executed copy of {notebook.name} made from the notebook "
                    "as it is now (python -m pytest tests/test_docs.py writes them)"
                )
            log.info("%s: no current executed copy in %s; rendering it as committed", notebook.name, EXECUTED)
            source = notebook
        # a file of the docs' notebooks/ folder (the page notebooks/NAME/) read from source's folder
        files.append(
            File(f"notebooks/{notebook.name}", str(source.parent.parent), config.site_dir, config.use_directory_urls)
        )
    return files


def on_page_content(html, page, config, files):
    if page.file.src_uri.startswith("notebooks/") and page.file.src_uri.endswith(".ipynb"):
        for block in _CDN_BLOCKS:
            html = block.sub("", html)
    return html
