"""Patch streaming: index, exclusion, pure sampling, foreground share, padding, channels, workers, resume."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from catalog import load_catalog, select
from model.data import (
    CaseEntry, PatchConfig, PretrainStream, StoreIndex, domain_for_step, make_loader, parse_exclude,
    read_volume, sample_patch_spec,
)
from pipeline.config import Case, DomainSpec, PrepConfig
from pipeline.job import build

PATCH = (16, 16, 16)
ALPHA = DomainSpec(name="alpha", source_dataset="Alpha", modality="MR", channel_names=("T1",),
                   labels={0: "background", 1: "a", 2: "b"})
BETA = DomainSpec(name="beta", source_dataset="Beta", modality="MR", channel_names=("T2", "ADC"),
                  labels={0: "background", 1: "x"})


def write_nifti(path: Path, arr: np.ndarray) -> str:
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((1.0, 1.0, 1.0))
    sitk.WriteImage(img, str(path))
    return str(path)


def make_case(root: Path, spec: DomainSpec, cid: str, shape, rng, scan_id: str, labelled: bool = True) -> Case:
    """A volume of noise with a bright box that is labelled 1 (and class 2 in its corner for alpha)."""
    label = np.zeros(shape, np.uint8)
    z, y, x = (s // 3 for s in shape)
    label[z:2 * z, y:2 * y, x:2 * x] = 1
    if spec.num_classes > 2:
        label[z:z + 2, y:y + 2, x:x + 2] = 2
    images = []
    for c in range(len(spec.channel_names)):
        arr = (rng.standard_normal(shape) + 3.0 * label + 10.0 * c).astype(np.float32)
        images.append(write_nifti(root / f"{cid}_{c}.nii.gz", arr))
    lab = write_nifti(root / f"{cid}_seg.nii.gz", label) if labelled else None
    return Case(domain=spec.name, case_id=cid, scan_id=scan_id, patient_id=cid, images=tuple(images), label=lab,
                split_hint=None if labelled else "test")


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, str]:
    """A two-domain store (alpha: 6 labelled cases, one smaller than the patch, plus an unlabelled test case;
    beta: 2 channels, 4 cases) and a second store whose catalog shares scan ids with alpha."""
    raw = tmp_path_factory.mktemp("raw")
    rng = np.random.default_rng(0)
    shapes = [(24, 28, 32), (20, 30, 26), (10, 12, 14), (22, 22, 22), (26, 20, 24), (21, 25, 23)]
    alpha = [make_case(raw, ALPHA, f"a{i}", s, rng, f"shared:{i}") for i, s in enumerate(shapes)]
    alpha.append(make_case(raw, ALPHA, "a_test", (20, 20, 20), rng, "alpha:test", labelled=False))
    beta = [make_case(raw, BETA, f"b{i}", (18 + i, 20, 22), rng, f"beta:{i}") for i in range(4)]
    other = [make_case(raw, BETA, f"o{i}", (16, 16, 16), rng, f"shared:{i}") for i in range(4)]
    out = {}
    for name, domains in [("main", [(ALPHA, alpha), (BETA, beta)]), ("other", [(BETA, other)])]:
        store = str(tmp_path_factory.mktemp(name) / "store")
        res = build(domains, store, PrepConfig(chunks=(8, 8, 8)), workers=0, progress=False, log=lambda s: None)
        assert res.ok, res.summary()
        out[name] = store
    return out


def crop(vol: np.ndarray, start, patch, pad) -> np.ndarray:
    """The patch at ``start`` of a whole volume, padded with ``pad`` outside it (the reference)."""
    out = np.full(patch, pad, vol.dtype)
    lo = [max(s, 0) for s in start]
    hi = [min(s + p, n) for s, p, n in zip(start, patch, vol.shape)]
    if all(h > l for l, h in zip(lo, hi)):
        src = tuple(slice(l, h) for l, h in zip(lo, hi))
        out[tuple(slice(l - s, h - s) for l, h, s in zip(lo, hi, start))] = vol[src]
    return out


def check_batch_against_volumes(store: str, stream: PretrainStream, batch: dict) -> list:
    """Recompute every patch of ``batch`` from whole volumes; returns the patch specs."""
    cfg, cases = stream.cfg, stream.index.cases[batch["domain"]]
    specs = []
    for item in range(cfg.batch):
        spec = sample_patch_spec(cfg.seed, batch["step"], stream.rank, item, cases, stream.index.foreground, cfg)
        case = cases[spec.case]
        assert batch["cases"][item] == case.store_path
        image, label = read_volume(store, case.store_path, channel=spec.channel)
        want = crop(image, spec.start, cfg.patch, cfg.pad_value)
        np.testing.assert_array_equal(batch["image"][item, 0].numpy(), want)
        np.testing.assert_array_equal(batch["label"][item].numpy(), crop(label, spec.start, cfg.patch, 0))
        specs.append(spec)
    return specs


def test_patch_config_round_trip_and_validation() -> None:
    cfg = PatchConfig(patch=[8, 16, 24], batch=3, fg_fraction=0.5, domain_sampling="uniform", channel="random",
                      seed=7, pad_value=-1.5)
    assert cfg.patch == (8, 16, 24)
    assert PatchConfig.from_dict(cfg.to_dict()) == cfg
    for bad in [{"patch": (8, 8)}, {"fg_fraction": 1.5}, {"domain_sampling": "sqrt"}, {"channel": "mean"}]:
        with pytest.raises(ValueError):
            PatchConfig(**bad)
    with pytest.raises(ValueError, match="unknown PatchConfig fields"):
        PatchConfig.from_dict({"patchsize": 3})


def test_index_holds_only_train_cases_minus_excluded(stores) -> None:
    cat = load_catalog(stores["main"])
    train = select(cat, split="train", labelled=True)
    victim = train[train["domain"] == "alpha"].iloc[0]
    index = StoreIndex.from_store(stores["main"], "train", exclude_scan_ids={victim["scan_id"], "not:in-store"})
    assert index.domains == ("alpha", "beta")
    assert index.num_classes == {"alpha": 3, "beta": 2}
    assert index.excluded == (victim["scan_id"],)
    paths = {c.store_path for cs in index.cases.values() for c in cs}
    assert paths == set(train["store_path"]) - {victim["store_path"]}
    assert set(index.scan_ids) == set(train["scan_id"]) - {victim["scan_id"]}
    not_train = set(cat.loc[cat["split"] != "train", "store_path"])
    assert {"alpha/a_test"} <= not_train and len(not_train) >= 3  # the test case and a val case per domain
    stream = PretrainStream(stores["main"], index, PatchConfig(patch=(4, 4, 4), batch=3, seed=1), num_steps=150)
    seen = {p for batch in stream for p in batch["cases"]}
    assert victim["store_path"] not in seen and not (seen & not_train)
    assert seen == paths  # every training case is drawn over 150 steps


def test_index_without_cases_says_why(stores) -> None:
    everything = set(load_catalog(stores["main"])["scan_id"])
    with pytest.raises(ValueError, match=r"no ok, labelled, complete case in split 'train' \(\d+ excluded by scan "
                       r"id.* and the --exclude options"):
        StoreIndex.from_store(stores["main"], "train", exclude_scan_ids=everything)


def test_parse_exclude_reads_another_stores_scan_ids(stores) -> None:
    other = load_catalog(stores["other"])
    assert parse_exclude(stores["other"]) == {f"shared:{i}" for i in range(4)}
    val = parse_exclude(stores["other"] + ":val")
    assert val == set(other.loc[other["split"] == "val", "scan_id"]) and val
    combined = parse_exclude([stores["other"] + ":val", stores["main"] + ":test"])
    assert combined == val | {"alpha:test"}
    with pytest.raises(ValueError, match="unknown split 'valid'"):
        parse_exclude(stores["other"] + ":valid")
    index = StoreIndex.from_store(stores["main"], exclude_scan_ids=parse_exclude(stores["other"]))
    assert not set(index.scan_ids) & {f"shared:{i}" for i in range(4)}


def test_domain_for_step_is_pure_and_proportional() -> None:
    doms, weights = ("a", "b", "c"), (3.0, 1.0, 0.0)
    draws = [domain_for_step(5, s, doms, weights) for s in range(4000)]
    assert draws == [domain_for_step(5, s, doms, weights) for s in range(4000)]
    assert "c" not in draws
    assert abs(draws.count("a") / len(draws) - 0.75) < 0.03
    assert draws != [domain_for_step(6, s, doms, weights) for s in range(4000)]
    with pytest.raises(ValueError):
        domain_for_step(0, 0, doms, (1.0, 1.0))


def test_sampling_is_pure_and_rank_dependent(stores) -> None:
    index = StoreIndex.from_store(stores["main"])
    cfg, cases = PatchConfig(patch=PATCH, seed=3), index.cases["alpha"]
    args = [(step, item) for step in range(50) for item in range(2)]
    r0 = [sample_patch_spec(3, s, 0, i, cases, index.foreground, cfg) for s, i in args]
    assert r0 == [sample_patch_spec(3, s, 0, i, cases, index.foreground, cfg) for s, i in args]
    r1 = [sample_patch_spec(3, s, 1, i, cases, index.foreground, cfg) for s, i in args]
    assert sum(a.case != b.case for a, b in zip(r0, r1)) > len(args) // 2
    # The same step on two ranks: same domain, (mostly) different cases.
    s0 = PretrainStream(stores["main"], index, PatchConfig(patch=(4, 4, 4), batch=2), rank=0, world_size=2)
    s1 = PretrainStream(stores["main"], index, PatchConfig(patch=(4, 4, 4), batch=2), rank=1, world_size=2)
    b0, b1 = [s0.batch(s) for s in range(20)], [s1.batch(s) for s in range(20)]
    assert all(x["domain"] == y["domain"] for x, y in zip(b0, b1))
    assert sum(x["cases"] != y["cases"] for x, y in zip(b0, b1)) >= 10


def test_foreground_share_and_foreground_patches(stores) -> None:
    index = StoreIndex.from_store(stores["main"])
    cfg = PatchConfig(patch=(6, 6, 6), seed=11)
    labels = {}
    n_fg = 0
    for item in range(300):
        dom = index.domains[item % 2]
        spec = sample_patch_spec(cfg.seed, item // 2, 0, item, index.cases[dom], index.foreground, cfg)
        case = index.cases[dom][spec.case]
        if spec.fg:
            n_fg += 1
            if case.store_path not in labels:
                labels[case.store_path] = read_volume(stores["main"], case.store_path)[1]
            assert crop(labels[case.store_path], spec.start, cfg.patch, 0).any(), spec
    assert abs(n_fg / 300 - 1 / 3) < 0.1


def test_batches_equal_crops_of_whole_volumes(stores) -> None:
    index = StoreIndex.from_store(stores["main"])
    stream = PretrainStream(stores["main"], index, PatchConfig(patch=(12, 18, 10), batch=3, seed=2, pad_value=-2.0))
    for step in range(6):
        batch = stream.batch(step)
        assert batch["image"].shape == (3, 1, 12, 18, 10) and batch["image"].dtype == torch.float32
        assert batch["label"].shape == (3, 12, 18, 10) and batch["label"].dtype == torch.int64
        check_batch_against_volumes(stores["main"], stream, batch)


def test_volume_smaller_than_patch_is_padded(stores) -> None:
    row = load_catalog(stores["main"]).set_index("store_path").loc["alpha/a2"]
    assert list(row["shape"]) == [10, 12, 14]
    small = CaseEntry("alpha/a2", row["scan_id"], (10, 12, 14), 1)
    index = StoreIndex(store=stores["main"], split="train", cases={"alpha": (small,)}, num_classes={"alpha": 3})
    cfg = PatchConfig(patch=PATCH, batch=4, seed=0, pad_value=-7.0)
    stream = PretrainStream(stores["main"], index, cfg)
    image, label = read_volume(stores["main"], "alpha/a2")
    for step in range(5):
        batch = stream.batch(step)
        specs = check_batch_against_volumes(stores["main"], stream, batch)
        for spec, img, lab in zip(specs, batch["image"], batch["label"]):
            assert all(s <= 0 and s + p >= n for s, p, n in zip(spec.start, PATCH, image.shape))
            inside = tuple(slice(-s, -s + n) for s, n in zip(spec.start, image.shape))
            np.testing.assert_array_equal(img[0][inside].numpy(), image)
            mask = np.ones(PATCH, bool)
            mask[inside] = False
            assert (img[0].numpy()[mask] == -7.0).all() and (lab.numpy()[mask] == 0).all()


def test_multichannel_first_and_random(stores) -> None:
    index = StoreIndex.from_store(stores["main"])
    beta = StoreIndex(store=stores["main"], split="train", cases={"beta": index.cases["beta"]},
                      num_classes={"beta": 2})
    first = PretrainStream(stores["main"], beta, PatchConfig(patch=PATCH, batch=2, channel="first"))
    for step in range(4):
        specs = check_batch_against_volumes(stores["main"], first, first.batch(step))
        assert all(s.channel == 0 for s in specs)
    rnd = PretrainStream(stores["main"], beta, PatchConfig(patch=PATCH, batch=2, channel="random"))
    channels = []
    for step in range(10):
        channels += [s.channel for s in check_batch_against_volumes(stores["main"], rnd, rnd.batch(step))]
    assert set(channels) == {0, 1}
    # The channels really differ in the store (channel 1 was written 10 units brighter before z-scoring).
    a, b = read_volume(stores["main"], beta.cases["beta"][0].store_path, 0)[0], read_volume(
        stores["main"], beta.cases["beta"][0].store_path, 1)[0]
    assert not np.array_equal(a, b)


def collect(loader) -> list[dict]:
    return [{k: v.clone() if torch.is_tensor(v) else v for k, v in b.items()} for b in loader]


def assert_same(xs: list[dict], ys: list[dict]) -> None:
    assert [x["step"] for x in xs] == [y["step"] for y in ys]
    for x, y in zip(xs, ys):
        assert x["domain"] == y["domain"] and x["cases"] == y["cases"]
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["label"], y["label"])


def test_loader_is_independent_of_workers_and_resumes(stores) -> None:
    index = StoreIndex.from_store(stores["main"])
    cfg = PatchConfig(patch=(8, 8, 8), batch=2, seed=4)
    full = collect(make_loader(stores["main"], index, cfg, start_step=0, num_steps=9, workers=0))
    assert [b["step"] for b in full] == list(range(9))
    assert len({b["domain"] for b in full}) == 2
    for workers in (1, 2):
        assert_same(collect(make_loader(stores["main"], index, cfg, 0, 9, workers=workers)), full)
    # Resuming at step 4 draws exactly what the uninterrupted stream drew from step 4 on (odd count: 2 workers
    # finish unevenly).
    assert_same(collect(make_loader(stores["main"], index, cfg, start_step=4, num_steps=5, workers=2)), full[4:])
    endless = iter(make_loader(stores["main"], index, cfg, start_step=4, num_steps=None, workers=0))
    assert_same([next(endless) for _ in range(5)], full[4:])


def test_incomplete_cases_are_skipped_and_unlabelled_volumes_have_no_label(stores, tmp_path) -> None:
    import json
    import shutil

    copy = str(tmp_path / "store")
    shutil.copytree(stores["main"], copy)
    victim = StoreIndex.from_store(copy).cases["beta"][0].store_path
    meta_path = Path(copy) / victim / "zarr.json"
    meta = json.loads(meta_path.read_text())
    del meta["attributes"]["med3d_complete"]  # as if the build died before writing the marker
    meta_path.write_text(json.dumps(meta))
    with pytest.warns(UserWarning, match="lack the completion marker"):
        index = StoreIndex.from_store(copy)
    assert victim not in {c.store_path for c in index.cases["beta"]}
    image, label = read_volume(stores["main"], "alpha/a_test")
    assert image.shape == (20, 20, 20) and image.dtype == np.float32 and label is None


REAL_MSD = Path(__file__).resolve().parents[1] / "data" / "real" / "msd"


def test_real_hippocampus_patches(tmp_path) -> None:
    """Real MSD Task04 cases (about 35×52×35 voxels) with 48³ patches: padded where the volume is smaller,
    foreground-centred patches hold hippocampus, and every patch equals the crop of the whole volume."""
    if not (REAL_MSD / "Task04_Hippocampus" / "dataset.json").exists():
        pytest.fail(f"real MSD sample not found at {REAL_MSD}: it ships with the repository (tests/data/README.md)")
    from pipeline.sources.msd import scan_msd

    found, _ = scan_msd(REAL_MSD, ["Task04_Hippocampus"])
    store = str(tmp_path / "store")
    res = build(found, store, PrepConfig(chunks=(16, 16, 16)), workers=0, progress=False, log=lambda s: None)
    assert res.ok, res.summary()
    index = StoreIndex.from_store(store)
    assert index.domains == ("hippocampus",) and index.num_classes == {"hippocampus": 3}
    stream = PretrainStream(store, index, PatchConfig(patch=(48, 48, 48), batch=2, seed=0, fg_fraction=0.5))
    n_fg = 0
    for step in range(8):
        batch = stream.batch(step)
        for spec, lab in zip(check_batch_against_volumes(store, stream, batch), batch["label"]):
            assert set(lab.unique().tolist()) <= {0, 1, 2}
            if spec.fg:
                n_fg += 1
                assert lab.any()
    assert n_fg > 0
