"""The error every reader in :mod:`jaxnls.io` raises for a malformed file, and the line splitting they share."""

from __future__ import annotations


class FileFormatError(ValueError):
    """A problem file that does not follow its format. ``str(err)`` is ``"FILE, line N: what"``; the
    parts are kept as ``path``, ``line`` and ``reason``.

    Args:
        path: the file's name as shown in the message (``"<string>"`` for parsed text).
        line: the 1-based number of the offending line.
        message: what is wrong, kept as ``reason``.
    """

    def __init__(self, path: str, line: int, message: str):
        self.path = path
        self.line = line
        self.reason = message
        super().__init__(f"{path}, line {line}: {message}")


#: What some editors (Windows Notepad among them) write before a file's text: skipped, not a record.
UTF8_BYTE_ORDER_MARK = b"\xef\xbb\xbf"


def without_byte_order_mark(content: bytes) -> bytes:
    """``content`` without a leading UTF-8 byte-order mark."""
    return content[len(UTF8_BYTE_ORDER_MARK) :] if content.startswith(UTF8_BYTE_ORDER_MARK) else content


def ascii_lines(content: bytes, path: str, error: type[FileFormatError], format_name: str) -> list[str]:
    """The lines of a plain-ASCII file (``\\r\\n`` and a leading UTF-8 byte-order mark accepted, the final newline
    dropped); non-ASCII bytes or control characters raise ``error`` naming the line."""
    lines = []
    for number, raw in enumerate(without_byte_order_mark(content).split(b"\n"), start=1):
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            raise error(path, number, f"non-ASCII bytes ({format_name} is plain ASCII text)") from None
        text = text.rstrip("\r")
        if any(ord(c) < 32 and c != "\t" for c in text) or "\x7f" in text:
            raise error(path, number, "control characters in the line")
        lines.append(text)
    if lines and lines[-1] == "":
        lines.pop()  # the final newline
    return lines
