"""Per-run caches of per-case arrays (the liver coarse volumes, the classify inputs): one file per case and a
manifest of what made them, so no training step decodes a full-resolution volume.

A folder whose manifest equals the one asked for is kept as is; otherwise every case is written again. Case files
and the manifest are written under a temporary name and renamed (the manifest last), so a crash leaves a folder
that is rebuilt, and several processes (DDP ranks) may build the same cache at once.

A cache whose size is known beforehand (``nbytes``) is refused, before anything is written, when it would not fit
the free space of its disk: a ``--shape 600,600,600`` once wrote 3 GB before it failed.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from .store_index import CaseEntry

__all__ = ["MANIFEST", "CacheSpaceError", "build_case_cache", "cache_file_name", "check_cache_space",
           "free_disk_bytes", "human_bytes"]

MANIFEST = "manifest.json"


class CacheSpaceError(ValueError):
    """A cache would not fit its disk; the message names the option that sizes it, the size and the space."""


def human_bytes(n: float) -> str:
    """``50331648`` -> ``48.0 MiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def free_disk_bytes(folder: str | os.PathLike[str]) -> int:
    """Free bytes on the disk that holds ``folder`` (or its nearest existing parent)."""
    path = Path(folder).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return int(shutil.disk_usage(path).free)


def check_cache_space(folder: str | os.PathLike[str], nbytes: int, n_cases: int, option: str,
                      cases: Iterable[CaseEntry] = (), ending: str = "") -> None:
    """Raise :class:`CacheSpaceError` when a cache of ``nbytes`` (``n_cases`` files) would not fit the free space of
    ``folder``'s disk; the case files of ``cases`` there already (replaced one by one) count as free. ``option``
    names what sizes the cache (``--shape 600,600,600``)."""
    folder = Path(folder)
    free = free_disk_bytes(folder)
    for case in cases:
        with contextlib.suppress(OSError):
            free += (folder / cache_file_name(case.store_path, ending)).stat().st_size
    if nbytes > free:
        raise CacheSpaceError(f"{option}: the input cache {folder} would need {human_bytes(nbytes)} for {n_cases} "
                              f"cases, more than the {human_bytes(free)} free on its disk; choose a smaller "
                              f"{option.split()[0]} or free disk space")


def cache_file_name(store_path: str, ending: str) -> str:
    """``<domain>__<case_id><ending>``: the store path as one file name."""
    return store_path.replace("/", "__") + ending


def build_case_cache(folder: str | os.PathLike[str], manifest: dict[str, Any], cases: Iterable[CaseEntry],
                     arrays: Callable[[CaseEntry], np.ndarray | dict[str, np.ndarray]], ending: str,
                     progress: Callable[[int], None] | None = None, *,
                     space: tuple[int, str] | None = None) -> Path:
    """Fill ``folder`` with ``arrays(case)`` of every case, one file each named by :func:`cache_file_name`
    (``.npy`` for one array, ``.npz`` for a dict of arrays), then ``manifest``; unchanged when the folder's
    manifest already equals ``manifest``. ``space`` (the cache's bytes, the option that sizes it) refuses a cache
    that would not fit its disk before anything is written (:func:`check_cache_space`). Returns the folder."""
    folder = Path(folder)
    path = folder / MANIFEST
    if path.is_file() and json.loads(path.read_text()) == manifest:
        return folder
    cases = list(cases)
    if space is not None:
        check_cache_space(folder, space[0], len(cases), space[1], cases, ending)
    folder.mkdir(parents=True, exist_ok=True)
    for case in cases:
        out = arrays(case)
        final = folder / cache_file_name(case.store_path, ending)
        tmp = folder / f".{os.getpid()}.{final.name}"
        with open(tmp, "wb") as f:
            if isinstance(out, dict):
                np.savez(f, **out)
            else:
                np.save(f, out)
        os.replace(tmp, final)
        if progress is not None:
            progress(1)
    tmp = folder / f".{os.getpid()}.{MANIFEST}"
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, path)
    return folder
