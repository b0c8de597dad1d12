"""The error every reader in :mod:`jaxnls.io` raises for a malformed file."""

from __future__ import annotations


class FileFormatError(ValueError):
    """A problem file that does not follow its format. ``str(err)`` is ``"FILE, line N: what"``; the
    parts are kept as ``path``, ``line`` and ``reason``."""

    def __init__(self, path: str, line: int, message: str):
        self.path = path
        self.line = line
        self.reason = message
        super().__init__(f"{path}, line {line}: {message}")
