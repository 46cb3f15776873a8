"""build-3dseg8 on the miniature sample of all eight MSD tasks: every domain, 4- and 2-channel images,
anisotropic CT, padded CT, oblique and permuted MR."""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import zarr

from catalog import load_catalog, load_domains
from pipeline.config import PrepConfig
from pipeline.job import build
from pipeline.sample import write_msd_sample
from pipeline.sources.msd import TASKS_3DSEG8, scan_msd

from helpers import source_label_stats, stored_label_stats


@pytest.fixture(scope="module")
def sample_store(tmp_path_factory):
    raw = tmp_path_factory.mktemp("raw")
    write_msd_sample(raw, seed=0, size="tiny")
    found, missing = scan_msd(raw)
    assert missing == []
    store = str(tmp_path_factory.mktemp("store") / "s")
    result = build(found, store, PrepConfig(chunks=(16, 16, 16)), workers=0, progress=False, log=lambda s: None)
    manifest = json.loads((raw / "SAMPLE.json").read_text())["msd"]["tasks"]
    return raw, store, result, manifest


def _cases(manifest, task, quirk):
    return [c for c in manifest[task]["cases"] if any(q.startswith(quirk) for q in c.get("quirks", []))]


def test_every_domain_builds_without_failures(sample_store):
    _, store, result, _ = sample_store
    assert result.failed == []
    doms = load_domains(store).set_index("domain")
    assert sorted(doms.index) == sorted(TASKS_3DSEG8.values())
    assert doms.loc["brain_tumour", "n_channels"] == 4 and doms.loc["prostate", "n_channels"] == 2
    assert doms.loc["brain_tumour", "num_classes"] == 4 and doms.loc["spleen", "num_classes"] == 2
    cat = load_catalog(store)
    for domain, sub in cat.groupby("domain"):
        assert (sub["split"] == "test").sum() == 1, domain  # imagesTs
        assert (sub["split"] == "val").sum() >= 1, domain
        assert not sub.loc[sub["split"] == "test", "has_label"].any()


def test_multichannel_images_keep_their_channels(sample_store):
    raw, store, _, _ = sample_store
    for domain, task, n in (("brain_tumour", "Task01_BrainTumour", 4), ("prostate", "Task05_Prostate", 2)):
        cat = load_catalog(store)
        row = cat[(cat["domain"] == domain) & cat["has_label"]].iloc[0]
        img = zarr.open_group(store, path=row["store_path"], mode="r")["image"]
        assert img.shape[0] == n and len(row["p005"]) == n and len(row["channel_names"]) == n
        # channels are normalised independently: each has mean ~0 and std ~1 on the stored grid
        arr = img[...].astype(np.float32)
        assert np.allclose(arr.reshape(n, -1).mean(axis=1), 0, atol=0.15)
        assert np.allclose(arr.reshape(n, -1).std(axis=1), 1, atol=0.2)
        # the 4D file really is 4D scalar NIfTI
        src = sitk.ReadImage(row["source_image"])
        assert src.GetDimension() == 4 and src.GetSize()[3] == n


def test_anisotropic_ct_gets_the_median_spacing_and_keeps_label_volume(sample_store):
    raw, store, result, manifest = sample_store
    spacings = [tuple(c["spacing"]) for c in manifest["Task03_Liver"]["cases"] if c["split"] == "train"]
    z_spacings = sorted({s[2] for s in spacings})
    assert len(z_spacings) > 1  # heterogeneous slice thickness within the domain
    target = result.target_spacing["liver"]
    assert target[0] == pytest.approx(float(np.median([s[2] for s in spacings])), abs=1e-4)
    cat = load_catalog(store)
    for row in cat[(cat["domain"] == "liver") & cat["has_label"]].itertuples():
        src_mm3, src_c = source_label_stats(row.source_label, 1)
        dst_mm3, dst_c = stored_label_stats(store, row.store_path, 1)
        assert abs(dst_mm3 - src_mm3) / src_mm3 < 0.05, row.case_id  # tiny organs: a few % of boundary voxels
        assert np.linalg.norm(dst_c - src_c) < max(target), row.case_id


def test_padded_ct_is_clamped_to_air_before_statistics(sample_store):
    _, store, _, manifest = sample_store
    cat = load_catalog(store).set_index("case_id")
    padded = _cases(manifest, "Task03_Liver", "pad")
    assert padded
    for case in padded:
        row = cat.loc[case["case"]]
        assert row["air_clamped_fraction"][0] > 0.01
        assert row["p005"][0] >= -1024  # not the padding value
    clean = [c for c in manifest["Task03_Liver"]["cases"] if not any(q.startswith("pad") for q in c.get("quirks", []))]
    assert cat.loc[clean[0]["case"], "air_clamped_fraction"][0] == 0


def test_oblique_and_permuted_mr_are_reoriented_to_lps(sample_store):
    _, store, _, manifest = sample_store
    cat = load_catalog(store).set_index("case_id")
    oblique = _cases(manifest, "Task02_Heart", "oblique") + _cases(manifest, "Task01_BrainTumour", "oblique")
    assert oblique
    for case in oblique:
        attrs = zarr.open_group(store, path=cat.loc[case["case"], "store_path"], mode="r").attrs
        d = np.asarray(attrs["direction"]).reshape(3, 3)
        assert np.allclose(np.abs(d).argmax(axis=0), [0, 1, 2])  # nearest canonical axes, in LPS order
        assert np.all(np.diag(d) > 0.9) and not np.allclose(d, np.eye(3))  # residual rotation kept
    for case in manifest["Task02_Heart"]["cases"]:
        if case["split"] != "train":
            continue
        row = cat.loc[case["case"]]
        src_mm3, src_c = source_label_stats(row["source_label"], 1)
        dst_mm3, dst_c = stored_label_stats(store, row["store_path"], 1)
        assert abs(dst_mm3 - src_mm3) / src_mm3 < 0.05, case["case"]
        assert np.linalg.norm(dst_c - src_c) < 1.5, case["case"]


def test_liver_scan_identity_matches_lits(sample_store):
    _, store, _, _ = sample_store
    cat = load_catalog(store)
    liver = cat[cat["domain"] == "liver"].set_index("case_id")
    assert liver.loc["liver_0", "scan_id"] == "lits:0"
    assert all(s.startswith("msd:") for s in cat[cat["domain"] != "liver"]["scan_id"])


def test_every_case_opens_in_ome_zarr_readers_at_its_physical_size(sample_store):
    """NGFF 0.5 validation (ome-zarr-models) of every case of the eight-task sample (4- and 2-channel images,
    anisotropic CT, oblique and permuted MR): its extent is shape × the stored spacing, its translation the
    stored origin, its label an NGFF label image with the label's voxels."""
    pytest.importorskip("ome_zarr_models", reason="ome-zarr-models is in the test extra: pip install -e '.[test]'")
    from helpers import check_ngff_case

    _, store, _, _ = sample_store
    cat = load_catalog(store)
    assert len(cat) > 20 and cat["has_label"].any() and not cat["has_label"].all()
    for row in cat.itertuples():
        check_ngff_case(store, row)
