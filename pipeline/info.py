"""Summaries of a built store (what `med3d-prep info` prints)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from catalog import load_catalog, load_domains


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


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"
