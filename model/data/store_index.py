"""Which cases a run trains on: the index of a store's complete, labelled cases of one split, minus excluded scans.

>>> index = StoreIndex.from_store("data/store", split="train", exclude_scan_ids=parse_exclude("data/lits:val"))
>>> index.domains, len(index), index.num_classes["liver"]

Several stores (``StoreIndex.from_stores(["data/store", "data/nnunet_store"])``) form one index: domain names must
be unique across them, and a scan that two stores hold under one scan id (MSD ``liver_7`` and LiTS ``volume-7``
are both ``lits:7``) belongs to the first store that holds it, in whatever split it has there.
"""
from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from catalog import load_catalog, load_domains, scan_ids as catalog_scan_ids, select
from catalog.case_arrays import case_array
from catalog.store_format import FOREGROUND, MARKER, node_meta, store_join  # a case counts once its MARKER is there

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
    store: str = ""
    """The store holding the case, set when the index spans several stores; "" means the store of the index
    (or of the stream reading it), so a single-store index can be pointed at a copy of its store."""


@dataclass(frozen=True)
class StoreIndex:
    """The cases a run trains on, per domain (cases sorted by store path, so indices are stable)."""

    store: str
    split: str
    cases: dict[str, tuple[CaseEntry, ...]]
    num_classes: dict[str, int]
    excluded: tuple[str, ...] = ()
    """Scan ids of the split that were left out (``exclude_scan_ids`` that matched a case)."""
    stores: tuple[str, ...] = ()
    """Every store the index reads, in the order given (the first is :attr:`store`); () means :attr:`store`."""
    duplicates: tuple[str, ...] = ()
    """Scan ids left out of a later store because an earlier store holds the same scan (:meth:`from_stores`)."""
    _fg_cache: dict[tuple[str, str], np.ndarray] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.stores:
            object.__setattr__(self, "stores", (self.store,))

    @classmethod
    def from_store(cls, store: str | os.PathLike[str], split: str = "train",
                   exclude_scan_ids: Iterable[str] = frozenset()) -> "StoreIndex":
        """The ok, labelled, complete cases of ``split``, minus those whose scan id is in ``exclude_scan_ids``."""
        store = os.fspath(store)
        part = _StorePart.read(store, split, frozenset(exclude_scan_ids))
        if not part.index.cases:
            raise ValueError(part.empty_message())
        return part.index

    @classmethod
    def from_stores(cls, stores: str | os.PathLike[str] | Iterable[str | os.PathLike[str]], split: str = "train",
                    exclude_scan_ids: Iterable[str] = frozenset()) -> "StoreIndex":
        """One index over several stores (one store: exactly :meth:`from_store`).

        Domain names must be unique across the stores (a clash raises ValueError naming both stores). A scan id
        that several stores hold belongs to the first of them that holds it (any split, ok rows): later stores'
        copies are left out and listed in :attr:`duplicates`, so a scan is trained on once and a scan validated
        in one store is not trained on from another. A store with no case in ``split`` adds nothing; no case in
        any store raises ValueError.
        """
        paths = [os.fspath(stores)] if isinstance(stores, (str, os.PathLike)) else [os.fspath(s) for s in stores]
        if not paths:
            raise ValueError("no store given")
        if len(paths) == 1:
            return cls.from_store(paths[0], split, exclude_scan_ids)
        repeated = sorted({p for p in paths if paths.count(p) > 1})
        if repeated:
            raise ValueError(f"store {repeated[0]} given twice")
        exclude = frozenset(exclude_scan_ids)
        parts = [_StorePart.read(p, split, exclude) for p in paths]
        owner: dict[str, str] = {}
        for part in parts:
            for domain in part.all_domains:
                if domain in owner:
                    raise ValueError(f"domain {domain!r} is in both {owner[domain]} and {part.index.store}: domain "
                                     "names must be unique across the stores: give only one of the stores that "
                                     "hold it, or rebuild one under another name (build-nnunet and build-totalseg "
                                     "take --domain)")
                owner[domain] = part.index.store
        cases: dict[str, tuple[CaseEntry, ...]] = {}
        num_classes: dict[str, int] = {}
        seen: set[str] = set()
        duplicates: set[str] = set()
        for part in parts:
            ix = part.index
            for domain, entries in ix.cases.items():
                kept = tuple(dataclasses.replace(c, store=ix.store) for c in entries if c.scan_id not in seen)
                duplicates |= {c.scan_id for c in entries if c.scan_id in seen}
                if kept:
                    cases[domain] = kept
                    num_classes[domain] = ix.num_classes[domain]
            seen |= part.held_scan_ids
        if not cases:
            raise ValueError("; ".join(p.empty_message() for p in parts))
        return cls(
            store=paths[0], split=split, cases=dict(sorted(cases.items())),
            num_classes=dict(sorted(num_classes.items())),
            excluded=tuple(sorted({s for p in parts for s in p.index.excluded})), stores=tuple(paths),
            duplicates=tuple(sorted(duplicates)),
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

    def store_of(self, case: CaseEntry) -> str:
        """The store holding ``case``."""
        return case.store or self.store

    def foreground(self, case: CaseEntry) -> np.ndarray:
        """(N, 4) int32 rows (class, z, y, x) of the case's stored foreground voxels; read on first use."""
        key = (case.store, case.store_path)
        fg = self._fg_cache.get(key)
        if fg is None:
            fg = case_array(self.store_of(case), case.store_path, FOREGROUND, shape=case.shape,
                            n_channels=case.n_channels).read_all()
            self._fg_cache[key] = fg
        return fg

    def to_record(self) -> dict[str, Any]:
        """JSON-able summary for checkpoints: which stores, split and cases the run saw (a case of a multi-store
        index as ``STORE/<domain>/<case_id>``)."""
        return {
            "store": self.store, "stores": list(self.stores), "split": self.split,
            "excluded_scan_ids": list(self.excluded), "duplicate_scan_ids": list(self.duplicates),
            "scan_ids": list(self.scan_ids), "num_classes": dict(self.num_classes),
            "cases": {d: [store_join(c.store, c.store_path) if c.store else c.store_path for c in cs]
                      for d, cs in self.cases.items()},
        }


@dataclass(frozen=True)
class _StorePart:
    """What one store contributes to an index: its own index of a split (possibly empty) and what merging several
    stores checks."""

    index: StoreIndex
    all_domains: tuple[str, ...]
    """Every domain of the store's domains table (for the uniqueness check across stores)."""
    held_scan_ids: frozenset[str]
    """Scan ids of every ok case of the store, any split (a later store's copy of one of them is dropped)."""
    incomplete: int

    @classmethod
    def read(cls, store: str, split: str, exclude: frozenset[str]) -> "_StorePart":
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        catalog = load_catalog(store)
        rows = select(catalog, split=split, labelled=True)
        dropped = rows[rows["scan_id"].isin(exclude)]
        rows = rows[~rows["scan_id"].isin(exclude)]
        incomplete = [p for p in rows["store_path"] if not _case_complete(store, p)]
        if incomplete:
            warnings.warn(f"{store}: {len(incomplete)} catalogued case(s) lack the completion marker and are "
                          f"skipped (a build in progress or a crash): {incomplete[:5]}", stacklevel=3)
            rows = rows[~rows["store_path"].isin(incomplete)]
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
        index = StoreIndex(
            store=store, split=split,
            cases={d: tuple(sorted(cs, key=lambda c: c.store_path)) for d, cs in sorted(cases.items())},
            num_classes={d: int(doms.loc[d, "num_classes"]) for d in sorted(cases)},
            excluded=tuple(sorted(set(dropped["scan_id"]))),
        )
        return cls(index=index, all_domains=tuple(sorted(set(doms.index) | set(catalog["domain"]))),
                   held_scan_ids=frozenset(catalog_scan_ids(select(catalog))), incomplete=len(incomplete))

    def empty_message(self) -> str:
        ix = self.index
        hint = " and the --exclude options" if ix.excluded else ""
        return (f"{ix.store}: no ok, labelled, complete case in split {ix.split!r} ({len(ix.excluded)} excluded "
                f"by scan id, {self.incomplete} incomplete). Check the store with `med3d-prep info {ix.store}`"
                f"{hint}.")


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


def _case_complete(store: str, store_path: str) -> bool:
    return bool((node_meta(store, store_path) or {}).get("attributes", {}).get(MARKER))
