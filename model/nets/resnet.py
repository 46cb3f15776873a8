"""3D ResNet encoders (Med3D / MedicalNet), output stride 8.

Parameter and buffer names are exactly those of the released MedicalNet weights (``resnet_{10..200}.pth``,
without their ``module.`` prefix), so a checkpoint's state dict maps one to one onto an encoder. The layout:

- stem: ``conv1`` 7³ stride 2 pad 3 (no bias), ``bn1``, ReLU, max-pool 3³ stride 2 pad 1 (stride 4);
- ``layer1`` stride 1; ``layer2`` stride 2 (stride 8); ``layer3`` dilation 2 and ``layer4`` dilation 4, both
  stride 1, so the features stay at stride 8 for dense prediction;
- shortcut type B (1×1×1 conv + BN, keys ``downsample.0`` / ``downsample.1``) for 10/50/101/152/200; type A
  (stride subsampling + zero channel padding, no parameters) for 18/34. Loading weights of one type into the
  other fails on the ``downsample`` keys, which is what ``model.nets.weights`` reports.

``preact_resnet200`` is the pre-activation ResNet-200 mentioned by the paper. It has no MedicalNet release; its
block layout (``bn1`` on the block input, downsample on the raw input, no final norm) follows the pre-activation
3D ResNets trained on Kinetics, whose checkpoints then load with ``model.nets.weights.load_encoder_weights``.

The family registers its builders in :mod:`model.nets.encoders`; build them through
:func:`~model.nets.encoders.create_encoder` (``create_encoder`` and ``ENCODERS`` are importable from here too).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from model.nets.encoders import ENCODERS, Encoder, create_encoder, register_encoder

__all__ = [
    "ENCODERS",
    "BasicBlock",
    "Bottleneck",
    "PreActBottleneck",
    "ResNet3D",
    "ShortcutA",
    "create_encoder",
    "register_encoder",
]

Shortcut = Literal["A", "B"]


def _conv3(in_ch: int, out_ch: int, stride: int = 1, dilation: int = 1) -> nn.Conv3d:
    """3×3×3 convolution whose padding keeps the size (divided by the stride)."""
    return nn.Conv3d(in_ch, out_ch, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)


def _conv1(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv3d:
    return nn.Conv3d(in_ch, out_ch, 1, stride=stride, bias=False)


class ShortcutA(nn.Module):
    """Parameter-free shortcut: subsample by ``stride``, then zero-pad channels up to ``out_channels``.

    (N, C, D, H, W) -> (N, out_channels, ceil(D/stride), ceil(H/stride), ceil(W/stride)).
    """

    def __init__(self, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            # A 1-voxel average pool is plain subsampling; it is what the released type-A weights were trained with.
            x = F.avg_pool3d(x, kernel_size=1, stride=self.stride)
        extra = self.out_channels - x.shape[1]
        if extra > 0:
            x = F.pad(x, (0, 0, 0, 0, 0, 0, 0, extra))
        return x

    def extra_repr(self) -> str:
        return f"out_channels={self.out_channels}, stride={self.stride}"


class _Block(nn.Module):
    """What the residual blocks share: the constructor, the ReLU and the shortcut (``downsample``, registered
    after the block's own layers, as in the released weights). A block defines :meth:`layers` and ``forward``."""

    expansion = 1

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.layers(inplanes, planes, stride, dilation)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def layers(self, inplanes: int, planes: int, stride: int, dilation: int) -> None:
        raise NotImplementedError

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.downsample is None else self.downsample(x)


class BasicBlock(_Block):
    """Two 3×3×3 convolutions with BN and ReLU, plus the shortcut. Output channels: ``planes``."""

    expansion = 1

    def layers(self, inplanes: int, planes: int, stride: int, dilation: int) -> None:
        self.conv1 = _conv3(inplanes, planes, stride, dilation)
        self.bn1 = nn.BatchNorm3d(planes)
        self.conv2 = _conv3(planes, planes, 1, dilation)
        self.bn2 = nn.BatchNorm3d(planes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class Bottleneck(_Block):
    """1×1×1 reduce, 3×3×3 (strided, dilated), 1×1×1 expand; BN after each. Output channels: ``4 * planes``."""

    expansion = 4

    def layers(self, inplanes: int, planes: int, stride: int, dilation: int) -> None:
        self.conv1 = _conv1(inplanes, planes)
        self.bn1 = nn.BatchNorm3d(planes)
        self.conv2 = _conv3(planes, planes, stride, dilation)
        self.bn2 = nn.BatchNorm3d(planes)
        self.conv3 = _conv1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm3d(planes * self.expansion)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.shortcut(x))


class PreActBottleneck(_Block):
    """Pre-activation bottleneck (He et al. 2016): BN-ReLU before each conv, no activation after the sum.

    ``bn1`` normalizes the block input (``inplanes`` channels); the shortcut takes the raw input. Output channels:
    ``4 * planes``.
    """

    expansion = 4

    def layers(self, inplanes: int, planes: int, stride: int, dilation: int) -> None:
        self.bn1 = nn.BatchNorm3d(inplanes)
        self.conv1 = _conv1(inplanes, planes)
        self.bn2 = nn.BatchNorm3d(planes)
        self.conv2 = _conv3(planes, planes, stride, dilation)
        self.bn3 = nn.BatchNorm3d(planes)
        self.conv3 = _conv1(planes, planes * self.expansion)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Not in-place: x itself is still needed for the identity shortcut.
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(self.relu(self.bn2(out)))
        out = self.conv3(self.relu(self.bn3(out)))
        return out + self.shortcut(x)


Block = type[BasicBlock] | type[Bottleneck] | type[PreActBottleneck]


class ResNet3D(Encoder):
    """3D ResNet encoder: (N, in_chans, D, H, W) -> (N, out_channels, ⌈D/8⌉, ⌈H/8⌉, ⌈W/8⌉) (exact for sizes
    divisible by 8).

    Attributes:
        name: registry name, e.g. ``"resnet50"``.
        depth: number of weighted layers (10 ... 200).
        shortcut: ``"A"`` or ``"B"``.
        in_chans: input channels of ``conv1``.
        out_channels: channels of the output features (512 for basic blocks, 2048 for bottlenecks).
        feature_info: one dict per stage, ``{"module", "channels", "stride"}``, for ``conv1`` and ``layer1..4``
            (``conv1`` means the stem's activation, before the max-pool). Heads are built from it.
    """

    def __init__(
        self,
        block: Block,
        layers: tuple[int, int, int, int],
        *,
        shortcut: Shortcut = "B",
        in_chans: int = 1,
        name: str = "",
        depth: int = 0,
    ) -> None:
        super().__init__()
        if shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be 'A' or 'B', got {shortcut!r}")
        if in_chans < 1:
            raise ValueError(f"in_chans must be >= 1, got {in_chans}")
        self.name = name
        self.depth = depth
        self.shortcut = shortcut
        self.in_chans = in_chans
        self.family = "resnet"
        self.first_conv = "conv1"
        self._inplanes = 64

        self.conv1 = nn.Conv3d(in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm3d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool3d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0], stride=1, dilation=1)
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2, dilation=1)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=1, dilation=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=1, dilation=4)
        self.feature_info: list[dict[str, int | str]] = [
            {"module": "conv1", "channels": 64, "stride": 2},
            {"module": "layer1", "channels": 64 * block.expansion, "stride": 4},
            {"module": "layer2", "channels": 128 * block.expansion, "stride": 8},
            {"module": "layer3", "channels": 256 * block.expansion, "stride": 8},
            {"module": "layer4", "channels": 512 * block.expansion, "stride": 8},
        ]
        self._init_weights()

    def _make_layer(self, block: Block, planes: int, blocks: int, stride: int, dilation: int) -> nn.Sequential:
        out_ch = planes * block.expansion
        downsample: nn.Module | None = None
        if stride != 1 or self._inplanes != out_ch:
            if self.shortcut == "A":
                downsample = ShortcutA(out_ch, stride)
            else:
                downsample = nn.Sequential(_conv1(self._inplanes, out_ch, stride), nn.BatchNorm3d(out_ch))
        # Every block of a dilated stage is dilated, the first included (as in the released weights' training).
        layers = [block(self._inplanes, planes, stride, dilation, downsample)]
        self._inplanes = out_ch
        layers += [block(out_ch, planes, 1, dilation) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Features of every stage in ``feature_info`` order: conv1 (stride 2), layer1 (4), layer2..4 (8)."""
        stem = self.relu(self.bn1(self.conv1(x)))
        f1 = self.layer1(self.maxpool(stem))
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        f4 = self.layer4(f3)
        return [stem, f1, f2, f3, f4]

    def architecture(self) -> dict[str, Any]:
        """The family's fields (depth, shortcut type, block type) and, per stage (``conv1``, ``maxpool``,
        ``layer1..4``), its blocks, channels, stride, dilation and the output stride so far, read from the modules
        themselves."""
        feature = {f["module"]: f for f in self.feature_info}
        stages = []
        for name in ("conv1", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            mod = getattr(self, name)
            if isinstance(mod, nn.MaxPool3d):
                stride, dilation = _largest(mod.stride), _largest(mod.dilation)
            else:
                convs = [m for m in mod.modules() if isinstance(m, nn.Conv3d)]
                stride = max(_largest(c.stride) for c in convs)
                dilation = max(_largest(c.dilation) for c in convs)
            stage: dict[str, Any] = {"module": name, "stride": stride, "dilation": dilation}
            if isinstance(mod, nn.Sequential):
                stage["blocks"] = len(mod)
            if name in feature:
                stage["channels"] = int(feature[name]["channels"])
                stage["output_stride"] = int(feature[name]["stride"])
            stages.append(stage)
        return {"encoder": self.name, "family": self.family, "depth": int(self.depth), "shortcut": self.shortcut,
                "block": type(self.layer1[0]).__name__, "in_chans": int(self.in_chans),
                "out_channels": self.out_channels, "stages": stages}

    def describe(self) -> str:
        return f"A 3D ResNet-{self.depth} encoder ({type(self.layer1[0]).__name__}, shortcut type {self.shortcut})"

    def extra_repr(self) -> str:
        return f"name={self.name!r}, shortcut={self.shortcut!r}, in_chans={self.in_chans}"


def _largest(value: Any) -> int:
    """The largest entry of a conv/pool stride or dilation (an int or a per-axis tuple)."""
    return int(max(value)) if isinstance(value, tuple) else int(value)


_RESNETS: dict[str, tuple[int, Block, tuple[int, int, int, int], Shortcut]] = {
    # name: (depth, block, blocks per stage, shortcut); all but the last are MedicalNet's resnet_<depth>.pth
    "resnet10": (10, BasicBlock, (1, 1, 1, 1), "B"),
    "resnet18": (18, BasicBlock, (2, 2, 2, 2), "A"),
    "resnet34": (34, BasicBlock, (3, 4, 6, 3), "A"),
    "resnet50": (50, Bottleneck, (3, 4, 6, 3), "B"),
    "resnet101": (101, Bottleneck, (3, 4, 23, 3), "B"),
    "resnet152": (152, Bottleneck, (3, 8, 36, 3), "B"),
    "resnet200": (200, Bottleneck, (3, 24, 36, 3), "B"),
    "preact_resnet200": (200, PreActBottleneck, (3, 24, 36, 3), "B"),  # no MedicalNet release
}


def _resnet_builder(name: str) -> Callable[..., ResNet3D]:
    depth, block, layers, shortcut = _RESNETS[name]

    def build(in_chans: int = 1) -> ResNet3D:
        return ResNet3D(block, layers, shortcut=shortcut, in_chans=in_chans, name=name, depth=depth)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = (f"{name}: {block.__name__} blocks {list(layers)}, shortcut {shortcut}, {depth} layers.")
    return build


for _name in _RESNETS:
    register_encoder(_resnet_builder(_name))
