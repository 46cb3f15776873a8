"""A split table for ``finetune seg --splits TABLE.csv``: which of a store's cases a run trains, validates and is
measured on, in place of the catalog's splits.

The table has a ``case_id`` column (the catalog's case id, or ``domain/case_id``) and a ``split`` column
(``train``, ``val`` or ``test``); a case it does not list is not used at all. It is how ``med3d-train study``
trains on a fraction of the training patients and measures every cell on one fixed test split, and how a user
fixes their own split without rebuilding the store. Every refusal names the file and the row.

>>> splits = read_split_table("splits.csv", "data/hippo_store", "hippocampus")
>>> sorted(set(splits.values()))
['test', 'train', 'val']
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["SPLIT_VALUES", "SplitTableError", "read_split_table", "write_split_table"]

SPLIT_VALUES = ("train", "val", "test")


class SplitTableError(ValueError):
    """The split table cannot be used with the store; the message names the file and what is wrong."""


def read_split_table(path: str | os.PathLike[str], store: str, domain: str) -> dict[str, str]:
    """``{store_path: split}`` of the table at ``path``, checked against ``store``'s ok, labelled cases of
    ``domain``: unknown or unlabelled cases, duplicates, unknown split values and an empty train split are refused
    (:class:`SplitTableError`)."""
    import pandas as pd

    from catalog import load_catalog, select

    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise SplitTableError(f"{path}: no such split table") from None
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise SplitTableError(f"{path}: not a readable CSV split table ({' '.join(str(exc).split())})") from None
    missing = [c for c in ("case_id", "split") if c not in table.columns]
    if missing:
        raise SplitTableError(f"{path}: no {' or '.join(missing)} column (columns: {', '.join(table.columns)}); a "
                              "split table has case_id,split")
    rows = select(load_catalog(store), domain=domain, labelled=True)
    by_id = {str(r.case_id): str(r.store_path) for r in rows.itertuples(index=False)}
    by_id.update({str(p): str(p) for p in rows["store_path"]})
    out: dict[str, str] = {}
    for n, (case, split) in enumerate(zip(table["case_id"], table["split"]), start=2):
        case, split = case.strip(), split.strip()
        if split not in SPLIT_VALUES:
            raise SplitTableError(f"{path}:{n}: split {split!r} of {case!r} is not one of {', '.join(SPLIT_VALUES)}")
        if case not in by_id:
            raise SplitTableError(f"{path}:{n}: {case!r} is not an ok, labelled case of domain {domain!r} in {store}")
        if by_id[case] in out:
            raise SplitTableError(f"{path}:{n}: {case!r} is listed twice")
        out[by_id[case]] = split
    if "train" not in out.values():
        raise SplitTableError(f"{path}: no train case")
    return out


def write_split_table(path: str | os.PathLike[str], splits: dict[str, str]) -> Path:
    """Write ``{case_id: split}`` as a split table (sorted by case id); returns the path."""
    import pandas as pd

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(sorted(splits.items()), columns=["case_id", "split"])
    frame.to_csv(path, index=False)
    return path
