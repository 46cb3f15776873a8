"""Pretraining over several stores: every domain trained, unique domain names, each scan trained once."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from catalog import load_catalog, select
from model.cli import main
from model.data import StoreIndex, parse_exclude
from model.nets.resnet import create_encoder
from model.nets.weights import load_encoder_weights
from model.training.checkpoint import load_checkpoint, save_checkpoint
from model.training.config import TrainConfig
from model.training.pretrain import PretrainError, pretrain

FAST = ["--depth", "10", "--patch", "24", "--batch", "2", "--workers", "0", "--device", "cpu", "--no-progress",
        "--ckpt-every", "0", "--domain-sampling", "uniform"]


def _build(found, store: Path) -> str:
    from pipeline.config import PrepConfig
    from pipeline.job import build

    res = build(found, str(store), PrepConfig(chunks=(16, 16, 16)), workers=0, progress=False, log=lambda s: None)
    assert res.ok, res.summary()
    return str(store)


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict:
    """msd: build-3dseg8 of the sample Task02_Heart and Task04_Hippocampus; nnunet: the sample Task09_Spleen as
    an nnU-Net v2 dataset (Dataset009_Spleen), built by the nnU-Net source; hippo_nn: the sample hippocampus as
    an nnU-Net dataset too (the same scans as msd's hippocampus), without 2 of its training cases."""
    from pipeline.sample import write_all
    from pipeline.sample.nnunet import msd_to_nnunet
    from pipeline.sources.msd import scan_msd
    from pipeline.sources.nnunet import scan_nnunet

    tmp = tmp_path_factory.mktemp("multi")
    write_all(tmp / "raw", only="msd")
    msd = tmp / "raw" / "msd"
    found, _ = scan_msd(msd, ["Task02_Heart", "Task04_Hippocampus"])
    out = {"msd": _build(found, tmp / "msd_store"), "tmp": tmp}
    spleen = msd_to_nnunet(msd / "Task09_Spleen", tmp / "nnUNet_raw")
    out["nnunet"] = _build([scan_nnunet(spleen)[:2]], tmp / "nnunet_store")
    hippo = msd_to_nnunet(msd / "Task04_Hippocampus", tmp / "nnUNet_raw")
    out["hippo_dataset"] = hippo
    for case in ("hippocampus_001", "hippocampus_003"):
        (hippo / "imagesTr" / f"{case}_0000.nii.gz").unlink()
        (hippo / "labelsTr" / f"{case}.nii.gz").unlink()
    out["hippo_nn"] = _build([scan_nnunet(hippo, domain="hippocampus_nn")[:2]], tmp / "hippo_nn_store")
    return out


def test_pretrain_over_two_stores_trains_every_domain_and_exports_medicalnet(stores, tmp_path):
    from model.data import domain_for_step

    # Seed 0 draws every domain within the first 11 steps (heart first at step 10).
    assert {domain_for_step(0, s, ("heart", "hippocampus", "spleen"), (1, 1, 1)) for s in range(11)} == \
        {"heart", "hippocampus", "spleen"}
    run = tmp_path / "run"
    res = CliRunner().invoke(main, ["pretrain", stores["msd"], stores["nnunet"], "--out", str(run), *FAST,
                                    "--steps", "11", "--val-every", "11", "--val-max-cases", "1"])
    assert res.exit_code == 0, res.output
    assert "in 3 domains of 2 stores" in res.output
    ckpt = load_checkpoint(run / "checkpoint.pt")
    assert ckpt["config"]["store"] == [stores["msd"], stores["nnunet"]]
    assert set(ckpt["metrics"]["steps_per_domain"]) == {"heart", "hippocampus", "spleen"}
    assert set(ckpt["metrics"]["val"]["dice"]) == {"heart", "hippocampus", "spleen"}
    assert ckpt["classes"] == {"heart": 2, "hippocampus": 3, "spleen": 2}
    index = ckpt["index"]
    assert index["stores"] == [stores["msd"], stores["nnunet"]]
    assert all(p.startswith(stores["nnunet"] + "/spleen/") for p in index["cases"]["spleen"])
    assert all(p.startswith(stores["msd"] + "/heart/") for p in index["cases"]["heart"])
    train = set()
    for store in (stores["msd"], stores["nnunet"]):
        train |= set(select(load_catalog(store), split="train")["scan_id"])
    assert set(ckpt["scan_ids"]) == train

    out = tmp_path / "resnet_10_med3d.pth"
    res = CliRunner().invoke(main, ["export", str(run), str(out), "--format", "medicalnet"])
    assert res.exit_code == 0, res.output
    state = torch.load(out, weights_only=True)["state_dict"]
    assert all(k.startswith("module.") for k in state) and "module.conv1.weight" in state
    encoder = create_encoder("resnet10")
    load_encoder_weights(encoder, out)
    torch.testing.assert_close(encoder.state_dict()["conv1.weight"], ckpt["model"]["encoder.conv1.weight"])


def test_a_domain_name_in_two_stores_is_refused_naming_both(stores, tmp_path):
    from pipeline.sources.nnunet import scan_nnunet

    clash = _build([scan_nnunet(stores["hippo_dataset"])[:2]], tmp_path / "clash")  # domain hippocampus again
    with pytest.raises(ValueError, match="domain 'hippocampus' is in both") as err:
        StoreIndex.from_stores([stores["msd"], clash])
    assert stores["msd"] in str(err.value) and clash in str(err.value)
    cfg = TrainConfig(store=(stores["msd"], clash), out=str(tmp_path / "run"), patch=(24, 24, 24), steps=1,
                      workers=0, device="cpu")
    with pytest.raises(PretrainError, match="domain names must be unique across the stores"):
        pretrain(cfg, progress=False)


def test_a_scan_in_two_stores_is_trained_once_from_the_first(stores, tmp_path):
    msd, nn = load_catalog(stores["msd"]), load_catalog(stores["hippo_nn"])
    msd_train = set(select(msd, domain="hippocampus", split="train")["scan_id"])
    nn_all = set(select(nn)["scan_id"])
    assert nn_all < set(select(msd, domain="hippocampus")["scan_id"])  # the same scans, two fewer

    index = StoreIndex.from_stores([stores["hippo_nn"], stores["msd"]])
    ids = [c.scan_id for cs in index.cases.values() for c in cs]
    assert len(ids) == len(set(ids))
    kept = {c.scan_id for c in index.cases["hippocampus"]}
    assert kept == msd_train - nn_all and kept  # only the scans the first store lacks
    assert set(index.duplicates) == msd_train & nn_all
    assert {c.store for c in index.cases["hippocampus"]} == {stores["msd"]}

    first_msd = StoreIndex.from_stores([stores["msd"], stores["hippo_nn"]])
    assert "hippocampus_nn" not in first_msd.domains  # every one of its scans is msd's
    assert set(first_msd.duplicates) == set(select(nn, split="train")["scan_id"])

    logs: list[str] = []
    cfg = TrainConfig(store=(stores["hippo_nn"], stores["msd"]), out=str(tmp_path / "run"), patch=(24, 24, 24),
                      steps=1, workers=0, device="cpu", val_every=0)
    result = pretrain(cfg, progress=False, log=logs.append)
    assert any("trained once, from the first store that holds it" in line for line in logs)
    assert sorted(result.scan_ids) == sorted(set(ids))
    assert load_checkpoint(result.checkpoint)["duplicate_scan_ids"] == list(index.duplicates)


def test_exclude_works_across_the_stores(stores):
    index = StoreIndex.from_stores([stores["msd"], stores["nnunet"]], exclude_scan_ids=parse_exclude(stores["nnunet"]))
    assert index.domains == ("heart", "hippocampus")
    assert set(index.excluded) == set(select(load_catalog(stores["nnunet"]), split="train")["scan_id"])
    held_out = parse_exclude([f"{stores['msd']}:val"])
    val = StoreIndex.from_stores([stores["msd"], stores["nnunet"]], split="val", exclude_scan_ids=held_out)
    assert val.domains == ("spleen",)


def test_single_store_configs_and_checkpoints_written_before_still_load(stores, tmp_path):
    old = TrainConfig(store=stores["msd"], out="x").to_dict()
    old["store"] = stores["msd"]  # how config.json and checkpoints stored it before
    cfg = TrainConfig.from_dict(old)
    assert cfg.store == (stores["msd"],) and cfg.to_dict()["store"] == [stores["msd"]]
    assert StoreIndex.from_stores(cfg.store) == StoreIndex.from_store(stores["msd"])

    cfg = TrainConfig(store=stores["msd"], out=str(tmp_path / "run"), patch=(24, 24, 24), steps=2, workers=0,
                      device="cpu", ckpt_every=1)
    pretrain(cfg, stop_after=1, progress=False)
    path = Path(cfg.out) / "checkpoint.pt"
    ckpt = load_checkpoint(path)
    ckpt["config"]["store"] = stores["msd"]
    save_checkpoint(ckpt, path, keep_previous=False)
    resumed = pretrain(cfg, resume=True, progress=False)
    assert resumed.step == 2
    with pytest.raises(ValueError, match="given twice"):
        TrainConfig(store=(stores["msd"], stores["msd"]), out="x")
