"""The on-disk rules of a Med3D store that both halves read: the completion marker and the metadata of a node.

A store is a zarr v3 hierarchy (layout: ``pipeline/store.py``). Every group and array has a ``zarr.json``: a
group's holds its attributes under ``"attributes"``, an array's also its shape, chunk grid, data type and codecs.
A case counts once its group's attributes hold :data:`MARKER` (written last: object stores have no atomic rename).

:func:`node_meta` is the one reader of a node's ``zarr.json``, for a local folder (a plain path or ``file://``
URL: read directly, ~0.05 ms, against ~1.5 ms through zarr-python's async machinery) and for every other fsspec
URL (``s3://``, ``gs://``, ``memory://``...: one GET, retried on transient errors as :mod:`catalog.retry` says).

>>> node_meta("data/store", "liver", "liver_7")["attributes"][MARKER]["written_at"]
>>> node_meta("s3://bucket/store", "liver", "liver_7", "image")["data_type"]
"""
from __future__ import annotations

import json
import os
import stat
from typing import Any

from .io import is_local, store_join
from .retry import retry_call

__all__ = ["MARKER", "local_folder", "node_meta"]

_MAX_META_BYTES = 64 << 20  # a case's marker lists its files: ~40 bytes each, so megabytes for the largest cases

MARKER = "med3d_complete"
"""Key of a case group's attributes that holds its completion record; written last, so its presence means done."""


def node_meta(store: str | os.PathLike[str], *parts: str, required: bool = False) -> dict[str, Any] | None:
    """The ``zarr.json`` of the node ``parts`` of ``store`` (a local path or any fsspec URL) as a dict.

    A node that does not exist, or whose ``zarr.json`` is torn (a crash mid-write) or not a JSON object, gives
    None, or with ``required`` a ValueError naming the file. A remote read that keeps failing with a transient
    error (503, reset connection) is raised as it is: the node is not missing then, the backend is failing.
    """
    path = store_join(os.fspath(store), *parts, "zarr.json")
    why = ""
    try:
        if is_local(path):
            # Read no more than metadata can be: a zarr.json linked to /dev/zero or a huge sparse file is
            # damage, not something to read until memory runs out (O_NONBLOCK: a named pipe does not block).
            fd = os.open(path.removeprefix("file://"), os.O_RDONLY | os.O_NONBLOCK)
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_size > _MAX_META_BYTES:
                os.close(fd)
                raise OSError("not a regular file" if not stat.S_ISREG(st.st_mode) else
                              f"{st.st_size:,} bytes, more than metadata has")
            with os.fdopen(fd, "rb") as fh:
                raw = fh.read(_MAX_META_BYTES + 1)
        else:
            import fsspec

            fs, key = fsspec.core.url_to_fs(path)
            raw = retry_call(lambda: fs.cat_file(key), path)
        meta = json.loads(raw)
        if not isinstance(meta, dict):
            why = "not a JSON object"
    except FileNotFoundError:
        why = "missing"
    except (OSError, ValueError) as exc:
        if not is_local(path) and not isinstance(exc, ValueError):
            raise
        why = f"unreadable ({type(exc).__name__}{': ' + str(exc) if type(exc) is OSError else ''})"
    if not why:
        return meta
    if required:
        raise ValueError(f"{path}: {why}: not a node of a finished Med3D store; check the store path, or rebuild the "
                         "store (med3d-prep build-*) if it was damaged")
    return None


def local_folder(node: Any) -> str | None:
    """The folder of a zarr group or array when its store is a local zarr v3 folder, else None (the chunk writer
    and reader and ``--verify`` work on files there; other stores go through zarr-python)."""
    from zarr.storage import LocalStore

    store = node.store
    if not isinstance(store, LocalStore) or node.metadata.zarr_format != 3:
        return None
    return os.path.join(str(store.root), node.path) if node.path else str(store.root)
