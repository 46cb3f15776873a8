"""The encoder registry: one interface, one factory, the known pretrained weights, plug-ins by entry point.

An encoder is an :class:`Encoder`: ``forward(x)`` returns the features of every stage, shallowest first, and
``feature_info`` says each stage's module, channels and output stride (timm's name and layout). Heads are built
from ``feature_info`` alone: single-map heads (the Med3D branches, the classifier, DenseASPP) read the last stage
(:meth:`Encoder.forward_features`), the U-Net decoder reads them all.

Families register builders with :func:`register_encoder`; :func:`create_encoder` builds one by name. The
families shipped live in :data:`FAMILIES` (one module each); others are found through the Python entry-point group
``med3d.encoders``: an entry point names a module (imported, its ``@register_encoder`` calls register) or a
builder function (registered under the entry point's name)::

    # pyproject.toml of a plug-in package
    [project.entry-points."med3d.encoders"]
    my_encoders = "my_package.encoders"

:data:`PRETRAINED` lists the weight files known to load into the registered encoders (timm's pretrained configs,
without the download: files are never fetched by the code).
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["ENCODERS", "ENTRY_POINT_GROUP", "FAMILIES", "PRETRAINED", "Encoder", "PretrainedWeights",
           "create_encoder", "encoder_names", "pretrained_for", "register_encoder", "register_encoder_pattern"]

ENTRY_POINT_GROUP = "med3d.encoders"

FAMILIES = ("model.nets.resnet", "model.nets.resenc")
"""Modules of the encoder families shipped with Med3D, imported (and so registered) on first use of the registry.
Imported by name, not by an import statement: the families import this module, not the other way round."""


class Encoder(nn.Module):
    """What every encoder provides. Subclasses set the attributes in ``__init__`` and define :meth:`forward`.

    Attributes:
        name: registry name (``"resnet50"``, ``"resenc_m"``).
        family: family name (``"resnet"``, ``"resenc"``); MedicalNet import/export is for ``"resnet"`` only.
        in_chans: input channels.
        first_conv: state-dict prefix of the first convolution (``"conv1"``): its weight's input channels are
            adapted when weights of another channel count are loaded.
        feature_info: one dict per stage, shallowest first: ``{"module": str, "channels": int, "stride": int}``
            (stride = output stride of that stage's features, the same on every axis).
    """

    name: str = ""
    family: str = ""
    in_chans: int = 1
    first_conv: str = ""
    feature_info: list[dict[str, Any]]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:  # pragma: no cover - interface
        """(N, in_chans, D, H, W) -> every stage's features in ``feature_info`` order; stage i is
        (N, channels_i, ⌈D/stride_i⌉, ⌈H/stride_i⌉, ⌈W/stride_i⌉) (exact for sizes divisible by the largest
        stride)."""
        raise NotImplementedError

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's features, what single-map heads take."""
        return self(x)[-1]

    def forward_intermediates(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every stage's features (timm's name; the same as calling the encoder)."""
        return self(x)

    @property
    def out_channels(self) -> int:
        """Channels of the last stage."""
        return int(self.feature_info[-1]["channels"])

    @property
    def channels(self) -> list[int]:
        return [int(f["channels"]) for f in self.feature_info]

    @property
    def strides(self) -> list[int]:
        return [int(f["stride"]) for f in self.feature_info]

    def adapt_state(self, state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
        """Remove what a family's files carry beyond this encoder's own keys and is safe to drop (nnU-Net's
        second names of the same tensors); returns (state, dropped keys). Default: nothing to drop."""
        return state, []

    def architecture(self) -> dict[str, Any]:
        """What a loader must build to take these weights (the weights card's ``architecture``): registry name,
        family, input and output channels, and per stage its module, channels and output stride. Families add
        their own fields (ResNet: depth, shortcut, block, dilations)."""
        return {"encoder": self.name, "family": self.family, "in_chans": int(self.in_chans),
                "out_channels": self.out_channels,
                "stages": [{"module": str(f["module"]), "channels": int(f["channels"]),
                            "output_stride": int(f["stride"])} for f in self.feature_info]}

    def describe(self) -> str:
        """One sentence for a model card: what the network is."""
        return f"A 3D {self.family} encoder ({self.name})"


Builder = Callable[..., Encoder]


class _Registry(Mapping[str, Builder]):
    """name -> builder ``(in_chans: int = 1) -> Encoder``; the shipped families and the entry points are loaded
    on first access, so ``list(ENCODERS)`` is every encoder there is."""

    def __init__(self) -> None:
        self._builders: dict[str, Builder] = {}
        self._patterns: list[tuple[re.Pattern[str], Callable[[re.Match[str]], Builder], str]] = []
        self._loaded = False
        self._loading = False

    def add(self, name: str, fn: Builder) -> None:
        if name in self._builders and self._builders[name] is not fn:
            raise ValueError(f"encoder {name!r} is already registered (by {self._builders[name].__module__}); "
                             "choose another name")
        self._builders[name] = fn

    def _load(self) -> None:
        if self._loaded or self._loading:
            return
        self._loading = True
        try:
            for module in FAMILIES:
                importlib.import_module(module)
            _load_entry_points(self)
            self._loaded = True
        finally:
            self._loading = False

    def reload_entry_points(self) -> None:
        """Look at the ``med3d.encoders`` entry points again (after installing a plug-in in a running process)."""
        self._loaded = False
        self._load()

    def add_pattern(self, pattern: str, factory: Callable[[re.Match[str]], Builder], example: str) -> None:
        self._patterns.append((re.compile(pattern), factory, example))

    def patterns(self) -> list[str]:
        """An example name of each parametric family (``resenc_f32-64-128-256_b1-3-4-6``)."""
        self._load()
        return [example for _, _, example in self._patterns]

    def __getitem__(self, name: str) -> Builder:
        self._load()
        if name in self._builders:
            return self._builders[name]
        for pattern, factory, _ in self._patterns:
            if (m := pattern.fullmatch(name)) is not None:
                return factory(m)
        raise KeyError(name)

    def __contains__(self, name: object) -> bool:
        try:
            self[str(name)]
        except (KeyError, ValueError):
            return False
        return True

    def __iter__(self) -> Iterator[str]:
        """Shipped families in :data:`FAMILIES` order, then plug-ins, each in registration order (whatever
        module happened to be imported first)."""
        self._load()

        def rank(name: str) -> int:
            module = getattr(self._builders[name], "__module__", "")
            return FAMILIES.index(module) if module in FAMILIES else len(FAMILIES)

        return iter(sorted(self._builders, key=rank))

    def __len__(self) -> int:
        self._load()
        return len(self._builders)


ENCODERS = _Registry()
"""Registry: encoder name -> builder ``(in_chans: int = 1) -> Encoder``. Names are the CLI's ``--encoder`` choices."""


def _load_entry_points(registry: _Registry) -> None:
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
        except Exception as exc:  # a broken plug-in must not hide the shipped encoders
            raise ImportError(f"entry point {ep.name!r} = {ep.value!r} of group {ENTRY_POINT_GROUP!r} cannot be "
                              f"loaded ({type(exc).__name__}: {exc}); fix or uninstall that package") from exc
        if inspect.ismodule(obj):
            continue  # importing it registered its builders
        if not callable(obj):
            raise ImportError(f"entry point {ep.name!r} = {ep.value!r} of group {ENTRY_POINT_GROUP!r} is neither a "
                              "module nor an encoder builder")
        registry.add(ep.name, obj)


def register_encoder(fn: Builder | None = None, *, name: str | None = None) -> Any:
    """Decorator adding a builder ``(in_chans: int = 1) -> Encoder`` to :data:`ENCODERS` under ``name`` (default:
    the function's name). Usable bare (``@register_encoder``) or with a name (``@register_encoder(name="x")``)."""

    def add(f: Builder) -> Builder:
        ENCODERS.add(name or f.__name__, f)
        return f

    return add(fn) if fn is not None else add


def register_encoder_pattern(pattern: str, example: str) -> Callable[[Callable[[re.Match[str]], Builder]], Any]:
    """Decorator adding a parametric family: names matching the regular expression ``pattern`` (whole name) are built
    by ``factory(match)``, which returns a builder ``(in_chans: int = 1) -> Encoder`` (or raises ``ValueError``
    saying what is wrong with the name). The names are not listed by iteration (there are infinitely many);
    ``example`` is shown in ``--encoder`` errors and ``--help``."""

    def add(factory: Callable[[re.Match[str]], Builder]) -> Callable[[re.Match[str]], Builder]:
        ENCODERS.add_pattern(pattern, factory, example)
        return factory

    return add


def encoder_names(family: str | None = None) -> list[str]:
    """Every registered encoder name, or those of one family (built on the meta device to read it)."""
    names = list(ENCODERS)
    if family is None:
        return names
    out = []
    for n in names:
        with torch.device("meta"):
            if create_encoder(n).family == family:
                out.append(n)
    return out


def create_encoder(name: str, in_chans: int = 1) -> Encoder:
    """Build the encoder registered as ``name`` (see :data:`ENCODERS`) with randomly initialised weights.

    Build on ``torch.device("meta")`` (as a context manager) to inspect shapes without allocating memory.
    Raises ``ValueError`` naming the valid choices for an unknown name, ``TypeError`` when a plug-in's builder
    returns something that is not an :class:`Encoder`.
    """
    try:
        builder = ENCODERS[name]
    except KeyError:
        raise ValueError(f"unknown encoder {name!r}; choose one of: {', '.join([*ENCODERS, *ENCODERS.patterns()])}"
                         ) from None
    enc = builder(in_chans=in_chans)
    if not isinstance(enc, Encoder):
        raise TypeError(f"the builder of encoder {name!r} ({builder.__module__}) returned a "
                        f"{type(enc).__name__}, not a model.nets.encoders.Encoder")
    return enc


@dataclass(frozen=True)
class PretrainedWeights:
    """A weight file known to load into a registered encoder (timm's pretrained config, without the download).

    Attributes:
        name: how the weights are called (``"resnet50.medicalnet_23dataset"``).
        encoder: registry name the file loads into.
        file: the file's name as released.
        sha256: hex digest of the released file, or ``""`` where it is not published (check it yourself).
        source: where the file comes from (a URL or a command).
        card: what the weights were trained on, in one line (the preprocessing their card holds, for ours).
        first_conv: state-dict key of the first convolution's weight in the file.
        head: prefixes of head keys the file carries, dropped on load.
    """

    name: str
    encoder: str
    file: str
    sha256: str
    source: str
    card: str
    first_conv: str = "conv1.weight"
    head: tuple[str, ...] = ()


_MEDICALNET = "https://github.com/Tencent/MedicalNet (weights: the README's Google Drive / Weiyun links)"
_MEDICALNET_CARD = ("MedicalNet's 8 (3DSeg-8) or 23 segmentation datasets, CT and MR, each resampled to its own "
                    "median spacing, z-scored per volume (paper: arXiv:1904.00625)")

PRETRAINED: tuple[PretrainedWeights, ...] = (
    *(PretrainedWeights(f"resnet{d}.medicalnet", f"resnet{d}", f"resnet_{d}.pth", "", _MEDICALNET,
                        _MEDICALNET_CARD.replace("8 (3DSeg-8) or 23", "8 (3DSeg-8)"), head=("conv_seg.",))
      for d in (10, 18, 34, 50, 101, 152, 200)),
    *(PretrainedWeights(f"resnet{d}.medicalnet_23dataset", f"resnet{d}", f"resnet_{d}_23dataset.pth", "",
                        _MEDICALNET, _MEDICALNET_CARD.replace("8 (3DSeg-8) or 23", "23"), head=("conv_seg.",))
      for d in (10, 18, 34, 50)),
    *(PretrainedWeights(f"resnet{d}.kinetics", f"resnet{d}", f"resnet-{d}-kinetics.pth", "",
                        "https://github.com/kenshohara/3D-ResNets-PyTorch (pretrained models)",
                        "Kinetics-400 RGB video clips; conv1's 3 channels summed to 1 on load", head=("fc.",))
      for d in (18, 34, 50, 101)),
)
"""The weight files known to fit the registry. MedicalNet publishes no checksums (``sha256`` empty): the loader's
strict key and shape check (:func:`model.nets.weights.load_encoder_weights`) is what guards against a wrong
file. docs/WEIGHTS.md says where each file comes from and what loading it does."""


def pretrained_for(encoder: str) -> list[PretrainedWeights]:
    """The known weight files of one encoder, in :data:`PRETRAINED` order."""
    return [w for w in PRETRAINED if w.encoder == encoder]
