"""Per-run caches of per-case arrays (the liver coarse volumes, the classify inputs): one file per case and a
manifest of what made them, so no training step decodes a full-resolution volume.

A folder whose manifest equals the one asked for is kept as is; otherwise every case is written again. Case files
and the manifest are written under a temporary name and renamed (the manifest last), so a crash leaves a folder
that is rebuilt, and several processes (DDP ranks) may build the same cache at once.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from .store_index import CaseEntry

__all__ = ["MANIFEST", "build_case_cache", "cache_file_name"]

MANIFEST = "manifest.json"


def cache_file_name(store_path: str, ending: str) -> str:
    """``<domain>__<case_id><ending>``: the store path as one file name."""
    return store_path.replace("/", "__") + ending


def build_case_cache(folder: str | os.PathLike[str], manifest: dict[str, Any], cases: Iterable[CaseEntry],
                     arrays: Callable[[CaseEntry], np.ndarray | dict[str, np.ndarray]], ending: str,
                     progress: Callable[[int], None] | None = None) -> Path:
    """Fill ``folder`` with ``arrays(case)`` of every case, one file each named by :func:`cache_file_name`
    (``.npy`` for one array, ``.npz`` for a dict of arrays), then ``manifest``; unchanged when the folder's
    manifest already equals ``manifest``. Returns the folder."""
    folder = Path(folder)
    path = folder / MANIFEST
    if path.is_file() and json.loads(path.read_text()) == manifest:
        return folder
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
