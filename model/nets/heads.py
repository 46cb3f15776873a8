"""Task heads on the last stage of an encoder (stride 8 for the dilated ResNets): Med3D's multi-branch pretraining
head, and the transfer heads.

- :class:`MultiBranchHead` / :class:`Med3DPretrainNet`: one 1×1×1 conv per pretraining domain, upsampled to the
  input size. Only the requested domain's branch runs, so a batch updates the encoder and that branch alone.
- :class:`LungDecoder`: the lung-segmentation decoder of the paper (transposed-conv upsampling to full size).
- :class:`ClassifierHead`: global average pooling + linear layer (nodule malignancy).

Shapes: features (N, C, d, h, w) of the encoder's last stage; logits (N, classes, D, H, W).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ClassifierHead", "LungDecoder", "Med3DPretrainNet", "MultiBranchHead"]

_DOMAIN_RE = re.compile(r"[a-z0-9_]+")


def _check_domain_name(name: str) -> None:
    if not isinstance(name, str) or not _DOMAIN_RE.fullmatch(name):
        raise ValueError(f"domain name {name!r} is invalid: use only lowercase letters, digits and '_'")
    # nn.ModuleDict refuses keys that shadow one of its attributes ("training", "forward", ...).
    if hasattr(nn.ModuleDict, name) or name in vars(nn.ModuleDict()):
        raise ValueError(f"domain name {name!r} clashes with an nn.ModuleDict attribute; rename the domain")


class MultiBranchHead(nn.Module):
    """One segmentation branch per domain: a 1×1×1 Conv3d (with bias) to that domain's class count.

    Args:
        in_channels: channels of the encoder features (``encoder.out_channels``).
        classes: domain name -> number of classes, background included (e.g. ``{"heart": 2, "liver": 3}``).
            Names may contain only ``[a-z0-9_]``; they are the keys of ``branches`` and of the state dict
            (``branches.<domain>.weight``).
    """

    def __init__(self, in_channels: int, classes: Mapping[str, int]) -> None:
        super().__init__()
        if not classes:
            raise ValueError("classes is empty: give at least one domain, e.g. {'heart': 2}")
        for name, n in classes.items():
            _check_domain_name(name)
            if not isinstance(n, int) or n < 1:
                raise ValueError(f"domain {name!r}: number of classes must be a positive int, got {n!r}")
        self.in_channels = in_channels
        self.classes: dict[str, int] = dict(classes)
        self.branches = nn.ModuleDict({name: nn.Conv3d(in_channels, n, kernel_size=1) for name, n in classes.items()})

    @property
    def domains(self) -> list[str]:
        return list(self.branches.keys())

    def forward(self, features: torch.Tensor, domain: str, out_size: Sequence[int]) -> torch.Tensor:
        """(N, in_channels, d, h, w) -> logits (N, classes[domain], *out_size), trilinear, align_corners=False.

        Only ``domain``'s branch runs; the other branches get no gradient from this call.
        """
        if domain not in self.branches:
            raise ValueError(f"unknown domain {domain!r}; this head has branches for: {', '.join(self.domains)}")
        logits = self.branches[domain](features)
        size = tuple(int(s) for s in out_size)
        if len(size) != 3:
            raise ValueError(f"out_size must be (D, H, W), got {tuple(out_size)!r}")
        if tuple(logits.shape[-3:]) == size:
            return logits
        return F.interpolate(logits, size=size, mode="trilinear", align_corners=False)


class Med3DPretrainNet(nn.Module):
    """Shared encoder + multi-branch head, the Med3D pretraining network.

    State dict keys: ``encoder.*`` (the encoder's names) and ``head.branches.<domain>.*``; at transfer time only
    ``encoder.*`` is kept.
    """

    def __init__(self, encoder: nn.Module, head: MultiBranchHead) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, x: torch.Tensor, domain: str) -> torch.Tensor:
        """(N, C, D, H, W) -> logits (N, classes[domain], D, H, W)."""
        return self.head(self.encoder(x)[-1], domain, x.shape[-3:])


class LungDecoder(nn.Module):
    """Upsampling decoder for the lung-segmentation transfer.

    Each group is ConvTranspose3d(k3, s2, p1, output_padding 1) -> BN -> ReLU -> Conv3d(k3, p1) -> BN -> ReLU and
    doubles the spatial size; a final 1×1×1 conv maps to the classes. With the default three groups, features at
    stride 8 come back at stride 1: (N, in_channels, d, h, w) -> (N, num_classes, 8d, 8h, 8w). The paper's
    widths start 256, 128 and then "double"; at full resolution that costs too much memory, so widths halve by
    default and are configurable.
    """

    def __init__(self, in_channels: int, num_classes: int, widths: Sequence[int] = (256, 128, 64)) -> None:
        super().__init__()
        if not widths:
            raise ValueError("widths is empty: give one width per upsampling group, e.g. (256, 128, 64)")
        groups: list[nn.Module] = []
        c_in = in_channels
        for w in widths:
            groups.append(
                nn.Sequential(
                    nn.ConvTranspose3d(c_in, w, kernel_size=3, stride=2, padding=1, output_padding=1, bias=False),
                    nn.BatchNorm3d(w),
                    nn.ReLU(inplace=True),
                    nn.Conv3d(w, w, kernel_size=3, padding=1, bias=False),
                    nn.BatchNorm3d(w),
                    nn.ReLU(inplace=True),
                )
            )
            c_in = w
        self.groups = nn.Sequential(*groups)
        self.classifier = nn.Conv3d(c_in, num_classes, kernel_size=1)
        self.upsample_factor = 2 ** len(widths)

    def forward(self, features: torch.Tensor, out_size: Sequence[int] | None = None) -> torch.Tensor:
        """(N, in_channels, d, h, w) -> (N, num_classes, 2^g·d, 2^g·h, 2^g·w) for g groups.

        With ``out_size`` (D, H, W), logits are resized to it (trilinear), for inputs not divisible by 8.
        """
        logits = self.classifier(self.groups(features))
        if out_size is not None and tuple(logits.shape[-3:]) != tuple(out_size):
            logits = F.interpolate(logits, size=tuple(out_size), mode="trilinear", align_corners=False)
        return logits


class ClassifierHead(nn.Module):
    """Global average pooling + linear layer: (N, in_channels, d, h, w) -> logits (N, num_classes)."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(features), 1))
