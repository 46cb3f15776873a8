"""The store's files as the readers check them before reading one: inside the store root once links are
resolved, a regular file, of a size a codec can produce. A file that fails is a :class:`DamagedStoreError`.

Shared by the direct chunk reader (:mod:`catalog.chunk_read`) and ``--verify`` (``pipeline/verify.py``).
"""
from __future__ import annotations

import os
import stat

from .store_format import META_FILE

__all__ = ["REBUILD_HINT", "DamagedStoreError", "check_local_files", "file_problem", "refuse_outside", "store_root",
           "truncated_error"]

_FALLBACK_SLACK = 1 << 16  # bytes any codec chain may add to a chunk (headers, checksums, a shard index)


class DamagedStoreError(OSError):
    """A store file that cannot be what the store wrote: a chunk cut short, of another size, not a regular file or
    outside the store, array metadata that disagrees with the catalog. Its message is one line naming the file and
    the fix (``--verify`` rebuilds damaged cases); an OSError, so training's error handling reports it as one
    line even from a DataLoader worker."""


REBUILD_HINT = ("the store is damaged; re-run its build (med3d-prep build-...) with --verify to rebuild the damaged "
                "cases")


def truncated_error(key: str, found: int, expected: int, rule: str) -> DamagedStoreError:
    """The error for a chunk file cut short: the bytes expected and found, the file, and how to heal the store."""
    return DamagedStoreError(f"{key}: chunk file is truncated ({found:,} bytes; {rule} {expected:,}): {REBUILD_HINT}")


def store_root(path: str) -> str:
    """The resolved root of the zarr hierarchy holding the node folder ``path``: its topmost ancestor (or itself)
    whose folder holds a ``zarr.json`` (every group of a zarr v3 store has one). Chunk files must lie inside."""
    top = os.path.abspath(path)
    while True:
        parent = os.path.dirname(top)
        if parent == top or not os.path.isfile(os.path.join(parent, META_FILE)):
            return os.path.realpath(top)
        top = parent


def _leaves(path: str, root: str) -> str | None:
    """Where ``path`` leads, links resolved, when that is outside the folder ``root`` (resolved); else None."""
    real = os.path.realpath(path)
    return None if real == root or real.startswith(root.rstrip(os.sep) + os.sep) else real


def refuse_outside(path: str, root: str, name: str) -> None:
    """Refuse ``path`` (the file ``name`` or a folder on its way) when, links resolved, it lies outside ``root``."""
    real = _leaves(path, root)
    if real is not None:
        raise DamagedStoreError(f"{name}: a symbolic link that leaves the store (to {real}) in place of a chunk "
                                f"file or its folder: {REBUILD_HINT}")


def file_problem(path: str, root: str) -> str | None:
    """Why the store file ``path`` cannot be read as one (None when it can): outside the store root ``root`` once
    links are resolved, missing or a broken link, not a regular file. For ``--verify`` and the fallback path."""
    real = _leaves(path, root)
    if real is not None:
        return f"a symbolic link that leaves the store (to {real})"
    try:
        st = os.stat(path)
    except OSError:
        return "missing (or a broken symbolic link)"
    return None if stat.S_ISREG(st.st_mode) else "not a regular file (a device, pipe or folder)"


def check_local_files(path: str, chunk_bytes: int) -> None:
    """The direct path's file checks for a local array that zarr-python reads (another codec chain): every file
    under its folder inside the store, regular, and at most ``chunk_bytes`` plus what any codec chain may add
    (twice the chunk and 64 KiB: generous, since the chain is not known here, yet bounded)."""
    root, seen = store_root(path), set()
    bound = 2 * chunk_bytes + _FALLBACK_SLACK
    for top, dirs, files in os.walk(path, followlinks=True):
        refuse_outside(top, root, top)
        real = os.path.realpath(top)
        if real in seen:  # a link back up the tree: walk each folder once
            dirs[:] = []
            continue
        seen.add(real)
        for name in files:
            file = os.path.join(top, name)
            problem = file_problem(file, root)
            if problem:
                raise DamagedStoreError(f"{file}: {problem}, in place of a chunk file: {REBUILD_HINT}")
            size = os.path.getsize(file)
            if name != META_FILE and size > bound:
                raise DamagedStoreError(f"{file}: chunk file has {size:,} bytes, more than any codec makes of a "
                                        f"{chunk_bytes:,}-byte chunk: {REBUILD_HINT}")
