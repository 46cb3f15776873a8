"""Values a run's configuration may hold (issue 23, items 8 and 11): every field of :class:`TrainConfig` and
:class:`FinetuneConfig` is of its type and finite (a bool is true or false, not ``"no"``; the device is cpu, cuda
or cuda:N, not ``meta``), learning rates and patch/shape sides are bounded, and a run's ``config.json`` or
``finetune.json`` that is damaged or crafted is one line naming the file and the field: no traceback, nothing
written."""
from __future__ import annotations

import json
import math

import pytest
from click.testing import CliRunner

from model.cli import main
from model.training.config import TrainConfig
from model.tasks.base import get_task

HUGE = "9" * 100_000


@pytest.mark.parametrize("changes, why", [
    ({"amp": "no"}, "amp must be true or false or null, got 'no'"),
    ({"compile": "yes"}, "compile must be true or false, got 'yes'"),
    ({"device": "meta"}, "device must be cpu, cuda or cuda:N, got 'meta'"),
    ({"device": 0}, "device must be"),
    ({"lr": math.inf}, "lr must be a finite number or null, got inf"),
    ({"lr": math.nan}, "lr must be"),
    ({"lr": 11.0}, r"lr must be > 0 and <= 10, got 11"),
    ({"lr": 0.0}, r"lr must be > 0 and <= 10"),
    ({"steps": 1.5}, "steps must be a whole number, got 1.5"),
    ({"steps": True}, "steps must be a whole number, got True"),
    ({"steps": 10 ** 30}, "steps must be a whole number, got a 31-digit integer"),
    ({"batch": "2"}, "batch must be a whole number, got '2'"),
    ({"seed": -1}, "seed must be >= 0"),
    ({"shape": (2000, 16, 16)}, r"shape must be three sizes \(z, y, x\) of 8 to 1024 voxels, got \(2000, 16, 16\)"),
    ({"patch": (math.inf, 16, 16)}, "patch must be a list of three whole numbers, got"),
    ({"coarse_shape": (16, 16)}, "coarse_shape must be a list of three whole numbers"),
    ({"rotate_deg": math.inf}, "rotate_deg must be a finite number, got inf"),
    ({"roi_margin_mm": (5.0, math.nan)}, "roi_margin_mm must be a list of two finite numbers"),
    ({"workers": 10 ** 30}, "workers must be a whole number"),
    ({"weight_decay": -1.0}, "weight_decay must be >= 0"),
])
def test_finetune_config_refuses_values_of_the_wrong_type_or_range(changes, why):
    task = get_task("classify" if "shape" in changes else "liver")  # the task whose options hold the field
    with pytest.raises(ValueError, match=why) as err:
        task.config(store="s", out="o", stage=task.stages[0], **changes)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("changes, why", [
    ({"amp": "no"}, "amp must be true or false or null, got 'no'"),
    ({"device": "meta"}, "device must be cpu, cuda or cuda:N, got 'meta'"),
    ({"lr": math.inf}, "lr must be a finite number, got inf"),
    ({"lr": 100.0}, r"lr must be > 0 and <= 10"),
    ({"patch": (2048, 64, 64)}, r"patch must be three sizes \(z, y, x\) of 8 to 1024 voxels"),
    ({"store": 5}, "store must be a text or a list of texts, got 5"),
    ({"exclude": "lits:val"}, "exclude must be a list of texts"),
    ({"fg_fraction": "1/3"}, "fg_fraction must be a finite number"),
])
def test_train_config_refuses_values_of_the_wrong_type_or_range(changes, why):
    with pytest.raises(ValueError, match=why):
        TrainConfig(**{"store": "s", "out": "o", **changes})


def test_good_configs_still_round_trip():
    cfg = TrainConfig(store="s", out="o", patch=[32, 128, 128], lr=10.0, amp=None, device="cuda:1", seed=3)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    ft = get_task("classify").config(store="s", out="o", lr=None, shape=(1024, 8, 8), device="cpu")
    assert type(ft).from_dict(ft.to_dict()) == ft
    seg = get_task("seg").config(store="s", out="o", rotate_deg=0, patch=[16, 32, 32])
    assert type(seg).from_dict(seg.to_dict()) == seg and seg.patch == (16, 32, 32)


@pytest.mark.parametrize("text, why", [
    ('{"store": "s", "out": "o", "steps": ' + HUGE + "}", "a number of more than 4300 digits"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ('{"store": "s", "out": "o", "amp": "no"}', "amp must be true or false or null, got 'no'"),
    ('{"store": "s", "out": "o", "device": "meta"}', "device must be cpu, cuda or cuda:N"),
    ('{"store": "s", "out": "o", "lr": 1e999}', "lr must be a finite number, got inf"),
    ('["s"]', "not a TrainConfig"),
])
def test_train_config_read_json_names_the_file_and_the_field(tmp_path, text, why):
    path = tmp_path / "config.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=why) as err:
        TrainConfig.read_json(path)
    assert str(err.value).startswith(f"{path}: ") and "\n" not in str(err.value)


@pytest.mark.parametrize("text, why", [
    ('{"store": "s", "out": "o", "steps": ' + HUGE + "}", "a number of more than 4300 digits"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ('{"store": "s", "out": "o", "amp": "no"}', "amp must be true or false or null, got 'no'"),
])
def test_pretrain_resume_with_a_damaged_config_is_one_line(tmp_path, text, why):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(text)
    res = CliRunner().invoke(main, ["pretrain", "store", "--out", str(run), "--resume", "--device", "cpu"])
    assert res.exit_code == 1, res.output
    assert f"{run / 'config.json'}: " in res.output and why in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1
    assert sorted(p.name for p in run.iterdir()) == ["config.json"]


def _finetune_config(**changes) -> dict:
    cfg = get_task("classify").config(store="s", out="o", labels="labels.csv").to_dict()
    return {**cfg, **changes}


@pytest.mark.parametrize("config, why", [
    (json.dumps(_finetune_config(amp="no")), "amp must be true or false or null, got 'no'"),
    (json.dumps(_finetune_config(device="meta")), "device must be cpu, cuda or cuda:N, got 'meta'"),
    (json.dumps(_finetune_config(lr=math.inf)), "lr must be a finite number or null, got inf"),
    (json.dumps(_finetune_config(shape=[16, 16])), "shape must be a list of three whole numbers"),
    ('{"steps": ' + HUGE + "}", "a number of more than 4300 digits"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
])
def test_finetune_resume_with_a_damaged_config_is_one_line_naming_file_and_field(tmp_path, config, why):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(config)
    res = CliRunner().invoke(main, ["finetune", "classify", "store", "--out", str(run), "--resume", "--no-progress"])
    assert res.exit_code != 0, res.output
    assert f"{run / 'config.json'}: " in res.output and why in res.output, res.output
    assert "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1
    assert sorted(p.name for p in run.iterdir()) == ["config.json"]


def test_a_checkpoint_whose_config_is_damaged_names_the_checkpoint(tmp_path):
    from model.run_folder import load_stage
    from model.training.checkpoint import save_checkpoint

    cfg = _finetune_config(amp="no")
    save_checkpoint({"model": {}, "optimizer": {}, "scheduler": {}, "step": 1, "config": cfg, "rng": {},
                     "encoder": "resnet10", "num_classes": 2}, tmp_path / "checkpoint.pt")
    with pytest.raises(ValueError, match=r"checkpoint\.pt: .*amp must be true or false or null, got 'no'"):
        load_stage(tmp_path, "main", config_type=get_task("classify").config_type)


def _recipe(**changes) -> dict:
    return {"domain": "d", "target_spacing": [1.0, 1.0, 1.0], "modality": "MR", "percentiles": [0.5, 99.5],
            "ct_window": None, "air_hu": -1024.0, "dtype": "float16", "image_interpolation": "linear", **changes}


@pytest.mark.parametrize("preprocessing, why", [
    (_recipe(target_spacing=[1e9, 1.0, 1.0]), "target_spacing"),
    (_recipe(target_spacing=[5e-324, 1.0, 1.0]), "target_spacing"),
    (_recipe(dtype=["float16"]), "dtype"),
    ("float16", "the recipe 'float16' is not a JSON object"),
])
def test_predict_with_a_run_recipe_no_scan_can_be_resampled_to_is_one_line(tmp_path, preprocessing, why):
    """A run's finetune.json recipe of 1e9 mm voxels would predict on a one-voxel grid; refused, naming the file
    and the field, before any scan is read or anything written."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "finetune.json").write_text(json.dumps({"task": "seg", "stages": ["main"], "preprocessing": preprocessing}))
    scan = tmp_path / "scan.nii.gz"
    scan.write_bytes(b"not read")
    res = CliRunner().invoke(main, ["predict", str(run), str(scan), "--out", str(tmp_path / "out")])
    assert res.exit_code != 0
    assert f"{run / 'finetune.json'}: preprocessing: " in res.output and why in res.output, res.output
    assert "Traceback" not in res.output and not (tmp_path / "out").exists()


def test_a_run_file_that_is_not_json_is_one_line(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "finetune.json").write_text("[" * 100_000 + "]" * 100_000)
    scan = tmp_path / "scan.nii.gz"
    scan.write_bytes(b"not read")
    res = CliRunner().invoke(main, ["predict", str(run), str(scan), "--out", str(tmp_path / "out")])
    assert res.exit_code != 0 and f"{run / 'finetune.json'}: not a readable" in res.output, res.output
    assert "Traceback" not in res.output

