"""Writing the zarr v3 store: the root group, one group per case (arrays, attributes, OME-Zarr metadata), the
completion marker last. The layout itself (array names, files, the case attributes) is
:mod:`catalog.store_format`'s.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from catalog.chunk_write import fill_array
from catalog.remote_store import is_remote, open_store
from catalog.ngff import case_ngff, write_label_image
from catalog.store_format import FOREGROUND, IMAGE, LABEL, MARKER, CaseAttrs, local_folder, local_path, node_meta
from catalog.store_format import case_files as _folder_files

from .config import FORMAT_VERSION, PrepConfig


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("med3d")
    except Exception:  # not installed (running from a checkout)
        return "0+unknown"


class UnusableStoreError(ValueError):
    """A store argument a build cannot write to (``memory://``); the message names it and says what to give."""


def build_target(store: str | os.PathLike[str]) -> str:
    """The store a build writes, given as a folder or URL: a ``file://`` URL becomes the local folder it names
    (zarr and fsspec would not create its folders); ``memory://`` is refused (:class:`UnusableStoreError`),
    since a store in this process's memory is gone when the build ends (and dask workers never see it)."""
    store = local_path(os.fspath(store))
    if store.startswith("memory://"):
        raise UnusableStoreError(f"{store}: a memory:// store lives in the memory of the process that writes it "
                                 "and is gone when the build ends; give a folder (or file:// URL) or an object "
                                 "store URL (s3://bucket/store)")
    return store


def open_root(store: str, mode: str = "a", storage_options: dict | None = None) -> zarr.Group:
    """Open (or create) a store's root group. ``store`` is a local path or an fsspec URL (s3://, gcs://)."""
    kw = {"storage_options": storage_options} if storage_options else {}
    target: Any = store
    if is_remote(store):  # each request retries transient errors (503, resets): catalog/remote_store.py
        target, kw = open_store(store, read_only=mode == "r", storage_options=storage_options), {}
    root = zarr.open_group(target, mode=mode, zarr_format=3, **kw)
    if mode != "r" and "format_version" not in root.attrs:
        root.attrs.update(
            {"format_version": FORMAT_VERSION, "med3d_version": _version(), "created_by": "med3d-prep"}
        )
    return root


def case_marker(root: zarr.Group, store_path: str) -> dict[str, Any] | None:
    """The completion marker of a case, or None when the case is absent or was never finished.

    In a local store the group's ``zarr.json`` is read directly (:func:`catalog.store_format.node_meta`; through
    zarr-python's async machinery ~1.5 ms, which made a re-run of a thousand unchanged cases cost seconds); other
    stores go through zarr.
    """
    local = local_folder(root)
    if local is not None:  # absent, or a torn zarr.json from a crash mid-write: incomplete
        meta = node_meta(local, store_path) or {}
        attrs = meta.get("attributes") if meta.get("node_type") == "group" else None
        return attrs.get(MARKER) if isinstance(attrs, dict) else None
    try:
        grp = root[store_path]
    except KeyError:
        return None
    if not isinstance(grp, zarr.Group):
        return None
    try:
        return grp.attrs.get(MARKER)
    except Exception:  # a torn zarr.json from a crash mid-write: treat as incomplete
        return None


def compressor(cfg: PrepConfig, image: bool = False) -> BloscCodec:
    """The Blosc codec of a case's arrays; ``image``: of its image array (level 0 when ``image_codec`` is raw)."""
    if image and cfg.image_codec == "raw":
        return BloscCodec(cname=cfg.codec, clevel=0, shuffle="shuffle")
    return BloscCodec(cname=cfg.image_codec if image else cfg.codec, clevel=cfg.clevel, shuffle="shuffle")


def write_case(
    root: zarr.Group,
    store_path: str,
    image: np.ndarray,
    label: np.ndarray | None,
    foreground: np.ndarray,
    attrs: CaseAttrs | Mapping[str, Any] | None,
    cfg: PrepConfig,
    marker: dict[str, Any],
    row: dict[str, Any] | None = None,
) -> int:
    """Write one case, replacing whatever was there, marker last. Returns the stored bytes of its arrays.

    ``row`` (the case's catalog row) gets ``stored_bytes`` and is kept in the marker. ``attrs``: the case's
    :class:`~catalog.store_format.CaseAttrs` (a build), which also places the case for OME-Zarr readers
    (:mod:`catalog.ngff`); a plain mapping or None (tests, benchmarks) is written as it is, without
    OME-Zarr metadata when it holds no geometry.

    image: (C, Z, Y, X) in ``cfg.dtype``; label: (Z, Y, X) uint8/int16 or None; foreground: (N, 4) int32.
    """
    if image.ndim != 4:
        raise ValueError(f"image must be (C, Z, Y, X), got shape {image.shape}")
    grp = zarr.open_group(root.store, path=store_path, mode="w", zarr_format=3)
    cz, cy, cx = cfg.chunks
    img = grp.create_array(
        IMAGE, shape=image.shape, chunks=(1, cz, cy, cx), dtype=image.dtype,
        compressors=compressor(cfg, image=True), fill_value=0, dimension_names=("c", "z", "y", "x"),
    )
    fill_array(img, image)
    stored = img.nbytes_stored()
    if label is not None:
        if label.shape != image.shape[1:]:
            raise ValueError(f"label shape {label.shape} differs from image shape {image.shape[1:]}")
        lab = grp.create_array(
            LABEL, shape=label.shape, chunks=(cz, cy, cx), dtype=label.dtype,
            compressors=compressor(cfg), fill_value=0, dimension_names=("z", "y", "x"),
        )
        fill_array(lab, label)
        stored += lab.nbytes_stored()
    fg = grp.create_array(
        FOREGROUND, shape=foreground.shape, chunks=(max(1, foreground.shape[0]), 4), dtype="int32",
        compressors=compressor(cfg), fill_value=0,
    )
    if foreground.size:
        fg[...] = foreground.astype(np.int32)
    typed = attrs if isinstance(attrs, CaseAttrs) else \
        CaseAttrs.from_attrs(attrs) if attrs and "spacing" in attrs else None
    if typed is not None:
        write_label_image(grp, typed)
    done = dict(marker)
    if row is not None:
        # The finished catalog row rides in the marker, so a re-run can skip the case without recomputing it;
        # its stored byte count is known only now.
        row["stored_bytes"] = int(stored)
        done["row"] = row
    files = case_files(grp)
    if files is not None:  # what --verify compares a stored case with (pipeline/verify.py)
        done["files"] = files
    plain = attrs.to_attrs() if isinstance(attrs, CaseAttrs) else dict(attrs or {})
    if typed is not None:
        plain["ome"] = case_ngff(typed)
    grp.update_attributes(plain)  # one write of zarr.json (attrs.update writes it once per key)
    done["written_at"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    grp.attrs[MARKER] = done
    return int(stored)


def case_files(grp: zarr.Group) -> dict[str, int] | None:
    """Every file of a local case folder but its group's metadata, as path relative to the case → bytes
    (:func:`catalog.store_format.case_files`); None for other stores. Recorded in the completion marker so that
    ``--verify`` finds a chunk file cut short or lost after the case was written."""
    folder = local_folder(grp)
    return None if folder is None else _folder_files(folder)


def case_seed(store_path: str) -> int:
    """A stable seed per case (its foreground samples are the same on every machine and re-run)."""
    return int.from_bytes(hashlib.sha256(store_path.encode()).digest()[:4], "little")


def jsonable(value: Any) -> Any:
    """Plain JSON types for zarr attrs: numpy scalars to Python, NaN to None, tuples/arrays to lists, anything
    else that is not a string or None to its string form."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [jsonable(v) for v in value]
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer, int)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return None if math.isnan(value) else float(value)
    if value is None or isinstance(value, str):
        return value
    return str(value)


def sample_foreground(label: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Up to ``per_class`` random voxel coordinates of each non-zero class: (N, 4) int32 rows (class, z, y, x)."""
    flat = label.reshape(-1)
    nz = np.flatnonzero(flat)  # foreground is a small share: everything after this is cheap
    return foreground_rows(nz, flat[nz], label.shape, per_class, seed)


def foreground_rows(nz: np.ndarray, classes: np.ndarray, shape, per_class: int, seed: int) -> np.ndarray:
    """Sample rows (class, z, y, x) from flat foreground indices ``nz`` and their ``classes``."""
    if nz.size == 0:
        return np.zeros((0, 4), np.int32)
    rng = np.random.default_rng(seed)
    rows = []
    for c in np.unique(classes):
        idx = nz[classes == c]
        if idx.size > per_class:
            idx = np.sort(rng.choice(idx, size=per_class, replace=False))
        zyx = np.stack(np.unravel_index(idx, shape), axis=1)
        rows.append(np.concatenate([np.full((idx.size, 1), c), zyx], axis=1))
    return np.concatenate(rows).astype(np.int32)


def domain_plan(root: zarr.Group, domain: str) -> dict[str, Any] | None:
    """The frozen plan of a built domain (target spacing, params), or None."""
    try:
        return root[domain].attrs.get("plan")
    except KeyError:
        return None


def freeze_plan(root: zarr.Group, domain: str, plan: dict[str, Any]) -> None:
    grp = root.require_group(domain)
    grp.attrs["plan"] = plan
