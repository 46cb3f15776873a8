"""Deterministic, patient-level splits from a seeded hash of the patient id."""
from __future__ import annotations

import hashlib

import pandas as pd


def hash_unit(seed: int, *parts: str) -> float:
    """A number in [0, 1) determined by the seed and the parts: stable across runs, machines and additions."""
    h = hashlib.sha256(":".join([str(seed), *parts]).encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def assign_splits(df: pd.DataFrame, val_fraction: float, seed: int) -> pd.Series:
    """Split per domain at patient level: rows whose split is already "test" stay test (unlabelled cases), the
    rest are "val" when their patient's hash falls below ``val_fraction``, else "train".

    A domain with three or more labelled patients always gets at least one val patient (the lowest hash), so
    small sample domains still validate. Adding cases never moves an existing patient (the hash is per patient),
    except for that minimum.
    """
    split = pd.Series("train", index=df.index, dtype=object)
    is_test = df["split"].eq("test") | ~df["has_label"].astype(bool)
    split[is_test] = "test"
    for domain, rows in df[~is_test].groupby("domain"):
        patients = sorted(set(rows["patient_id"]))
        u = {p: hash_unit(seed, str(domain), p) for p in patients}
        val_patients = {p for p in patients if u[p] < val_fraction}
        if not val_patients and len(patients) >= 3 and val_fraction > 0:
            val_patients = {min(patients, key=u.get)}
        split[rows.index[rows["patient_id"].isin(val_patients)]] = "val"
    return split
