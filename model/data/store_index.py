"""Which cases a run trains on: the index of a store's complete, labelled cases of one split, minus excluded scans.

>>> index = StoreIndex.from_store("data/store", split="train", exclude_scan_ids=parse_exclude("data/lits:val"))
>>> index.domains, len(index), index.num_classes["liver"]
"""
from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from catalog import load_catalog, load_domains, scan_ids as catalog_scan_ids, select
from catalog.io import is_local, store_join
from pipeline.store import MARKER  # a case counts only once its group attrs hold the completion marker

from .zarr_read import ChunkedArrayReader

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class CaseEntry:
    """One trainable case: where it is and its stored geometry."""

    store_path: str
    """"<domain>/<case_id>", relative to the store root."""
    scan_id: str
    shape: tuple[int, int, int]
    """Stored (Z, Y, X) in voxels."""
    n_channels: int


@dataclass(frozen=True)
class StoreIndex:
    """The cases a run trains on, per domain (cases sorted by store path, so indices are stable)."""

    store: str
    split: str
    cases: dict[str, tuple[CaseEntry, ...]]
    num_classes: dict[str, int]
    excluded: tuple[str, ...] = ()
    """Scan ids of the split that were left out (``exclude_scan_ids`` that matched a case)."""
    _fg_cache: dict[str, np.ndarray] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_store(cls, store: str | os.PathLike[str], split: str = "train",
                   exclude_scan_ids: Iterable[str] = frozenset()) -> "StoreIndex":
        """The ok, labelled, complete cases of ``split``, minus those whose scan id is in ``exclude_scan_ids``."""
        store = os.fspath(store)
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        exclude = frozenset(exclude_scan_ids)
        rows = select(load_catalog(store), split=split, labelled=True)
        dropped = rows[rows["scan_id"].isin(exclude)]
        rows = rows[~rows["scan_id"].isin(exclude)]
        incomplete = [p for p in rows["store_path"] if not _case_complete(store, p)]
        if incomplete:
            warnings.warn(f"{store}: {len(incomplete)} catalogued case(s) lack the completion marker and are "
                          f"skipped (a build in progress or a crash): {incomplete[:5]}", stacklevel=2)
            rows = rows[~rows["store_path"].isin(incomplete)]
        if rows.empty:
            raise ValueError(
                f"{store}: no case to train on in split {split!r} (ok, labelled, complete cases; "
                f"{len(dropped)} excluded by scan id, {len(incomplete)} incomplete). Check the store with "
                f"`med3d-prep info {store}` and the --exclude options."
            )
        cases: dict[str, list[CaseEntry]] = {}
        for r in rows.itertuples(index=False):
            if len(r.shape) != 3:
                raise ValueError(f"{store}: catalog row {r.store_path} has shape {r.shape}, expected (Z, Y, X)")
            cases.setdefault(r.domain, []).append(
                CaseEntry(r.store_path, r.scan_id, tuple(int(s) for s in r.shape), int(r.n_channels)))
        doms = load_domains(store).set_index("domain")
        missing = sorted(set(cases) - set(doms.index))
        if missing:
            raise ValueError(f"{store}: domains {missing} are in the catalog but not in domains.parquet")
        return cls(
            store=store, split=split,
            cases={d: tuple(sorted(cs, key=lambda c: c.store_path)) for d, cs in sorted(cases.items())},
            num_classes={d: int(doms.loc[d, "num_classes"]) for d in sorted(cases)},
            excluded=tuple(sorted(set(dropped["scan_id"]))),
        )

    @property
    def domains(self) -> tuple[str, ...]:
        return tuple(sorted(self.cases))

    @property
    def scan_ids(self) -> tuple[str, ...]:
        """Scan ids of every case trained on (sorted): what a checkpoint records."""
        return tuple(sorted({c.scan_id for cs in self.cases.values() for c in cs}))

    def __len__(self) -> int:
        return sum(len(cs) for cs in self.cases.values())

    def weights(self, mode: str) -> tuple[float, ...]:
        """Sampling weight of each domain of :attr:`domains`: its number of cases ("size") or 1 ("uniform")."""
        if mode == "size":
            return tuple(float(len(self.cases[d])) for d in self.domains)
        if mode == "uniform":
            return tuple(1.0 for _ in self.domains)
        raise ValueError(f"domain sampling must be 'size' or 'uniform', got {mode!r}")

    def foreground(self, case: CaseEntry) -> np.ndarray:
        """(N, 4) int32 rows (class, z, y, x) of the case's stored foreground voxels; read on first use."""
        fg = self._fg_cache.get(case.store_path)
        if fg is None:
            fg = ChunkedArrayReader(store_join(self.store, case.store_path, "foreground")).read_all()
            self._fg_cache[case.store_path] = fg
        return fg

    def to_record(self) -> dict[str, Any]:
        """JSON-able summary for checkpoints: which store, split and cases the run saw."""
        return {
            "store": self.store, "split": self.split, "excluded_scan_ids": list(self.excluded),
            "scan_ids": list(self.scan_ids), "num_classes": dict(self.num_classes),
            "cases": {d: [c.store_path for c in cs] for d, cs in self.cases.items()},
        }


def parse_exclude(specs: str | Iterable[str]) -> set[str]:
    """Scan ids named by ``--exclude`` options: ``STORE`` (all its cases) or ``STORE:SPLIT`` (one split).

    ``parse_exclude(["lits_store:val", "lidc_store"])`` returns the union of both stores' scan ids.
    """
    out: set[str] = set()
    for spec in [specs] if isinstance(specs, str) else specs:
        path, sep, tail = spec.rpartition(":")
        split = None
        if sep and tail in SPLITS:
            split = tail
        elif sep and path and "/" not in tail and os.path.exists(path):
            raise ValueError(f"--exclude {spec!r}: unknown split {tail!r}; write STORE or STORE:train|val|test")
        else:
            path = spec
        out |= catalog_scan_ids(load_catalog(path), split)
    return out


def _node_meta(store: str, *parts: str) -> dict[str, Any] | None:
    """A group's or array's zarr.json (attributes under "attributes"), or None when it does not exist."""
    if is_local(store):
        try:
            with open(store_join(store.removeprefix("file://"), *parts, "zarr.json"), "rb") as fh:
                return json.load(fh)
        except (OSError, ValueError):
            return None
    import zarr

    try:
        return {"attributes": dict(zarr.open(store_join(store, *parts), mode="r").attrs)}
    except (KeyError, FileNotFoundError, ValueError):
        return None


def _case_complete(store: str, store_path: str) -> bool:
    return bool((_node_meta(store, store_path) or {}).get("attributes", {}).get(MARKER))
