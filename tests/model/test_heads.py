"""Heads: multi-branch pretraining head (only the chosen branch learns), lung decoder, classifier."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from model.nets.heads import ClassifierHead, LungDecoder, Med3DPretrainNet, MultiBranchHead
from model.nets.resnet import create_encoder


@pytest.fixture()
def net() -> Med3DPretrainNet:
    torch.manual_seed(0)
    enc = create_encoder("resnet10")
    return Med3DPretrainNet(enc, MultiBranchHead(enc.out_channels, {"heart": 2, "liver": 3, "hippocampus": 3}))


def test_only_selected_branch_gets_gradients(net: Med3DPretrainNet) -> None:
    x = torch.randn(2, 1, 24, 32, 40)
    logits = net(x, "liver")
    assert logits.shape == (2, 3, 24, 32, 40)
    F.cross_entropy(logits, torch.randint(0, 3, (2, 24, 32, 40))).backward()
    branches = net.head.branches
    assert branches["liver"].weight.grad is not None and branches["liver"].weight.grad.abs().sum() > 0
    assert branches["heart"].weight.grad is None and branches["heart"].bias.grad is None
    assert branches["hippocampus"].weight.grad is None
    assert net.encoder.conv1.weight.grad is not None


def test_output_size_not_divisible_by_8(net: Med3DPretrainNet) -> None:
    net.eval()
    with torch.no_grad():
        assert net(torch.randn(1, 1, 20, 27, 33), "heart").shape == (1, 2, 20, 27, 33)


def test_head_is_conv_then_trilinear_upsampling() -> None:
    torch.manual_seed(0)
    head = MultiBranchHead(8, {"spleen": 2})
    feats = torch.randn(1, 8, 2, 3, 4)
    out = head(feats, "spleen", (16, 24, 32))
    w, b = head.branches["spleen"].weight, head.branches["spleen"].bias
    low = torch.einsum("oc,ncdhw->nodhw", w[:, :, 0, 0, 0], feats) + b.view(1, -1, 1, 1, 1)
    want = F.interpolate(low, size=(16, 24, 32), mode="trilinear", align_corners=False)
    torch.testing.assert_close(out, want)
    assert torch.equal(head(feats, "spleen", (2, 3, 4)), head.branches["spleen"](feats))


def test_state_dict_keys(net: Med3DPretrainNet) -> None:
    keys = set(net.state_dict())
    assert {"head.branches.heart.weight", "head.branches.liver.bias", "encoder.conv1.weight"} <= keys
    assert all(k.startswith(("encoder.", "head.branches.")) for k in keys)


def test_unknown_domain_names_known_ones(net: Med3DPretrainNet) -> None:
    with pytest.raises(ValueError, match="unknown domain 'lung'.*heart, liver, hippocampus"):
        net.head(torch.zeros(1, 512, 1, 1, 1), "lung", (8, 8, 8))


@pytest.mark.parametrize("bad", ["Liver", "task-01", "a.b", "", "training"])
def test_invalid_domain_names(bad: str) -> None:
    with pytest.raises(ValueError, match="domain name"):
        MultiBranchHead(16, {bad: 2})


def test_invalid_class_count() -> None:
    with pytest.raises(ValueError, match="positive int"):
        MultiBranchHead(16, {"heart": 0})
    with pytest.raises(ValueError, match="empty"):
        MultiBranchHead(16, {})


def test_lung_decoder_full_resolution() -> None:
    torch.manual_seed(0)
    dec = LungDecoder(512, 3)
    feats = torch.randn(2, 512, 2, 3, 4)
    out = dec(feats)
    assert out.shape == (2, 3, 16, 24, 32)
    assert dec.upsample_factor == 8
    widths = [m.out_channels for m in dec.modules() if isinstance(m, torch.nn.ConvTranspose3d)]
    assert widths == [256, 128, 64]
    assert dec(feats, out_size=(15, 24, 30)).shape == (2, 3, 15, 24, 30)
    out.sum().backward()
    assert dec.groups[0][0].weight.grad is not None


def test_lung_decoder_after_encoder_matches_input_size() -> None:
    torch.manual_seed(0)
    enc = create_encoder("resnet10").eval()
    dec = LungDecoder(enc.out_channels, 2, widths=(32, 16, 8)).eval()
    x = torch.randn(1, 1, 32, 24, 16)
    with torch.no_grad():
        assert dec(enc.forward_features(x)).shape == (1, 2, 32, 24, 16)


def test_classifier_head_is_mean_then_linear() -> None:
    torch.manual_seed(0)
    head = ClassifierHead(2048, 2)
    feats = torch.randn(3, 2048, 2, 3, 4)
    out = head(feats)
    assert out.shape == (3, 2)
    torch.testing.assert_close(out, head.fc(feats.mean(dim=(2, 3, 4))))
