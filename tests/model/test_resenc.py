"""nnU-Net's residual encoder as a Med3D encoder: the M and L presets have nnU-Net's own parameters, and the family
runs the whole Med3D flow through the command line: pretrain on 2 domains -> finetune seg (U-Net decoder on every
stage) and classify -> evaluate -> predict on the real MSD hippocampus scans. The flow uses ``resenc_tiny`` (a
quarter of the width, one block per stage) so that it takes seconds on a CPU."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import torch
from click.testing import CliRunner

from model.cli import main
from model.data import domain_for_step
from model.nets.encoders import create_encoder
from model.nets.resenc import PRESETS, nnunet_arch_kwargs
from model.training.checkpoint import load_checkpoint

FAST = ["--workers", "0", "--device", "cpu", "--val-every", "0", "--ckpt-every", "0", "--no-progress"]
IDS = ["hippocampus_001", "hippocampus_003", "hippocampus_004", "hippocampus_006"]


@pytest.mark.parametrize("name, params", [("resenc_m", 90_296_576), ("resenc_l", 90_296_576),
                                          ("resenc_tiny", 541_856)])
def test_presets_have_nnunet_parameters(name: str, params: int) -> None:
    """The same tensors (names, shapes, count) as the encoder nnU-Net builds from its ResEnc planner's
    arch_kwargs, less the ``all_modules`` second names."""
    from dynamic_network_architectures.building_blocks.residual_encoders import ResidualEncoder

    with torch.device("meta"):
        enc = create_encoder(name)
        ref = ResidualEncoder(**nnunet_arch_kwargs(**PRESETS[name]), return_skips=True)
    assert sum(p.numel() for p in enc.parameters()) == sum(p.numel() for p in ref.parameters()) == params
    want = {k: tuple(v.shape) for k, v in ref.state_dict().items() if ".all_modules." not in k}
    assert {k: tuple(v.shape) for k, v in enc.state_dict().items()} == want
    n = len(PRESETS[name]["features"])
    assert enc.strides == [2 ** i for i in range(n)] and enc.channels == list(PRESETS[name]["features"])
    assert enc.family == "resenc" and enc.first_conv == "stem.convs.0.conv"


@pytest.fixture(scope="module")
def hippo(real_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    from pipeline.config import PrepConfig
    from pipeline.job import build
    from pipeline.sources.msd import scan_msd

    root = tmp_path_factory.mktemp("resenc")
    found, _ = scan_msd(real_dir / "msd")
    store = str(root / "store")
    assert build(found, store, PrepConfig(chunks=(16, 16, 16)), workers=0, progress=False,
                 log=lambda s: None).failed == []
    return {"store": store, "root": root, "images": real_dir / "msd" / "Task04_Hippocampus" / "imagesTr"}


@pytest.fixture(scope="module")
def pretrained(tiny_store: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """resenc_tiny pretrained with Med3D's multi-branch scheme on the two domains of the tiny store."""
    steps = 4
    assert {domain_for_step(0, s, ("alpha", "beta"), (1, 1)) for s in range(steps)} == {"alpha", "beta"}
    run = tmp_path_factory.mktemp("resenc_pre") / "run"
    res = CliRunner().invoke(main, ["pretrain", tiny_store, "--out", str(run), "--encoder", "resenc_tiny",
                                    "--patch", "32", "--steps", str(steps), "--batch", "2", "--domain-sampling",
                                    "uniform", *FAST])
    assert res.exit_code == 0, res.output
    return run


def test_pretrain_trains_the_encoder_and_one_branch_per_domain(pretrained: Path) -> None:
    ckpt = load_checkpoint(pretrained / "checkpoint.pt")
    assert ckpt["config"]["encoder"] == "resenc_tiny"
    model = ckpt["model"]
    # one 1×1×1 branch per domain on the last stage (80 channels), 2 and 3 classes
    assert model["head.branches.alpha.weight"].shape == (2, 80, 1, 1, 1)
    assert model["head.branches.beta.weight"].shape == (3, 80, 1, 1, 1)
    assert not any(".all_modules." in k for k in model)
    rows = [json.loads(line) for line in (pretrained / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r.get("kind") == "train"]
    assert len(train) == 4 and all(np.isfinite(r["loss"]) for r in train)


def test_resenc_finetunes_seg_then_evaluates_and_predicts(pretrained: Path, hippo: dict, tmp_path: Path) -> None:
    run = tmp_path / "seg"
    # lr 1e-9: after the steps the encoder still holds the pretrained weights, so the test sees they were loaded
    res = CliRunner().invoke(main, ["finetune", "seg", hippo["store"], "--out", str(run), "--init", str(pretrained),
                                    "--decoder", "unet", "--patch", "32", "--steps", "2", "--lr", "1e-9", *FAST])
    assert res.exit_code == 0, res.output
    spec = json.loads((run / "finetune.json").read_text())
    assert spec["encoder"] == "resenc_tiny" and spec["init_kind"] == "med3d"
    ckpt = load_checkpoint(run / "checkpoint.pt")
    pre = load_checkpoint(pretrained / "checkpoint.pt")["model"]
    key = "encoder.stem.convs.0.conv.weight"
    torch.testing.assert_close(ckpt["model"][key], pre[key], atol=1e-6, rtol=0)
    # the U-Net decoder reads every stage: one level per stride 16 ... 1, the stride-1 stage joined by the image
    assert ckpt["kind"] == "seg_unet" and ckpt["model"]["head.block1.0.weight"].shape == (32, 32 + 8 + 1, 3, 3, 3)
    assert "head.fuse16.0.weight" in ckpt["model"]

    res = CliRunner().invoke(main, ["evaluate", str(run), hippo["store"], "--no-progress"])
    assert res.exit_code == 0, res.output
    summary = json.loads((run / "eval" / "val" / "summary.json").read_text())
    assert summary["metric_name"] == "dice" and 0.0 <= summary["metric"] <= 1.0

    scan = hippo["images"] / "hippocampus_001.nii.gz"
    res = CliRunner().invoke(main, ["predict", str(run), str(scan), "--out", str(tmp_path / "pred")])
    assert res.exit_code == 0, res.output
    [mask] = sorted((tmp_path / "pred").glob("*.nii.gz"))
    img, out = sitk.ReadImage(str(scan)), sitk.ReadImage(str(mask))
    assert out.GetSize() == img.GetSize() and out.GetSpacing() == pytest.approx(img.GetSpacing())
    assert set(np.unique(sitk.GetArrayFromImage(out))) <= {0, 1, 2}

    # ONNX: the exporter's probes agree with torch at multiples of the encoder's stride, which it records
    res = CliRunner().invoke(main, ["export", str(run), "--format", "onnx", str(tmp_path / "seg.onnx")])
    assert res.exit_code == 0, res.output
    import onnx

    meta = json.loads({p.key: p.value for p in onnx.load(str(tmp_path / "seg.onnx")).metadata_props}["med3d"])
    assert (meta["input"]["spatial"], meta["input"]["spatial_multiple"]) == ("multiple", 16), meta["input"]

    res = CliRunner().invoke(main, ["compare", str(run), "--out", str(tmp_path / "cmp")])
    assert res.exit_code == 0, res.output
    assert "| seg | resenc_tiny | dice |" in (tmp_path / "cmp" / "compare.md").read_text()


def test_resenc_finetunes_classify_from_scratch(hippo: dict, tmp_path: Path) -> None:
    table = tmp_path / "labels.csv"
    pd.DataFrame({"case": IDS, "class": ["a", "b", "a", "b"]}).to_csv(table, index=False)
    run = tmp_path / "cls"
    res = CliRunner().invoke(main, ["finetune", "classify", hippo["store"], "--labels", str(table), "--out", str(run),
                                    "--encoder", "resenc_tiny", "--shape", "32,32,32", "--steps", "2", *FAST])
    assert res.exit_code == 0, res.output
    ckpt = load_checkpoint(run / "checkpoint.pt")
    assert ckpt["config"]["encoder"] == "resenc_tiny" and ckpt["model"]["head.fc.weight"].shape == (2, 80)
    res = CliRunner().invoke(main, ["evaluate", str(run), hippo["store"], "--no-progress"])
    assert res.exit_code == 0, res.output
    summary = json.loads(next((run / "eval").glob("*/summary.json")).read_text())
    assert 0.0 <= summary["metric"] <= 1.0


def test_resenc_weights_refuse_medicalnet_export_and_go_to_safetensors(pretrained: Path, tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["export", str(pretrained), str(tmp_path / "x.pth"), "--no-card"])
    assert res.exit_code != 0 and "MedicalNet's format holds its 3D ResNets only" in res.output
    assert not (tmp_path / "x.pth").exists()
    res = CliRunner().invoke(main, ["export", str(pretrained), "--format", "safetensors", str(tmp_path / "hub")])
    assert res.exit_code == 0, res.output
    from safetensors import safe_open
    from safetensors.torch import load_file

    state = load_file(tmp_path / "hub" / "model.safetensors")
    enc = create_encoder("resenc_tiny")
    enc.load_state_dict(state)  # strict: every tensor, once
    with safe_open(tmp_path / "hub" / "model.safetensors", framework="pt") as f:
        arch = json.loads(f.metadata()["med3d_card"])["architecture"]
    assert (arch["encoder"], arch["family"], arch["features"], arch["blocks"]) == \
        ("resenc_tiny", "resenc", [8, 16, 32, 64, 80], [1, 1, 1, 1, 1])
    assert [s["output_stride"] for s in arch["stages"]] == [1, 2, 4, 8, 16]
    readme = (tmp_path / "hub" / "README.md").read_text()
    assert "A 3D resenc-family encoder `resenc_tiny`" in readme and "MedicalNet" not in readme.split("## Use")[1]


# --- nnU-Net weight exchange: export --format nnunet, and --init from nnU-Net's checkpoint ------------------------

def _plans(folder: Path, features: list[int], strides: list[list[int]] | None = None,
           blocks: list[int] | None = None) -> Path:
    """A plans file with the key names nnU-Net's ResEnc planner writes, and the dataset.json nnU-Net copies beside
    it (one MR channel, the hippocampus labels)."""
    n = len(features)
    arch = {"network_class_name": "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet",
            "arch_kwargs": {"n_stages": n, "features_per_stage": features,
                            "conv_op": "torch.nn.modules.conv.Conv3d", "kernel_sizes": [[3, 3, 3]] * n,
                            "strides": strides or [[1, 1, 1]] + [[2, 2, 2]] * (n - 1),
                            "n_blocks_per_stage": blocks or [1] * n, "n_conv_per_stage_decoder": [1] * (n - 1),
                            "conv_bias": True, "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                            "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None,
                            "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
                            "nonlin_kwargs": {"inplace": True}},
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}
    plans = {"dataset_name": "Dataset004_Hippocampus", "plans_name": "nnUNetResEncUNetMPlans",
             "configurations": {"3d_fullres": {"data_identifier": "nnUNetPlans_3d_fullres", "batch_size": 2,
                                               "patch_size": [32, 32, 32], "spacing": [1.0, 1.0, 1.0],
                                               "architecture": arch},
                                "3d_cascade_fullres": {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"}}}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dataset.json").write_text(json.dumps({"channel_names": {"0": "MRI"}, "file_ending": ".nii.gz",
                                                     "labels": {"background": 0, "Anterior": 1, "Posterior": 2}}))
    path = folder / "nnUNetResEncUNetMPlans.json"
    path.write_text(json.dumps(plans))
    return path


def _nnunet_judge(weights_file: Path, plans: Path, num_classes: int = 3) -> torch.nn.Module:
    """What nnU-Net does with -pretrained_weights, after its own code: the network built from the plans (class and
    kwargs located by name), every key but the segmentation layers required with its shape, then all loaded."""
    import pydoc

    arch = json.loads(plans.read_text())["configurations"]["3d_fullres"]["architecture"]
    kwargs = dict(arch["arch_kwargs"])
    for key in arch["_kw_requires_import"]:
        if kwargs[key] is not None:
            kwargs[key] = pydoc.locate(kwargs[key])
    net = pydoc.locate(arch["network_class_name"])(input_channels=1, num_classes=num_classes, deep_supervision=True,
                                                   **kwargs)
    net.apply(net.initialize)
    pretrained = torch.load(weights_file, weights_only=True)["network_weights"]
    model = net.state_dict()
    for key in model:
        if ".seg_layers." not in key:
            assert key in pretrained and model[key].shape == pretrained[key].shape, key
    model.update({k: v for k, v in pretrained.items() if k in model and ".seg_layers." not in k})
    net.load_state_dict(model)
    return net


def _export_and_load(pretrained: Path, tmp_path: Path) -> Path:
    """Export, judge as nnU-Net does, and write what nnU-Net's own training would leave: checkpoint_final.pth."""
    plans = _plans(tmp_path / "Dataset004_Hippocampus", [8, 16, 32, 64, 80])
    out = tmp_path / "resenc_med3d.pth"
    res = CliRunner().invoke(main, ["export", str(pretrained), "--format", "nnunet", "--plans", str(plans), str(out)])
    assert res.exit_code == 0, res.output
    assert "the decoder as nnU-Net initialises it" in res.output and "-pretrained_weights" in res.output
    net = _nnunet_judge(out, plans).eval()
    ours = load_checkpoint(pretrained / "checkpoint.pt")["model"]
    got = net.state_dict()
    for key in ("stem.convs.0.conv.weight", "stages.4.blocks.0.conv2.norm.bias"):
        torch.testing.assert_close(got[f"encoder.{key}"], ours[f"encoder.{key}"])
    # nnU-Net's second names of the same tensors, and the decoder's reference to the encoder, carry them too
    torch.testing.assert_close(got["encoder.stem.convs.0.all_modules.0.weight"],
                               ours["encoder.stem.convs.0.conv.weight"])
    torch.testing.assert_close(got["decoder.encoder.stem.convs.0.conv.weight"],
                               ours["encoder.stem.convs.0.conv.weight"])
    with torch.no_grad():
        outputs = net(torch.randn(1, 1, 32, 32, 32))
    assert outputs[0].shape == (1, 3, 32, 32, 32) and torch.isfinite(outputs[0]).all()
    # what nnU-Net's trainer saves: numpy scalars in its log, a torch.device in its init args
    ckpt = {"network_weights": net.state_dict(), "optimizer_state": {"state": {}, "param_groups": []},
            "logging": {"mean_fg_dice": [np.float64(0.5)], "ema_fg_dice": [np.float32(0.4)]},
            "_best_ema": np.float64(0.4), "current_epoch": 3, "trainer_name": "nnUNetTrainer",
            "init_args": {"configuration": "3d_fullres", "fold": 0, "device": torch.device("cpu")},
            "inference_allowed_mirroring_axes": (0, 1, 2)}
    final = tmp_path / "fold_0" / "checkpoint_final.pth"
    final.parent.mkdir()
    torch.save(ckpt, final)
    return final


def test_export_nnunet_then_finetune_from_nnunets_checkpoint(pretrained: Path, hippo: dict, tmp_path: Path) -> None:
    """The round trip: our encoder into nnU-Net's network (judged as nnU-Net judges it), and nnU-Net's
    checkpoint_final.pth back into a Med3D fine-tuning (read with weights_only)."""
    final = _export_and_load(pretrained, tmp_path)
    run = tmp_path / "from_nnunet"
    res = CliRunner().invoke(main, ["finetune", "seg", hippo["store"], "--out", str(run), "--init", str(final),
                                    "--decoder", "unet", "--patch", "32", "--steps", "1", "--lr", "1e-9", *FAST])
    assert res.exit_code == 0, res.output
    assert "nnunet format" in res.output and "does not record which scans" in res.output
    spec = json.loads((run / "finetune.json").read_text())
    assert spec["encoder"] == "resenc_tiny" and spec["init_kind"] == "nnunet"
    key = "encoder.stem.convs.0.conv.weight"
    theirs = torch.load(final, weights_only=False)["network_weights"][key]
    torch.testing.assert_close(load_checkpoint(run / "checkpoint.pt")["model"][key], theirs, atol=1e-6, rtol=0)


def test_export_nnunet_refuses_plans_of_other_widths_naming_the_entry(pretrained: Path, tmp_path: Path) -> None:
    plans = _plans(tmp_path / "wide", [16, 32, 64, 128, 160])
    out = tmp_path / "x.pth"
    res = CliRunner().invoke(main, ["export", str(pretrained), "--format", "nnunet", "--plans", str(plans), str(out)])
    assert res.exit_code == 1 and not out.exists()
    assert ("configurations.3d_fullres.architecture.arch_kwargs.features_per_stage is [16, 32, 64, 128, 160], the "
            "encoder's [8, 16, 32, 64, 80]") in res.output
    assert "Pretrain the encoder these plans build: --encoder resenc_f16-32-64-128-160_b1-1-1-1-1" in res.output
    # other strides keep the shapes: exported, and said
    aniso = _plans(tmp_path / "aniso", [8, 16, 32, 64, 80], [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]])
    res = CliRunner().invoke(main, ["export", str(pretrained), "--format", "nnunet", "--plans", str(aniso), str(out)])
    assert res.exit_code == 0 and "strides" in res.output and "differ" in res.output, res.output
    res = CliRunner().invoke(main, ["export", str(pretrained), "--format", "nnunet", str(out)])
    assert res.exit_code == 2 and "--format nnunet needs --plans" in res.output
    res = CliRunner().invoke(main, ["export", str(pretrained), "--format", "nnunet", "--plans", str(plans),
                                    "--configuration", "2d", str(out)])
    assert res.exit_code == 1 and "no configuration '2d'" in res.output and "3d_fullres, 3d_cascade_fullres" in \
        res.output


REAL_PLANS = Path(__file__).resolve().parents[1] / "data" / "nnunet_hippocampus_resencm_plans.json"


def test_real_hippocampus_plans_name_a_parametric_encoder_with_nnunets_tensors() -> None:
    """nnU-Net's ResEnc M planner gives the MSD hippocampus a 4-stage encoder (32..256 channels, 1/3/4/6 blocks),
    none of the presets: the plans name it, and that encoder has exactly the tensors of nnU-Net's."""
    from dynamic_network_architectures.building_blocks.residual_encoders import ResidualEncoder

    from model.export.nnunet_format import encoder_for_plans, plans_architecture

    name = encoder_for_plans(REAL_PLANS)
    assert name == "resenc_f32-64-128-256_b1-3-4-6"
    kw = plans_architecture(REAL_PLANS)["arch_kwargs"]
    with torch.device("meta"):
        enc = create_encoder(name)
        ref = ResidualEncoder(**nnunet_arch_kwargs(kw["features_per_stage"], kw["n_blocks_per_stage"],
                                                   [s[0] for s in kw["strides"]]), return_skips=True)
    want = {k: tuple(v.shape) for k, v in ref.state_dict().items() if ".all_modules." not in k}
    assert {k: tuple(v.shape) for k, v in enc.state_dict().items()} == want
    assert sum(p.numel() for p in enc.parameters()) == 24_388_736
    assert enc.channels == [32, 64, 128, 256] and enc.strides == [1, 2, 4, 8]


@pytest.mark.parametrize("name, message", [
    ("resenc_f8-16_b1", "2 stage widths but 1 block counts"),
    ("resenc_f0-16_b1-1", "widths from 1 to 4096 and block counts from 1 to 64"),
    ("resenc_f1000000000_b1", "widths from 1 to 4096"),
    ("resenc_fx_b1", "nor a parametric name such as resenc_f32-64-128-256_b1-3-4-6"),
])
def test_bad_parametric_names_are_one_line(name: str, message: str, tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["pretrain", str(tmp_path), "--out", str(tmp_path / "r"), "--encoder", name])
    assert res.exit_code == 2 and message in res.output and not (tmp_path / "r").exists(), res.output


def test_pretrain_encoder_from_plans_then_export_takes_them(tiny_store: str, tmp_path: Path) -> None:
    """--encoder-from-plans pretrains the encoder a plans file builds; export --format nnunet takes those plans."""
    plans = _plans(tmp_path / "Dataset009_Tiny", [8, 16, 32, 64], blocks=[1, 2, 1, 1])
    run = tmp_path / "run"
    res = CliRunner().invoke(main, ["pretrain", tiny_store, "--out", str(run), "--encoder-from-plans", str(plans),
                                    "--patch", "32", "--steps", "1", "--batch", "2", *FAST])
    assert res.exit_code == 0, res.output
    assert "encoder resenc_f8-16-32-64_b1-2-1-1: the residual encoder of" in res.output
    assert load_checkpoint(run / "checkpoint.pt")["config"]["encoder"] == "resenc_f8-16-32-64_b1-2-1-1"
    out = tmp_path / "w.pth"
    res = CliRunner().invoke(main, ["export", str(run), "--format", "nnunet", "--plans", str(plans), str(out)])
    assert res.exit_code == 0, res.output
    net = _nnunet_judge(out, plans)
    torch.testing.assert_close(net.state_dict()["encoder.stages.1.blocks.1.conv2.conv.weight"],
                               load_checkpoint(run / "checkpoint.pt")["model"]["encoder.stages.1.blocks.1.conv2.conv.weight"])
    res = CliRunner().invoke(main, ["pretrain", tiny_store, "--out", str(tmp_path / "r2"), "--encoder-from-plans",
                                    str(plans), "--encoder", "resenc_tiny"])
    assert res.exit_code == 2 and "not both" in res.output


@pytest.mark.slow
def test_nnunet_own_loader_takes_the_export(pretrained: Path, tmp_path: Path) -> None:
    """With nnU-Net itself installed (`pip install nnunetv2`, not part of the test install: docs/DECISIONS.md):
    its network from the plans and its load_pretrained_weights, one forward pass."""
    pytest.importorskip("nnunetv2")
    from nnunetv2.run.load_pretrained_weights import load_pretrained_weights
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    plans = _plans(tmp_path / "Dataset004_Hippocampus", [8, 16, 32, 64, 80])
    out = tmp_path / "resenc_med3d.pth"
    res = CliRunner().invoke(main, ["export", str(pretrained), "--format", "nnunet", "--plans", str(plans), str(out)])
    assert res.exit_code == 0, res.output
    arch = json.loads(plans.read_text())["configurations"]["3d_fullres"]["architecture"]
    net = get_network_from_plans(arch["network_class_name"], arch["arch_kwargs"], arch["_kw_requires_import"], 1, 3,
                                 allow_init=True, deep_supervision=True)
    load_pretrained_weights(net, str(out))
    with torch.no_grad():
        assert net.eval()(torch.randn(1, 1, 32, 32, 32))[0].shape == (1, 3, 32, 32, 32)


def _crafted(folder: Path, change) -> Path:
    plans = json.loads(REAL_PLANS.read_text())
    change(plans["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"], plans)
    folder.mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(plans))
    return folder / "plans.json"


CRAFTED = {  # a plans file is JSON anyone hands over: what nnU-Net would import, call or allocate from it
    "code": (lambda kw, p: kw.update(nonlin="subprocess.run", nonlin_kwargs={"args": ["touch", "PWNED"]}),
             "arch_kwargs.nonlin is 'subprocess.run': only torch.nn.ELU, GELU"),
    "conv": (lambda kw, p: kw.update(conv_op="os.system"), "arch_kwargs.conv_op is 'os.system'"),
    "kwargs": (lambda kw, p: kw.update(norm_op_kwargs={"eps": 1e-5, "device": "meta"}), "'device' is not one of"),
    "huge": (lambda kw, p: kw.update(features_per_stage=[32, 64, 128, 10**9]), "not 4 integers from 1 to 4096"),
    "blocks": (lambda kw, p: kw.update(n_blocks_per_stage=[1, 3, 4, 10**7]), "not 4 integers from 1 to 64"),
    "nan": (lambda kw, p: kw.update(features_per_stage=[32, 64, 128, float("nan")]), "features_per_stage is [32, 64"),
    "stages": (lambda kw, p: kw.update(n_stages=10**6), "n_stages is 1000000: not a stage count from 1 to 8"),
    "kernel": (lambda kw, p: kw.update(kernel_sizes=[[3, 3, 3]] * 3 + [[10**6, 3, 3]]), "kernel_sizes is"),
    "cycle": (lambda kw, p: p["configurations"]["3d_fullres"].update(inherits_from="3d_fullres"),
              "inherits_from goes round in a circle (3d_fullres -> 3d_fullres)"),
}


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_crafted_plans_are_refused_before_anything_is_built(case: str, pretrained: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Each refused in one line naming the entry, by export and by pretrain --encoder-from-plans; nothing runs,
    nothing is written (before, nonlin=subprocess.run ran its nonlin_kwargs' command while the network was built)."""
    monkeypatch.chdir(tmp_path)
    change, message = CRAFTED[case]
    plans = _crafted(tmp_path / "p", change)
    out = tmp_path / "x.pth"
    res = CliRunner().invoke(main, ["export", str(pretrained), "--format", "nnunet", "--plans", str(plans), str(out)])
    assert res.exit_code == 1 and message in res.output and f"{plans}: configurations." in res.output, res.output
    assert len(res.output.strip().splitlines()) <= 2 and not out.exists() and not (tmp_path / "PWNED").exists()
    res = CliRunner().invoke(main, ["pretrain", str(tmp_path), "--out", str(tmp_path / "r"), "--encoder-from-plans",
                                    str(plans)])
    assert res.exit_code == 2 and message in res.output and not (tmp_path / "r").exists(), res.output


@pytest.mark.parametrize("change, message", [
    (lambda kw, arch: kw.update(conv_op=["torch.nn.Conv3d"]), "arch_kwargs.conv_op is ['torch.nn.Conv3d']"),
    (lambda kw, arch: arch.update(_kw_requires_import=[["nonlin"]]), "_kw_requires_import is [['nonlin']]"),
])
def test_plans_with_lists_where_names_belong_are_one_line(change, message, tmp_path: Path) -> None:
    """Unhashable values where a class name belongs were a TypeError traceback (set/frozenset membership)."""
    plans = _crafted(tmp_path / "p", lambda kw, p: change(kw, p["configurations"]["3d_fullres"]["architecture"]))
    res = CliRunner().invoke(main, ["pretrain", str(tmp_path), "--out", str(tmp_path / "r"), "--encoder-from-plans",
                                    str(plans)])
    assert res.exit_code == 2 and message in res.output and not (tmp_path / "r").exists(), res.output


def test_real_plans_take_an_encoder_pretrained_from_them(tiny_store: str, hippo: dict, tmp_path: Path) -> None:
    """The whole way with the plans nnU-Net 2.8.1's planner wrote for the real hippocampus: pretrain the encoder
    they name, export against them, judge the file by nnU-Net's loading rule, one forward pass on a real scan at
    the plans' patch size (40x56x40) with the encoder's weights inside."""
    folder = tmp_path / "Dataset004_Hippocampus"
    folder.mkdir()
    plans = folder / "nnUNetResEncUNetMPlans.json"
    plans.write_text(REAL_PLANS.read_text())
    (folder / "dataset.json").write_text(json.dumps({"channel_names": {"0": "MRI"}, "file_ending": ".nii.gz",
                                                     "labels": {"background": 0, "Anterior": 1, "Posterior": 2}}))
    run = tmp_path / "run"
    res = CliRunner().invoke(main, ["pretrain", tiny_store, "--out", str(run), "--encoder-from-plans", str(plans),
                                    "--patch", "32", "--steps", "1", "--batch", "2", *FAST])
    assert res.exit_code == 0, res.output
    out = tmp_path / "resenc_med3d.pth"
    res = CliRunner().invoke(main, ["export", str(run), "--format", "nnunet", "--plans", str(plans), str(out)])
    assert res.exit_code == 0 and "resenc_f32-64-128-256_b1-3-4-6" in res.output, res.output
    net = _nnunet_judge(out, plans).eval()
    key = "encoder.stages.3.blocks.5.conv2.conv.weight"
    torch.testing.assert_close(net.state_dict()[key], load_checkpoint(run / "checkpoint.pt")["model"][key])
    image = sitk.GetArrayFromImage(sitk.ReadImage(str(hippo["images"] / "hippocampus_001.nii.gz"))).astype(np.float32)
    patch = np.zeros((40, 56, 40), np.float32)
    z, y, x = (min(a, b) for a, b in zip(image.shape, patch.shape))
    patch[:z, :y, :x] = (image[:z, :y, :x] - image.mean()) / image.std()
    with torch.no_grad():
        logits = net(torch.from_numpy(patch)[None, None])[0]
    assert logits.shape == (1, 3, 40, 56, 40) and torch.isfinite(logits).all()
