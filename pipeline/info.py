"""Summaries of a built store (what `med3d-prep info` prints)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from catalog import load_catalog, load_domains, load_nodules


def store_summary(store: str) -> pd.DataFrame:
    """One row per domain: volumes, failed, modality, channels, target spacing, median shape, store bytes,
    the split counts, and how many volumes did not use their header spacing (``spacing_flag``)."""
    cat = load_catalog(store)
    doms = load_domains(store).set_index("domain")
    rows = []
    for domain, sub in cat.groupby("domain"):
        ok = sub[sub["status"] == "ok"]
        shapes = np.array([s for s in ok["shape"] if len(s) == 3]) if len(ok) else np.zeros((0, 3))
        d = doms.loc[domain] if domain in doms.index else None
        rows.append({
            "domain": domain,
            "volumes": len(ok),
            "failed": int((sub["status"] != "ok").sum()),
            "modality": d["modality"] if d is not None else "",
            "channels": int(d["n_channels"]) if d is not None else 0,
            "classes": int(d["num_classes"]) if d is not None else 0,
            "target_spacing_zyx_mm": "×".join(f"{v:g}" for v in d["target_spacing"]) if d is not None else "",
            "median_shape_zyx": "×".join(str(int(v)) for v in np.median(shapes, axis=0)) if len(shapes) else "",
            "train": int((ok["split"] == "train").sum()),
            "val": int((ok["split"] == "val").sum()),
            "test": int((ok["split"] == "test").sum()),
            "unannotated": int((ok["split"] == "unannotated").sum()),
            "spacing_flagged": int((ok["spacing_flag"] != "").sum()),
            "store_bytes": int(ok["stored_bytes"].sum()),
        })
    return pd.DataFrame(rows)


def nodules_summary(store: str) -> pd.DataFrame | None:
    """For a store with ``nodules.parquet`` (LIDC): one row per split (train, val, test, then a "total" row)
    with all nodules, the < 3 mm ones, the selected ones, and among the selected ones the benign, malignant and
    unlabelled (no reader rated it) counts and those with a crop. None when the store has no nodules table."""
    nod = load_nodules(store, missing_ok=True)
    if nod is None:
        return None
    rows = []
    splits = [s for s in ("train", "val", "test") if s in set(nod["split"])]
    splits += sorted(set(nod["split"]) - set(splits))
    for name, sub in [(s, nod[nod["split"] == s]) for s in splits] + [("total", nod)]:
        sel = sub[sub["selected"]]
        rows.append({
            "split": name or "(none)", "patients": int(sub["patient_id"].nunique()), "nodules": len(sub),
            "small_lt_3mm": int(sub["is_small"].sum()), "selected": len(sel),
            "benign": int((sel["label"] == "benign").sum()), "malignant": int((sel["label"] == "malignant").sum()),
            "unlabelled": int(sel["label"].isna().sum()), "crops": int((sel["case_id"] != "").sum()),
        })
    return pd.DataFrame(rows)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"
