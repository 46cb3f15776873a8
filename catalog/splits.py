"""Deterministic, patient-level splits from a seeded hash of the patient id (patients sharing a scan split as one)."""
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
    rows with an empty split, failed ones keep no split, unlabelled ones become "test"; labelled ones become "val" when their patient's
    hash falls below ``val_fraction``, else "train".

    Patients whose cases hold the same image (identical first ``source_sha256``: one scan under two names) are
    split as one (:func:`scan_groups`). A domain with three or more labelled patients to assign always gets at
    least one val patient (the lowest hash), so small sample domains still validate. Adding cases never moves an existing patient (the hash is per
    patient), except for that minimum. Sources that fix splits must fix them per patient: a patient whose rows
    are partly fixed and partly hashed could land in two splits.
    """
    given = df["split"].fillna("").astype(str)
    split = given.where(given.ne(""), "train").astype(object)
    # A failed case has no stored label, which would make it look like an unlabelled "test" case; it keeps
    # whatever its source fixed (or no split) and takes no part in choosing val patients.
    failed = df["status"].ne("ok") if "status" in df else pd.Series(False, index=df.index)
    split[failed] = given[failed]
    free = given.eq("") & ~failed
    unlabelled = free & ~df["has_label"].astype(bool)
    split[unlabelled] = "test"
    for domain, rows in df[free & ~unlabelled].groupby("domain"):
        # Patients linked by a shared scan (the same image bytes under two names) split as one: each takes the
        # hash of the group's first patient id, so a patient without duplicates keeps its own.
        group = scan_groups(rows)
        patients = sorted(set(group.values()))
        u = {p: hash_unit(seed, str(domain), p) for p in patients}
        val_groups = {p for p in patients if u[p] < val_fraction}
        if not val_groups and len(patients) >= 3 and val_fraction > 0:
            val_groups = {min(patients, key=u.get)}
        split[rows.index[rows["patient_id"].map(group).isin(val_groups)]] = "val"
    return split


def image_hash(source_sha256: str) -> str:
    """The content hash of a case's first image file (``source_sha256`` joins the hashes of its images, then its
    label files, with ";"): the scan's identity. Labels are left out: empty masks are alike across scans."""
    return str(source_sha256).split(";", 1)[0]


def scan_groups(rows: pd.DataFrame) -> dict[str, str]:
    """Patient id → the first (sorted) patient id of its group: patients are grouped when cases of theirs hold
    the same image bytes (:func:`image_hash`), so that one scan under two names cannot land in two splits.
    Rows without ``source_sha256`` (or with it empty) group by patient only."""
    parent = {p: p for p in rows["patient_id"]}

    def find(p: str) -> str:
        while parent[p] != p:
            parent[p] = parent[parent[p]]
            p = parent[p]
        return p

    if "source_sha256" in rows:
        first: dict[str, str] = {}
        for patient, sha in zip(rows["patient_id"], rows["source_sha256"].map(image_hash)):
            if not sha:
                continue
            other = first.setdefault(sha, patient)
            a, b = find(patient), find(other)
            if a != b:
                parent[max(a, b)] = min(a, b)
    return {p: find(p) for p in parent}


def duplicate_scans(df: pd.DataFrame) -> list[list[str]]:
    """Groups of two or more ``domain/case_id`` whose cases hold the same image bytes (:func:`image_hash`),
    within one domain, sorted: the same scan under several names, kept in one split by :func:`assign_splits`."""
    if "source_sha256" not in df or not len(df):
        return []
    keyed = df.assign(_scan=df["source_sha256"].map(image_hash))
    keyed = keyed[keyed["_scan"].ne("")]
    groups = [sorted(f"{d}/{c}" for d, c in zip(g["domain"], g["case_id"]))
              for _, g in keyed.groupby(["domain", "_scan"]) if len(g) > 1]
    return sorted(groups)


def patient_splits(patients, *, test_fraction: float, val_fraction: float, seed: int, domain: str) -> dict[str, str]:
    """Patient id → "train" | "val" | "test", for sources with no fixed test set (LIDC-IDRI).

    A patient is "test" when its seeded hash (salted "test") falls below ``test_fraction``; of the others, "val"
    when a second hash (the one :func:`assign_splits` uses) falls below ``val_fraction``; the rest "train". With
    three or more patients there is at least one test patient, and with three or more left at least one val
    patient (the lowest hash), so small sample sets still test and validate. Deterministic, and adding patients
    never moves an existing one, except for those minimums.
    """
    if not 0 <= test_fraction < 1:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    ids = sorted(set(patients))
    u_test = {p: hash_unit(seed, domain, "test", p) for p in ids}
    test = {p for p in ids if u_test[p] < test_fraction}
    if not test and len(ids) >= 3 and test_fraction > 0:
        test = {min(ids, key=u_test.get)}
    rest = [p for p in ids if p not in test]
    u_val = {p: hash_unit(seed, domain, p) for p in rest}
    val = {p for p in rest if u_val[p] < val_fraction}
    if not val and len(rest) >= 3 and val_fraction > 0:
        val = {min(rest, key=u_val.get)}
    return {p: "test" if p in test else "val" if p in val else "train" for p in ids}
