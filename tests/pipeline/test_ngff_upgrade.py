"""OME-Zarr (NGFF 0.5) metadata on every case group: what a build writes, and `med3d-prep ngff` on a store written
before builds wrote it (tests/data/store_before_ngff: two synthetic hippocampus cases built by the release before
this change), which must read the same before and after, with no chunk file touched."""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest
import zarr
from click.testing import CliRunner

from catalog import load_catalog
from catalog.case_arrays import case_array
from catalog.card import case_recipe
from catalog.ngff import LABEL_IMAGE, LEVEL
from catalog.store_format import IMAGE, LABEL, CaseAttrs, chunk_files, node_meta
from pipeline.cli import main
from pipeline.verify import case_damage

from helpers import check_ngff_case as check_case

v05 = pytest.importorskip("ome_zarr_models.v05", reason="ome-zarr-models is in the test extra: "
                                                          "pip install -e '.[test]'")

OLD = Path(__file__).resolve().parents[1] / "data" / "store_before_ngff"


def _files(store: str, store_path: str) -> dict[str, tuple[int, str]]:
    out = {}
    for name in (IMAGE, LABEL):
        folder = os.path.join(store, store_path, name)
        for path in chunk_files(folder) if os.path.isdir(folder) else ():
            data = Path(path).read_bytes()
            out[os.path.relpath(path, store)] = (os.stat(path).st_mtime_ns, hashlib.sha256(data).hexdigest())
    return out


@pytest.fixture
def old_store(tmp_path) -> str:
    store = str(tmp_path / "old")
    shutil.copytree(OLD, store)
    return store


def _reads(store: str) -> dict[str, object]:
    cat = load_catalog(store)
    out = {}
    for row in cat.itertuples():
        attrs = CaseAttrs.read(store, row.store_path)
        out[row.store_path] = (case_array(store, row.store_path, IMAGE).read_all().tobytes(),
                               case_array(store, row.store_path, LABEL).read_all().tobytes() if row.has_label else None,
                               attrs, case_recipe(store, row.store_path))
    return out


def test_a_store_from_before_reads_the_same_and_gets_ome_zarr_without_a_chunk_rewritten(old_store):
    cat = load_catalog(old_store)
    assert sorted(cat["has_label"]) == [False, True]
    for row in cat.itertuples():  # written before: no OME-Zarr metadata, arrays without dimension names
        assert "ome" not in node_meta(old_store, row.store_path)["attributes"]
        with pytest.raises(Exception):
            v05.Image.from_zarr(zarr.open_group(old_store, path=row.store_path, mode="r"))
    before, files = _reads(old_store), {p: _files(old_store, p) for p in cat["store_path"]}
    attrs = before["hippocampus/hippocampus_001"][2]
    assert attrs.spacing == (1.0, 1.0, 1.0) and attrs.case_id == "hippocampus_001" and attrs.label_parts == []
    assert attrs.original["size_xyz"] and attrs.normalization["percentiles"] == [0.5, 99.5]

    res = CliRunner().invoke(main, ["ngff", old_store])
    assert res.exit_code == 0, res.output
    assert "added to 2 case(s)" in res.output
    for row in cat.itertuples():
        check_case(old_store, row)
        assert _files(old_store, row.store_path) == files[row.store_path]  # same bytes, same mtime: untouched
        assert case_damage(zarr.open_group(old_store, mode="r"), row.store_path) is None  # --verify: intact
    assert _reads(old_store) == before
    label_chunk = next(chunk_files(os.path.join(old_store, "hippocampus/hippocampus_001", LABEL)))
    linked = label_chunk.replace(f"/{LABEL}/", f"/{LABEL_IMAGE}/{LEVEL}/")
    assert os.path.samefile(label_chunk, linked)  # a hard link: no byte more on disk

    again = CliRunner().invoke(main, ["ngff", old_store])
    assert again.exit_code == 0 and "added to 0 case(s)" in again.output


def test_a_build_writes_ome_zarr_and_the_build_skips_an_upgraded_case(old_store, tmp_path):
    """The rebuilt case of a store upgraded by `ngff` is unchanged (skipped); its metadata equals a fresh build's."""
    from pipeline.config import PrepConfig
    from pipeline.job import build
    from pipeline.sample import write_msd_sample
    from pipeline.sources.msd import scan_msd

    raw = tmp_path / "raw"
    write_msd_sample(raw, seed=0, tasks=["Task04_Hippocampus"])
    found, _ = scan_msd(raw, ["Task04_Hippocampus"])
    spec, cases = found[0]
    store = str(tmp_path / "fresh")
    result = build([(spec, cases[:2])], store, PrepConfig(chunks=(16, 16, 16)), workers=0, progress=False,
                   log=lambda s: None)
    assert result.ok
    cat = load_catalog(store)
    for row in cat.itertuples():
        check_case(store, row)
        meta = node_meta(store, row.store_path)["attributes"]
        assert meta["ome"]["multiscales"][0]["axes"][1] == {"name": "z", "type": "space", "unit": "millimeter"}
        assert node_meta(store, row.store_path, IMAGE)["dimension_names"] == \
            ["c", "z", "y", "x"]
    again = build([(spec, cases[:2])], store, PrepConfig(chunks=(16, 16, 16)), workers=0, progress=False,
                  log=lambda s: None, verify=True)
    assert again.skipped == 2 and again.converted == 0


@pytest.mark.parametrize("key, value", [("spacing", [float("nan"), 1.0, 1.0]), ("spacing", [1.0, -1.0, 1.0]),
                                        ("origin", [0.0, 1e400, 0.0]), ("direction", [1.0, 0.0])])
def test_a_damaged_geometry_is_one_line_and_the_other_case_is_upgraded(key, value, tmp_path):
    import json

    store = tmp_path / "store"
    shutil.copytree(Path(__file__).resolve().parents[1] / "data" / "store_before_ngff", store)
    meta = store / "hippocampus" / "hippocampus_001" / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["attributes"][key] = value
    meta.write_text(json.dumps(doc))
    res = CliRunner().invoke(main, ["ngff", str(store)])
    assert res.exit_code != 0
    assert f"hippocampus/hippocampus_001: {key!r} is" in res.output and "rebuild it" in res.output
    assert "ome" not in json.loads(meta.read_text())["attributes"]  # the damaged case is left as it was
    other = json.loads((store / "hippocampus" / "hippocampus_002" / "zarr.json").read_text())["attributes"]
    assert other["ome"]["multiscales"][0]["datasets"][0]["path"] == IMAGE
