"""3D DenseASPP: densely connected atrous convolutions on encoder features, for the fine stage of the LiTS
transfer (Med3D § 3.3, after Yang et al., "DenseASPP for Semantic Segmentation in Street Scenes", CVPR 2018).

Each layer sees the concatenation of the input features and every earlier layer's output, so the receptive
fields of successive dilation rates combine densely instead of sitting side by side as in plain ASPP:

    f0 = features (N, C, d, h, w)
    y_i = Conv3d_k3,dil=r_i(ReLU(BN(Conv3d_1(ReLU(BN([f0, y_1, ..., y_{i-1}]))))))   (N, growth, d, h, w)
    logits = Conv3d_1(ReLU(BN(Conv3d_1([f0, y_1, ..., y_k]))))  -> trilinear up to the input size

The features are first reduced to ``width`` channels by a 1×1×1 conv (a ResNet-152 gives 2,048 channels, and
concatenating onto them would make every layer's input enormous). Shapes keep the feature grid: dilated convs
pad by their rate.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DenseASPP3D"]


def _bn_relu_conv(c_in: int, c_out: int, kernel: int = 1, dilation: int = 1, dropout: float = 0.0) -> nn.Sequential:
    pad = dilation * (kernel - 1) // 2
    layers: list[nn.Module] = [nn.BatchNorm3d(c_in), nn.ReLU(inplace=True),
                               nn.Conv3d(c_in, c_out, kernel, padding=pad, dilation=dilation, bias=False)]
    if dropout > 0:
        layers.append(nn.Dropout3d(dropout))
    return nn.Sequential(*layers)


class DenseASPP3D(nn.Module):
    """Dense atrous spatial pyramid pooling head: (N, in_channels, d, h, w) -> logits (N, num_classes, *out_size).

    Args:
        in_channels: encoder feature channels (``encoder.out_channels``).
        num_classes: output classes, background included.
        rates: dilation rate of each dense layer, in order (DenseASPP's 3, 6, 12, 18, 24 by default; at stride 8
            a rate of 24 spans 192 input voxels, so small patches may want smaller rates).
        width: channels after the initial 1×1×1 reduction.
        inter: channels of each layer's 1×1×1 bottleneck.
        growth: channels each dense layer adds.
        dropout: channel dropout after each dense layer (0 disables).
    """

    def __init__(self, in_channels: int, num_classes: int, rates: Sequence[int] = (3, 6, 12, 18, 24), *,
                 width: int = 256, inter: int = 128, growth: int = 64, dropout: float = 0.0) -> None:
        super().__init__()
        rates = tuple(int(r) for r in rates)
        if not rates or min(rates) < 1:
            raise ValueError(f"rates must be one or more positive dilation rates, got {rates!r}")
        if min(width, inter, growth, num_classes) < 1:
            raise ValueError("width, inter, growth and num_classes must be positive")
        self.rates = rates
        self.reduce = nn.Conv3d(in_channels, width, kernel_size=1, bias=False)
        layers = []
        c = width
        for r in rates:
            layers.append(nn.Sequential(_bn_relu_conv(c, inter, 1), _bn_relu_conv(inter, growth, 3, r, dropout)))
            c += growth
        self.layers = nn.ModuleList(layers)
        self.fuse = _bn_relu_conv(c, width, 1)
        self.classifier = nn.Sequential(nn.BatchNorm3d(width), nn.ReLU(inplace=True),
                                        nn.Conv3d(width, num_classes, kernel_size=1))

    def forward(self, features: torch.Tensor, out_size: Sequence[int] | None = None) -> torch.Tensor:
        """(N, in_channels, d, h, w) -> (N, num_classes, d, h, w), or trilinearly resized to ``out_size``."""
        feats = [self.reduce(features)]
        for layer in self.layers:
            feats.append(layer(torch.cat(feats, dim=1)))
        logits = self.classifier(self.fuse(torch.cat(feats, dim=1)))
        if out_size is not None and tuple(logits.shape[-3:]) != tuple(int(s) for s in out_size):
            logits = F.interpolate(logits, size=tuple(int(s) for s in out_size), mode="trilinear",
                                   align_corners=False)
        return logits
