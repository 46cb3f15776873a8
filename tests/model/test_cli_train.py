"""``med3d-train pretrain`` and ``export`` through click's CliRunner."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from model.cli import main
from model.evaluation.metrics import read_metrics
from model.nets.resnet import create_encoder
from model.nets.weights import load_encoder_weights

FAST = ["--depth", "10", "--batch", "1", "--patch", "24", "--device", "cpu", "--workers", "0", "--no-progress"]


def invoke(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def run_dir(tiny_store: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "run"
    res = invoke("pretrain", tiny_store, "--out", out, *FAST, "--steps", "2", "--val-every", "2",
                 "--val-max-cases", "1", "--ckpt-every", "1", "--loss", "ce+dice", "--optimizer", "sgd")
    assert res.exit_code == 0, res.output
    assert "trained 2 steps" in res.output and "val Dice at step 2" in res.output
    return out


def test_pretrain_writes_config_checkpoint_and_metrics(run_dir: Path):
    # the checkpoint before the last is kept beside it (a damaged last one still leaves one to resume from)
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoint.prev.pt", "checkpoint.pt", "config.json",
                                                         "metrics.jsonl"]
    config = json.loads((run_dir / "config.json").read_text())
    assert (config["encoder"], config["patch"], config["loss"], config["optimizer"]) == \
        ("resnet10", [24, 24, 24], "ce+dice", "sgd")
    ckpt = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert {"model", "optimizer", "scheduler", "step", "config", "rng", "scan_ids", "classes", "metrics"} <= set(ckpt)
    assert ckpt["step"] == 2 and ckpt["config"] == config
    train = read_metrics(run_dir, "train")
    assert [r["step"] for r in train] == [1, 2]
    assert {"kind", "step", "time", "domain", "loss", "lr", "patches_per_s", "data_wait_s", "step_s"} == set(train[0])
    val = read_metrics(run_dir, "val")
    assert [r["step"] for r in val] == [2]
    assert {"dice", "dice_per_class", "mean_dice", "cases"} <= set(val[0])


def test_pretrain_refuses_to_overwrite_and_checks_resume(run_dir: Path, tiny_store: str):
    res = invoke("pretrain", tiny_store, "--out", run_dir, *FAST, "--steps", "2")
    assert res.exit_code != 0
    assert "exists: pass --resume" in res.output
    res = invoke("pretrain", tiny_store, "--out", run_dir, *FAST, "--resume", "--lr", "0.1")
    assert res.exit_code != 0 and "lr: checkpoint 0.001, now 0.1" in res.output
    # --resume takes the run's own settings (sgd, ce+dice, 2 steps), not the defaults: nothing left to do.
    res = invoke("pretrain", tiny_store, "--out", run_dir, *FAST, "--resume")
    assert res.exit_code == 0, res.output
    assert "trained 2 steps" in res.output


def test_resume_extends_a_constant_schedule(tiny_store: str, tmp_path: Path):
    out = tmp_path / "run"
    base = ["pretrain", tiny_store, "--out", out, *FAST, "--patch", "16,24,24", "--scheduler", "constant",
            "--val-every", "0"]
    assert invoke(*base, "--steps", "1").exit_code == 0
    res = invoke(*base, "--steps", "2", "--resume")
    assert res.exit_code == 0, res.output
    assert [r["step"] for r in read_metrics(out, "train")] == [1, 2]
    assert json.loads((out / "config.json").read_text())["patch"] == [16, 24, 24]


def test_bad_arguments_are_usage_errors(tiny_store: str, tmp_path: Path):
    res = CliRunner().invoke(main, ["pretrain", tiny_store, "--out", str(tmp_path / "r"), "--patch", "4"])
    assert res.exit_code == 2 and "at least 8" in res.output
    res = CliRunner().invoke(main, ["pretrain", tiny_store, "--out", str(tmp_path / "r"), "--depth", "11"])
    assert res.exit_code == 2 and "10" in res.output and "200" in res.output
    res = invoke("pretrain", str(tmp_path / "nostore"), "--out", tmp_path / "r", *FAST, "--steps", "1")
    assert res.exit_code == 1 and "no catalog" in res.output


def test_export_medicalnet_format(run_dir: Path, tmp_path: Path):
    out = tmp_path / "resnet_10_med3d.pth"
    res = invoke("export", run_dir / "checkpoint.pt", "--format", "medicalnet", out)
    assert res.exit_code == 0, res.output
    assert "dropped" in res.output  # the report names the dropped head keys
    exported = torch.load(out, map_location="cpu", weights_only=True)
    sd = exported["state_dict"]
    assert all(k.startswith("module.") for k in sd)
    assert not any(part in k for k in sd for part in ("head", "branches", "conv_seg"))

    model = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)["model"]
    want = {k[len("encoder."):]: v for k, v in model.items() if k.startswith("encoder.")}
    assert {k[len("module."):] for k in sd} == set(want)
    fresh = create_encoder("resnet10")
    load_encoder_weights(fresh, out)
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, want[k]), k


def test_cli_module_imports_without_torch():
    code = "import sys, model.cli; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[2]).returncode == 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_bad_device_is_a_clean_error(tiny_store: str, tmp_path: Path):
    # "gpu" is no device name: a usage error of the config (exit 2) before any work; "cuda" fails at start (exit 1)
    for device, why, code in (("cuda", "has no CUDA device", 1), ("gpu", "device must be cpu, cuda or cuda:N", 2)):
        res = CliRunner().invoke(main, ["pretrain", tiny_store, "--out", str(tmp_path / device), "--device", device,
                                        "--steps", "1", "--workers", "0", "--no-progress"])
        assert res.exit_code == code and isinstance(res.exception, SystemExit), (device, res.exception)
        assert "Error:" in res.output and why in res.output


def test_python_dash_m_model_cli_runs_for_torchrun():
    """`torchrun -m model.cli pretrain ...` runs the module as __main__: its imports must not be circular."""
    out = subprocess.run([sys.executable, "-m", "model.cli", "--help"], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[2], timeout=120)
    assert out.returncode == 0, out.stderr
    assert all(cmd in out.stdout for cmd in ("pretrain", "finetune", "evaluate", "predict", "compare", "export"))
