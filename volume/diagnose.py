"""Messages for input files that cannot be read: say what the path is and what a user can do about it.

A build meets paths that are not plain files (a symbolic link that loops or points nowhere, ``/dev/zero``, a
named pipe, a folder) and readers that fail with messages written for their own developers (ITK's multi-line
exceptions, Python's ``OverflowError: cannot convert float infinity to integer``). The functions here turn
both into one line that names the file, says what is wrong with it and what to do.
"""
from __future__ import annotations

import errno
import os
import stat

__all__ = ["not_a_file", "one_line", "unreadable_file"]


def not_a_file(path: str | os.PathLike) -> str | None:
    """Why ``path`` is not a regular file that can be read (None when it is one), in words a user can act on:
    missing, a broken or looping symbolic link, a folder, a character or block device, a named pipe, a socket.
    Symbolic links to regular files are regular files."""
    path = os.fspath(path)
    try:
        st = os.stat(path)
    except OSError as exc:
        try:
            is_link = stat.S_ISLNK(os.lstat(path).st_mode)
        except OSError:
            is_link = False
        if exc.errno == errno.ELOOP:
            return "a symbolic link that loops (it points back to itself through other links): fix or remove it"
        if is_link:
            return f"a broken symbolic link (to {os.readlink(path)!r}, which does not exist): fix or remove it"
        if exc.errno == errno.ENOENT or exc.errno == errno.ENOTDIR:
            return "file not found"
        return f"cannot be opened ({exc.strerror}): check its permissions"
    mode = st.st_mode
    if stat.S_ISREG(mode):
        return None
    kind = ("a folder" if stat.S_ISDIR(mode) else
            "a character device (like /dev/zero), not a file" if stat.S_ISCHR(mode) else
            "a block device, not a file" if stat.S_ISBLK(mode) else
            "a named pipe (FIFO), not a file" if stat.S_ISFIFO(mode) else
            "a socket, not a file" if stat.S_ISSOCK(mode) else "not a regular file")
    if os.path.islink(path):
        kind = f"a symbolic link to {os.path.realpath(path)}, {kind}"
    return f"{kind}: point the dataset at the image file itself"


def one_line(exc: BaseException) -> str:
    """An exception's message on one line. ITK's messages span several lines (the source file and line of the
    C++ code that threw, then ``Description: ...``); the line that says what went wrong is the last one."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    for ln in lines:
        if "ERROR:" in ln or ln.startswith("Description:"):
            return ln.split("Description:", 1)[-1].strip()
    return lines[-1]


def unreadable_file(path: str, exc: BaseException) -> str:
    """The failed row's message for a file whose reading failed in a way no check foresaw (an ``OverflowError``
    from a header field, an ITK error): what failed, then what the user can do."""
    return (f"{path}: cannot read the file ({type(exc).__name__}: {one_line(exc)}): it is damaged or in a form we "
            "do not read; check that it opens in a viewer (ITK-SNAP, 3D Slicer) and re-export or re-download it "
            "(if it opens there, report this message as a med3d bug)")


class CaseError(ValueError):
    """A problem with one case's input files (of a build, or a scan given to ``predict``); the message names the
    file."""
