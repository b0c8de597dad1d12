"""Writing a file so that its old content survives any failure: all of the new content, or none of it."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile


def write_atomically(path: str | os.PathLike, text: str | bytes, encoding: str = "ascii") -> None:
    """Write ``text`` (or raw ``bytes``) to ``path`` through a temporary file in the same folder, flushed to disk (fsync) and
    renamed over ``path`` only when complete: a full disk, a file-size limit or an interruption leaves
    whatever was at ``path`` untouched (and no temporary file behind). The file gets the mode of the one it
    replaces, or the usual mode under the umask. An existing ``path`` that is not a regular file (a
    directory, a device such as /dev/full, a FIFO) is refused rather than replaced.

    Args:
        path: the file to create or replace.
        text: its whole new content: a string, or bytes written as they are.
        encoding: the text encoding of a string (default ``"ascii"``: the readers' formats are plain ASCII).

    Raises:
        OSError: ``path`` exists and is not a regular file, or the write, flush or rename failed (``path``
            is then unchanged).
        UnicodeEncodeError: ``text`` does not fit ``encoding`` (``path`` is then unchanged).
    """
    path = os.fspath(path)
    content = text if isinstance(text, bytes) else text.encode(encoding)
    try:
        existing = os.stat(path)
    except FileNotFoundError:
        existing = None
    if existing is not None and not stat.S_ISREG(existing.st_mode):
        raise OSError(errno.EINVAL, "exists and is not a regular file; refusing to replace it", path)
    if existing is not None:
        mode = stat.S_IMODE(existing.st_mode)
    else:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    folder = os.path.dirname(os.path.abspath(path))
    descriptor, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    with contextlib.suppress(OSError):  # the rename itself survives a crash once the folder is on disk
        folder_descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(folder_descriptor)
        finally:
            os.close(folder_descriptor)
