"""Which names may name a folder of a store: one rule for building a store and for reading its catalog.

A case id and a domain name become folders (``STORE/<domain>/<case_id>/``), and readers derive more paths
from them: ``evaluate`` and ``predict`` write ``<case_id>.nii.gz`` into their run folders. A catalog is a
file anyone can hand over with a store, so its names are checked whenever a catalog is read, with the same
rule the build applies to the cases it creates: a crafted row such as ``../../../../../x`` must never steer
where a file is read or written. Any other name that becomes part of a written path (the split a run file asks
``evaluate`` to measure, a mask named after an input file) passes :func:`path_component` where the path is built.
"""
from __future__ import annotations

import re
from collections.abc import Iterable

import numpy as np
import pandas as pd

from .store_format import META_FILE

__all__ = ["RESERVED_NAMES", "MAX_NAME_BYTES", "UnsafeNameError", "check_table_names", "path_component",
           "unsafe_name"]

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

RESERVED_NAMES = frozenset({
    META_FILE, ".zgroup", ".zattrs", ".zarray", ".zmetadata",  # zarr metadata beside a store's groups
    "catalog.parquet", "domains.parquet", "nodules.parquet",  # the catalog tables at the store root
})
"""Names a store uses for its own files: a case or domain named so would overwrite them (a case ``zarr.json``
would replace its domain group's metadata). Compared case-insensitively, for case-insensitive file systems."""

MAX_NAME_BYTES = 255
"""The longest file name (UTF-8 bytes) of common file systems (ext4, APFS, NTFS in characters)."""


class UnsafeNameError(ValueError):
    """A name that becomes a path (a catalog row's folder, a field of a run file) is not one safe path component;
    the message names the file, the row or field, and the value."""


def _component_problem(name: object, folder: str) -> str | None:
    """Why ``name`` is not one safe path component below ``folder`` (words for the message), or None."""
    if not isinstance(name, str):
        return f"is a {type(name).__name__}, not a string"
    if not name or not name.strip():
        return "is empty"
    if name in (".", ".."):
        return f"is {name!r}, which would escape {folder}"
    if "/" in name or "\\" in name:  # an absolute path starts with one too
        return f"contains a path separator, which would escape {folder}"
    if _CONTROL.search(name):
        return "contains control characters"
    if len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        return f"is longer than {MAX_NAME_BYTES} bytes, too long for a file name"
    return None


def unsafe_name(name: str) -> str | None:
    """Why ``name`` cannot name a folder of a store (a case id or a domain), or None when it can.

    It must be one path component (no separator, not ``.`` or ``..``) so nothing is written outside its
    parent folder or over another, with no control characters, at most :data:`MAX_NAME_BYTES` bytes, and not
    one of :data:`RESERVED_NAMES`.
    """
    problem = _component_problem(name, "the store folder")
    if problem is None and name.lower() in RESERVED_NAMES:
        return f"is a name the store uses for its own files ({sorted(RESERVED_NAMES)})"
    return problem


def path_component(value: object, what: str, source: object) -> str:
    """``value``, checked to be one safe component of a path that is written to: a name read from a file or
    given by a caller (a split, a domain, a case id, a class, task or run name, an input's file name) that
    becomes a folder or file name. Not empty, not ``.`` or ``..``, no ``/`` or ``\\`` (so not absolute), no
    control characters, at most :data:`MAX_NAME_BYTES` bytes. Check it where the path is built.

    Raises :class:`UnsafeNameError` (a ValueError), one line naming ``source`` (the file or option the value came
    from) and ``what`` (its field), e.g. ``runs/x/finetune.json: eval_split '../../y' contains a path
    separator...``.
    """
    problem = _component_problem(value, "its folder")
    if problem:
        raise UnsafeNameError(f"{source}: {what} {value!r} {problem}; a name that becomes part of a path must be one "
                              "plain file or folder name")
    return value  # type: ignore[return-value]  (a str: _component_problem refuses anything else)


def check_table_names(df: pd.DataFrame, what: str, *, names: Iterable[str] = (), store_path: bool = False,
                      empty_ok: Iterable[str] = ()) -> None:
    """Refuse a table (read from ``what``, a file) whose name columns are not safe folder names.

    ``names``: columns that must pass :func:`unsafe_name` (those in ``empty_ok`` may also be ""). With
    ``store_path``, the ``store_path`` column must be exactly ``<domain>/<case_id>`` of its row. Raises
    :class:`UnsafeNameError` naming the file, the row (0-based, with its domain and case where known) and
    the value.
    """
    empty_ok = set(empty_ok)
    # A small table is checked row by row (the screen's fixed cost, ~3 ms, is more than the rule's there).
    suspects = _suspect_rows(df, list(names), empty_ok, store_path) if len(df) >= SCREEN_FROM_ROWS else range(len(df))
    for i in suspects:  # the exact rule, which words the message; rows outside the screen pass it
        rec = df.iloc[i].to_dict()
        for col in names:
            value = rec[col]
            if col in empty_ok and value == "":
                continue
            problem = unsafe_name(value)
            if problem:
                raise _refuse(what, i, rec, col, value, problem)
        if store_path:
            want = f"{rec['domain']}/{rec['case_id']}"
            if rec["store_path"] != want:
                raise _refuse(what, i, rec, "store_path", rec["store_path"], f"is not <domain>/<case_id> ({want!r})")


SCREEN_FROM_ROWS = 1000
"""Tables of at least this many rows are screened column-wise first (:func:`_suspect_rows`)."""

_SUSPECT = re.compile(r"[/\\\x00-\x1f\x7f]")


def _suspect_rows(df: pd.DataFrame, names: list[str], empty_ok: set[str], store_path: bool) -> list[int]:
    """The rows that might break the rules, in order, found column-wise in C (a 100,000-row catalog in a few
    hundredths of a second instead of a second): a superset of the rows :func:`unsafe_name` or the store_path
    rule refuses (a long name is a suspect until its UTF-8 bytes are counted)."""
    if not len(df):
        return []
    bad = np.zeros(len(df), dtype=bool)
    for col in names:
        values = df[col]
        if values.dtype == object:
            is_str = values.map(type).eq(str).to_numpy()
        elif pd.api.types.is_string_dtype(values.dtype):
            is_str = values.notna().to_numpy()
        else:
            is_str = np.zeros(len(df), dtype=bool)
        text = values.where(is_str, "").astype(str)
        empty = text.str.strip().eq("").to_numpy()
        if col in empty_ok:
            empty = empty & text.ne("").to_numpy()
        lower = text.str.lower()
        bad |= ~is_str | empty | text.isin([".", ".."]).to_numpy() | lower.isin(RESERVED_NAMES).to_numpy()
        bad |= text.str.contains(_SUSPECT).to_numpy() | text.str.len().gt(MAX_NAME_BYTES // 4).to_numpy()
    if store_path:
        paths = df["store_path"]
        bad |= (paths.astype(str) != df["domain"].astype(str) + "/" + df["case_id"].astype(str)).to_numpy()
        if paths.dtype == object:
            bad |= ~paths.map(type).eq(str).to_numpy()
    return np.flatnonzero(bad).tolist()


def _refuse(what: str, i: int, rec: dict, col: str, value, problem: str) -> UnsafeNameError:
    where = f"row {i}"
    if "domain" in rec and "case_id" in rec:
        where += f" (domain {rec['domain']!r}, case {rec['case_id']!r})"
    return UnsafeNameError(
        f"{what}: {where}: {col} {value!r} {problem}. A catalog must name store folders only, never steer "
        "where files are read or written: rebuild the store (med3d-prep build-*) or get it from a trusted source")
