"""Strict import and export of encoder weights (MedicalNet, Kinetics 3D-ResNets, nnU-Net, our own checkpoints).

Loading works for every encoder of the registry (:mod:`model.nets.encoders`): keys and shapes come from the
encoder itself, the first convolution from its ``first_conv``. Export to MedicalNet's format is for the ResNet
family only (MedicalNet has no other architecture).

MedicalNet's own loader keeps only the keys that happen to match, so a checkpoint of the wrong depth or
shortcut type trains from random weights without a word. Here every key of the file is either loaded or
explicitly explained (a stripped ``module.`` prefix, a dropped head, an adapted first conv, a filled
``num_batches_tracked``) and the :class:`LoadReport` says which; anything else raises
:class:`WeightsMismatchError` naming the keys and the likely cause.

Accepted sources (a path, loaded with ``torch.load(weights_only=True)``, or an already loaded dict):

- MedicalNet: ``{"state_dict": {"module.conv1.weight": ..., ...}}`` (``conv_seg.*`` head dropped);
- Kinetics (kenshohara/3D-ResNets-PyTorch): ``{"state_dict": {...,"module.fc.weight"}, "arch": ...}``; its
  3-channel ``conv1`` is summed over the input channels (RGB -> 1 channel), ``fc.*`` dropped;
- ours: ``{"model": state dict of a network with ``encoder.*`` keys, ...}``: ``encoder.*`` taken, the rest dropped;
- nnU-Net (``checkpoint_final.pth`` of a ResEnc network): ``{"network_weights": {"encoder.*", "decoder.*"}, ...}``:
  ``encoder.*`` taken (its duplicate ``all_modules`` names dropped), the decoder dropped;
- a bare state dict of any of these;
- a ``.safetensors`` file (``med3d-train export --format safetensors``, or any other): a bare state dict, read
  without pickle and checked first (:mod:`model.export.safetensors_card`).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from model.files import overreaching_tensor, read_weights_file
from model.nets.encoders import ENCODERS, Encoder, create_encoder
from model.weight_files import WeightsMismatchError

__all__ = [
    "LoadReport",
    "WeightsMismatchError",
    "detect_depth",
    "detect_encoder",
    "encoder_state_for_export",
    "export_medicalnet",
    "load_encoder_weights",
]

# Wrappers that prefix every key: DataParallel/DDP ("module.") and torch.compile ("_orig_mod.").
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# Classifier / segmentation heads that encoder checkpoints carry: MedicalNet, Kinetics, ours.
_HEAD_PREFIXES = ("conv_seg.", "fc.", "head.")
_NBT = "num_batches_tracked"
_SHOW = 10


@dataclass(frozen=True)
class LoadReport:
    """What :func:`load_encoder_weights` did, key by key.

    Attributes:
        encoder: registry name of the encoder loaded into.
        source: file path, or ``"<dict>"``.
        source_format: ``"medicalnet"``, ``"kinetics"``, ``"nnunet"``, ``"med3d"`` (ours) or ``"state_dict"``
            (bare).
        loaded: number of state-dict entries copied into the encoder (all of them).
        stripped_prefix: wrapper prefix removed from every key (``"module."``), ``""`` if none.
        dropped: file keys (after prefix stripping) deliberately not loaded: heads, non-encoder modules.
        adapted: encoder keys whose tensor was transformed to fit (the first conv's weight); see ``notes``.
        filled: encoder keys absent from the file and set to a default (``num_batches_tracked`` = 0 in
            checkpoints that predate it).
        notes: one human sentence per adaptation or fill.
    """

    encoder: str
    source: str
    source_format: str
    loaded: int
    stripped_prefix: str = ""
    dropped: tuple[str, ...] = ()
    adapted: tuple[str, ...] = ()
    filled: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (to record in a checkpoint's config or a metrics log)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def short(self) -> str:
        """One line for a training log: what was loaded, how many keys were dropped and why, and every
        adaptation (those change the weights); the dropped names are in ``str()`` and :meth:`to_dict`."""
        return self._text(full=False)

    def __str__(self) -> str:
        """The whole account: :meth:`short`'s, the prefix stripped, and the name of every dropped key."""
        return self._text(full=True)

    def _text(self, full: bool) -> str:
        parts = [f"Loaded {self.loaded} tensors into {self.encoder} from {self.source} ({self.source_format} format)"]
        if self.stripped_prefix and full:
            parts.append(f"stripped the prefix {self.stripped_prefix!r} from every key")
        if self.dropped:
            why = ", ".join(sorted(self.dropped)) if full else "the source network's heads: the task trains its own"
            parts.append(f"dropped {len(self.dropped)} non-encoder keys ({why})")
        parts.extend(self.notes)
        if len(parts) == 1:
            parts.append("every key matched exactly")
        return "; ".join(parts) + "."


def _preview(keys: list[str] | tuple[str, ...], n: int = _SHOW) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:n])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > n else "")


def _unwrap(obj: Any) -> tuple[str, dict[str, torch.Tensor]]:
    """Checkpoint object -> (format guess, raw state dict)."""
    if not isinstance(obj, Mapping):
        raise WeightsMismatchError(f"not a checkpoint: expected a dict, got {type(obj).__name__}")
    if isinstance(obj.get("state_dict"), Mapping):
        sd = dict(obj["state_dict"])
        # MedicalNet files hold only the state dict; Kinetics ones also "arch" and a classifier "fc".
        kinetics = "arch" in obj or any(k.startswith("fc.") for k in _strip_wrappers(list(sd))[1])
        return ("kinetics" if kinetics else "medicalnet"), sd
    if isinstance(obj.get("model"), Mapping):
        return "med3d", dict(obj["model"])
    if isinstance(obj.get("network_weights"), Mapping):  # nnU-Net v2's checkpoint_final.pth / checkpoint_best.pth
        return "nnunet", dict(obj["network_weights"])
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return "state_dict", dict(obj)
    raise WeightsMismatchError(
        "not a recognised checkpoint: expected a 'state_dict' (MedicalNet, Kinetics), 'network_weights' (nnU-Net) "
        "or 'model' (Med3D) entry, "
        f"or a bare state dict; top-level keys are {_preview([str(k) for k in obj])}"
    )


@dataclass
class _Normalized:
    state: dict[str, torch.Tensor]
    prefix: str
    dropped: list[str]


def _strip_wrappers(keys: list[str]) -> tuple[str, list[str]]:
    """Remove wrapper prefixes shared by every key (``module.``, ``_orig_mod.``, nested) -> (prefix, keys)."""
    prefix = ""
    while keys:
        p = next((p for p in _WRAPPER_PREFIXES if all(k.startswith(p) for k in keys)), None)
        if p is None:
            break
        prefix += p
        keys = [k[len(p):] for k in keys]
    return prefix, keys


@functools.lru_cache(maxsize=4)
def _tops_of(names: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(sorted({k.split(".")[0] + "." for name in names for k in _reference(name)[1]}))


def _encoder_tops() -> tuple[str, ...]:
    """The top-level module prefixes of every registered encoder (``conv1.``, ``layer1.``, ``stem.``, ...)."""
    return _tops_of(tuple(ENCODERS))


def _normalize(sd: Mapping[str, torch.Tensor]) -> _Normalized:
    """Strip wrapper prefixes, take ``encoder.*`` if present, drop known heads. Raises on ambiguous keys."""
    prefix, keys = _strip_wrappers(list(sd))
    state = dict(zip(keys, sd.values()))
    dropped: list[str] = []
    if any(k.startswith("encoder.") for k in state):
        # A whole network (ours, nnU-Net's): the encoder is a submodule; heads, decoders are the rest.
        stray = [k for k in state if k.startswith(_encoder_tops())]
        if stray:
            raise WeightsMismatchError(
                f"ambiguous checkpoint: it has 'encoder.*' keys and also top-level encoder keys "
                f"({_preview(stray)}); which one is the encoder?"
            )
        dropped = [k for k in state if not k.startswith("encoder.")]
        state = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    else:
        dropped = [k for k in state if k.startswith(_HEAD_PREFIXES)]
        state = {k: v for k, v in state.items() if not k.startswith(_HEAD_PREFIXES)}
    return _Normalized(state, prefix, dropped)


@functools.lru_cache(maxsize=None)
def _reference(name: str) -> tuple[dict[str, Any], dict[str, tuple[int, ...]]]:
    """({shortcut, first_conv, aliases}, state-dict shapes) of a registered encoder, built on the meta device (no
    memory)."""
    with torch.device("meta"):
        enc = create_encoder(name)
    info = {"shortcut": getattr(enc, "shortcut", None), "first_conv": f"{enc.first_conv}.weight",
            "aliases": tuple(getattr(enc, "alias_keys", dict)())}
    return info, {k: tuple(v.shape) for k, v in enc.state_dict().items()}


def _shape_key(key: str, shape: tuple[int, ...], first_conv: str) -> tuple[str, tuple[int, ...]]:
    # The first conv's input channels depend on in_chans, not on the architecture.
    if key == first_conv and len(shape) == 5:
        shape = (shape[0], -1, *shape[2:])
    return key, shape


def _structure_score(state: Mapping[str, tuple[int, ...]], name: str) -> float:
    info, ref = _reference(name)
    skip = set(info["aliases"])
    a = {_shape_key(k, s, info["first_conv"]) for k, s in state.items() if not k.endswith(_NBT) and k not in skip}
    b = {_shape_key(k, s, info["first_conv"]) for k, s in ref.items() if not k.endswith(_NBT)}
    return len(a & b) / max(len(a | b), 1)


def detect_encoder(state_dict: Mapping[str, Any]) -> str:
    """Registry name (``"resnet18"``, ``"resenc_m"``, ...) whose keys and shapes best fit a checkpoint, or
    ``"unknown"``.

    Accepts a full checkpoint or a state dict, with or without ``module.`` and heads; only shapes are read (meta
    tensors work). The first conv's input channels and ``num_batches_tracked`` entries are ignored. Returns
    ``"unknown"`` when no encoder shares at least half of the (key, shape) pairs. Of encoders that fit equally
    (nnU-Net's M and L presets build the same encoder) the first registered is named.
    """
    try:
        _, raw = _unwrap(state_dict)
        state = _normalize(raw).state
    except WeightsMismatchError:
        return "unknown"
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    scores = {name: _structure_score(shapes, name) for name in ENCODERS}
    best = max(scores, key=scores.__getitem__)
    return best if scores[best] >= 0.5 else "unknown"


detect_depth = detect_encoder
"""The former name of :func:`detect_encoder` (it named only ResNets then)."""


def _likely_cause(encoder: Encoder, state: Mapping[str, torch.Tensor], only_conv1: bool) -> str:
    guess = detect_encoder(state)
    if guess not in ("unknown", encoder.name):
        cause = f"this file looks like {guess} weights but the encoder is {encoder.name}"
        a, b = _reference(guess)[0]["shortcut"], getattr(encoder, "shortcut", None)
        if a and b and a != b:
            cause = f"shortcut type {a} vs {b}: {cause}"
        return f"{cause}; build the encoder with create_encoder({guess!r}) or pick the {encoder.name} file"
    if only_conv1:
        return (
            f"{encoder.first_conv} input channels differ between the file and the encoder; pass adapt_in_chans=True "
            "to adapt them "
            "(sum to 1 channel, or repeat and rescale)"
        )
    if guess == "unknown":
        return (
            f"the file matches none of the registered encoders ({', '.join(ENCODERS)}); it may be another "
            "architecture (ResNeXt, WideResNet, DenseNet, an nnU-Net plan of other widths) or not an encoder "
            "checkpoint at all"
        )
    return (
        f"the file has the structure of {encoder.name} but differs in the keys above; it may carry a head or "
        "module this loader does not know (known heads: conv_seg.*, fc.*, head.*)"
    )


def _adapt_conv1(w: torch.Tensor, in_chans: int, key: str = "conv1.weight") -> tuple[torch.Tensor, str]:
    """(O, C, k, k, k) -> (O, in_chans, k, k, k), keeping the response to a constant input unchanged."""
    c = w.shape[1]
    if in_chans == 1:
        return w.sum(dim=1, keepdim=True), f"{key}: summed {c} input channels to 1"
    reps = -(-in_chans // c)
    out = w.repeat(1, reps, 1, 1, 1)[:, :in_chans] * (c / in_chans)
    return out, f"{key}: repeated {c} input channels to {in_chans} and scaled by {c}/{in_chans}"


def _read_source(source: str | os.PathLike[str] | Mapping[str, Any]) -> tuple[str, Any]:
    if isinstance(source, Mapping):
        return "<dict>", source
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    if path.suffix == ".safetensors":  # no pickle; a bare state dict (model.export.safetensors_card)
        from model.weight_files import load_safetensors

        return str(path), load_safetensors(path)[0]
    return str(path), read_weights_file(path)


def load_encoder_weights(
    encoder: Encoder, source: str | os.PathLike[str] | Mapping[str, Any], *, adapt_in_chans: bool = True
) -> LoadReport:
    """Load a MedicalNet, Kinetics, nnU-Net, Med3D or bare checkpoint into ``encoder`` (any registered encoder),
    strictly.

    Every encoder entry must come from the file and every file entry must go into the encoder, except the
    explained ones (see :class:`LoadReport`). With ``adapt_in_chans``, a first conv with another number of input
    channels is adapted (e.g. Kinetics RGB summed to 1 channel) and reported. Raises
    :class:`WeightsMismatchError` otherwise, before touching the encoder.
    """
    where, obj = _read_source(source)
    problem = overreaching_tensor(obj)  # before conv1 is adapted (repeat) or anything is copied
    if problem:
        raise WeightsMismatchError(f"checkpoint {where}: {problem} (a stride-0 or expanded view): a damaged or "
                                   "crafted file; nothing was loaded")
    fmt, raw = _unwrap(obj)
    family = getattr(encoder, "family", "resnet")
    if fmt in ("medicalnet", "kinetics") and family != "resnet":
        raise WeightsMismatchError(f"checkpoint {where} is a {fmt} file: those hold 3D ResNets only, and encoder "
                                   f"{encoder.name} is of the {family} family; load it into a resnet encoder "
                                   "(--depth N), or give weights of this family")
    norm = _normalize(raw)
    state, aliases = encoder.adapt_state(dict(norm.state))
    norm.dropped.extend(aliases)
    expected = encoder.state_dict()
    adapted: list[str] = []
    filled: list[str] = []
    notes: list[str] = []

    first = f"{encoder.first_conv}.weight"
    w = state.get(first)
    want = expected[first].shape
    conv1_only_channels = (
        isinstance(w, torch.Tensor) and w.dim() == 5 and w.shape[1] != want[1]
        and (w.shape[0], *w.shape[2:]) == (want[0], *want[2:])
    )
    if conv1_only_channels and adapt_in_chans:
        state[first], note = _adapt_conv1(w, want[1], first)
        adapted.append(first)
        notes.append(note)

    if state and any(k.endswith(_NBT) for k in expected) and not any(k.endswith(_NBT) for k in state):
        # Checkpoints written before PyTorch 0.4 (the 2017 Kinetics releases) have no batch counters at all.
        filled = [k for k in expected if k.endswith(_NBT)]
        for k in filled:
            state[k] = torch.zeros((), dtype=expected[k].dtype)
        notes.append(f"set {len(filled)} missing num_batches_tracked counters to 0 (checkpoint predates them)")
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or mismatched:
        shapes = [f"{k} (file {tuple(state[k].shape)}, encoder {tuple(expected[k].shape)})" for k in mismatched]
        lines = [f"checkpoint {where} does not fit encoder {encoder.name} (in_chans={encoder.in_chans}):"]
        for label, keys in (("missing from the file", missing), ("unexpected in the file", unexpected),
                            ("shape mismatch", shapes)):
            if keys:
                lines.append(f"  {len(keys)} {label}: {_preview(keys)}")
        only_conv1 = not missing and not unexpected and mismatched == [first]
        lines.append(f"  likely cause: {_likely_cause(encoder, norm.state, only_conv1)}")
        raise WeightsMismatchError("\n".join(lines))

    encoder.load_state_dict(state, strict=True)
    return LoadReport(
        encoder=encoder.name,
        source=where,
        source_format=fmt,
        loaded=len(expected),
        stripped_prefix=norm.prefix,
        dropped=tuple(sorted(norm.dropped)),
        adapted=tuple(adapted),
        filled=tuple(filled),
        notes=tuple(notes),
    )


def _medicalnet_only(encoder: nn.Module) -> None:
    family = getattr(encoder, "family", "resnet")
    if family != "resnet":
        name = getattr(encoder, "name", "?")
        raise ValueError(f"encoder {name} is of the {family} family: MedicalNet's format holds "
                         "its 3D ResNets only; export it with --format safetensors (or --format nnunet for nnU-Net's "
                         "residual encoders)")


def encoder_state_for_export(encoder: nn.Module) -> dict[str, torch.Tensor]:
    """The encoder's state dict in MedicalNet's naming: ``{"module.conv1.weight": tensor, ...}`` (CPU copies).
    ResNets only: raises ``ValueError`` for another family."""
    _medicalnet_only(encoder)
    return {"module." + k: v.detach().to("cpu", copy=True).contiguous() for k, v in encoder.state_dict().items()}


def export_medicalnet(encoder: nn.Module, path: str | os.PathLike[str]) -> Path:
    """Write ``{"state_dict": encoder_state_for_export(encoder)}`` to ``path`` atomically; returns the path.

    The file loads with MedicalNet's code and MONAI's ``resnetNN(pretrained=...)`` (for the depths they know) and
    back with :func:`load_encoder_weights`. A crash mid-write leaves any previous file intact. ResNets only:
    raises ``ValueError`` naming the formats that hold another family.
    """
    _medicalnet_only(encoder)
    from model.files import atomic_torch_save

    return atomic_torch_save({"state_dict": encoder_state_for_export(encoder)}, path)
