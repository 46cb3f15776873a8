"""The transfer networks of Med3D: one encoder with the head of each target task.

============== ============================================================== =====================
task           head                                                            output
============== ============================================================== =====================
liver_coarse   1×1×1 conv to 2 classes, trilinear upsampling to the input      (N, 2, D, H, W)
liver_fine     3D DenseASPP (:class:`~model.nets.aspp.DenseASPP3D`)             (N, 2, D, H, W)
lung           :class:`~model.nets.heads.LungDecoder` + 1×1×1 conv             (N, classes, D, H, W)
nodule         global average pooling + linear (:class:`ClassifierHead`)      (N, 2)
seg_med3d      :class:`~model.nets.heads.LungDecoder` + 1×1×1 conv             (N, classes, D, H, W)
seg_unet       :class:`~model.nets.unet_decoder.UNetDecoder` (skips from       (N, classes, D, H, W)
               every encoder stage)
============== ============================================================== =====================

The kinds are network shapes; which task trains which kind is the task's choice (:mod:`model.tasks`).

State dict keys are ``encoder.*`` (the encoder's own names: MedicalNet's for the ResNets) and ``head.*``: a
fine-tuned run loads into another run's ``--init`` exactly like a pretraining checkpoint (the encoder is taken, the
head dropped).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from model.nets.aspp import DenseASPP3D
from model.nets.heads import ClassifierHead, LungDecoder
from model.nets.encoders import Encoder, create_encoder
from model.nets.unet_decoder import UNetDecoder

__all__ = ["HEADS", "PointwiseHead", "TransferNet", "build_transfer_net"]


class PointwiseHead(nn.Module):
    """A 1×1×1 conv to ``num_classes`` on the stride-8 features, upsampled trilinearly to ``out_size``."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(in_channels, num_classes, kernel_size=1)

    def forward(self, features: torch.Tensor, out_size: Sequence[int] | None = None) -> torch.Tensor:
        logits = self.conv(features)
        if out_size is not None and tuple(logits.shape[-3:]) != tuple(int(s) for s in out_size):
            logits = F.interpolate(logits, size=tuple(int(s) for s in out_size), mode="trilinear",
                                   align_corners=False)
        return logits


class TransferNet(nn.Module):
    """Encoder + task head. ``segmentation`` nets return logits at the input size, classifiers (N, classes)."""

    def __init__(self, encoder: Encoder, head: nn.Module, *, task: str, segmentation: bool) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.task = task
        self.segmentation = segmentation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_chans, D, H, W) -> (N, classes, D, H, W) for segmentation, (N, classes) for classification."""
        stages = self.encoder(x)
        if getattr(self.head, "multiscale", False):
            return self.head(stages, x)
        features = stages[-1]
        if self.segmentation:
            return self.head(features, x.shape[-3:])
        return self.head(features)


def _pointwise(c: int, n: int, opts: Mapping[str, Any]) -> nn.Module:
    return PointwiseHead(c, n)


def _aspp(c: int, n: int, opts: Mapping[str, Any]) -> nn.Module:
    return DenseASPP3D(c, n, rates=tuple(opts.get("aspp_rates", (3, 6, 12, 18, 24))))


def _lung(c: int, n: int, opts: Mapping[str, Any]) -> nn.Module:
    return LungDecoder(c, n, widths=tuple(opts.get("decoder_widths", (256, 128, 64))))


def _classifier(c: int, n: int, opts: Mapping[str, Any]) -> nn.Module:
    return ClassifierHead(c, n)


def _unet(c: int, n: int, opts: Mapping[str, Any]) -> nn.Module:
    widths = opts.get("unet_widths")
    return UNetDecoder(opts["feature_channels"], n, widths=None if widths is None else tuple(widths),
                       in_chans=int(opts.get("in_chans", 1)), strides=opts["feature_strides"])


HEADS: dict[str, tuple[Any, bool]] = {
    "liver_coarse": (_pointwise, True),
    "liver_fine": (_aspp, True),
    "lung": (_lung, True),
    "nodule": (_classifier, False),
    "seg_med3d": (_lung, True),
    "seg_unet": (_unet, True),
}
"""Network kind -> (head builder ``(in_channels, classes, options) -> nn.Module``, is segmentation)."""


def build_transfer_net(kind: str, encoder: str, num_classes: int, options: Mapping[str, Any] | None = None
                       ) -> TransferNet:
    """The network of ``kind`` (a key of :data:`HEADS`) on a fresh ``encoder`` (registry name).

    ``options``: ``aspp_rates`` (liver_fine), ``decoder_widths`` (lung, seg_med3d), ``unet_widths`` (seg_unet),
    ``in_chans`` (input channels, default 1). ``encoder`` is any registry name (:mod:`model.nets.encoders`):
    single-map heads read its last stage, ``seg_unet`` every stage.
    """
    if kind not in HEADS:
        raise ValueError(f"unknown transfer network {kind!r}; one of {', '.join(HEADS)}")
    build, seg = HEADS[kind]
    enc = create_encoder(encoder, in_chans=int((options or {}).get("in_chans", 1)))
    opts = {**dict(options or {}), "feature_channels": enc.channels, "feature_strides": enc.strides}
    return TransferNet(enc, build(enc.out_channels, int(num_classes), opts), task=kind,
                       segmentation=seg)
