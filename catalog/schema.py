"""The catalog's columns and their kinds, validated on every read and write."""
from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

import numpy as np
import pandas as pd

# column -> kind. Kinds: str, str?, int, float, bool, list[int], list[float], list[str]. "str?" keeps None
# (a missing value) apart from "".
CATALOG_COLUMNS: dict[str, str] = {
    "domain": "str",
    "case_id": "str",
    "scan_id": "str",  # identity across datasets: MSD liver_7 and LiTS volume-7 are both "lits:7"
    "patient_id": "str",
    "split": "str",  # train | val | test | unannotated (VISCERAL volumes without lung masks)
    "source_dataset": "str",
    "modality": "str",  # CT | MR: decides air clamp and window
    "source_modality": "str",  # the dataset's own name where finer (VISCERAL CT, CTce, MRT1, MRT1cefs), else ""
    "n_channels": "int",
    "channel_names": "list[str]",
    "source_image": "str",  # ";"-joined when a case has several files
    "source_label": "str",  # ";"-joined when composed from several masks (VISCERAL)
    "source_sha256": "str",
    "orig_shape": "list[int]",  # (z, y, x) in file axis order
    "orig_spacing": "list[float]",  # (z, y, x) mm in file axis order
    "target_spacing": "list[float]",  # (z, y, x) mm, canonical LPS axes
    "shape": "list[int]",  # stored (Z, Y, X)
    "p005": "list[float]",  # per channel, source units (HU for CT)
    "p995": "list[float]",
    "mean": "list[float]",
    "std": "list[float]",
    "air_clamped_fraction": "list[float]",
    "has_label": "bool",
    "label_values": "list[int]",
    "label_voxels": "list[int]",  # voxels per value in label_values, stored grid
    "foreground_voxels": "int",
    "foreground_mm3": "float",
    "spacing_flag": "str",  # "" or why the spacing is not the header's: "no_spacing:train_mean", "override:csv"
    "status": "str",  # ok | failed
    "error": "str",
    "params_hash": "str",
    "store_path": "str",  # <domain>/<case_id>, relative to the store root
    "stored_bytes": "int",
}

DOMAIN_COLUMNS: dict[str, str] = {
    "domain": "str",
    "source_dataset": "str",
    "modality": "str",
    "n_channels": "int",
    "channel_names": "list[str]",
    "labels": "list[str]",  # label names, index = label value
    "num_classes": "int",
    "target_spacing": "list[float]",  # (z, y, x) mm
    "n_volumes": "int",
    "n_failed": "int",
}

# LIDC stores: STORE/nodules.parquet, one row per grouped nodule of every series that converted (all nodules,
# < 3 mm and unselected ones included). The first columns are pipeline.sources.lidc_nodules.TABLE_COLUMNS.
NODULE_COLUMNS: dict[str, str] = {
    "patient_id": "str",
    "series_uid": "str",
    "nodule_index": "int",  # index within the series (nodules sorted by z, y, x); the crop's case_id ends in n<k>
    "centroid_mm": "list[float]",  # [x, y, z] LPS mm
    "diameter_mm": "float",  # max over readers of the longest in-plane chord; NaN for < 3 mm point marks
    "volume_mm3": "float",  # median over contouring readers; NaN for point marks
    "n_readers": "int",
    "n_readers_contoured": "int",
    "reader_ids": "list[str]",
    "reader_nodule_ids": "list[str]",
    "malignancy": "list[int]",  # the readers' ratings 1-5, sorted
    "malignancy_median": "float",
    "label": "str?",  # benign (median rating <= 3) | malignant | None (unrated)
    "is_small": "bool",  # every reader marked it as a < 3 mm point
    "n_rois_outside_series": "int",
    "selected": "bool",  # contoured by >= min_readers readers
    "case_id": "str",  # the crop's catalog case ("" when not selected, or selected without a crop: see note)
    "split": "str",  # the patient's split (train | val | test), as in the catalog
    "fraction_outside": "float",  # share of the crop outside the scanned volume (NaN without a crop)
    "note": "str",  # why a selected nodule has no crop, else ""
}

TYPED_LISTS = "med3d_typed_lists"
"""``DataFrame.attrs`` key: {column: "list[int]" | "list[float]" | "list[str]"} for the list columns
:func:`frame_from_arrow` already made Python lists of that element kind (conform then keeps them as they are)."""

_DEFAULTS = {"str": "", "str?": None, "int": 0, "float": float("nan"), "bool": False}

# Columns added after format 1 first shipped: a file without them still reads, with defaults.
ADDED_COLUMNS = frozenset({"source_modality"})


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Python's cycle collector off while a table's list columns are made (restored as it was after).

    A 100,000-row catalog holds 1.2 million small lists; each 700 new containers start a collection, and the
    older generations' passes walk every list made so far: half the open's time (0.94 s -> 0.50 s measured,
    benchmarks/scale_catalog.py). Lists of numbers and strings hold no cycles, so nothing waits longer to be
    freed; the collector sees them once, at its next pass.
    """
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_on:
            gc.enable()


def conform(df: pd.DataFrame, columns: dict[str, str], what: str, *, fill_missing: bool) -> pd.DataFrame:
    """Return ``df`` with exactly ``columns`` in order and each column of its kind.

    With ``fill_missing`` absent columns get defaults (building from rows, where failed rows lack most);
    without it a missing column raises, naming it (reading a file someone else wrote).
    """
    with gc_paused():
        return _conform(df, columns, what, fill_missing=fill_missing)


def _conform(df: pd.DataFrame, columns: dict[str, str], what: str, *, fill_missing: bool) -> pd.DataFrame:
    missing = [c for c in columns if c not in df.columns and c not in ADDED_COLUMNS]
    if missing and not fill_missing:
        raise ValueError(f"{what}: missing columns {missing}; was it written by another med3d version?")
    out = pd.DataFrame(index=df.index)
    typed = df.attrs.get(TYPED_LISTS, {})
    for col, kind in columns.items():
        if col in df.columns:
            series = df[col]
            if typed.get(col) == kind:  # Python lists of this kind already (frame_from_arrow): nothing to convert
                out[col] = pd.Series(list(series), index=df.index, dtype=object)
                continue
        elif kind.startswith("list"):
            series = pd.Series([[] for _ in range(len(df))], index=df.index, dtype=object)
        else:
            series = pd.Series([_DEFAULTS[kind]] * len(df), index=df.index)
        out[col] = _coerce(series, kind, f"{what}: column {col!r}")
    return out.reset_index(drop=True)


def _coerce(s: pd.Series, kind: str, what: str) -> pd.Series:
    try:
        if kind == "str":
            return s.where(s.notna(), "").astype(str).astype(object)
        if kind == "str?":
            return pd.Series([None if v is None or _isnan(v) else str(v) for v in s], index=s.index, dtype=object)
        if kind == "int":
            return s.fillna(0).astype("int64")
        if kind == "float":
            return s.astype("float64")
        if kind == "bool":
            return s.fillna(False).astype(bool)
        elem = {"list[int]": int, "list[float]": float, "list[str]": str}[kind]
        return pd.Series([_as_list(v, elem) for v in s], index=s.index, dtype=object)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what}: cannot be read as {kind} ({exc})") from None


# numpy kinds whose ``tolist()`` already gives Python values of the element type (parquet's list columns arrive
# as numpy arrays: converting them in C keeps a 100,000-row catalog's open under a second; benchmarks/scale_catalog.py)
_FAST_KINDS = {int: "iu", float: "f", str: "U"}


def _as_list(v, elem) -> list:
    if v is None or _isnan(v):
        return []
    if isinstance(v, np.ndarray) and v.ndim == 1 and v.dtype.kind in _FAST_KINDS[elem]:
        return v.tolist()
    if isinstance(v, np.ndarray) and v.ndim == 1 and elem is str and v.dtype == object:
        out = v.tolist()
        if all(type(x) is str for x in out):
            return out
    return [elem(x) for x in v]


def _isnan(v) -> bool:
    return isinstance(v, float) and v != v


def _arrow_lists(column, kind: str) -> list[list] | None:
    """A parquet list column as Python lists of ``kind``'s element type, in C where the element type allows, or
    None when it is not a plain list of that kind (nulls inside, another element type): conform decides then."""
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if not (pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type)):
        return None
    values = pc.list_flatten(arr)
    if values.null_count:
        return None
    vt = values.type
    lengths = pc.fill_null(pc.list_value_length(arr), 0).to_numpy(zero_copy_only=False)
    n = len(lengths)
    if kind == "list[str]" and (pa.types.is_string(vt) or pa.types.is_large_string(vt)):
        flat = values.to_pylist()
    elif kind == "list[int]" and pa.types.is_integer(vt) or kind == "list[float]" and pa.types.is_floating(vt):
        numbers = values.to_numpy(zero_copy_only=False)
        if n and int(lengths[0]) > 0 and (lengths == lengths[0]).all():  # fixed length (spacing, shape)
            return numbers.reshape(n, int(lengths[0])).tolist()
        flat = numbers.tolist()
    else:
        return None
    ends = np.cumsum(lengths).tolist()
    return [flat[a:b] for a, b in zip([0, *ends[:-1]], ends)]


def frame_from_arrow(table, columns: dict[str, str]) -> pd.DataFrame:
    """A pyarrow table as the DataFrame :func:`conform` takes, its list columns of ``columns`` already Python
    lists where their parquet type is plainly that kind (one conversion in C instead of one per row: a
    100,000-row catalog's open, benchmarks/scale_catalog.py)."""
    with gc_paused():
        return _frame_from_arrow(table, columns)


def _frame_from_arrow(table, columns: dict[str, str]) -> pd.DataFrame:
    ready: dict[str, list[list]] = {}
    for name in table.column_names:
        kind = columns.get(name, "")
        if kind.startswith("list"):
            lists = _arrow_lists(table.column(name), kind)
            if lists is not None:
                ready[name] = lists
    df = table.drop_columns(list(ready)).to_pandas() if ready else table.to_pandas()
    for name, lists in ready.items():
        df[name] = pd.Series(lists, index=df.index, dtype=object)
    df.attrs[TYPED_LISTS] = {name: columns[name] for name in ready}
    return df
