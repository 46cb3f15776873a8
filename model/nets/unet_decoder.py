"""A U-Net decoder for any encoder of the registry: skip connections from every encoder stage.

The encoder's stages (``feature_info``: channels and output stride of each) are grouped by output stride. The
decoder starts at the deepest stride, fusing the stages there, and walks back up one stride level at a time,
ending at the input's resolution, where the image itself is the last skip. For the dilated ResNets (stem at
stride 2, ``layer1`` at 4, ``layer2..4`` all at 8):

    stride 8:  concat(layer2, layer3, layer4) -> block(widths[0])        (fuse8)
    stride 4:  up(x2) ++ layer1              -> block(widths[1])        (up4, block4)
    stride 2:  up(x2) ++ stem                -> block(widths[2])        (up2, block2)
    stride 1:  up(x2) ++ input image         -> block(widths[3]) -> 1×1×1 conv to the classes

and for nnU-Net's residual encoder (strides 1, 2, 4, ..., 32) one level per stage, the stride-1 stage joining the
image at the last level. Each block is two (Conv3d k3 -> InstanceNorm -> LeakyReLU) layers, as U-Net decoders
usually have; "up" is a transposed convolution whose kernel and stride are the ratio of the two levels' strides.
Default widths: 32 channels at stride 1, doubling per level, at most 320 (nnU-Net's cap): (256, 128, 64, 32) for
the ResNets. Sizes not divisible by the strides are handled by resizing each upsampled map to its skip's size
(trilinear), so any input size works. The module knows nothing of the data or the training loop: it takes the list
of features and the input.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["UNetDecoder", "default_widths"]


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(c_in, c_out, 3, padding=1, bias=False), nn.InstanceNorm3d(c_out, affine=True),
        nn.LeakyReLU(0.01, inplace=True),
        nn.Conv3d(c_out, c_out, 3, padding=1, bias=False), nn.InstanceNorm3d(c_out, affine=True),
        nn.LeakyReLU(0.01, inplace=True),
    )


def default_widths(strides: Sequence[int]) -> tuple[int, ...]:
    """Decoder widths for encoder stages at these output strides, deepest level first (see the module docstring)."""
    levels = sorted(set(int(s) for s in strides) | {1}, reverse=True)
    return tuple(min(32 * s, 320) for s in levels)


class UNetDecoder(nn.Module):
    """Decoder over the encoder's stage features (see the module docstring).

    Args:
        channels: channels of the encoder's stages in ``forward`` order, e.g. ``encoder.channels``.
        num_classes: output classes (background included).
        widths: channels of the decoder blocks, one per stride level, deepest first; None: :func:`default_widths`.
        in_chans: channels of the network input (the full-resolution skip).
        strides: output stride of each stage, e.g. ``encoder.strides``; default the dilated ResNets'
            (2, 4, 8, 8, 8).
    """

    multiscale = True
    """Marks a head that takes ``(features list, input)`` instead of the last feature map and a size."""

    def __init__(self, channels: Sequence[int], num_classes: int, widths: Sequence[int] | None = None,
                 in_chans: int = 1, strides: Sequence[int] = (2, 4, 8, 8, 8)) -> None:
        super().__init__()
        if len(channels) != len(strides) or not channels:
            raise ValueError(f"need one stride per encoder stage, got channels {list(channels)} and strides "
                             f"{list(strides)}")
        self.strides = [int(s) for s in strides]
        self.levels = sorted(set(self.strides) | {1}, reverse=True)
        widths = default_widths(self.strides) if widths is None else tuple(int(w) for w in widths)
        if len(widths) != len(self.levels):
            raise ValueError(f"need {len(self.levels)} widths (one per stride level {self.levels}), got "
                             f"{list(widths)}")
        for a, b in zip(self.levels, self.levels[1:]):
            if a % b:
                raise ValueError(f"stride levels {self.levels}: each must be a multiple of the next")
        skips = {lv: sum(int(c) for c, s in zip(channels, self.strides) if s == lv) for lv in self.levels}
        skips[1] += int(in_chans)
        top = self.levels[0]
        self.add_module(f"fuse{top}", _block(skips[top], widths[0]))
        for prev, lv, w_prev, w in zip(self.levels, self.levels[1:], widths, widths[1:]):
            r = prev // lv
            self.add_module(f"up{lv}", nn.ConvTranspose3d(w_prev, w, r, stride=r))
            self.add_module(f"block{lv}", _block(w + skips[lv], w))
        self.classifier = nn.Conv3d(widths[-1], int(num_classes), 1)

    @staticmethod
    def _fit(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        if x.shape[-3:] == like.shape[-3:]:
            return x
        return F.interpolate(x, size=like.shape[-3:], mode="trilinear", align_corners=False)

    def forward(self, features: Sequence[torch.Tensor], image: torch.Tensor) -> torch.Tensor:
        """features: every encoder stage's output for ``image`` (N, in_chans, D, H, W), in ``forward`` order ->
        logits (N, num_classes, D, H, W)."""
        at = {lv: [f for f, s in zip(features, self.strides) if s == lv] for lv in self.levels}
        at[1] = [*at[1], image]
        top = self.levels[0]
        x = getattr(self, f"fuse{top}")(torch.cat(at[top], dim=1))
        for lv in self.levels[1:]:
            x = self._fit(getattr(self, f"up{lv}")(x), at[lv][0])
            x = getattr(self, f"block{lv}")(torch.cat([x, *at[lv]], dim=1))
        return self.classifier(x)
