"""The label table of the ``classify`` task: one class per case of a store, read from a CSV file and checked
against the store's catalog before anything is trained or written.

The table (a CSV file with a header row; other columns are ignored):

============== ============================================================================================
column         content
============== ============================================================================================
``case_id``    the store's case id (``hippocampus_001``) or its store path (``hippocampus/hippocampus_001``,
               when two domains share a case id); aliases ``case``, ``id``. Or instead:
``scan_id``    the catalog's scan id (``msd:Task04_Hippocampus:hippocampus_001``); alias ``scan``
``label``      the class: any string or integer; aliases ``class``, ``target``
``split``      optional: ``train``, ``val`` or ``test``; an empty cell (or no column) keeps the catalog's split
============== ============================================================================================

The classes are the distinct values of the class column, sorted (numerically when every value is an integer,
else as strings); class index ``i`` of the network is ``classes[i]``.

Class names are compared in Unicode NFC form, so the composed and decomposed spellings of one name (``früh``
typed on two systems) are one class.

Refused, each with a :class:`LabelTableError` naming the file, the rows (line numbers of the file, the header
being line 1) or values, and the fix: two columns whose names differ only in letter case or spaces (which one
was meant?), no id or class column, an empty class, a class holding a control character (a NUL, a line break, a
bidirectional override that shows ``CN`` for ``NC``), an id twice, one case named twice through two of its ids
(``hippocampus_001`` and ``hippocampus/hippocampus_001``: compared after each id is resolved to its catalog row),
an id the store does not hold (or holds as a failed or incomplete case), an unknown split, one patient's cases in
several splits, a single class, a class with no train case, and with ``crop="mask"`` a case without a mask or with
an empty one.
"""

from __future__ import annotations

import os
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from catalog import load_catalog

from .store_index import CaseEntry, _case_complete

__all__ = ["CLASS_COLUMNS", "ID_COLUMNS", "LabelTable", "LabelTableError", "match_table", "read_table"]

ID_COLUMNS = {"case_id": ("case_id", "case", "id"), "scan_id": ("scan_id", "scan")}
"""Accepted id column names (lower case, surrounding spaces ignored): the catalog column each one matches."""
CLASS_COLUMNS = ("label", "class", "target")
SPLITS = ("train", "val", "test")
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
"""Bidirectional marks, embeddings, overrides and isolates: invisible, they change how a name is shown."""


class LabelTableError(ValueError):
    """The label table cannot be used with this store; the message names the file, the rows and the fix."""


def _lines(index: Any, limit: int = 8) -> str:
    """Data-frame row positions as the file's line numbers (header on line 1), a few of them."""
    nums = [int(i) + 2 for i in index]
    return ", ".join(map(str, nums[:limit])) + (f" (and {len(nums) - limit} more)" if len(nums) > limit else "")


def _find(columns: dict[str, str], names: tuple[str, ...]) -> str | None:
    for name in names:
        if name in columns:
            return columns[name]
    return None


def _control_character(text: str) -> str | None:
    """The name of the first control character (C0/C1, NUL, line breaks) or bidirectional control in ``text``."""
    for ch in text:
        if unicodedata.category(ch) == "Cc" or ch in _BIDI:
            return f"U+{ord(ch):04X}" + (f" {unicodedata.name(ch)}" if unicodedata.name(ch, "") else "")
    return None


def _same_columns(path: Path, names: list[Any]) -> None:
    """Refuse two header names that differ only in letter case or surrounding spaces (``label`` and ``Label``):
    one would silently win."""
    seen: dict[str, str] = {}
    for name in map(str, names):
        key = unicodedata.normalize("NFC", name).strip().lower()
        if key in seen:
            raise LabelTableError(f"{path}: columns {seen[key]!r} and {name!r} differ only in letter case or spaces; "
                                  "keep one of them (rename or delete the other)")
        seen[key] = name


def read_table(path: str | os.PathLike[str]) -> tuple[pd.DataFrame, str]:
    """The table as columns ``id``, ``value`` (the class, a string in NFC form) and ``split`` ("" when not given),
    and which catalog column the ids match (``case_id`` or ``scan_id``)."""
    path = Path(path)
    if not path.is_file():
        raise LabelTableError(f"{path}: no such label table; give a CSV file with a case_id and a label column")
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
        # the header as written: pandas renames a repeated name (label, label.1)
        header = pd.read_csv(path, header=None, nrows=1, dtype=str, keep_default_na=False,
                             skipinitialspace=True).iloc[0].tolist()
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        reason = " ".join(str(exc).split())  # one line: pandas' messages hold line breaks
        raise LabelTableError(f"{path}: not a readable CSV table ({reason}); write it with a header row, e.g. "
                              "'case_id,label'") from exc
    _same_columns(path, header)
    columns = {str(c).strip().lower(): c for c in raw.columns}
    found = ", ".join(map(str, raw.columns)) or "none"
    kind = next((k for k, names in ID_COLUMNS.items() if _find(columns, names)), None)
    if kind is None:
        raise LabelTableError(f"{path}: no case id column (columns: {found}); name it case_id (the store's case "
                              "ids, aliases case, id) or scan_id (alias scan)")
    value_col = _find(columns, CLASS_COLUMNS)
    if value_col is None:
        raise LabelTableError(f"{path}: no class column (columns: {found}); name it label (aliases class, target)")
    split_col = columns.get("split")
    table = pd.DataFrame({
        "id": raw[_find(columns, ID_COLUMNS[kind])].str.strip(),
        "value": raw[value_col].str.strip().map(lambda v: unicodedata.normalize("NFC", v)),
        "split": raw[split_col].str.strip().str.lower() if split_col is not None else "",
    })
    if table.empty:
        raise LabelTableError(f"{path}: the table has no rows; give one row per case")
    for col, what in (("id", "an empty case id"), ("value", "an empty class")):
        empty = table.index[table[col] == ""]
        if len(empty):
            raise LabelTableError(f"{path}: line(s) {_lines(empty)} have {what}; fill them in or delete those rows")
    for i, value in zip(table.index, table["value"]):
        control = _control_character(value)
        if control:
            raise LabelTableError(f"{path}: line {_lines([i])}: the class {value!r} holds a control character "
                                  f"({control}); write class names as plain text")
    twice = table.index[table["id"].duplicated(keep=False)]
    if len(twice):
        raise LabelTableError(f"{path}: line(s) {_lines(twice)} name the same case more than once "
                              f"({', '.join(sorted(set(table.loc[twice, 'id']))[:5])}); keep one row per case")
    bad = table.index[~table["split"].isin(("", *SPLITS))]
    if len(bad):
        raise LabelTableError(f"{path}: line(s) {_lines(bad)} have split {sorted(set(table.loc[bad, 'split']))}; "
                              "use train, val or test (or leave the cell empty for the catalog's split)")
    return table, kind


def sorted_classes(values: pd.Series) -> tuple[Any, ...]:
    """The distinct values, sorted: as ints when every one is an integer, else as strings."""
    distinct = sorted(set(values))
    if all(re.fullmatch(r"[+-]?\d+", v) for v in distinct):
        return tuple(sorted({int(v) for v in distinct}))
    return tuple(distinct)


@dataclass(frozen=True)
class LabelTable:
    """A label table matched to a store: ``rows`` has one row per case (``store_path``, ``case_id``,
    ``scan_id``, ``domain``, ``split``, ``target`` (class index), ``label`` (class value), ``spacing``
    (stored z, y, x mm), ``shape``, ``n_channels``) in the table's order."""

    path: str
    store: str
    classes: tuple[Any, ...]
    rows: pd.DataFrame

    def split(self, name: str) -> pd.DataFrame:
        return self.rows[self.rows["split"] == name]

    def cases(self, split: str) -> tuple[CaseEntry, ...]:
        """The cases of ``split`` as :class:`CaseEntry`, sorted by store path."""
        rows = self.split(split).sort_values("store_path")
        return tuple(CaseEntry(r.store_path, r.scan_id, tuple(int(s) for s in r.shape), int(r.n_channels))
                     for r in rows.itertuples(index=False))

    @property
    def targets(self) -> dict[str, int]:
        """{store_path: class index}."""
        return dict(zip(self.rows["store_path"], self.rows["target"].astype(int)))

    @property
    def spacings(self) -> dict[str, tuple[float, float, float]]:
        """{store_path: stored spacing (z, y, x) mm}."""
        return {r.store_path: tuple(float(s) for s in r.spacing) for r in self.rows.itertuples(index=False)}


def _catalog_rows(table: pd.DataFrame, kind: str, store: str, path: str) -> pd.DataFrame:
    """For each table row, its catalog row (any status), matched by case id, store path or scan id."""
    cat = load_catalog(store).reset_index(drop=True)
    keys = ["store_path", "case_id"] if kind == "case_id" else ["scan_id"]
    where: dict[str, list[int]] = {}
    for key in keys:
        for pos, value in enumerate(cat[key].astype(str)):
            where.setdefault(value, [])
            if pos not in where[value]:
                where[value].append(pos)
    unknown = table.index[[tid not in where for tid in table["id"]]]
    if len(unknown):
        example = cat[keys[-1]].astype(str).head(3).tolist()
        raise LabelTableError(
            f"{path}: line(s) {_lines(unknown)} name cases that {store} does not hold "
            f"({', '.join(table.loc[unknown, 'id'].head(5))}); use the store's {kind}s (e.g. {', '.join(example)}: "
            f"the {kind} column of {store}/catalog.parquet lists them all) or delete those rows")
    ambiguous = [i for i, tid in zip(table.index, table["id"]) if len(where[tid]) > 1]
    if ambiguous:
        raise LabelTableError(f"{path}: line(s) {_lines(ambiguous)} name a {kind} that {store} holds more than "
                              "once (in several domains); write it as its store path DOMAIN/CASE_ID")
    rows = [where[tid][0] for tid in table["id"]]
    # one catalog row named by two of its ids (case id and store path): trained twice, the last label winning
    lines_of: dict[int, list[Any]] = {}
    for i, pos in zip(table.index, rows):
        lines_of.setdefault(pos, []).append(i)
    twice = next((lines for lines in lines_of.values() if len(lines) > 1), None)
    if twice is not None:
        names = ", ".join(repr(v) for v in table.loc[twice, "id"])
        raise LabelTableError(f"{path}: line(s) {_lines(twice)} name the same case "
                              f"{cat.loc[rows[table.index.get_loc(twice[0])], 'store_path']} (as {names}); keep one "
                              "row per case")
    return cat.iloc[rows].reset_index(drop=True)


def match_table(path: str | os.PathLike[str], store: str, *, crop: str = "none") -> LabelTable:
    """Read the table at ``path`` and check it against ``store``'s catalog (see the module docstring for what
    is refused); ``crop="mask"`` also needs every case to have a non-empty stored mask. Raises
    :class:`LabelTableError`; reads the catalog only (no voxel)."""
    path = os.fspath(path)
    table, kind = read_table(path)
    cat = _catalog_rows(table, kind, store, path)
    failed = table.index[(cat["status"] != "ok").to_numpy()]
    if len(failed):
        raise LabelTableError(f"{path}: line(s) {_lines(failed)} name cases that failed to convert in {store} "
                              f"({', '.join(cat.loc[failed, 'store_path'].head(5))}); fix them (`med3d-prep info "
                              f"{store}` says why) or delete those rows")
    incomplete = [i for i, p in enumerate(cat["store_path"]) if not _case_complete(store, p)]
    if incomplete:
        raise LabelTableError(f"{path}: line(s) {_lines(incomplete)} name cases whose files in {store} are "
                              "incomplete (no completion marker); finish or --verify the build, or delete those rows")
    if crop == "mask":
        fg = pd.to_numeric(cat["foreground_voxels"], errors="coerce").fillna(0).to_numpy()
        no_mask = table.index[~cat["has_label"].astype(bool).to_numpy() | (fg <= 0)]
        if len(no_mask):
            raise LabelTableError(f"{path}: line(s) {_lines(no_mask)} name cases without a labelled region in "
                                  f"{store} ({', '.join(cat.loc[no_mask, 'store_path'].head(5))}); --crop mask "
                                  "crops around the mask: delete those rows or use --crop none")
    classes = sorted_classes(table["value"])
    if len(classes) < 2:
        raise LabelTableError(f"{path}: every row has the class {classes[0]!r}; a classifier needs two classes or "
                              "more: add cases of another class")
    split = table["split"].where(table["split"] != "", cat["split"].astype(str))
    ints = isinstance(classes[0], int)
    index = {c: i for i, c in enumerate(classes)}
    targets = [index[int(v) if ints else v] for v in table["value"]]
    rows = pd.DataFrame({
        "store_path": cat["store_path"].astype(str), "case_id": cat["case_id"].astype(str),
        "scan_id": cat["scan_id"].astype(str), "domain": cat["domain"].astype(str), "split": split,
        "target": targets, "label": [classes[t] for t in targets],
        "spacing": cat["target_spacing"], "shape": cat["shape"], "n_channels": cat["n_channels"],
    })
    patients = pd.DataFrame({"patient": cat["patient_id"].astype(str), "split": split})
    mixed = patients.groupby("patient")["split"].nunique()
    mixed = sorted(mixed[mixed > 1].index)
    if mixed:
        lines = table.index[patients["patient"].isin(mixed).to_numpy()]
        raise LabelTableError(f"{path}: line(s) {_lines(lines)} put one patient's cases in different splits "
                              f"(patient(s) {', '.join(mixed[:5])}): a model tested on a patient it trained on is "
                              "measured too kindly; give all of a patient's cases one split")
    train = set(rows.loc[rows["split"] == "train", "target"])
    if not train:
        raise LabelTableError(f"{path}: no row is in the train split (the catalog's splits: "
                              f"{', '.join(sorted(set(cat['split'].astype(str))))}; a build puts cases without a "
                              "mask in test); add a split column and give some rows 'train'")
    absent = [c for i, c in enumerate(classes) if i not in train]
    if absent:
        lines = table.index[rows["target"].isin([index[c] for c in absent]).to_numpy()]
        raise LabelTableError(f"{path}: class(es) {', '.join(map(repr, absent))} have no train case (line(s) "
                              f"{_lines(lines)} are all in val/test); move a case of each to train with the split "
                              "column, or delete those rows")
    return LabelTable(path=path, store=store, classes=classes, rows=rows)
