"""``med3d-prep build-* --like CARD.json``: a second build of the same raw scans, with default options and the card
of the first store, writes the same arrays bit for bit; a card without a domain of the modality is refused."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from catalog import load_catalog
from catalog.card import make_card, store_domains, write_card
from pipeline.cli import main
from pipeline.config import PrepConfig
from pipeline.job import build
from pipeline.sources.msd import scan_msd
from pipeline.sources.totalseg import scan_totalseg
from volume.preprocess import recipe_from_store

HIPPO = ["hippocampus_001", "hippocampus_003", "hippocampus_004", "hippocampus_006"]


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def card_of(store: str, path: Path) -> Path:
    """A card whose domains are ``store``'s, as ``med3d-train export`` writes it for a run on that store."""
    card = make_card(kind="pretrain", architecture={"encoder": "resnet10", "depth": 10}, domains=store_domains(store),
                     config={"store": [store]}, metrics={}, step=0, weights=path.with_suffix(".pth"), checkpoint="-")
    return write_card(card, path)


def assert_same_arrays(a: str, b: str, cases: list[str], domain: str) -> None:
    for case in cases:
        ga = zarr.open_group(a, path=f"{domain}/{case}", mode="r")
        gb = zarr.open_group(b, path=f"{domain}/{case}", mode="r")
        for name in ("image", "label"):
            x, y = ga[name][...], gb[name][...]
            assert x.dtype == y.dtype and x.shape == y.shape, (case, name)
            assert np.array_equal(x, y), (case, name)  # bit for bit (no NaN in either)
        assert ga.attrs["spacing"] == gb.attrs["spacing"]
        assert ga.attrs["normalization"] == gb.attrs["normalization"]


@pytest.fixture(scope="module")
def hippo(real_dir, tmp_path_factory):
    """Store A of the real hippocampus scans, nothing at the defaults: 0.8 x 0.9 x 1.1 mm, 1/99 percentiles,
    float32; and its card."""
    root = tmp_path_factory.mktemp("like")
    store = str(root / "a")
    found, _ = scan_msd(real_dir / "msd")
    result = build(found, store, PrepConfig(clip_percentiles=(1.0, 99.0), dtype="float32"), workers=0,
                   progress=False, log=lambda s: None, target_spacing={"hippocampus": (0.8, 0.9, 1.1)})
    assert result.ok
    return store, card_of(store, root / "card.json"), real_dir / "msd" / "Task04_Hippocampus"


def test_like_reproduces_an_mr_store_bit_for_bit(hippo, tmp_path):
    store_a, card, task = hippo
    store_b = str(tmp_path / "b")
    res = invoke("build-msd", task, store_b, "--like", card, "--workers", "0", "--no-progress")
    assert res.exit_code == 0, res.output
    res = invoke("build-3dseg8", task.parent, tmp_path / "b8", "--like", card, "--workers", "0", "--no-progress")
    assert res.exit_code == 0, res.output
    assert_same_arrays(store_a, str(tmp_path / "b8"), HIPPO, "hippocampus")
    assert "hippocampus: like card domain hippocampus: 0.8 x 0.9 x 1.1 mm (z, y, x)" in res.output
    assert sorted(load_catalog(store_b)["case_id"]) == HIPPO
    assert_same_arrays(store_a, store_b, HIPPO, "hippocampus")
    recipe = recipe_from_store(store_b, "hippocampus/hippocampus_001")
    assert recipe == recipe_from_store(store_a, "hippocampus/hippocampus_001")
    assert (recipe["target_spacing"], recipe["percentiles"], recipe["dtype"]) == \
        ([0.8, 0.9, 1.1], [1.0, 99.0], "float32")
    # Without --like the same command plans its own spacing (the files' 1 mm): another grid.
    res = invoke("build-msd", task, tmp_path / "c", "--workers", "0", "--no-progress")
    assert res.exit_code == 0, res.output
    assert recipe_from_store(str(tmp_path / "c"), "hippocampus/hippocampus_001")["target_spacing"] == [1.0, 1.0, 1.0]


def test_like_refuses_contradicting_options_and_a_card_without_the_modality(hippo, real_dir, tmp_path):
    _, card, task = hippo
    res = invoke("build-msd", task, tmp_path / "b", "--like", card, "--dtype", "float16", "--workers", "0")
    assert res.exit_code == 2 and "--dtype float16 contradicts the card" in res.output
    res = invoke("build-msd", task, tmp_path / "b", "--like", card, "--like-domain", "liver", "--workers", "0")
    assert res.exit_code == 2 and "--like-domain 'liver' is not in" in res.output
    res = invoke("build-msd", task, tmp_path / "b", "--like-domain", "hippocampus", "--workers", "0")
    assert res.exit_code == 2 and "--like-domain needs --like" in res.output
    # A CT dataset against a card of MR data only.
    res = invoke("build-totalseg", _totalseg_layout(real_dir, tmp_path / "ts"), tmp_path / "ct", "--classes",
                 "liver", "--like", card, "--workers", "0")
    assert res.exit_code == 2, res.output
    assert f"{card} has no CT domain" in res.output and "hippocampus (MR" in res.output
    assert not (tmp_path / "ct").exists()
    # A card whose spacing is NaN: a one-line usage error naming it, no store written.
    damaged = json.loads(Path(card).read_text())
    for dom in damaged["domains"].values():
        dom["target_spacing"] = [float("nan"), 1.0, 1.0]
    bad = tmp_path / "nan_card.json"
    bad.write_text(json.dumps(damaged))
    res = invoke("build-msd", task, tmp_path / "nan", "--like", bad, "--workers", "0")
    assert res.exit_code == 2 and f"{bad}: domain 'hippocampus': target_spacing" in res.output
    assert not (tmp_path / "nan").exists()


def _totalseg_layout(real_dir: Path, root: Path) -> Path:
    """The real abdominal CT as a one-subject TotalSegmentator folder (links, no copies)."""
    seg = root / "s0001" / "segmentations"
    seg.mkdir(parents=True)
    (root / "s0001" / "ct.nii.gz").symlink_to(real_dir / "ct" / "example_ct_sm.nii.gz")
    for organ in ("liver", "spleen"):
        (seg / f"{organ}.nii.gz").symlink_to(real_dir / "ct" / f"example_ct_sm_{organ}.nii.gz")
    return root


@pytest.fixture(scope="module")
def ct(real_dir, tmp_path_factory):
    """Store A of the real abdominal CT (TotalSegmentator layout): window -150..250 HU, air -1000 HU,
    2 x 3.5 x 3.5 mm; its card."""
    tmp = tmp_path_factory.mktemp("like_ct")
    root = _totalseg_layout(real_dir, tmp / "ts")
    store = str(tmp / "a")
    spec, cases, _ = scan_totalseg(root, ["liver", "spleen"])
    assert build([(spec, cases)], store, PrepConfig(ct_window=(-150.0, 250.0), air_hu=-1000.0), workers=0,
                 progress=False, log=lambda s: None, target_spacing={"totalseg": (2.0, 3.5, 3.5)}).ok
    return root, store, card_of(store, tmp / "card.json")


def test_like_reproduces_a_ct_window_and_air_clamp(ct, real_dir, tmp_path):
    """CT: the window and air clamp travel too."""
    root, store_a, card = ct
    dom = json.loads(card.read_text())["domains"]["totalseg"]
    assert dom["intensity_rule"].startswith("CT: values below -1000 HU clamped to it; clip to the CT window "
                                            "[-150, 250] HU; z-score")
    store_b = str(tmp_path / "b")
    res = invoke("build-totalseg", root, store_b, "--classes", "liver,spleen", "--like", card, "--workers", "0",
                 "--no-progress")
    assert res.exit_code == 0, res.output
    assert_same_arrays(store_a, store_b, ["s0001"], "totalseg")
    recipe = recipe_from_store(store_b, "totalseg/s0001")
    assert (recipe["ct_window"], recipe["air_hu"], recipe["target_spacing"]) == \
        ([-150.0, 250.0], -1000.0, [2.0, 3.5, 3.5])
    # build-lits on the same CT: the card's window replaces build-lits's own default (-200, 250 HU), so the
    # image is the same bit for bit under another domain name; an explicit other --window is refused.
    lits = tmp_path / "lits"
    lits.mkdir()
    (lits / "volume-0.nii.gz").symlink_to(real_dir / "ct" / "example_ct_sm.nii.gz")
    (lits / "segmentation-0.nii.gz").symlink_to(real_dir / "ct" / "example_ct_sm_liver.nii.gz")
    res = invoke("build-lits", lits, tmp_path / "l", "--like", card, "--window", "-200,250", "--workers", "0")
    assert res.exit_code == 2 and "--window -200,250 contradicts the card" in res.output
    res = invoke("build-lits", lits, tmp_path / "l", "--like", card, "--workers", "0", "--no-progress")
    assert res.exit_code == 0, res.output
    a = zarr.open_group(store_a, path="totalseg/s0001", mode="r")["image"][...]
    b = zarr.open_group(str(tmp_path / "l"), path="lits/volume-0", mode="r")["image"][...]
    assert a.dtype == b.dtype and np.array_equal(a, b)


def test_like_on_visceral_takes_the_ct_card_domain_for_a_domain_of_both_modalities(ct, tmp_path):
    """VISCERAL's one domain holds CT and MR volumes ("CT/MR"): it fits the card's CT domain; its CT volumes get
    the card's window and air clamp, every volume the card's spacing."""
    from pipeline.sample import write_visceral_sample

    _, _, card = ct
    write_visceral_sample(tmp_path / "raw")
    store = str(tmp_path / "v")
    res = invoke("build-visceral", tmp_path / "raw", store, "--like", card, "--test-volumes", "2", "--workers", "0",
                 "--no-progress")
    assert res.exit_code == 0, res.output
    cat = load_catalog(store)
    ok = cat[cat["status"] == "ok"]
    assert set(ok["modality"]) == {"CT", "MR"}
    for row in ok.itertuples():
        recipe = recipe_from_store(store, row.store_path)
        assert recipe["target_spacing"] == [2.0, 3.5, 3.5]
        norm = zarr.open_group(store, path=row.store_path, mode="r").attrs["normalization"]
        if row.modality == "CT":
            assert (norm["ct_window"], norm["air_hu"]) == ([-150.0, 250.0], -1000.0)
            assert norm["channels"][0]["p_lo"] == -150.0 and norm["channels"][0]["p_hi"] == 250.0
        else:  # MR volumes: percentile clip (the window is for CT only)
            assert norm["air_hu"] is None and norm["channels"][0]["p_hi"] != 250.0


def _card(**domains):
    base = {"target_spacing": [1.0, 1.0, 1.0], "modality": "MR", "percentiles": [0.5, 99.5], "ct_window": None,
            "air_hu": -1024.0, "dtype": "float16", "image_interpolation": "linear"}
    return {"domains": {name: {**base, **changes} for name, changes in domains.items()}}


def test_several_domains_of_the_modality_need_like_domain_unless_built_alike():
    from catalog.card import CardError
    from pipeline.like import like_settings

    c = _card(hippocampus={"target_spacing": [0.8, 0.9, 1.1]}, prostate={"target_spacing": [3.6, 0.62, 0.62]},
              liver={"modality": "CT", "target_spacing": [2.5, 0.8, 0.8], "ct_window": [-200.0, 250.0]})
    with pytest.raises(CardError, match="has 2 MR domains preprocessed differently") as err:
        like_settings(c, {"brain": "MR"}, where="card.json")
    assert "hippocampus: 0.8 x 0.9 x 1.1 mm" in str(err.value) and "--like-domain NAME" in str(err.value)
    s = like_settings(c, {"brain": "MR"}, like_domain="prostate")
    assert s.target_spacing == {"brain": (3.6, 0.62, 0.62)} and s.chosen == {"brain": "prostate"}
    assert s.config == {"dtype": "float16", "clip_percentiles": (0.5, 99.5), "image_interpolation": "linear"}
    with pytest.raises(CardError, match="--like-domain liver is CT but the domain brain being built is MR"):
        like_settings(c, {"brain": "MR"}, like_domain="liver")
    # A CT task and an MR task in one build: each takes its modality's recipe; the CT window and air clamp too.
    s = like_settings(_card(hippocampus={}, liver={"modality": "CT", "ct_window": [-200.0, 250.0]}),
                      {"spleen": "CT", "heart": "MR"})
    assert s.chosen == {"spleen": "liver", "heart": "hippocampus"}
    assert s.config["ct_window"] == (-200.0, 250.0) and s.config["air_hu"] == -1024.0
    # Two MR domains built alike are one recipe: no --like-domain needed.
    assert like_settings(_card(a={}, b={}), {"new": "MR"}).target_spacing == {"new": (1.0, 1.0, 1.0)}


def test_a_mixed_build_whose_recipes_disagree_is_built_in_two_runs():
    from catalog.card import CardError
    from pipeline.like import like_settings

    c = _card(hippocampus={"percentiles": [1.0, 99.0]}, liver={"modality": "CT"})
    with pytest.raises(CardError, match=r"differ in percentiles .* build .* in a separate run"):
        like_settings(c, {"spleen": "CT", "heart": "MR"})
    # A domain of both modalities (VISCERAL "CT/MR") fits a domain of either.
    s = like_settings(_card(liver={"modality": "CT", "target_spacing": [2.0, 1.0, 1.0]}), {"visceral": "CT/MR"})
    assert s.target_spacing == {"visceral": (2.0, 1.0, 1.0)}
