"""``med3d-train export RUN --format nnunet --plans PLANS.json OUT.pth``: a checkpoint nnU-Net fine-tunes from.

``nnUNetv2_train DATASET 3d_fullres FOLD -p PLANS_NAME -pretrained_weights OUT.pth`` builds its network from the
plans and calls nnU-Net's ``load_pretrained_weights``, which reads ``OUT.pth["network_weights"]`` and requires
every key of its network but the segmentation layers (``.seg_layers.``) to be there with the same shape; it then
loads them all. So the file holds nnU-Net's whole network for these plans: built here the way nnU-Net builds it
(``dynamic_network_architectures``' ``ResidualEncoderUNet`` from ``configurations.<c>.architecture``, input
channels from the ``dataset.json`` beside the plans, initialised by the network's own ``initialize``), with our
encoder's weights in ``encoder.*`` (and in the second names nnU-Net's blocks give the same tensors). The decoder
stays as nnU-Net initialises it.

Shapes are checked here, before anything is written: an encoder whose widths, blocks or kernels differ from the
plans' is refused with the plans entry named, not at nnU-Net's start. Strides do not change shapes: plans with
other (anisotropic) strides take the weights, which is reported.
"""

from __future__ import annotations

import json
import pydoc
from pathlib import Path
from typing import Any

import torch

from model.export.formats import ExportRequest, ExportUsageError, register_format
from model.export.nnunet_plans import ALLOWED_CLASSES, encoder_for_plans, plans_architecture

__all__ = ["build_plans_network", "encoder_for_plans", "export_nnunet", "plans_architecture"]

_SHAPE_FIELDS = ("n_stages", "features_per_stage", "n_blocks_per_stage", "kernel_sizes", "conv_bias")


def build_plans_network(arch: dict[str, Any], in_chans: int, num_classes: int = 2, seed: int = 0) -> torch.nn.Module:
    """nnU-Net's network for an architecture entry, built and initialised as nnU-Net builds it (deep supervision
    on, as its trainer has it; it adds no tensors)."""
    from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet

    kwargs = dict(arch["arch_kwargs"])
    for key in arch.get("_kw_requires_import", ()):
        if kwargs.get(key) is not None:
            if kwargs[key] not in ALLOWED_CLASSES.get(key, ()):  # plans_architecture checked it; built only so
                raise ValueError(f"architecture.arch_kwargs.{key} {kwargs[key]!r} is not an allowed class")
            kwargs[key] = pydoc.locate(kwargs[key])
    torch.manual_seed(seed)
    net = ResidualEncoderUNet(input_channels=int(in_chans), num_classes=int(num_classes), deep_supervision=True,
                              **kwargs)
    net.apply(net.initialize)
    return net


MAX_CHANNELS = 64


def _in_chans(plans: Path, fallback: int, log: Any) -> int:
    dataset = plans.parent / "dataset.json"
    if dataset.is_file():
        try:
            channels = json.loads(dataset.read_text()).get("channel_names") or {}
        except (OSError, UnicodeDecodeError, ValueError, AttributeError, RecursionError) as exc:
            raise ValueError(f"{dataset}: cannot read channel_names ({type(exc).__name__}: {exc})") from None
        if not isinstance(channels, dict) or len(channels) > MAX_CHANNELS:
            raise ValueError(f"{dataset}: channel_names must map at most {MAX_CHANNELS} channel indices to names")
        if channels:
            return len(channels)
    log(f"note: no dataset.json beside {plans}: the network gets {fallback} input channel(s), the encoder's")
    return fallback


def _differences(arch: dict[str, Any], ours: dict[str, Any]) -> list[str]:
    kw = arch["arch_kwargs"]
    out = []
    for name in _SHAPE_FIELDS:
        theirs, mine = kw.get(name), ours[name]
        norm = (lambda v: json.loads(json.dumps(v, default=list)))
        if norm(theirs) != norm(mine):
            out.append(f"arch_kwargs.{name} is {norm(theirs)}, the encoder's {norm(mine)}")
    return out


def _unlike(arch: dict[str, Any], encoder: Any) -> list[str]:
    """How the plans' encoder differs from ours, field by field (checked before nnU-Net's network is built)."""
    from model.nets.resenc import nnunet_arch_kwargs

    ours = nnunet_arch_kwargs(**encoder.config, in_chans=encoder.in_chans)
    ours["kernel_sizes"] = [list(k) for k in ours["kernel_sizes"]]
    kw = {**arch["arch_kwargs"]}
    kw["kernel_sizes"] = [k if isinstance(k, list) else [k] * 3 for k in kw.get("kernel_sizes", [])]
    return _differences({**arch, "arch_kwargs": kw}, ours)


def _refuse(arch: dict[str, Any], encoder: Any, where: str, why: str) -> ValueError:
    """The one-line refusal: what differs, and the encoder to pretrain for these plans."""
    from model.nets.resenc import encoder_name_for_plans

    try:
        name = encoder_name_for_plans(arch["arch_kwargs"], where)
        fix = (f"Pretrain the encoder these plans build: --encoder {name} (or --encoder-from-plans {where}), "
               "then export that run")
    except ValueError as exc:
        fix = f"No Med3D encoder has these plans' shapes ({exc})"
    return ValueError(f"{where}: nnU-Net's network for these plans cannot take the {encoder.name} encoder: "
                      f"configurations.{arch['_configuration']}.architecture.{why}. {fix}")


def _check_fields(arch: dict[str, Any], encoder: Any, where: str) -> None:
    """Before nnU-Net's network is built: the plans' encoder fields equal ours (a plans' sizes are not ours to
    allocate)."""
    differ = _unlike(arch, encoder)
    if differ:
        raise _refuse(arch, encoder, where, "; ".join(differ))


def _check_tensors(net: torch.nn.Module, state: dict[str, torch.Tensor], arch: dict[str, Any], encoder: Any,
                   where: str) -> None:
    """After it is built: every encoder tensor of nnU-Net's network has ours' shape."""
    theirs = {k: v.shape for k, v in net.encoder.state_dict().items() if ".all_modules." not in k}
    bad = [k for k in sorted(set(theirs) | set(state)) if k not in theirs or k not in state
           or theirs[k] != state[k].shape]
    if bad:
        show = ", ".join(f"{k} ({tuple(theirs[k]) if k in theirs else 'absent'} in the plans' network, "
                         f"{tuple(state[k].shape) if k in state else 'absent'} in the encoder)" for k in bad[:3])
        raise _refuse(arch, encoder, where, f"the tensors differ ({len(bad)}: {show})")


@register_format("nnunet", "OUT.pth that nnUNetv2_train -pretrained_weights loads: nnU-Net's network for --plans, "
                           "its encoder ours (ResEnc encoders).")
def export_nnunet(request: ExportRequest) -> list[str]:
    """nnU-Net's whole network for ``--plans`` with our encoder's weights, as ``{"network_weights": ...}``."""
    from model.files import atomic_torch_save
    from model.training.pretrain import load_pretrained_encoder

    plans, configuration = request.options.get("plans"), request.options.get("configuration") or "3d_fullres"
    if not plans:
        raise ExportUsageError("--format nnunet needs --plans PLANS.json (nnUNet_preprocessed/DatasetXXX/"
                               "nnUNetResEncUNetMPlans.json of the dataset nnU-Net will train on)")
    if request.out.is_dir() or request.out.suffix != ".pth":
        raise ExportUsageError(f"OUT {request.out}: --format nnunet writes one OUT.pth file")
    arch = {**plans_architecture(plans, configuration), "_configuration": configuration}
    encoder, report = load_pretrained_encoder(request.checkpoint)
    if getattr(encoder, "family", "") != "resenc":
        raise ValueError(f"encoder {encoder.name} is of the {encoder.family} family: nnU-Net's ResEnc U-Net takes the "
                         "resenc family only (pretrain with --encoder resenc_m)")
    request.log(report.short())
    in_chans = _in_chans(Path(plans), encoder.in_chans, request.log)
    _check_fields(arch, encoder, str(plans))
    net = build_plans_network(arch, in_chans)
    state = dict(encoder.state_dict())
    first = f"{encoder.first_conv}.weight"
    lines = []
    if state[first].shape[1] != in_chans:
        from model.nets.weights import _adapt_conv1

        state[first], note = _adapt_conv1(state[first], in_chans, first)
        lines.append(f"adapted the first conv to the dataset's {in_chans} channels ({note})")
    _check_tensors(net, state, arch, encoder, str(plans))
    full = {**state, **{alias: state[canonical] for alias, canonical in encoder.alias_keys().items()}}
    net.encoder.load_state_dict(full, strict=True)
    strides = [list(s) if isinstance(s, (list, tuple)) else [s] * 3 for s in arch["arch_kwargs"].get("strides", [])]
    if strides != [[s] * 3 for s in encoder.config["strides"]]:
        lines.append(f"note: the plans' strides {strides} differ from the encoder's {encoder.config['strides']}: "
                     "the weights load (nnU-Net checks shapes), the features are computed at other resolutions")
    weights = {k: v.detach().to("cpu").clone().contiguous() for k, v in net.state_dict().items()}
    provenance = {"encoder": encoder.name, "source": str(request.checkpoint), "plans": str(plans),
                  "configuration": configuration}
    atomic_torch_save({"network_weights": weights, "med3d": provenance}, request.out)
    n_enc = sum(k.startswith("encoder.") or k.startswith("decoder.encoder.") for k in weights)
    return [*lines, f"wrote nnU-Net's {configuration} network for {plans} to {request.out}: {n_enc} encoder tensors "
            f"from {encoder.name}, the decoder as nnU-Net initialises it; train with nnUNetv2_train DATASET "
            f"{configuration} FOLD -p PLANS_NAME -pretrained_weights {request.out}"]
