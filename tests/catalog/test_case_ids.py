"""A catalog handed over with a store cannot steer where files are read or written (issue 15, hostile input 1).

The names of a catalog (domain, case id, store path) are checked whenever a table is read, with the rule the
build applies to the cases it creates (``catalog.names.unsafe_name``, used by ``pipeline.config.Case``).
"""
from __future__ import annotations

import pandas as pd
import pytest

from catalog import load_catalog, load_domains, load_nodules, save_catalog, save_domains, save_nodules
from catalog.io import CATALOG_FILE, DOMAINS_FILE, extra_table_path
from catalog.names import UnsafeNameError, unsafe_name
from pipeline.config import Case


def _row(domain: str = "hippocampus", case_id: str = "hippocampus_001") -> dict:
    return {"domain": domain, "case_id": case_id, "scan_id": f"msd:{case_id}", "patient_id": case_id,
            "split": "train", "status": "ok", "has_label": True, "store_path": f"{domain}/{case_id}"}


@pytest.fixture()
def store(tmp_path):
    """A store folder with a valid two-row catalog, a domains table and a nodules table."""
    save_catalog(str(tmp_path), pd.DataFrame([_row(), _row(case_id="hippocampus_003")]))
    save_domains(str(tmp_path), pd.DataFrame([{"domain": "hippocampus", "num_classes": 3}]))
    save_nodules(str(tmp_path), pd.DataFrame([{"patient_id": "p1", "series_uid": "1.2", "nodule_index": 0,
                                               "case_id": "p1_s0_n0"},
                                              {"patient_id": "p1", "series_uid": "1.2", "nodule_index": 1,
                                               "case_id": ""}]))
    return tmp_path


def _tamper(path, column: str, row: int, value: str) -> None:
    """Rewrite one cell of a parquet table behind the catalog's back, as a crafted download would."""
    df = pd.read_parquet(path)
    df.loc[row, column] = value
    df.to_parquet(path, index=False)


def test_a_valid_catalog_reads(store):
    cat = load_catalog(str(store))
    assert list(cat["store_path"]) == ["hippocampus/hippocampus_001", "hippocampus/hippocampus_003"]
    assert list(load_nodules(str(store))["case_id"]) == ["p1_s0_n0", ""]


@pytest.mark.parametrize("column,value,phrase", [
    ("case_id", "../../../../../x", "path separator"),
    ("case_id", "..", "escape the store folder"),
    ("case_id", "/etc/passwd", "path separator"),
    ("case_id", "a\\..\\..\\x", "path separator"),
    ("case_id", "zarr.json", "uses for its own files"),
    ("case_id", "x\n", "control characters"),
    ("domain", "../..", "path separator"),
    ("store_path", "../../../../../x", "is not <domain>/<case_id>"),
    ("store_path", "hippocampus/hippocampus_003", "is not <domain>/<case_id>"),
])
def test_a_crafted_catalog_row_is_refused_naming_file_row_and_value(store, column, value, phrase):
    path = store / CATALOG_FILE
    _tamper(path, column, 0, value)
    with pytest.raises(UnsafeNameError) as err:
        load_catalog(str(store))
    msg = str(err.value)
    assert str(path) in msg and "row 0" in msg and repr(value) in msg and phrase in msg
    assert "rebuild the store" in msg


def test_a_crafted_domains_or_nodules_table_is_refused(store):
    _tamper(store / DOMAINS_FILE, "domain", 0, "../../x")
    with pytest.raises(UnsafeNameError, match=r"domains\.parquet: row 0: domain '\.\./\.\./x'"):
        load_domains(str(store))
    path = extra_table_path(str(store), "nodules")
    _tamper(path, "case_id", 1, "../../../x")
    with pytest.raises(UnsafeNameError, match=r"nodules\.parquet: row 1.*case_id '\.\./\.\./\.\./x'"):
        load_nodules(str(store))


def test_writing_a_catalog_with_an_unsafe_name_is_refused(tmp_path):
    bad = _row(case_id="../x")
    with pytest.raises(UnsafeNameError, match=r"case_id '\.\./x' contains a path separator"):
        save_catalog(str(tmp_path), pd.DataFrame([bad]))
    assert not (tmp_path / CATALOG_FILE).exists()


def test_a_damaged_catalog_file_is_one_line_naming_it(store):
    path = store / CATALOG_FILE
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError) as err:
        load_catalog(str(store))
    assert str(err.value).startswith(f"{path}: not a readable parquet table")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name,ok", [
    ("hippocampus_001", True), ("LIDC-IDRI-0001_1.3.6.1_n0", True), ("liver 7", True),
    ("zarr.json", False), ("ZARR.JSON", False), ("catalog.parquet", False), (".zattrs", False),
    (".", False), ("", False), (" ", False), ("a/b", False), ("x" * 256, False), ("x" * 255, True),
])
def test_one_rule_for_building_and_reading(name, ok):
    assert (unsafe_name(name) is None) == ok
    if ok:
        Case(domain="d", case_id=name, scan_id="s", patient_id="p", images=("img.nii.gz",))
    else:
        with pytest.raises(ValueError, match="case id"):
            Case(domain="d", case_id=name, scan_id="s", patient_id="p", images=("img.nii.gz",))


def test_patients_sharing_a_scan_split_as_one_and_the_others_keep_their_split():
    from catalog import assign_splits
    from catalog.splits import duplicate_scans

    rows = [{"domain": "d", "case_id": f"p{i:02d}", "patient_id": f"p{i:02d}", "split": "", "status": "ok",
             "has_label": True, "source_sha256": f"{i:064x};{0:064x}"} for i in range(40)]
    alone = assign_splits(pd.DataFrame(rows), 0.2, 0)
    # every scan again under another name (and with another label file): q<i> holds p<i>'s image
    dups = [{**r, "case_id": f"q{i:02d}", "patient_id": f"q{i:02d}", "source_sha256": f"{i:064x};{1:064x}"}
            for i, r in enumerate(rows)]
    df = pd.DataFrame(rows + dups)
    split = assign_splits(df, 0.2, 0)
    assert list(split[:40]) == list(alone)  # the first patient id of each pair keeps its own hash
    assert list(split[40:]) == list(split[:40])
    assert {"train", "val"} <= set(alone)
    assert duplicate_scans(df)[:2] == [["d/p00", "d/q00"], ["d/p01", "d/q01"]] and len(duplicate_scans(df)) == 40
