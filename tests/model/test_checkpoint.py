"""Checkpoints and the training config: atomic writes, weights_only loads, RNG state, JSON round trip."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from model.training.checkpoint import CHECKPOINT_FORMAT, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from model.training.config import RUNTIME_FIELDS, TrainConfig, config_conflicts


def _payload(step: int = 3) -> dict:
    net = torch.nn.Conv3d(1, 2, 1)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    net(torch.randn(1, 1, 2, 2, 2)).sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.PolynomialLR(opt, total_iters=10, power=0.9)
    cfg = TrainConfig(store="s", out="o", patch=(16, 32, 32), exclude=("a:val",))
    return {"model": net.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "step": step, "config": cfg.to_dict(), "rng": rng_state(), "scan_ids": ["x:1", "x:2"],
            "metrics": {"loss_ema": {"x": 0.5}, "val": {"dice": {"x": float("nan")}}}}


def test_checkpoint_round_trip_with_weights_only(tmp_path):
    payload = _payload()
    path = save_checkpoint(payload, tmp_path / "run" / "checkpoint.pt")
    raw = torch.load(path, weights_only=True)  # no pickled objects anywhere, numpy state included
    assert raw["format"] == CHECKPOINT_FORMAT and raw["format_version"] == 1
    back = load_checkpoint(path)
    assert back["step"] == 3 and back["scan_ids"] == ["x:1", "x:2"]
    assert TrainConfig.from_dict(back["config"]) == TrainConfig.from_dict(payload["config"])
    for k, v in payload["model"].items():
        assert torch.equal(back["model"][k], v)
    assert back["optimizer"]["state"][0]["exp_avg"].shape == (2, 1, 1, 1, 1)
    assert back["scheduler"]["total_iters"] == 10
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["checkpoint.pt"]  # no temporary file left


def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = save_checkpoint(_payload(step=1), tmp_path / "checkpoint.pt")

    def broken_save(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(_payload(step=2), path)
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_rng_state_restores_every_generator():
    torch.manual_seed(1)
    random.seed(2)
    np.random.seed(3)
    np.random.normal()  # leaves a cached gaussian in numpy's legacy state
    state = rng_state()
    first = (torch.rand(4), [random.random() for _ in range(3)], random.gauss(0, 1), np.random.rand(3),
             np.random.normal())
    torch.manual_seed(99)
    random.seed(99)
    np.random.seed(99)
    set_rng_state(state)
    again = (torch.rand(4), [random.random() for _ in range(3)], random.gauss(0, 1), np.random.rand(3),
             np.random.normal())
    assert torch.equal(first[0], again[0])
    assert first[1:3] == again[1:3]
    assert np.array_equal(first[3], again[3]) and first[4] == again[4]


def test_load_rejects_foreign_and_truncated_files(tmp_path):
    torch.save({"state_dict": {"module.conv1.weight": torch.zeros(1)}}, tmp_path / "medicalnet.pth")
    with pytest.raises(ValueError, match="not a med3d-train checkpoint.*--init"):
        load_checkpoint(tmp_path / "medicalnet.pth")
    torch.save({"format": CHECKPOINT_FORMAT, "model": {}}, tmp_path / "cut.pt")
    with pytest.raises(ValueError, match="lacks"):
        load_checkpoint(tmp_path / "cut.pt")
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


def test_train_config_json_round_trip_and_validation(tmp_path):
    cfg = TrainConfig(store="s", out="o", encoder="resnet50", patch=[32, 128, 128], exclude=["lits:val"],
                      amp=False, device="cuda:1", loss="ce+dice", optimizer="sgd", scheduler="cosine")
    assert cfg.patch == (32, 128, 128) and cfg.exclude == ("lits:val",)
    d = json.loads(json.dumps(cfg.to_dict()))
    assert d["patch"] == [32, 128, 128]
    assert TrainConfig.from_dict(d) == cfg
    cfg.write_json(tmp_path / "config.json")
    assert TrainConfig.read_json(tmp_path / "config.json") == cfg
    with pytest.raises(ValueError, match="unknown TrainConfig fields"):
        TrainConfig.from_dict({**d, "epochs": 3})
    with pytest.raises(ValueError, match="optimizer must be one of adam, sgd"):
        TrainConfig(store="s", out="o", optimizer="lamb")
    with pytest.raises(ValueError, match="patch"):
        TrainConfig(store="s", out="o", patch=(4, 4, 4))
    with pytest.raises(TypeError):
        TrainConfig("s", "o")  # keyword-only


def test_config_conflicts_name_what_would_change_the_weights():
    a = TrainConfig(store="s", out="o", steps=10)
    runtime = a.replace(**{"workers": 7, "device": "cpu", "val_every": 3, "ckpt_every": 2, "store": "moved"})
    assert config_conflicts(a, runtime) == []
    assert {"workers", "device", "store"} <= RUNTIME_FIELDS
    assert config_conflicts(a, a.replace(lr=0.1, seed=4)) == ["lr: checkpoint 0.001, now 0.1",
                                                              "seed: checkpoint 0, now 4"]
    assert config_conflicts(a, a.replace(steps=20)) == ["steps: checkpoint 10, now 20"]
    constant = a.replace(scheduler="constant")
    assert config_conflicts(constant, constant.replace(steps=20)) == []


def test_the_last_two_checkpoints_are_kept(tmp_path):
    from model.training.checkpoint import previous_path

    path = tmp_path / "checkpoint.pt"
    for step in (1, 2, 3):
        save_checkpoint(_payload(step=step), path)
    assert load_checkpoint(path)["step"] == 3
    assert previous_path(path).name == "checkpoint.prev.pt" and load_checkpoint(previous_path(path))["step"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.prev.pt", "checkpoint.pt"]


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_a_damaged_checkpoint_is_a_clear_error_naming_it(tmp_path, damage):
    from model.training.checkpoint import CheckpointError

    path = save_checkpoint(_payload(step=1), tmp_path / "checkpoint.pt")
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"\x00junk" * 100, "empty": b""}[damage])
    with pytest.raises(CheckpointError, match=rf"checkpoint {path} is truncated or corrupt"):
        load_checkpoint(path)


@pytest.mark.slow  # over 5 s on 2 cores
def test_resume_falls_back_to_the_previous_checkpoint_and_says_so(tmp_path, fast_config):
    from model.evaluation.metrics import read_metrics
    from model.training.pretrain import PretrainError, pretrain

    full = pretrain(fast_config(tmp_path / "full", steps=4, ckpt_every=1), progress=False, log=lambda s: None)
    cfg = fast_config(tmp_path / "cut", steps=4, ckpt_every=1)
    pretrain(cfg, stop_after=3, progress=False, log=lambda s: None)
    ckpt = tmp_path / "cut" / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])  # an interrupted copy of the run folder
    logs: list[str] = []
    resumed = pretrain(cfg, resume=True, progress=False, log=logs.append)
    assert any("falling back to the previous checkpoint" in line and str(ckpt) in line for line in logs)
    assert any("step 2" in line for line in logs)
    assert resumed.step == 4
    losses = [r["loss"] for r in read_metrics(tmp_path / "cut", "train")]
    assert losses == [r["loss"] for r in read_metrics(full.run_dir, "train")]
    # with no previous checkpoint to fall back to, the error names the damaged file
    solo = fast_config(tmp_path / "solo", steps=2)
    pretrain(solo, stop_after=1, progress=False, log=lambda s: None)
    (tmp_path / "solo" / "checkpoint.pt").write_bytes(b"")
    with pytest.raises(PretrainError, match=r"solo/checkpoint.pt is truncated or corrupt"):
        pretrain(solo, resume=True, progress=False, log=lambda s: None)
