"""nnU-Net's residual encoder (the ResEnc M / L presets' encoder), built with ``dynamic_network_architectures``.

The encoder of nnU-Net's ``ResidualEncoderUNet`` as its ResEnc planners configure it for 3D data (nnU-Net v2,
``nnUNetPlannerResEncM`` / ``nnUNetPlannerResEncL``): a stem (one 3³ conv, 32 channels), then stages of
``BasicBlockD`` residual blocks, (1, 3, 4, 6, 6, 6) blocks, 32 channels doubling per stage up to 320, the first
stage at stride 1 and each later one halving the size by a strided 3³ conv; every conv has a bias and is followed
by InstanceNorm (eps 1e-5, affine) and LeakyReLU (0.01).

The M and L presets differ in the patch size (and batch size) their planner picks for a GPU memory budget (M ~8 GB,
L ~24 GB), not in the encoder: on a 3D isotropic patch of 128 to 255 voxels a side both plan the six stages built
here. ``resenc_tiny`` is the same family at a quarter of the width, one block per stage and five stages (output stride
16), for CPU smoke tests on 32³ patches.

Any other stage layout is a parametric name, ``resenc_f<features>_b<blocks>`` (``resenc_f32-64-128-256_b1-3-4-6``:
four stages, 32 to 256 channels, 1, 3, 4 and 6 blocks; stride 1 then 2 per stage): the encoder nnU-Net's ResEnc
planner picks for small images (the MSD hippocampus gets exactly that one). :func:`encoder_name_for_plans` reads the
name off a plans file's ``arch_kwargs``, so an encoder can be pretrained in the shape nnU-Net will fine-tune.

Inputs must be multiples of the last stage's output stride on every axis (32 for M and L, 16 for ``resenc_tiny``),
as nnU-Net pads them; and InstanceNorm needs more than one voxel per map when training, so training patches are at
least twice that stride (64³ for M and L, 32³ for ``resenc_tiny``).

Parameter names are nnU-Net's own with its ``encoder.`` prefix removed (``stem.convs.0.conv.weight``,
``stages.3.blocks.0.conv1.norm.bias``), so a Med3D network's ``encoder.*`` keys are the keys of nnU-Net's
network. nnU-Net's state dicts also hold every conv and norm a second time under ``...all_modules.<i>.*`` (the same
tensors registered twice); these encoders register each tensor once, and the loader drops the aliases
(:meth:`ResEncEncoder.adapt_state`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from model.nets.encoders import Encoder, register_encoder, register_encoder_pattern

__all__ = ["MAX_BLOCKS", "MAX_STAGES", "MAX_WIDTH", "PRESETS", "ResEncEncoder", "encoder_name_for_plans",
           "nnunet_arch_kwargs"]

PRESETS: dict[str, dict[str, tuple[int, ...]]] = {
    # name: features per stage, residual blocks per stage, stride of each stage (relative to the previous one)
    "resenc_m": {"features": (32, 64, 128, 256, 320, 320), "blocks": (1, 3, 4, 6, 6, 6), "strides": (1, 2, 2, 2, 2, 2)},
    "resenc_l": {"features": (32, 64, 128, 256, 320, 320), "blocks": (1, 3, 4, 6, 6, 6), "strides": (1, 2, 2, 2, 2, 2)},
    "resenc_tiny": {"features": (8, 16, 32, 64, 80), "blocks": (1, 1, 1, 1, 1), "strides": (1, 2, 2, 2, 2)},
}
"""The presets registered as encoders. M and L are equal on purpose (see the module docstring)."""


def nnunet_arch_kwargs(features: Sequence[int], blocks: Sequence[int], strides: Sequence[int],
                       in_chans: int = 1) -> dict[str, Any]:
    """The ``ResidualEncoder`` keyword arguments nnU-Net's ResEnc planner writes into a plans file's
    ``architecture.arch_kwargs`` (3D, isotropic kernels and strides), as Python objects."""
    n = len(features)
    return {"input_channels": int(in_chans), "n_stages": n, "features_per_stage": tuple(int(f) for f in features),
            "conv_op": nn.Conv3d, "kernel_sizes": [[3, 3, 3]] * n, "strides": [[int(s)] * 3 for s in strides],
            "n_blocks_per_stage": tuple(int(b) for b in blocks), "conv_bias": True, "norm_op": nn.InstanceNorm3d,
            "norm_op_kwargs": {"eps": 1e-5, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
            "nonlin": nn.LeakyReLU, "nonlin_kwargs": {"inplace": True}}


class _Chain:
    """A plain (not registered) sequence of modules, called in turn: stands in for ``all_modules``."""

    def __init__(self, modules: Sequence[nn.Module]) -> None:
        self.modules = list(modules)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        for m in self.modules:
            x = m(x)
        return x


def _register_once(root: nn.Module) -> list[tuple[str, str]]:
    """Replace each ``all_modules`` Sequential (a second registration of a block's conv, norm and nonlin) by an
    unregistered chain of the same modules; returns (alias prefix, canonical prefix) pairs for every tensor-holding
    module, e.g. ("stem.convs.0.all_modules.0.", "stem.convs.0.conv.")."""
    aliases = []
    for path, mod in list(root.named_modules()):
        seq = mod._modules.get("all_modules")
        if not isinstance(seq, nn.Sequential):
            continue
        named = {id(m): n for n, m in mod._modules.items() if n != "all_modules"}
        for i, sub in enumerate(seq):
            if id(sub) in named and any(True for _ in sub.parameters(recurse=False)):
                base = f"{path}." if path else ""
                aliases.append((f"{base}all_modules.{i}.", f"{base}{named[id(sub)]}."))
        del mod._modules["all_modules"]
        mod.__dict__["all_modules"] = _Chain(list(seq))
    return aliases


class ResEncEncoder(Encoder):
    """nnU-Net's residual encoder: (N, in_chans, D, H, W) -> one feature map per stage, stage i at output stride
    ``prod(strides[:i+1])`` with ``features[i]`` channels.

    Args:
        name: registry name.
        features, blocks, strides: per stage (see :data:`PRESETS`).
        in_chans: input channels.
    """

    def __init__(self, *, name: str, features: Sequence[int], blocks: Sequence[int], strides: Sequence[int],
                 in_chans: int = 1) -> None:
        super().__init__()
        try:
            from dynamic_network_architectures.building_blocks.residual_encoders import ResidualEncoder
        except ImportError as exc:
            raise ImportError(f"encoder {name} is built with nnU-Net's dynamic_network_architectures package, "
                              "which is not installed: pip install dynamic-network-architectures") from exc

        if in_chans < 1:
            raise ValueError(f"in_chans must be >= 1, got {in_chans}")
        if not len(features) == len(blocks) == len(strides):
            raise ValueError(f"features, blocks and strides need one entry per stage, got {list(features)}, "
                             f"{list(blocks)}, {list(strides)}")
        kw = nnunet_arch_kwargs(features, blocks, strides, in_chans)
        body = ResidualEncoder(**kw, return_skips=True)
        self.name, self.family, self.in_chans = name, "resenc", int(in_chans)
        self.first_conv = "stem.convs.0.conv"
        self.stem, self.stages = body.stem, body.stages
        self.config = {"features": [int(f) for f in features], "blocks": [int(b) for b in blocks],
                       "strides": [int(s) for s in strides]}
        self._aliases = _register_once(self)
        out_stride, self.feature_info = 1, []
        for i, (f, s) in enumerate(zip(features, strides)):
            out_stride *= int(s)
            self.feature_info.append({"module": f"stages.{i}", "channels": int(f), "stride": out_stride})
        self._init_weights()

    def _init_weights(self) -> None:
        # nnU-Net's initialisation: He (a=0.01, the LeakyReLU slope) for convs, zero biases.
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, a=1e-2)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(N, in_chans, D, H, W) -> every stage's features; D, H and W must be multiples of the last stage's
        output stride (the strided convs and the average-pooled shortcuts round odd sizes differently)."""
        step = self.strides[-1]
        # Checked in eager mode only: reading sizes as ints would freeze them in a traced or compiled graph.
        eager = not (torch.jit.is_tracing() or torch.compiler.is_compiling())
        if eager and any(int(s) % step for s in x.shape[2:]):
            raise ValueError(f"encoder {self.name}: input size {tuple(x.shape[2:])} is not a multiple of {step} on "
                             f"every axis; use patches (and --shape) divisible by {step}")
        x = self.stem(x)
        out = []
        for stage in self.stages:
            x = stage(x)
            out.append(x)
        return out

    def adapt_state(self, state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
        """Drop nnU-Net's ``all_modules`` aliases (the same tensors under a second name) from a state dict of this
        encoder; returns (state, the dropped keys). An alias whose tensor differs from its twin is kept, so the
        strict check reports it."""
        dropped = []
        for key in list(state):
            for alias, canonical in self._aliases:
                if key.startswith(alias):
                    twin = canonical + key[len(alias):]
                    if twin in state and torch.equal(state[twin], state[key]):
                        dropped.append(key)
                        del state[key]
                    break
        return state, dropped

    def alias_keys(self) -> dict[str, str]:
        """nnU-Net's second name of each tensor: {alias key: canonical key} (for writing nnU-Net checkpoints)."""
        out = {}
        for key in self.state_dict():
            for alias, canonical in self._aliases:
                if key.startswith(canonical):
                    out[alias + key[len(canonical):]] = key
        return out

    def architecture(self) -> dict[str, Any]:
        arch = super().architecture()
        arch.update(self.config)
        arch.update({"block": "BasicBlockD", "norm": "InstanceNorm3d", "nonlin": "LeakyReLU"})
        return arch

    def describe(self) -> str:
        return (f"nnU-Net's residual encoder ({len(self.stages)} stages, {self.config['features']} channels, "
                f"{self.config['blocks']} BasicBlockD blocks)")


def _builder(name: str) -> Callable[..., ResEncEncoder]:
    preset = PRESETS[name]

    def build(in_chans: int = 1) -> ResEncEncoder:
        return ResEncEncoder(name=name, in_chans=in_chans, **preset)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"{name}: nnU-Net residual encoder, features {list(preset['features'])}."
    return build


for _name in PRESETS:
    register_encoder(_builder(_name))


_PARAMETRIC = r"resenc_f(\d+(?:-\d+)*)_b(\d+(?:-\d+)*)"

MAX_STAGES, MAX_WIDTH, MAX_BLOCKS = 8, 4096, 64
"""Bounds of a parametric encoder (far above any real plans): a name or a plans file cannot ask for terabytes."""


def _check_layout(features: Sequence[int], blocks: Sequence[int], what: str) -> None:
    if len(blocks) != len(features):
        raise ValueError(f"{what}: {len(features)} stage widths but {len(blocks)} block counts; give one of each per "
                         "stage (resenc_f32-64-128-256_b1-3-4-6)")
    if not 1 <= len(features) <= MAX_STAGES:
        raise ValueError(f"{what}: {len(features)} stages; 1 to {MAX_STAGES} are built")
    if not all(1 <= f <= MAX_WIDTH for f in features) or not all(1 <= b <= MAX_BLOCKS for b in blocks):
        raise ValueError(f"{what}: widths from 1 to {MAX_WIDTH} and block counts from 1 to {MAX_BLOCKS}")


def parametric_name(features: Sequence[int], blocks: Sequence[int]) -> str:
    """``resenc_f32-64-128-256_b1-3-4-6`` for features (32, 64, 128, 256) and blocks (1, 3, 4, 6)."""
    return f"resenc_f{'-'.join(str(int(f)) for f in features)}_b{'-'.join(str(int(b)) for b in blocks)}"


@register_encoder_pattern(_PARAMETRIC, example="resenc_f32-64-128-256_b1-3-4-6")
def _parametric(match: Any) -> Callable[..., ResEncEncoder]:
    name = match.group(0)
    features = tuple(int(v) for v in match.group(1).split("-"))
    blocks = tuple(int(v) for v in match.group(2).split("-"))
    _check_layout(features, blocks, f"encoder {name}")
    strides = (1,) + (2,) * (len(features) - 1)

    def build(in_chans: int = 1) -> ResEncEncoder:
        return ResEncEncoder(name=name, in_chans=in_chans, features=features, blocks=blocks, strides=strides)

    build.__name__ = build.__qualname__ = name
    return build


def encoder_name_for_plans(arch_kwargs: dict[str, Any], where: str = "plans") -> str:
    """The encoder name whose tensors have the shapes of the ResEnc encoder in an nnU-Net plans' ``arch_kwargs``
    (widths and blocks per stage; kernels must be 3³, as ours are). Strides do not change shapes: anisotropic
    plans take an isotropic encoder's weights."""
    try:
        features = [int(f) for f in arch_kwargs["features_per_stage"]]
        blocks = [int(b) for b in arch_kwargs["n_blocks_per_stage"]]
        kernels = [list(map(int, k)) if isinstance(k, (list, tuple)) else [int(k)] * 3
                   for k in arch_kwargs.get("kernel_sizes", [[3, 3, 3]] * len(features))]
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{where}: arch_kwargs lacks features_per_stage / n_blocks_per_stage as integer lists "
                         f"({type(exc).__name__}: {exc})") from None
    bad = [i for i, k in enumerate(kernels) if k != [3, 3, 3]]
    if bad:
        raise ValueError(f"{where}: arch_kwargs.kernel_sizes[{bad[0]}] is {kernels[bad[0]]}: Med3D's ResEnc encoders "
                         "use 3x3x3 kernels in every stage")
    _check_layout(features, blocks, f"{where}: arch_kwargs")
    return parametric_name(features, blocks)

