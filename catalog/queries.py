"""Queries over a catalog DataFrame."""
from __future__ import annotations

from collections.abc import Iterable

import pandas as pd


def select(cat: pd.DataFrame, *, domain: str | Iterable[str] | None = None, split: str | Iterable[str] | None = None,
           ok_only: bool = True, labelled: bool | None = None) -> pd.DataFrame:
    """Rows of the given domain(s) and split(s); by default only cases that converted (status ok)."""
    mask = pd.Series(True, index=cat.index)
    if ok_only:
        mask &= cat["status"].eq("ok")
    if domain is not None:
        mask &= cat["domain"].isin([domain] if isinstance(domain, str) else list(domain))
    if split is not None:
        mask &= cat["split"].isin([split] if isinstance(split, str) else list(split))
    if labelled is not None:
        mask &= cat["has_label"].eq(labelled)
    return cat[mask]


def scan_ids(cat: pd.DataFrame, split: str | None = None) -> set[str]:
    """The scan identities in a catalog (optionally one split): what ``--exclude`` keeps out of pretraining."""
    rows = cat if split is None else cat[cat["split"].eq(split)]
    return set(rows["scan_id"])
