"""The on-disk layout of a Med3D store: the one module that names its arrays and files and reads its metadata.

A store is a zarr v3 hierarchy; every group and array has a metadata file :data:`META_FILE` (``zarr.json``): a
group's holds its attributes under ``"attributes"``, an array's also its shape, chunk grid, data type and
codecs. Chunk files of an array lie under its folder's :data:`CHUNK_DIR` (``c/``, zarr v3's default chunk key
encoding: ``image/c/0/1/2``)::

    STORE/zarr.json                  root group; attrs {format_version, med3d_version, created_by}
    STORE/catalog.parquet            one row per volume (catalog.io)
    STORE/domains.parquet            one row per domain
    STORE/<domain>/zarr.json         domain group; attrs {plan: target spacing, params}
    STORE/<domain>/<case>/zarr.json  case group; attrs = CaseAttrs (geometry, provenance, normalization),
                                     "ome" (OME-Zarr 0.5 multiscales: catalog.ngff), MARKER (written last)
        image/       (C, Z, Y, X) float16|float32, dimension_names c, z, y, x (stores since OME-Zarr)
        label/       (Z, Y, X) uint8|int16 (absent for unlabelled cases)
        foreground/  (N, 4) int32 rows (class, z, y, x): sampled foreground voxels for patch sampling
        labels/      OME-Zarr label image of ``label`` (catalog.ngff; readers of this project never use it)

A case counts once its group's attributes hold :data:`MARKER` (written last: object stores have no atomic
rename, so readers ignore cases without it and a re-run rewrites them). Geometry: ``spacing`` (z, y, x) mm,
``origin`` (x, y, z) mm in LPS of voxel (0, 0, 0), ``direction`` row-major 3×3 of the stored grid; ``original``
the source file's grid in x, y, z order (:class:`CaseAttrs`).

:func:`node_meta` is the one reader of a node's ``zarr.json``, for a local folder (a plain path or ``file://``
URL: read directly, ~0.05 ms, against ~1.5 ms through zarr-python's async machinery) and for every other fsspec
URL (``s3://``, ``gs://``, ``memory://``...: one GET, retried on transient errors as :mod:`catalog.retry` says).

>>> node_meta("data/store", "liver", "liver_7")["attributes"][MARKER]["written_at"]
>>> CaseAttrs.read("data/store", "liver/liver_7").spacing         # (z, y, x) mm
>>> case_array_path("s3://bucket/store", "liver/liver_7", LABEL)
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from .retry import retry_call

__all__ = ["ARRAYS", "CHUNK_DIR", "FOREGROUND", "IMAGE", "LABEL", "MARKER", "META_FILE", "CaseAttrs",
           "array_folders", "case_array_path", "case_files", "chunk_files", "chunk_prefix", "group_meta", "is_local",
           "local_folder", "local_path", "meta_key", "meta_path", "node_meta", "store_join"]

IMAGE, LABEL, FOREGROUND = "image", "label", "foreground"
"""The arrays of a case group: image (C, Z, Y, X), label (Z, Y, X), foreground (N, 4) rows (class, z, y, x)."""
ARRAYS = (IMAGE, LABEL, FOREGROUND)
META_FILE = "zarr.json"
"""Metadata file of every group and array (zarr v3)."""
CHUNK_DIR = "c"
"""Folder of an array's chunk files under zarr v3's ``default`` chunk key encoding (``image/c/0/0/0``)."""

_MAX_META_BYTES = 64 << 20  # a case's marker lists its files: ~40 bytes each, so megabytes for the largest cases

MARKER = "med3d_complete"
"""Key of a case group's attributes that holds its completion record; written last, so its presence means done."""


def store_join(store: str, *parts: str) -> str:
    """A path inside a store, for local paths and fsspec URLs alike."""
    return "/".join([str(store).rstrip("/"), *parts])


def is_local(store: str) -> bool:
    """Whether a store path is on the local file system (a plain path or a file:// URL)."""
    return "://" not in store or store.startswith("file://")


def local_path(store: str) -> str:
    """A ``file://`` URL as the local path it names (``file:///data/store`` and ``file://localhost/data/store``
    -> ``/data/store``, ``file://store`` -> ``store``, as fsspec reads them); any other path or URL as it is."""
    if not store.startswith("file://"):
        return store
    path = store.removeprefix("file://")
    return path.removeprefix("localhost") if path.startswith("localhost/") else path


def meta_path(folder: str | os.PathLike[str], *parts: str) -> str:
    """The local metadata file of node ``parts`` under ``folder`` (``folder/parts.../zarr.json``)."""
    return os.path.join(os.fspath(folder), *parts, META_FILE)


def meta_key(*parts: str) -> str:
    """The metadata file of node ``parts`` as a ``/``-separated key relative to a group (``image/zarr.json``)."""
    return "/".join([*parts, META_FILE])


def case_array_path(store: str | os.PathLike[str], store_path: str, name: str) -> str:
    """The folder or URL of array ``name`` (:data:`ARRAYS`) of the case ``store_path`` in ``store``."""
    if name not in ARRAYS:
        raise ValueError(f"array {name!r}: a case holds {', '.join(ARRAYS)}")
    return store_join(os.fspath(store), store_path, name)


def chunk_prefix(array_folder: str, encoding: Mapping[str, Any]) -> tuple[str, str]:
    """(path prefix of every chunk file, separator of chunk indices) of a local array whose metadata has
    ``chunk_key_encoding`` ``encoding`` (``default``: ``folder/c/0/1/2``; ``v2``: ``folder/0.1.2``)."""
    default = encoding.get("name") == "default"
    sep = encoding.get("configuration", {}).get("separator", "/" if default else ".")
    return (os.path.join(array_folder, CHUNK_DIR + sep) if default else array_folder + os.sep), sep


def array_folders(case_folder: str) -> list[str]:
    """The names of the nodes directly inside a local group folder that have metadata (sorted)."""
    return sorted(n for n in os.listdir(case_folder) if os.path.isfile(meta_path(case_folder, n)))


def chunk_files(array_folder: str) -> Iterator[str]:
    """Every file under a local array's chunk folder (``default`` encoding), as paths."""
    for top, _, files in os.walk(os.path.join(array_folder, CHUNK_DIR)):
        for name in files:
            yield os.path.join(top, name)


def case_files(case_folder: str) -> dict[str, int]:
    """Every file of a local case folder but its group's metadata (arrays' metadata and chunk files), as path
    relative to the case → bytes: recorded in the completion marker so that ``--verify`` finds a chunk file cut
    short or lost after the case was written."""
    out = {}
    for top, _, names in os.walk(case_folder):
        for name in names:
            rel = os.path.relpath(os.path.join(top, name), case_folder).replace(os.sep, "/")
            if rel != META_FILE:
                out[rel] = os.path.getsize(os.path.join(top, name))
    return dict(sorted(out.items()))


def group_meta(attributes: Mapping[str, Any]) -> dict[str, Any]:
    """The ``zarr.json`` content of a zarr v3 group with ``attributes`` (what zarr-python writes)."""
    return {"attributes": dict(attributes), "zarr_format": 3, "node_type": "group"}


def node_meta(store: str | os.PathLike[str], *parts: str, required: bool = False) -> dict[str, Any] | None:
    """The ``zarr.json`` of the node ``parts`` of ``store`` (a local path or any fsspec URL) as a dict.

    A node that does not exist, or whose ``zarr.json`` is torn (a crash mid-write) or not a JSON object, gives
    None, or with ``required`` a ValueError naming the file. A remote read that keeps failing with a transient
    error (503, reset connection) is raised as it is: the node is not missing then, the backend is failing.
    """
    path = store_join(os.fspath(store), *parts, META_FILE)
    why = ""
    try:
        raw = _read_local(path) if is_local(path) else _read_remote(path)
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


def _read_local(path: str) -> bytes:
    # Read no more than metadata can be: a zarr.json linked to /dev/zero or a huge sparse file is damage, not
    # something to read until memory runs out (O_NONBLOCK: a named pipe does not block).
    fd = os.open(path.removeprefix("file://"), os.O_RDONLY | os.O_NONBLOCK)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_size > _MAX_META_BYTES:
        os.close(fd)
        raise OSError("not a regular file" if not stat.S_ISREG(st.st_mode) else
                      f"{st.st_size:,} bytes, more than metadata has")
    with os.fdopen(fd, "rb") as fh:
        return fh.read(_MAX_META_BYTES + 1)


def _read_remote(path: str) -> bytes:
    import fsspec

    fs, key = fsspec.core.url_to_fs(path)
    return retry_call(lambda: fs.cat_file(key), path)


def local_folder(node: Any) -> str | None:
    """The folder of a zarr group or array when its store is a local zarr v3 folder, else None (the chunk writer
    and reader and ``--verify`` work on files there; other stores go through zarr-python)."""
    from zarr.storage import LocalStore

    store = node.store
    if not isinstance(store, LocalStore) or node.metadata.zarr_format != 3:
        return None
    return os.path.join(str(store.root), node.path) if node.path else str(store.root)


_IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


@dataclass(frozen=True, kw_only=True)
class CaseAttrs:
    """The attributes of a case group, as the build writes them and every reader reads them.

    Geometry of the stored grid: ``spacing`` (z, y, x) mm, ``origin`` (x, y, z) mm in LPS of voxel (0, 0, 0),
    ``direction`` row-major 3×3; ``original``: the source file's grid before reorientation (``size_xyz``,
    ``spacing_xyz``, ``origin``, ``direction``, ``note``; ``header_spacing_xyz`` where the build replaced an
    unusable header spacing). ``more``: what one source adds (LIDC's nodule, MedMNIST's index), kept at the top
    level of the attributes as given. Stores of every earlier release read: absent keys take the defaults here.
    """

    spacing: tuple[float, ...]
    origin: tuple[float, ...] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = _IDENTITY
    original: dict[str, Any] = field(default_factory=dict)
    domain: str = ""
    case_id: str = ""
    scan_id: str = ""
    axes: tuple[str, ...] = ("z", "y", "x")
    sources: list[dict[str, Any]] = field(default_factory=list)
    channel_names: list[str] = field(default_factory=list)
    modality: str = ""
    normalization: dict[str, Any] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    params_hash: str = ""
    spacing_known: bool = True
    label_parts: list[list[Any]] | None = None
    label_overlap_voxels: int | None = None
    extra: dict[str, Any] | None = None
    more: dict[str, Any] = field(default_factory=dict)

    _ORDER = ("domain", "case_id", "scan_id", "spacing", "spacing_known", "origin", "direction", "axes",
              "original", "sources", "channel_names", "modality", "normalization", "labels", "label_parts",
              "label_overlap_voxels", "params_hash", "extra")

    def to_attrs(self) -> dict[str, Any]:
        """The JSON attributes (plain lists and dicts; ``spacing_known`` only when False, optional fields only when
        set), source-specific keys after the common ones."""
        out: dict[str, Any] = {}
        for key in self._ORDER:
            value = getattr(self, key)
            if value is None or (key == "spacing_known" and value):
                continue
            out[key] = list(value) if isinstance(value, tuple) else value
        clash = set(self.more) & set(out)
        if clash:
            raise ValueError(f"CaseAttrs.more repeats the common field(s) {sorted(clash)}")
        return {**out, **self.more}

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any], where: str = "case attributes") -> CaseAttrs:
        """The record of a case group's attributes (the completion marker and OME-Zarr metadata left out);
        a ValueError naming ``where`` when the geometry is missing."""
        known = {f.name for f in dataclasses.fields(cls)} - {"more"}
        if "spacing" not in attrs:
            raise ValueError(f"{where}: no 'spacing': not the attributes of a stored case; rebuild the store "
                             "(med3d-prep build-*)")
        kw = {k: v for k, v in attrs.items() if k in known}
        for key in ("spacing", "origin", "direction", "axes"):
            if key in kw:
                kw[key] = tuple(kw[key])
        _check_geometry(kw, where)
        more = {k: v for k, v in attrs.items() if k not in known and k not in (MARKER, "ome")}
        return cls(**kw, more=more)

    @classmethod
    def read(cls, store: str | os.PathLike[str], store_path: str) -> CaseAttrs:
        """The attributes of the stored case ``store_path`` (a ValueError naming the file when it is missing)."""
        meta = node_meta(store, store_path, required=True)
        return cls.from_attrs(meta.get("attributes") or {}, store_join(os.fspath(store), store_path, META_FILE))

    @property
    def original_spacing_zyx(self) -> tuple[float, float, float]:
        """The source file's voxel spacing (z, y, x) mm, as measured against (metrics in mm)."""
        return tuple(float(s) for s in reversed(self.original["spacing_xyz"]))  # type: ignore[return-value]


# (key, count, positive): the geometry every reader of a case trusts (OME-Zarr scale and translation, metrics in mm,
# pasting predictions back); a crafted or damaged value is refused where the attributes are read.
_GEOMETRY = (("spacing", 3, True), ("origin", 3, False), ("direction", 9, False))


def _check_geometry(kw: Mapping[str, Any], where: str) -> None:
    for key, count, positive in _GEOMETRY:
        if key not in kw:
            continue
        vals = kw[key]
        ok = len(vals) == count and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and (v > 0 or not positive)
            for v in vals)
        if not ok:
            raise ValueError(f"{where}: {key!r} is {list(vals)!r}, not {count} finite numbers"
                             f"{' > 0' if positive else ''}: the case is damaged; rebuild it (med3d-prep build-* "
                             "--verify)")
