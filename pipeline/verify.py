"""``build-* --verify``: find stored cases whose files were damaged after they were written, so the build
rebuilds them instead of skipping them as unchanged.

A re-run skips a case whose completion marker matches its sources and parameters; it does not read the case's
chunk files, so a chunk cut short by a full disk or an interrupted copy stays in the store and training stops
on it. With ``--verify`` every skipped case is checked: the size of each of its files against the sizes the
marker records (:func:`catalog.store_format.case_files`; a stat per file, ~1 s per thousand cases), or, for cases
written before markers recorded sizes and on object stores, by decoding every chunk of its arrays. A damaged
case is converted again like a changed one.
"""
from __future__ import annotations

import math
import os
from typing import Any

import click
import numpy as np
import zarr

from catalog.store_files import file_problem, store_root
from catalog.store_format import META_FILE, array_folders, chunk_files, local_folder, node_meta
from volume.diagnose import one_line

from .store import case_marker

_BLOSC_HEADER = 16

__all__ = ["case_damage", "requested", "verify_option"]

_KEY = "med3d.verify"


def _remember(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    ctx.meta[_KEY] = bool(value)
    return value


def verify_option(fn):
    """The ``--verify`` option of the ``build-*`` commands. It hands its value to :func:`pipeline.job.build` and
    :func:`pipeline.job_lidc.build_lidc` through the command's click context (``requested``), so the commands'
    own signatures stay as they are."""
    return click.option(
        "--verify", is_flag=True, expose_value=False, callback=_remember,
        help="Check every stored case's chunk files (sizes against the completion marker, or a full decode for "
             "stores written before markers recorded sizes) and rebuild the damaged ones instead of skipping "
             "them as unchanged.")(fn)


def requested() -> bool:
    """Whether the running ``med3d-prep`` command was given ``--verify`` (False outside a command)."""
    ctx = click.get_current_context(silent=True)
    return bool(ctx and ctx.meta.get(_KEY, False))


def case_damage(root: zarr.Group, store_path: str, marker: dict[str, Any] | None = None) -> str | None:
    """What is damaged in a complete stored case (None when nothing is): a recorded file missing or of another
    size, or, without recorded sizes, an array whose chunks do not decode."""
    marker = marker if marker is not None else case_marker(root, store_path)
    if not marker:
        return "no completion marker"
    files = marker.get("files")
    folder = local_folder(root)
    if files is not None and folder is not None:
        root = store_root(folder)
        for rel, size in sorted(files.items()):
            path = os.path.join(folder, store_path, *rel.split("/"))
            # A link to /dev/zero or out of the store is no chunk file, whatever size it shows.
            problem = file_problem(path, root)
            if problem and not problem.startswith("missing"):
                return f"{store_path}/{rel} is {problem}"
            try:
                found = os.path.getsize(path)
            except OSError:
                return f"{store_path}/{rel} is missing (the marker records {size:,} bytes)"
            if found != size:
                return f"{store_path}/{rel} has {found:,} bytes, the marker records {size:,}"
        return None
    return _decode_all(root, store_path)


def _decode_all(root: zarr.Group, store_path: str) -> str | None:
    """Check every chunk of a case's arrays: in a local store each Blosc frame's sizes against its file and the
    chunk, then a decode; elsewhere a read through zarr. zarr-python alone is not enough: it decodes a raw
    (level 0) frame cut short into NaN without a word."""
    folder = local_folder(root)
    if folder is None:
        try:
            for _, arr in root[store_path].arrays():
                arr[...]
        except Exception as exc:  # what a damaged chunk raises depends on the codec (Blosc, zarr, OSError)
            return f"{store_path}: an array does not decode ({type(exc).__name__}: {one_line(exc)})"
        return None
    case, root = os.path.join(folder, store_path), store_root(folder)
    for name in array_folders(case):
        try:
            meta = node_meta(case, name, required=True)
            if meta.get("node_type") == "group":  # the OME-Zarr label image: links to the label's files
                continue
            chunk_bytes = math.prod(meta["chunk_grid"]["configuration"]["chunk_shape"]) * \
                np.dtype(meta["data_type"]).itemsize
            blosc = meta["codecs"][-1]["name"] == "blosc"
        except (OSError, ValueError, KeyError, TypeError) as exc:
            return f"{store_path}/{name}/{META_FILE}: unreadable array metadata ({one_line(exc)})"
        for path in chunk_files(os.path.join(case, name)):
            problem = file_problem(path, root)
            if problem is None and blosc:
                problem = _check_frame(path, chunk_bytes)
            if problem:
                return f"{os.path.relpath(path, folder).replace(os.sep, '/')}: {problem}"
    return None


def _check_frame(path: str, chunk_bytes: int) -> str | None:
    """Why a Blosc chunk file is damaged (None when it decodes to ``chunk_bytes`` bytes)."""
    import numcodecs

    with open(path, "rb") as fh:  # a regular file in the store (file_problem); never more than a frame can be
        data = fh.read(chunk_bytes + _BLOSC_HEADER + 1)
    if len(data) > chunk_bytes + _BLOSC_HEADER:
        return f"more than the {chunk_bytes + _BLOSC_HEADER:,} bytes a Blosc frame of this chunk has at most"
    if len(data) < _BLOSC_HEADER:
        return f"{len(data):,} bytes, not even a Blosc header"
    nbytes, cbytes = int.from_bytes(data[4:8], "little"), int.from_bytes(data[12:16], "little")
    if cbytes != len(data):
        return f"{len(data):,} bytes, its Blosc header says {cbytes:,}"
    if nbytes != chunk_bytes:
        return f"holds {nbytes:,} bytes of data, a chunk has {chunk_bytes:,}"
    try:
        numcodecs.Blosc().decode(data)
    except Exception as exc:  # a corrupt compressed stream
        return f"does not decode ({one_line(exc)})"
    return None
