"""Writing a file so that readers see the old one or the new one, never half of one: a temporary file in the same
folder, then a rename. The file gets the usual permissions (0666 less the umask), not ``mkstemp``'s 0600, so
other users and cluster workers under another uid can read a store's tables and a weights card.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable

__all__ = ["usual_mode", "write_atomic"]


def _read_umask() -> int:
    # Reading the umask means setting it; done once at import, before any worker threads write files.
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def usual_mode() -> int:
    """The mode a plain ``open(path, "w")`` would give a new file: 0666 less the process's umask."""
    return 0o666 & ~_UMASK


def write_atomic(path: str | os.PathLike[str], write: Callable[[str], None], suffix: str = "") -> None:
    """``write(tmp)`` writes the whole file at a temporary path beside ``path``; it then gets :func:`usual_mode`
    and replaces ``path`` in one rename. On any error the temporary file is removed and ``path`` is untouched."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=folder)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, usual_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
