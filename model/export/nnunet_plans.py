"""Reading an nnU-Net plans file's network entry, checked before anything is built from it.

A plans file is JSON anyone can hand over, and nnU-Net builds its network from it by importing the classes it
names (``_kw_requires_import``: ``conv_op``, ``norm_op``, ``dropout_op``, ``nonlin``) and calling them with the
keyword arguments it gives. Read as it is, a crafted file could name any importable callable
(``subprocess.run`` with ``nonlin_kwargs`` as its arguments), or sizes that allocate terabytes (a stage of 10⁹
channels) or build for hours (10⁷ blocks). So every field the network is built from is checked here first:
classes from the short lists nnU-Net's planners write, their keyword arguments by name and type, and the sizes
within bounds far above any real plan (widths ≤ 4096, blocks ≤ 64, kernels ≤ 7, strides ≤ 8, ≤ 8 stages).
Each refusal is one line naming the entry, e.g. ``plans.json: configurations.3d_fullres.architecture.arch_kwargs.
nonlin is 'subprocess.Popen': not one of ...``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from model.nets.resenc import MAX_BLOCKS, MAX_STAGES, MAX_WIDTH

__all__ = ["ALLOWED_CLASSES", "encoder_for_plans", "plans_architecture"]

_NN = "torch.nn."
ALLOWED_CLASSES: dict[str, frozenset[str | None]] = {
    "conv_op": frozenset({"torch.nn.modules.conv.Conv3d", "torch.nn.Conv3d"}),
    "norm_op": frozenset({"torch.nn.modules.instancenorm.InstanceNorm3d", "torch.nn.InstanceNorm3d",
                          "torch.nn.modules.batchnorm.BatchNorm3d", "torch.nn.BatchNorm3d"}),
    "dropout_op": frozenset({None, "torch.nn.modules.dropout.Dropout3d", "torch.nn.Dropout3d",
                             "torch.nn.modules.dropout.Dropout", "torch.nn.Dropout"}),
    "nonlin": frozenset({f"{_NN}{m}{n}" for n in ("LeakyReLU", "ReLU", "PReLU", "GELU", "ELU")
                         for m in ("", "modules.activation.")}),
}
"""The classes a 3D ResEnc plans may name (what nnU-Net's planners write, and their ``torch.nn`` short names)."""

_KWARGS: dict[str, dict[str, tuple[type, ...]]] = {
    "norm_op_kwargs": {"eps": (float, int), "affine": (bool,), "momentum": (float, int, type(None)),
                       "track_running_stats": (bool,)},
    "nonlin_kwargs": {"inplace": (bool,), "negative_slope": (float, int), "alpha": (float, int)},
    "dropout_op_kwargs": {"p": (float, int), "inplace": (bool,)},
}

_BOUNDS = {"n_stages": MAX_STAGES, "features_per_stage": MAX_WIDTH, "n_blocks_per_stage": MAX_BLOCKS,
           "n_conv_per_stage_decoder": MAX_BLOCKS, "kernel_sizes": 7, "strides": 8}


def _configuration(plans: dict[str, Any], name: str, where: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    configs = plans.get("configurations")
    if not isinstance(configs, dict) or name not in configs or not isinstance(configs[name], dict):
        have = ", ".join(map(str, configs)) if isinstance(configs, dict) else "none"
        raise ValueError(f"{where}: no configuration {name!r} in 'configurations' (it has: {have}); pass "
                         "--configuration NAME")
    if name in seen:
        raise ValueError(f"{where}: configurations.{name}.inherits_from goes round in a circle "
                         f"({' -> '.join((*seen, name))})")
    conf = dict(configs[name])
    parent = conf.pop("inherits_from", None)  # nnU-Net's cascade configurations inherit from another
    if parent is None:
        return conf
    return {**_configuration(plans, str(parent), where, (*seen, name)), **conf}


def _ints(value: Any, n: int | None, per: int | None, bound: int) -> bool:
    """``value`` is a list (of ``n`` entries when given) of ints in 1..bound, or of ``per``-lists of them."""
    if not isinstance(value, list) or (n is not None and len(value) != n) or not value:
        return False
    for v in value:
        items = v if per is not None and isinstance(v, list) else [v]
        if per is not None and isinstance(v, list) and len(v) != per:
            return False
        if not all(type(i) is int and 1 <= i <= bound for i in items):
            return False
    return True


def _check(arch: dict[str, Any], where: str) -> None:
    """Refuse, naming the entry, anything nnU-Net's network should not be built from."""
    kw = arch["arch_kwargs"]

    def refuse(key: str, why: str) -> ValueError:
        shown = repr(kw.get(key))
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        return ValueError(f"{where}.arch_kwargs.{key} is {shown}: {why}")

    imports = arch.get("_kw_requires_import", [])
    if not isinstance(imports, list) or not all(isinstance(i, str) and i in ALLOWED_CLASSES for i in imports):
        raise ValueError(f"{where}._kw_requires_import is {imports!r}: only {sorted(ALLOWED_CLASSES)} may name "
                         "classes")
    for key, allowed in ALLOWED_CLASSES.items():
        if not isinstance(kw.get(key), (str, type(None))) or kw.get(key) not in allowed:
            names = sorted(a.rsplit(".", 1)[1] for a in allowed if a and a.startswith(_NN) and a.count(".") == 2)
            raise refuse(key, f"only torch.nn.{', '.join(names)} (or their torch.nn.modules paths)"
                              f"{', or null,' if None in allowed else ''} may be named here")
    for key, fields in _KWARGS.items():
        given = kw.get(key)
        if given is None:
            continue
        if not isinstance(given, dict):
            raise refuse(key, "not an object of keyword arguments")
        for name, value in given.items():
            if name not in fields or not isinstance(value, fields[name]) or \
                    (isinstance(value, float) and not math.isfinite(value)):
                raise refuse(key, f"{name!r} is not one of the arguments {sorted(fields)} with a finite value")
    n = kw.get("n_stages")
    if type(n) is not int or not 1 <= n <= _BOUNDS["n_stages"]:
        raise refuse("n_stages", f"not a stage count from 1 to {_BOUNDS['n_stages']}")
    shapes = {"features_per_stage": (n, None), "n_blocks_per_stage": (n, None), "n_conv_per_stage_decoder": (n - 1, None),
              "kernel_sizes": (n, 3), "strides": (n, 3)}
    for key, (count, per) in shapes.items():
        if count == 0 and kw.get(key) in ([], None):
            continue
        if not _ints(kw.get(key), count, per, _BOUNDS[key]):
            what = "integers" if per is None else "integers or [z, y, x] lists"
            raise refuse(key, f"not {count} {what} from 1 to {_BOUNDS[key]} (one per stage)")
    if not isinstance(kw.get("conv_bias", True), bool):
        raise refuse("conv_bias", "not true or false")


def plans_architecture(plans_path: str | Path, configuration: str = "3d_fullres") -> dict[str, Any]:
    """``configurations.<configuration>.architecture`` of an nnU-Net plans file, checked to be a residual-encoder
    U-Net built from allowed classes and sizes: ``{"network_class_name", "arch_kwargs", "_kw_requires_import"}``."""
    where = str(plans_path)
    try:
        plans = json.loads(Path(plans_path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"{where}: cannot read the plans ({type(exc).__name__}: {exc})") from None
    if not isinstance(plans, dict):
        raise ValueError(f"{where}: not an nnU-Net plans file (a JSON object with 'configurations')")
    arch = _configuration(plans, configuration, where).get("architecture")
    if not isinstance(arch, dict) or not isinstance(arch.get("arch_kwargs"), dict):
        raise ValueError(f"{where}: configurations.{configuration}.architecture has no arch_kwargs: plans written by "
                         "nnU-Net v2.4 or later are needed")
    name = str(arch.get("network_class_name", ""))
    if not name.endswith("ResidualEncoderUNet"):  # never imported by this name: ours is built
        raise ValueError(f"{where}: configurations.{configuration}.architecture.network_class_name is {name[:80]!r}, "
                         "not ResidualEncoderUNet: plan with a ResEnc planner (nnUNetv2_plan_experiment -pl "
                         "nnUNetPlannerResEncM)")
    _check(arch, f"{where}: configurations.{configuration}.architecture")
    return arch


def encoder_for_plans(plans_path: str | Path, configuration: str = "3d_fullres") -> str:
    """The Med3D encoder name (``resenc_f32-64-128-256_b1-3-4-6``) of the ResEnc encoder an nnU-Net plans file's
    configuration builds: pretrain it, and ``export --format nnunet --plans`` takes it."""
    from model.nets.resenc import encoder_name_for_plans

    arch = plans_architecture(plans_path, configuration)
    return encoder_name_for_plans(arch["arch_kwargs"], f"{plans_path}: configurations.{configuration}.architecture")
