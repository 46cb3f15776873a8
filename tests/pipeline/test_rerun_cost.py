"""A re-run that finds cases unchanged reads no header and starts no cluster for them (README: a re-run costs
well under a second per thousand cases plus start-up)."""
from __future__ import annotations

import os
import shutil

import pytest
import SimpleITK as sitk

import pipeline.job as job
from pipeline.config import PrepConfig
from pipeline.job import build
from pipeline.sources.msd import scan_msd
from pipeline.store import case_marker, open_root


def _quiet(**kw):
    return dict(progress=False, log=lambda s: None, **kw)


def test_unchanged_cases_need_no_header_and_no_cluster(real_dir, tmp_path, monkeypatch):
    found, _ = scan_msd(real_dir / "msd")
    store = str(tmp_path / "store")
    first = build(found, store, PrepConfig(), **_quiet(workers=0))
    assert first.converted == 4

    read = []
    real_read = job.read_case_header
    monkeypatch.setattr(job, "read_case_header", lambda case, *a, **k: read.append(case.case_id) or
                        real_read(case, *a, **k))

    def no_cluster(*a, **k):
        raise AssertionError("a re-run of unchanged cases started a cluster")

    monkeypatch.setattr(job, "dask_client", no_cluster)
    again = build(found, store, PrepConfig(), **_quiet(workers=2))
    assert again.skipped == 4 and again.converted == 0 and read == []
    assert again.target_spacing == first.target_spacing



def test_only_changed_cases_have_their_header_read(real_dir, tmp_path, monkeypatch):
    shutil.copytree(real_dir / "msd", tmp_path / "msd")
    found, _ = scan_msd(tmp_path / "msd")
    store = str(tmp_path / "store")
    build(found, store, PrepConfig(), **_quiet(workers=0))
    read = []
    real_read = job.read_case_header
    monkeypatch.setattr(job, "read_case_header", lambda case, *a, **k: read.append(case.case_id) or
                        real_read(case, *a, **k))
    # One touched source (another mtime, same bytes) is still unchanged; one rewritten source (the same
    # voxels, compressed otherwise) is not: only that case has its header read and is converted.
    cases = found[0][1]
    os.utime(cases[0].images[0], ns=(10**18, 10**18))
    label = cases[1].label
    sitk.WriteImage(sitk.ReadImage(label), label, True, 1)
    res = build(found, store, PrepConfig(), **_quiet(workers=0))
    assert res.skipped == 3 and res.converted == 1 and read == [cases[1].case_id]


def test_replan_reads_every_header(real_dir, tmp_path, monkeypatch):
    found, _ = scan_msd(real_dir / "msd")
    store = str(tmp_path / "store")
    build(found, store, PrepConfig(), **_quiet(workers=0))
    read = []
    real_read = job.read_case_header
    monkeypatch.setattr(job, "read_case_header", lambda case, *a, **k: read.append(case.case_id) or
                        real_read(case, *a, **k))
    res = build(found, store, PrepConfig(), replan=True, **_quiet(workers=0))
    assert len(read) == 4 and res.skipped == 4  # the same plan again: nothing to rebuild


@pytest.mark.parametrize("damage", ["missing", "torn", "array"])
def test_case_marker_of_a_local_store(real_dir, tmp_path, damage):
    found, _ = scan_msd(real_dir / "msd")
    store = tmp_path / "store"
    build(found, str(store), PrepConfig(), **_quiet(workers=0))
    root = open_root(str(store), mode="r")
    path = found[0][1][0].store_path
    assert case_marker(root, path)["params_hash"]
    if damage == "missing":
        assert case_marker(root, path + "_nope") is None
    elif damage == "torn":
        meta = store / path / "zarr.json"
        meta.write_bytes(meta.read_bytes()[:100])
        assert case_marker(root, path) is None
    else:
        assert case_marker(root, path + "/image") is None
