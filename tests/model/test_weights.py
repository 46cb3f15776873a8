"""Strict weight import/export: MedicalNet, Kinetics and Med3D checkpoints, errors that name the keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from model.nets.heads import Med3DPretrainNet, MultiBranchHead
from model.nets.resnet import ResNet3D, create_encoder
from model.nets.weights import (
    LoadReport,
    WeightsMismatchError,
    detect_depth,
    encoder_state_for_export,
    export_medicalnet,
    load_encoder_weights,
)

KEYS_JSON = Path(__file__).resolve().parents[1] / "data" / "medicalnet_checkpoint_keys.json"


@pytest.fixture(scope="module")
def medicalnet_keys() -> dict:
    if not KEYS_JSON.is_file():
        pytest.fail(f"MedicalNet key list not found at {KEYS_JSON} (it ships with the tests: tests/data/README.md)")
    return json.loads(KEYS_JSON.read_text())


def trained_like(name: str, seed: int, in_chans: int = 1) -> ResNet3D:
    """An encoder with random weights and non-trivial BN statistics, so a round trip proves every tensor."""
    torch.manual_seed(seed)
    enc = create_encoder(name, in_chans=in_chans)
    with torch.no_grad():
        for mod in enc.modules():
            if isinstance(mod, torch.nn.BatchNorm3d):
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.normal_()
                mod.running_mean.normal_()
                mod.running_var.uniform_(0.5, 2.0)
                mod.num_batches_tracked.fill_(int(torch.randint(1, 1000, ())))
    return enc


def assert_same(a: ResNet3D, b: ResNet3D) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_export_reimport_bit_exact(tmp_path: Path, medicalnet_keys: dict) -> None:
    src = trained_like("resnet10", seed=1)
    path = export_medicalnet(src, tmp_path / "out" / "resnet_10.pth")
    assert path.is_file() and list(path.parent.iterdir()) == [path]  # no temporary file left behind
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert list(raw) == ["state_dict"]
    assert {k: list(v.shape) for k, v in raw["state_dict"].items()} == medicalnet_keys["resnet_10"]["keys"]

    dst = trained_like("resnet10", seed=2)
    report = load_encoder_weights(dst, path)
    assert_same(src, dst)
    assert report.source_format == "medicalnet"
    assert report.stripped_prefix == "module."
    assert report.loaded == 72 and report.dropped == () and report.adapted == () and report.filled == ()
    assert report.source == str(path)
    text = str(report)
    assert "72 tensors into resnet10" in text and "'module.'" in text and "medicalnet" in text


def test_encoder_state_for_export_is_a_detached_copy() -> None:
    enc = trained_like("resnet10", seed=3)
    state = encoder_state_for_export(enc)
    assert set(state) == {"module." + k for k in enc.state_dict()}
    state["module.conv1.weight"].zero_()
    assert enc.conv1.weight.abs().sum() > 0


def test_medicalnet_checkpoint_with_segmentation_head() -> None:
    src = trained_like("resnet10", seed=4)
    state = encoder_state_for_export(src)
    state["module.conv_seg.0.weight"] = torch.zeros(32, 512, 3, 3, 3)
    state["module.conv_seg.0.bias"] = torch.zeros(32)
    dst = create_encoder("resnet10")
    report = load_encoder_weights(dst, {"state_dict": state})
    assert_same(src, dst)
    assert report.dropped == ("conv_seg.0.bias", "conv_seg.0.weight")
    assert "dropped 2 non-encoder keys" in str(report)


def test_bare_state_dict_without_prefix() -> None:
    src = trained_like("resnet10", seed=5)
    dst = create_encoder("resnet10")
    report = load_encoder_weights(dst, src.state_dict())
    assert_same(src, dst)
    assert (report.source_format, report.stripped_prefix, report.source) == ("state_dict", "", "<dict>")
    assert "every key matched exactly" in str(report)


def kinetics_checkpoint(src3: ResNet3D, with_counters: bool = True) -> dict:
    state = {"module." + k: v.clone() for k, v in src3.state_dict().items()
             if with_counters or not k.endswith("num_batches_tracked")}
    state["module.fc.weight"] = torch.randn(400, src3.out_channels)
    state["module.fc.bias"] = torch.randn(400)
    return {"epoch": 200, "arch": "resnet-18", "state_dict": state, "optimizer": {"state": {}, "param_groups": []}}


def test_kinetics_conv1_summed_and_fc_dropped(tmp_path: Path) -> None:
    src3 = trained_like("resnet18", seed=6, in_chans=3)
    torch.save(kinetics_checkpoint(src3), tmp_path / "resnet-18-kinetics.pth")
    dst = create_encoder("resnet18")
    report = load_encoder_weights(dst, tmp_path / "resnet-18-kinetics.pth")
    assert report.source_format == "kinetics"
    assert report.adapted == ("conv1.weight",)
    assert report.dropped == ("fc.bias", "fc.weight")
    assert dst.conv1.weight.shape == (64, 1, 7, 7, 7)
    w3 = src3.conv1.weight
    torch.testing.assert_close(dst.conv1.weight, w3[:, 0:1] + w3[:, 1:2] + w3[:, 2:3], rtol=0, atol=1e-6)
    # Summing keeps the response to a grey (constant) input: the RGB net on a repeated channel.
    x = torch.randn(1, 1, 16, 16, 16)
    torch.testing.assert_close(dst.conv1(x), src3.conv1(x.expand(-1, 3, -1, -1, -1)), rtol=1e-4, atol=1e-4)
    src_state = src3.state_dict()
    for k, v in dst.state_dict().items():
        if k != "conv1.weight":
            assert torch.equal(v, src_state[k]), k
    assert "summed 3 input channels to 1" in str(report)


def test_kinetics_without_batch_counters_fills_them() -> None:
    src3 = trained_like("resnet18", seed=7, in_chans=3)
    dst = trained_like("resnet18", seed=8)
    report = load_encoder_weights(dst, kinetics_checkpoint(src3, with_counters=False))
    assert len(report.filled) == 17 and all(k.endswith("num_batches_tracked") for k in report.filled)
    assert all(int(v) == 0 for k, v in dst.state_dict().items() if k.endswith("num_batches_tracked"))
    assert "predates" in str(report)


def test_in_chans_mismatch_without_adaptation_raises() -> None:
    src3 = trained_like("resnet10", seed=9, in_chans=3)
    dst = create_encoder("resnet10")
    before = dst.conv1.weight.clone()
    with pytest.raises(WeightsMismatchError, match=r"(?s)conv1\.weight \(file \(64, 3, 7, 7, 7\).*adapt_in_chans"):
        load_encoder_weights(dst, src3.state_dict(), adapt_in_chans=False)
    assert torch.equal(dst.conv1.weight, before)  # nothing was loaded


def test_one_channel_into_multichannel_encoder() -> None:
    src = trained_like("resnet10", seed=10)
    dst = create_encoder("resnet10", in_chans=2)
    report = load_encoder_weights(dst, src.state_dict())
    assert report.adapted == ("conv1.weight",)
    torch.testing.assert_close(dst.conv1.weight, src.conv1.weight.repeat(1, 2, 1, 1, 1) / 2)


def test_med3d_checkpoint_takes_encoder(tmp_path: Path) -> None:
    torch.manual_seed(11)
    enc = trained_like("resnet10", seed=11)
    net = Med3DPretrainNet(enc, MultiBranchHead(enc.out_channels, {"heart": 2, "liver": 3}))
    torch.save({"model": net.state_dict(), "step": 5, "config": {"depth": 10}}, tmp_path / "ckpt.pt")
    dst = create_encoder("resnet10")
    report = load_encoder_weights(dst, tmp_path / "ckpt.pt")
    assert_same(enc, dst)
    assert report.source_format == "med3d"
    assert report.dropped == ("head.branches.heart.bias", "head.branches.heart.weight",
                              "head.branches.liver.bias", "head.branches.liver.weight")


def test_ddp_and_compile_prefixes_are_stripped() -> None:
    src = trained_like("resnet10", seed=12)
    state = {"module._orig_mod.encoder." + k: v for k, v in src.state_dict().items()}
    report = load_encoder_weights(create_encoder("resnet10"), {"model": state})
    assert report.stripped_prefix == "module._orig_mod."


def test_resnet18_file_into_resnet10_raises_naming_keys(tmp_path: Path) -> None:
    export_medicalnet(create_encoder("resnet18"), tmp_path / "resnet_18.pth")
    dst = create_encoder("resnet10")
    with pytest.raises(WeightsMismatchError) as err:
        load_encoder_weights(dst, tmp_path / "resnet_18.pth")
    msg = str(err.value)
    assert "resnet_18.pth" in msg
    # resnet10 has 3 type-B shortcuts (conv + 5 BN entries each); resnet18 has 4 more blocks of 12 entries.
    assert "18 missing from the file: layer2.0.downsample.0.weight, layer2.0.downsample.1.bias" in msg
    assert "48 unexpected in the file: layer1.1.bn1.bias" in msg
    assert "(48 in all)" in msg
    assert "shortcut type A vs B: this file looks like resnet18 weights but the encoder is resnet10" in msg


def test_extra_unknown_key_raises() -> None:
    src = trained_like("resnet10", seed=13)
    state = {"module." + k: v for k, v in src.state_dict().items()}
    state["module.attention.weight"] = torch.zeros(3)
    with pytest.raises(WeightsMismatchError, match=r"1 unexpected in the file: attention\.weight"):
        load_encoder_weights(create_encoder("resnet10"), {"state_dict": state})


def test_missing_key_raises() -> None:
    state = create_encoder("resnet10").state_dict()
    del state["layer4.0.bn2.running_var"]
    with pytest.raises(WeightsMismatchError, match=r"1 missing from the file: layer4\.0\.bn2\.running_var"):
        load_encoder_weights(create_encoder("resnet10"), state)


def test_not_a_checkpoint_raises() -> None:
    with pytest.raises(WeightsMismatchError, match="not a recognised checkpoint"):
        load_encoder_weights(create_encoder("resnet10"), {"epoch": 3, "optimizer": {}})
    with pytest.raises(FileNotFoundError):
        load_encoder_weights(create_encoder("resnet10"), "/nonexistent/resnet_10.pth")


def test_detect_depth_on_every_release(medicalnet_keys: dict) -> None:
    for depth, spec in medicalnet_keys.items():
        state = {k: torch.empty(s, device="meta") for k, s in spec["keys"].items()}
        assert detect_depth({"state_dict": state}) == depth.replace("_", "")
    with torch.device("meta"):
        pre = create_encoder("preact_resnet200")
    assert detect_depth(pre.state_dict()) == "preact_resnet200"
    assert detect_depth({"conv1.weight": torch.zeros(3, 3), "x.y": torch.zeros(1)}) == "unknown"


def test_report_is_frozen_and_serializable() -> None:
    report = load_encoder_weights(create_encoder("resnet10"), create_encoder("resnet10").state_dict())
    assert isinstance(report, LoadReport)
    with pytest.raises(AttributeError):
        report.loaded = 0  # type: ignore[misc]
    assert json.loads(json.dumps(report.to_dict()))["loaded"] == 72
