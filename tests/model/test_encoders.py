"""The encoder registry: the interface every family meets, the pretrained-weights table, a plug-in found through
the ``med3d.encoders`` entry point, and the heads, weight loading and card working from the interface alone."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch

from model.nets import weights as weights_module
from model.nets.encoders import ENCODERS, PRETRAINED, Encoder, create_encoder, encoder_names, pretrained_for
from model.nets.transfer import build_transfer_net
from model.nets.weights import WeightsMismatchError, detect_encoder, export_medicalnet, load_encoder_weights


def _meta(name: str, in_chans: int = 1) -> Encoder:
    with torch.device("meta"):
        return create_encoder(name, in_chans=in_chans)


@pytest.mark.parametrize("name", list(ENCODERS))
def test_every_encoder_meets_the_interface(name: str) -> None:
    enc = _meta(name)
    assert isinstance(enc, Encoder) and enc.name == name and enc.family in ("resnet", "resenc")
    assert enc.strides == sorted(enc.strides) and enc.out_channels == enc.channels[-1]
    assert f"{enc.first_conv}.weight" in enc.state_dict()
    arch = enc.architecture()
    assert (arch["encoder"], arch["family"], arch["in_chans"]) == (name, enc.family, 1)
    assert [s["output_stride"] for s in arch["stages"] if "channels" in s] == enc.strides
    x = torch.empty(1, 1, 64, 64, 64, device="meta")
    feats = enc(x)
    assert [tuple(f.shape) for f in feats] == [(1, c, *(3 * (64 // s,))) for c, s in zip(enc.channels, enc.strides)]


@pytest.mark.parametrize("name", ["resnet10", "resenc_tiny"])
def test_forward_on_real_tensors_gives_every_stage(name: str) -> None:
    torch.manual_seed(0)
    enc = create_encoder(name).eval()
    with torch.no_grad():
        feats = enc(torch.randn(1, 1, 32, 32, 32))
        last = enc.forward_features(torch.randn(1, 1, 32, 32, 32))
    assert len(feats) == len(enc.feature_info) and last.shape == feats[-1].shape
    assert all(torch.isfinite(f).all() and f.abs().sum() > 0 for f in feats)


def test_pretrained_table_names_registered_encoders_and_medicalnet_files() -> None:
    names = [w.name for w in PRETRAINED]
    assert len(names) == len(set(names))
    assert all(w.encoder in ENCODERS for w in PRETRAINED)
    assert [w.file for w in pretrained_for("resnet50")] == ["resnet_50.pth", "resnet_50_23dataset.pth",
                                                            "resnet-50-kinetics.pth"]
    assert {w.head for w in pretrained_for("resnet10")} == {("conv_seg.",)}
    # every table entry's first conv is a key of its encoder
    for w in PRETRAINED:
        assert w.first_conv in _meta(w.encoder).state_dict()


def test_unknown_encoder_lists_every_family() -> None:
    with pytest.raises(ValueError, match="unknown encoder 'vit'.*resnet10.*resenc_m"):
        create_encoder("vit")
    assert encoder_names("resenc") == ["resenc_m", "resenc_l", "resenc_tiny"]


def test_unet_decoder_keeps_the_resnet_parameter_names_and_fits_resenc() -> None:
    """Old seg_unet run folders load: the generalized decoder has the same keys and shapes for a ResNet."""
    with torch.device("meta"):
        net = build_transfer_net("seg_unet", "resnet10", 3)
    keys = {k.split(".")[1] for k in net.state_dict() if k.startswith("head.")}
    assert keys == {"fuse8", "up4", "block4", "up2", "block2", "up1", "block1", "classifier"}
    assert net.head.fuse8[0].weight.shape == (256, 128 + 256 + 512, 3, 3, 3)
    assert net.head.block1[0].weight.shape == (32, 32 + 1, 3, 3, 3)
    torch.manual_seed(0)
    net = build_transfer_net("seg_unet", "resenc_tiny", 3).eval()
    assert {k.split(".")[1] for k in net.state_dict() if k.startswith("head.")} == {
        "fuse16", "up8", "block8", "up4", "block4", "up2", "block2", "up1", "block1", "classifier"}
    # widths: 32 per stride doubling, at most 320; stride 1 joins the stride-1 stage (8 channels) and the image
    assert net.head.block1[0].weight.shape == (32, 32 + 8 + 1, 3, 3, 3)
    assert net.head.fuse16[0].weight.shape == (320, 80, 3, 3, 3)
    with torch.no_grad():
        assert net(torch.randn(1, 1, 32, 48, 32)).shape == (1, 3, 32, 48, 32)
        with pytest.raises(ValueError, match=r"input size \(32, 40, 32\) is not a multiple of 16"):
            net(torch.randn(1, 1, 32, 40, 32))
    cls = build_transfer_net("nodule", "resenc_tiny", 2).eval()
    with torch.no_grad():
        assert cls(torch.randn(2, 1, 32, 32, 32)).shape == (2, 2)


def test_medicalnet_import_and_export_refuse_other_families(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="resenc family: MedicalNet's format holds its 3D ResNets only.*safetensors"):
        export_medicalnet(create_encoder("resenc_tiny"), tmp_path / "x.pth")
    assert not (tmp_path / "x.pth").exists()
    medicalnet = {"state_dict": {f"module.{k}": v for k, v in create_encoder("resnet10").state_dict().items()}}
    with pytest.raises(WeightsMismatchError, match="a medicalnet file: those hold 3D ResNets only, and encoder "
                                                   "resenc_tiny is of the resenc family"):
        load_encoder_weights(create_encoder("resenc_tiny"), medicalnet)


_PLUGIN = '''
"""A plug-in encoder family in one file: two 3D conv stages."""
import torch
from torch import nn

from model.nets.encoders import Encoder


class TwoStage(Encoder):
    def __init__(self, in_chans=1):
        super().__init__()
        self.name, self.family, self.in_chans, self.first_conv = "plug_twostage", "plug", in_chans, "a"
        self.a = nn.Conv3d(in_chans, 4, 3, padding=1)
        self.b = nn.Conv3d(4, 6, 3, stride=2, padding=1)
        self.feature_info = [{"module": "a", "channels": 4, "stride": 1}, {"module": "b", "channels": 6, "stride": 2}]

    def forward(self, x):
        a = torch.relu(self.a(x))
        return [a, torch.relu(self.b(a))]


def build(in_chans=1):
    return TwoStage(in_chans)
'''


@pytest.fixture()
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """An installed distribution (a .dist-info on sys.path) whose entry point adds ``plug_twostage``."""
    (tmp_path / "med3d_plug.py").write_text(textwrap.dedent(_PLUGIN))
    info = tmp_path / "med3d_plug-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: med3d-plug\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[med3d.encoders]\nplug_twostage = med3d_plug:build\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    ENCODERS.reload_entry_points()
    yield "plug_twostage"
    ENCODERS._builders.pop("plug_twostage", None)


def test_an_entry_point_encoder_is_registered_and_runs_every_head(plugin: str, tmp_path: Path) -> None:
    assert plugin in ENCODERS and plugin in encoder_names("plug")
    torch.manual_seed(0)
    for kind, shape in (("seg_unet", (1, 2, 8, 8, 8)), ("seg_med3d", (1, 2, 8, 8, 8)), ("nodule", (1, 2))):
        net = build_transfer_net(kind, plugin, 2).eval()
        with torch.no_grad():
            assert net(torch.randn(1, 1, 8, 8, 8)).shape == shape
    # weights of the plug-in go through the strict loader, the first conv adapted from its own key
    donor = create_encoder(plugin, in_chans=3)
    enc = create_encoder(plugin)
    report = load_encoder_weights(enc, {"model": {f"encoder.{k}": v for k, v in donor.state_dict().items()}})
    assert report.adapted == ("a.weight",) and report.loaded == 4
    torch.testing.assert_close(enc.a.weight, donor.a.weight.sum(dim=1, keepdim=True))
    assert detect_encoder(donor.state_dict()) == plugin


def _nnunet_checkpoint(enc: Encoder) -> dict:
    """What nnU-Net's checkpoint_final.pth holds for a ResEnc network: every encoder tensor under its name and
    its ``all_modules`` alias, a decoder (with its own reference to the encoder), no wrapper."""
    state = {f"encoder.{k}": v.clone() for k, v in enc.state_dict().items()}
    state |= {f"encoder.{a}": state[f"encoder.{c}"] for a, c in enc.alias_keys().items()}
    state |= {f"decoder.encoder.{k[len('encoder.'):]}": v for k, v in state.items()}
    state["decoder.seg_layers.0.weight"] = torch.zeros(2, 8, 1, 1, 1)
    return {"network_weights": state, "trainer_name": "nnUNetTrainer", "init_args": {}, "current_epoch": 1}


def test_resenc_loads_an_nnunet_checkpoint_strictly() -> None:
    torch.manual_seed(0)
    donor = create_encoder("resenc_tiny")
    enc = create_encoder("resenc_tiny")
    ckpt = _nnunet_checkpoint(donor)
    report = load_encoder_weights(enc, ckpt)
    assert report.source_format == "nnunet" and report.loaded == len(enc.state_dict()) == 56
    # the all_modules aliases (every conv and norm tensor has one) and the whole decoder are dropped, each named
    assert sum(".all_modules." in k and not k.startswith("decoder.") for k in report.dropped) == 56
    assert "decoder.seg_layers.0.weight" in report.dropped
    for k, v in donor.state_dict().items():
        assert torch.equal(enc.state_dict()[k], v), k
    assert detect_encoder(ckpt) == "resenc_tiny"
    # an alias that disagrees with its twin is not silently dropped
    bad = _nnunet_checkpoint(donor)
    bad["network_weights"]["encoder.stem.convs.0.all_modules.0.weight"] = torch.ones(8, 1, 3, 3, 3)
    with pytest.raises(WeightsMismatchError, match="unexpected in the file: stem.convs.0.all_modules.0.weight"):
        load_encoder_weights(create_encoder("resenc_tiny"), bad)


def test_resenc_of_other_widths_is_refused_naming_the_cause() -> None:
    with torch.device("meta"):
        wide = create_encoder("resenc_m")
    state = dict(wide.state_dict())  # meta tensors: only shapes are read before the refusal
    with pytest.raises(WeightsMismatchError, match="looks like resenc_m weights but the encoder is resenc_tiny"):
        load_encoder_weights(create_encoder("resenc_tiny"), state)
    assert weights_module.detect_depth is detect_encoder  # the former name keeps working


def test_an_entry_point_encoder_runs_pretrain_finetune_evaluate(plugin: str, tiny_store: str, tmp_path: Path) -> None:
    """The plug-in, no file of the project changed, through the command line: pretrain on two domains, fine-tune
    seg with the U-Net decoder from that run, evaluate."""
    import json

    from click.testing import CliRunner

    from model.cli import main

    fast = ["--workers", "0", "--device", "cpu", "--val-every", "0", "--ckpt-every", "0", "--no-progress",
            "--steps", "2", "--patch", "16"]
    pre = tmp_path / "pre"
    res = CliRunner().invoke(main, ["pretrain", tiny_store, "--out", str(pre), "--encoder", plugin, *fast])
    assert res.exit_code == 0, res.output
    run = tmp_path / "seg"
    res = CliRunner().invoke(main, ["finetune", "seg", tiny_store, "--domain", "alpha", "--out", str(run), "--init",
                                    str(pre), "--decoder", "unet", *fast])
    assert res.exit_code == 0, res.output
    assert json.loads((run / "finetune.json").read_text())["encoder"] == plugin
    res = CliRunner().invoke(main, ["evaluate", str(run), tiny_store, "--no-progress"])
    assert res.exit_code == 0, res.output
    summary = json.loads(next((run / "eval").glob("*/summary.json")).read_text())
    assert 0.0 <= summary["metric"] <= 1.0
