"""What ``med3d-train finetune`` says about the ``--init`` weights: one short line for the whole run (liver: two
stages load the same file), the count of dropped head keys and why, their names only with ``--verbose``, and the
whole report always in ``RUN/init_report.json``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

KEYS_JSON = Path(__file__).resolve().parents[1] / "data" / "medicalnet_checkpoint_keys.json"
HEAD_KEYS = [f"conv_seg.{i}.weight" for i in range(16)]
ARGS = ["--steps", "1", "--batch", "1", "--patch", "16", "--coarse-shape", "16,16,16", "--aspp-rates", "1,2",
        "--workers", "0", "--device", "cpu", "--val-every", "0", "--ckpt-every", "0", "--no-progress"]


@pytest.fixture(scope="module")
def lits(tmp_path_factory) -> dict[str, str]:
    """The LiTS sample store (4 train cases) and a ResNet-10 file in MedicalNet's format (released key names
    and shapes, random values, 'module.' prefix) with a 16-key segmentation head, as the released files have."""
    from pipeline.cli import main as prep
    from pipeline.sample import write_all

    root = tmp_path_factory.mktemp("lits_report")
    write_all(root / "raw", only="lits")
    res = CliRunner().invoke(prep, ["build-lits", str(root / "raw" / "lits"), str(root / "store"), "--workers",
                                    "0", "--no-progress"])
    assert res.exit_code == 0, res.output
    gen = torch.Generator().manual_seed(0)
    state = {}
    for key, shape in json.loads(KEYS_JSON.read_text())["resnet_10"]["keys"].items():
        state[key] = torch.tensor(0) if key.endswith("num_batches_tracked") else \
            torch.rand(shape, generator=gen) + 0.5 if key.endswith("running_var") else \
            torch.randn(shape, generator=gen) * 0.05
    state.update({f"module.{k}": torch.zeros(2) for k in HEAD_KEYS})
    torch.save({"state_dict": state}, root / "resnet_10.pth")
    return {"store": str(root / "store"), "init": str(root / "resnet_10.pth")}


@pytest.mark.slow  # two stages: about 6 s on 2 cores
def test_the_weight_loading_line_is_printed_once_short_and_the_names_go_to_the_run_folder(lits, tmp_path):
    from model.cli import main

    run = tmp_path / "liver"
    res = CliRunner().invoke(main, ["finetune", "liver", lits["store"], "--out", str(run), "--init", lits["init"],
                                    *ARGS])
    assert res.exit_code == 0, res.output
    assert "(coarse stage)" in res.output and "(fine stage)" in res.output  # both stages loaded the weights
    [line] = [line for line in res.output.splitlines() if line.startswith("Loaded ")]
    assert line == (f"Loaded 72 tensors into resnet10 from {lits['init']} (medicalnet format); dropped 16 "
                    "non-encoder keys (the source network's heads: the task trains its own). Details in "
                    f"{run / 'init_report.json'} (or --verbose).")
    assert "conv_seg" not in res.output
    report = json.loads((run / "init_report.json").read_text())
    assert sorted(report["dropped"]) == sorted(HEAD_KEYS) and report["loaded"] == 72
    assert report["stripped_prefix"] == "module." and report["source_format"] == "medicalnet"


def test_verbose_prints_every_dropped_key(lits, tmp_path):
    from model.cli import main

    run = tmp_path / "liver"
    res = CliRunner().invoke(main, ["finetune", "liver", lits["store"], "--out", str(run), "--init", lits["init"],
                                    "--stage", "coarse", "--verbose", *ARGS])
    assert res.exit_code == 0, res.output
    [line] = [line for line in res.output.splitlines() if line.startswith("Loaded ")]
    assert "stripped the prefix 'module.'" in line and f"dropped 16 non-encoder keys ({', '.join(sorted(HEAD_KEYS))})" \
        in line
    assert (run / "init_report.json").is_file()


def test_short_text_counts_and_explains_the_dropped_keys_and_keeps_every_adaptation():
    from model.nets.weights import LoadReport

    rep = LoadReport(encoder="resnet10", source="k.pth", source_format="kinetics", loaded=62,
                     stripped_prefix="module.", dropped=("fc.weight", "fc.bias"), adapted=("conv1.weight",),
                     notes=("summed 3 input channels to 1 in conv1.weight",))
    assert rep.short() == ("Loaded 62 tensors into resnet10 from k.pth (kinetics format); dropped 2 non-encoder "
                           "keys (the source network's heads: the task trains its own); summed 3 input channels "
                           "to 1 in conv1.weight.")
    assert str(rep) == ("Loaded 62 tensors into resnet10 from k.pth (kinetics format); stripped the prefix "
                        "'module.' from every key; dropped 2 non-encoder keys (fc.bias, fc.weight); summed 3 input "
                        "channels to 1 in conv1.weight.")
    exact = LoadReport(encoder="resnet10", source="<dict>", source_format="state_dict", loaded=72)
    assert exact.short() == str(exact) == ("Loaded 72 tensors into resnet10 from <dict> (state_dict format); "
                                           "every key matched exactly.")
