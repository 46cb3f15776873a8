"""A U-Net decoder for a dilated 3D ResNet encoder: skip connections from every encoder stage.

The encoder (:meth:`model.nets.resnet.ResNet3D.forward_intermediates`) gives five feature maps: the stem at
stride 2, ``layer1`` at stride 4, and ``layer2``, ``layer3``, ``layer4`` at stride 8 (the last two dilated, not
strided). The decoder walks back up:

    stride 8:  concat(layer2, layer3, layer4) -> block(widths[0])
    stride 4:  up(x2) ++ layer1              -> block(widths[1])
    stride 2:  up(x2) ++ stem                -> block(widths[2])
    stride 1:  up(x2) ++ input image         -> block(widths[3]) -> 1×1×1 conv to the classes

Each block is two (Conv3d k3 -> InstanceNorm -> LeakyReLU) layers, as U-Net decoders usually have; "up" is a
transposed convolution (k2, s2). Sizes not divisible by 8 are handled by resizing each upsampled map to its skip's
size (trilinear), so any input size works. The module knows nothing of the data or the training loop: it takes
the list of features and the input.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["UNetDecoder"]


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(c_in, c_out, 3, padding=1, bias=False), nn.InstanceNorm3d(c_out, affine=True),
        nn.LeakyReLU(0.01, inplace=True),
        nn.Conv3d(c_out, c_out, 3, padding=1, bias=False), nn.InstanceNorm3d(c_out, affine=True),
        nn.LeakyReLU(0.01, inplace=True),
    )


class UNetDecoder(nn.Module):
    """Decoder over the encoder's stage features (see the module docstring).

    Args:
        channels: channels of the five encoder features in ``forward_intermediates`` order (stem, layer1..4),
            e.g. ``[f["channels"] for f in encoder.feature_info]``.
        num_classes: output classes (background included).
        widths: channels of the four decoder blocks, deepest first.
        in_chans: channels of the network input (the full-resolution skip).
    """

    multiscale = True
    """Marks a head that takes ``(features list, input)`` instead of the last feature map and a size."""

    def __init__(self, channels: Sequence[int], num_classes: int, widths: Sequence[int] = (256, 128, 64, 32),
                 in_chans: int = 1) -> None:
        super().__init__()
        if len(channels) != 5 or len(widths) != 4:
            raise ValueError(f"need 5 encoder channel counts and 4 widths, got {list(channels)} and {list(widths)}")
        stem, c1, c2, c3, c4 = (int(c) for c in channels)
        w8, w4, w2, w1 = (int(w) for w in widths)
        self.fuse8 = _block(c2 + c3 + c4, w8)
        self.up4 = nn.ConvTranspose3d(w8, w4, 2, stride=2)
        self.block4 = _block(w4 + c1, w4)
        self.up2 = nn.ConvTranspose3d(w4, w2, 2, stride=2)
        self.block2 = _block(w2 + stem, w2)
        self.up1 = nn.ConvTranspose3d(w2, w1, 2, stride=2)
        self.block1 = _block(w1 + int(in_chans), w1)
        self.classifier = nn.Conv3d(w1, int(num_classes), 1)

    @staticmethod
    def _fit(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        if x.shape[-3:] == like.shape[-3:]:
            return x
        return F.interpolate(x, size=like.shape[-3:], mode="trilinear", align_corners=False)

    def forward(self, features: Sequence[torch.Tensor], image: torch.Tensor) -> torch.Tensor:
        """features: [stem, layer1, layer2, layer3, layer4] of ``image`` (N, in_chans, D, H, W) ->
        logits (N, num_classes, D, H, W)."""
        stem, f1, f2, f3, f4 = features
        x = self.fuse8(torch.cat([f2, f3, f4], dim=1))
        x = self.block4(torch.cat([self._fit(self.up4(x), f1), f1], dim=1))
        x = self.block2(torch.cat([self._fit(self.up2(x), stem), stem], dim=1))
        x = self.block1(torch.cat([self._fit(self.up1(x), image), image], dim=1))
        return self.classifier(x)
