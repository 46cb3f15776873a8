"""Readers of a stored case's arrays whose metadata is checked against the case's catalog row first.

An array's ``zarr.json`` decides how much a read allocates (its shape) and how chunk files are cut; a damaged or
crafted one claiming 10¹² voxels would otherwise be believed over the catalog. The catalog row fixes what each
array of a case must be: ``image`` (n_channels, Z, Y, X), ``label`` (Z, Y, X), ``foreground`` (N, 4) rows with
N at most Z·Y·X (the sampled foreground voxels). :func:`case_array` opens a reader only when the metadata says
exactly that (else :class:`catalog.chunk_read.DamagedStoreError`, one line naming the file and ``--verify``).

>>> case_array("data/store", "liver/liver_7", IMAGE, shape=(187, 256, 256), n_channels=1).read_all()
>>> case_array("data/store", "liver/liver_7", LABEL)          # the row is looked up in the catalog
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence

from .chunk_read import ChunkedArrayReader
from .io import CATALOG_FILE, load_catalog
from .store_format import IMAGE, LABEL, case_array_path, is_local, store_join

__all__ = ["case_array", "case_geometry"]

# store -> (catalog file stamp, {store_path: (shape, n_channels)}): one catalog read per store and process while
# the file is unchanged (read_volume opens every validation case); on an object store, one per process.
_ROWS: dict[str, tuple[tuple[int, int] | None, dict[str, tuple[tuple[int, ...], int]]]] = {}


def case_geometry(store: str | os.PathLike[str], store_path: str) -> tuple[tuple[int, ...], int]:
    """The stored (Z, Y, X) shape and channel count of ``store_path`` as the store's catalog records them; a
    ValueError naming the catalog when the case is not in it."""
    store = os.fspath(store)
    path = store_join(store, CATALOG_FILE)
    stamp = None
    if is_local(path):
        try:
            st = os.stat(path.removeprefix("file://"))
            stamp = (st.st_mtime_ns, st.st_size)
        except OSError:
            stamp = (-1, -1)  # no catalog: load_catalog says so
    cached = _ROWS.get(store)
    if cached is None or cached[0] != stamp:
        cat = load_catalog(store)
        rows = {str(p): (tuple(int(v) for v in s), int(c))
                for p, s, c in zip(cat["store_path"], cat["shape"], cat["n_channels"])}
        _ROWS[store] = cached = (stamp, rows)
    try:
        return cached[1][store_path]
    except KeyError:
        raise ValueError(f"{path}: no row for {store_path}: the case is not in the store's catalog; check the "
                         "store path, or rebuild the store (med3d-prep build-*)") from None


def case_array(store: str | os.PathLike[str], store_path: str, name: str, *,
               shape: Sequence[int] | None = None, n_channels: int | None = None) -> ChunkedArrayReader:
    """A reader of array ``name`` (``image``, ``label``, ``foreground``) of the case ``store_path``, its metadata
    checked against the catalog row: ``shape`` (Z, Y, X) and ``n_channels`` as the caller holds them (a
    :class:`model.data.store_index.CaseEntry`, a catalog row), or, when not given, looked up in the catalog."""
    path = case_array_path(store, store_path, name)  # a ValueError for a name that is no array of a case
    store = os.fspath(store)
    if shape is None or (name == IMAGE and n_channels is None):
        shape, n_channels = case_geometry(store, store_path)
    zyx = tuple(int(s) for s in shape)
    if len(zyx) != 3:
        raise ValueError(f"{store}: catalog row {store_path} has shape {list(zyx)}, expected (Z, Y, X)")
    by = f"the catalog row of {store_path}"
    if name == IMAGE:
        return ChunkedArrayReader(path, expect_shape=(int(n_channels), *zyx), expected_by=by)  # type: ignore[arg-type]
    if name == LABEL:
        return ChunkedArrayReader(path, expect_shape=zyx, expected_by=by)
    return ChunkedArrayReader(path, max_shape=(math.prod(zyx), 4), expected_by=by)
