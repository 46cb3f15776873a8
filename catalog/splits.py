"""Deterministic, patient-level splits from a seeded hash of the patient id."""
from __future__ import annotations

import hashlib

import pandas as pd


def hash_unit(seed: int, *parts: str) -> float:
    """A number in [0, 1) determined by the seed and the parts: stable across runs, machines and additions."""
    h = hashlib.sha256(":".join([str(seed), *parts]).encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def assign_splits(df: pd.DataFrame, val_fraction: float, seed: int) -> pd.Series:
    """Split per domain at patient level.

    A row whose ``split`` is already set keeps it: a source fixed it ("test" for unlabelled or challenge test
    volumes, the VISCERAL test set, "unannotated"), or an earlier build of another domain assigned it. Of the
    rows with an empty split, unlabelled ones become "test"; labelled ones become "val" when their patient's
    hash falls below ``val_fraction``, else "train".

    A domain with three or more labelled patients to assign always gets at least one val patient (the lowest
    hash), so small sample domains still validate. Adding cases never moves an existing patient (the hash is per
    patient), except for that minimum. Sources that fix splits must fix them per patient: a patient whose rows
    are partly fixed and partly hashed could land in two splits.
    """
    given = df["split"].fillna("").astype(str)
    split = given.where(given.ne(""), "train").astype(object)
    free = given.eq("")
    unlabelled = free & ~df["has_label"].astype(bool)
    split[unlabelled] = "test"
    for domain, rows in df[free & ~unlabelled].groupby("domain"):
        patients = sorted(set(rows["patient_id"]))
        u = {p: hash_unit(seed, str(domain), p) for p in patients}
        val_patients = {p for p in patients if u[p] < val_fraction}
        if not val_patients and len(patients) >= 3 and val_fraction > 0:
            val_patients = {min(patients, key=u.get)}
        split[rows.index[rows["patient_id"].isin(val_patients)]] = "val"
    return split
