"""ResNet3D encoders: MedicalNet key names and shapes for every depth, stride-8 output, shortcut types."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from model.nets.encoders import Encoder, encoder_names
from model.nets.resnet import ENCODERS, ResNet3D, ShortcutA, create_encoder

KEYS_JSON = Path(__file__).resolve().parents[1] / "data" / "medicalnet_checkpoint_keys.json"
DEPTHS = ["resnet_10", "resnet_18", "resnet_34", "resnet_50", "resnet_101", "resnet_152", "resnet_200"]


@pytest.fixture(scope="module")
def medicalnet_keys() -> dict:
    if not KEYS_JSON.is_file():
        pytest.fail(f"MedicalNet key list not found at {KEYS_JSON} (it ships with the tests: tests/data/README.md)")
    return json.loads(KEYS_JSON.read_text())


def meta_encoder(name: str, in_chans: int = 1) -> ResNet3D:
    with torch.device("meta"):
        return create_encoder(name, in_chans=in_chans)


@pytest.mark.parametrize("depth", DEPTHS)
def test_state_dict_equals_medicalnet_release(medicalnet_keys: dict, depth: str) -> None:
    spec = medicalnet_keys[depth]
    enc = meta_encoder(depth.replace("_", ""))
    got = {"module." + k: list(v.shape) for k, v in enc.state_dict().items()}
    assert got == spec["keys"]
    assert list(got) == list(spec["keys"])  # same order too, as torch writes it
    assert enc.shortcut == spec["shortcut"]

    def count(shapes: dict[str, list[int]]) -> int:
        return sum(math.prod(s) for k, s in shapes.items() if not k.endswith("num_batches_tracked"))

    assert count(got) == count(spec["keys"])
    running = sum(math.prod(s) for k, s in spec["keys"].items() if k.endswith(("running_mean", "running_var")))
    assert sum(p.numel() for p in enc.parameters()) == count(spec["keys"]) - running


def test_registry_names_and_attributes() -> None:
    assert list(ENCODERS)[:8] == [
        "resnet10", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnet200", "preact_resnet200"
    ]
    assert encoder_names("resnet") == list(ENCODERS)[:8]
    expect = {"resnet10": (10, "B", 512), "resnet18": (18, "A", 512), "resnet34": (34, "A", 512),
              "resnet50": (50, "B", 2048), "resnet101": (101, "B", 2048), "resnet152": (152, "B", 2048),
              "resnet200": (200, "B", 2048), "preact_resnet200": (200, "B", 2048)}
    for name, (depth, shortcut, out_ch) in expect.items():
        enc = meta_encoder(name)
        assert (enc.name, enc.depth, enc.shortcut, enc.out_channels) == (name, depth, shortcut, out_ch)
        assert [f["module"] for f in enc.feature_info] == ["conv1", "layer1", "layer2", "layer3", "layer4"]
        assert [f["stride"] for f in enc.feature_info] == [2, 4, 8, 8, 8]
        assert enc.feature_info[-1]["channels"] == out_ch


def test_unknown_name_lists_choices() -> None:
    with pytest.raises(ValueError, match="resnet10.*preact_resnet200"):
        create_encoder("resnet11")


def test_in_chans_changes_only_conv1() -> None:
    one, four = meta_encoder("resnet10"), meta_encoder("resnet10", in_chans=4)
    assert four.conv1.weight.shape == (64, 4, 7, 7, 7)
    diff = {k for k, v in one.state_dict().items() if four.state_dict()[k].shape != v.shape}
    assert diff == {"conv1.weight"}


@pytest.mark.parametrize("name", ["resnet10", "resnet18", "resnet50"])
def test_output_stride_8(name: str) -> None:
    torch.manual_seed(0)
    enc = create_encoder(name).eval()
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        feats = enc(x)
        y = enc.forward_features(x)
        assert isinstance(enc, Encoder) and enc.family == "resnet" and enc.first_conv == "conv1"
        assert all(torch.equal(a, b) for a, b in zip(enc.forward_intermediates(x), feats))
    assert y.shape == (1, enc.out_channels, 4, 4, 4)
    assert torch.isfinite(y).all() and y.abs().sum() > 0
    assert torch.equal(feats[-1], y)
    for f, info in zip(feats, enc.feature_info):
        assert f.shape == (1, info["channels"], *(3 * (32 // info["stride"],)))


def test_anisotropic_input_on_meta() -> None:
    enc = meta_encoder("preact_resnet200")
    y = enc.forward_features(torch.empty(2, 1, 16, 40, 64, device="meta"))
    assert y.shape == (2, 2048, 2, 5, 8)


@pytest.mark.parametrize("name", ["resnet18", "resnet34"])
def test_shortcut_a_has_no_parameters(name: str) -> None:
    enc = meta_encoder(name)
    assert not any("downsample" in k for k in enc.state_dict())
    shortcuts = [m for m in enc.modules() if isinstance(m, ShortcutA)]
    assert len(shortcuts) == 3  # layer2 (stride 2), layer3 and layer4 (channel change only)


def test_shortcut_a_subsamples_and_zero_pads() -> None:
    x = torch.arange(2 * 4 * 4 * 4, dtype=torch.float32).reshape(1, 2, 4, 4, 4)
    y = ShortcutA(out_channels=5, stride=2)(x)
    assert y.shape == (1, 5, 2, 2, 2)
    assert torch.equal(y[:, :2], x[:, :, ::2, ::2, ::2])
    assert torch.count_nonzero(y[:, 2:]) == 0


@pytest.mark.parametrize("name", ["resnet10", "resnet18", "resnet50", "resnet101"])
def test_conv_geometry_matches_medicalnet(name: str) -> None:
    """Strides, dilations and paddings of every conv (key names and shapes alone would not see a wrong one):
    stem 7³/2 pad 3 + max-pool 3³/2 pad 1; layer2 strided in its first block; layer3 dilation 2, layer4
    dilation 4 in every block (the first included), padding = dilation; 1×1×1 convs unpadded."""
    enc = meta_encoder(name)
    assert (enc.conv1.kernel_size, enc.conv1.stride, enc.conv1.padding) == ((7,) * 3, (2,) * 3, (3,) * 3)
    assert (enc.maxpool.kernel_size, enc.maxpool.stride, enc.maxpool.padding) == (3, 2, 1)
    dilation = {"layer1": 1, "layer2": 1, "layer3": 2, "layer4": 4}
    for key, conv in enc.named_modules():
        if not isinstance(conv, torch.nn.Conv3d) or key == "conv1":
            continue
        layer, block = key.split(".")[:2]
        strided = layer == "layer2" and block == "0"
        if conv.kernel_size == (1, 1, 1):
            assert (conv.padding, conv.dilation) == ((0,) * 3, (1,) * 3), key
            # Bottlenecks stride their 3×3×3 conv, not the reducing 1×1×1; the downsample conv strides too.
            want_stride = 2 if strided and "downsample" in key else 1
        else:
            d = dilation[layer]
            assert (conv.kernel_size, conv.padding, conv.dilation) == ((3,) * 3, (d,) * 3, (d,) * 3), key
            want_stride = 2 if strided and key.endswith(".conv1" if enc.out_channels == 512 else ".conv2") else 1
        assert conv.stride == (want_stride,) * 3, key
