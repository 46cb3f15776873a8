"""Deterministic patient-level splits."""
from __future__ import annotations

import pandas as pd

from catalog import assign_splits


def _rows(n, domain="d", **kw):
    return [{"domain": domain, "patient_id": f"p{i}", "split": "", "has_label": True, "status": "ok", **kw}
            for i in range(n)]


def test_deterministic_patient_level_with_minimum_val():
    df = pd.DataFrame(_rows(20) + [{"domain": "d", "patient_id": "p3", "split": "", "has_label": True,
                                    "status": "ok"}])
    a = assign_splits(df, 0.1, seed=0)
    b = assign_splits(df, 0.1, seed=0)
    assert a.tolist() == b.tolist()
    assert set(a) <= {"train", "val"} and (a == "val").any()
    by_patient = df.assign(split=a).groupby("patient_id")["split"].nunique()
    assert (by_patient == 1).all()  # p3's two rows share a split
    three = assign_splits(pd.DataFrame(_rows(3)), 0.0001, seed=0)
    assert (three == "val").sum() == 1  # at least one val patient once a domain has three


def test_adding_patients_never_moves_existing_ones():
    small = assign_splits(pd.DataFrame(_rows(30)), 0.2, seed=1)
    big = assign_splits(pd.DataFrame(_rows(60)), 0.2, seed=1)
    assert big[:30].tolist() == small.tolist()


def test_fixed_splits_unlabelled_and_failed_rows():
    rows = _rows(5)
    rows[0]["split"] = "unannotated"
    rows[1]["has_label"] = False  # an unlabelled image, no hint: test
    rows[2].update(status="failed", has_label=False)  # a labelled case that failed to convert
    rows[3].update(status="failed", split="test", has_label=False)  # a failed test image keeps its hint
    out = assign_splits(pd.DataFrame(rows), 0.5, seed=0)
    assert out[0] == "unannotated" and out[1] == "test" and out[3] == "test"
    assert out[2] == ""  # not counted as a test case
