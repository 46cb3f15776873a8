"""Source paths in the catalog are absolute (issue 23, item 13).

A store built from a relative raw path (``med3d-prep build-lits raw/lits store``) recorded ``raw/lits/...`` as
given (MSD and nnU-Net entries were resolved already; LiTS, VISCERAL, TotalSegmentator and LIDC folders were not), and could then not be evaluated from any other working directory. The catalog's ``source_image`` and
``source_label`` (and the case markers' sources) now hold absolute paths. A store built before this records
relative ones: rebuilding it from the folder it was built in converts nothing again (the unchanged-case check
compares resolved paths, not path strings) and leaves a catalog of absolute paths.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from click.testing import CliRunner

from catalog import load_catalog, save_catalog
from pipeline.cli import main
from pipeline.sample import write_lits_sample

ARGS = ["--workers", "0", "--no-progress", "--chunks", "16"]
N_CASES = 7  # the LiTS sample: 5 training and 2 test volumes


def _build(*args: str):
    return CliRunner().invoke(main, ["build-lits", *args, *ARGS])


def _paths(cat, column: str) -> list[str]:
    return [p for value in cat[column] for p in str(value).split(";") if p]


def _relative_sample(tmp_path: Path, monkeypatch) -> Path:
    work = tmp_path / "work"
    write_lits_sample(work / "raw" / "lits")
    monkeypatch.chdir(work)
    return work


def test_a_store_built_from_a_relative_path_records_absolute_sources(tmp_path, monkeypatch):
    work = _relative_sample(tmp_path, monkeypatch)
    res = _build("raw/lits", "store")
    assert res.exit_code == 0, res.output
    cat = load_catalog("store")
    paths = _paths(cat, "source_image") + _paths(cat, "source_label")
    assert len(paths) == N_CASES + 5
    for path in paths:
        assert os.path.isabs(path) and Path(path).is_file() and Path(path).is_relative_to(work / "raw"), path
    for store_path in cat["store_path"]:
        marker = json.loads((work / "store" / store_path / "zarr.json").read_text())["attributes"]["med3d_complete"]
        assert all(os.path.isabs(s["path"]) for s in marker["sources"]), marker["sources"]


def _as_built_before(store: Path) -> None:
    """Turn a store into one built before absolute paths: relative source paths in every marker and the catalog."""
    def rel(value: str) -> str:
        return ";".join(os.path.relpath(p) if p else p for p in value.split(";"))

    cat = load_catalog(str(store))
    for column in ("source_image", "source_label"):
        cat[column] = [rel(v) for v in cat[column]]
    save_catalog(str(store), cat)
    for store_path in cat["store_path"]:
        meta_path = store / store_path / "zarr.json"
        meta = json.loads(meta_path.read_text())
        marker = meta["attributes"]["med3d_complete"]
        for source in marker["sources"]:
            source["path"] = rel(source["path"])
        for column in ("source_image", "source_label"):
            marker["row"][column] = rel(marker["row"][column])
        meta_path.write_text(json.dumps(meta))


def test_rebuilding_a_store_of_relative_paths_converts_nothing_and_records_absolute_ones(tmp_path, monkeypatch):
    work = _relative_sample(tmp_path, monkeypatch)
    assert _build("raw/lits", "store").exit_code == 0
    _as_built_before(work / "store")
    assert not os.path.isabs(_paths(load_catalog("store"), "source_image")[0])
    chunks = {p: p.stat().st_mtime_ns for p in (work / "store").rglob("c/*") if p.is_file()}

    res = _build("raw/lits", "store")
    assert res.exit_code == 0, res.output
    assert f"0 converted, {N_CASES} skipped" in res.output, res.output
    cat = load_catalog("store")
    assert all(os.path.isabs(p) for p in _paths(cat, "source_image") + _paths(cat, "source_label"))
    assert {p: p.stat().st_mtime_ns for p in chunks} == chunks  # no array rewritten

    res = _build(str(work / "raw" / "lits"), "store")  # the same files given as an absolute path: still unchanged
    assert f"0 converted, {N_CASES} skipped" in res.output, res.output
