"""Frozen training configuration, written to ``RUN_DIR/config.json`` and into every checkpoint.

A run is reproducible from its :class:`TrainConfig` alone: the encoder, the data it saw (store, excluded scans,
patch sampling seed), the optimiser and schedule. ``--resume`` reads the config back from the checkpoint; only the
fields in :data:`RUNTIME_FIELDS` (where and how fast it runs, how often it reports) may differ on resume.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from catalog.values import check_fields, device_problem, read_json, show

__all__ = ["MAX_LR", "MAX_SIDE", "RUNTIME_FIELDS", "JsonConfig", "RunSettings", "TrainConfig", "check_optimizer",
           "check_sides", "config_conflicts"]

OPTIMIZERS = ("adam", "sgd")
SCHEDULERS = ("poly", "cosine", "constant")
LOSSES = ("ce", "ce+dice")
DOMAIN_SAMPLING = ("size", "uniform")
CHANNELS = ("first", "random")

RUNTIME_FIELDS = frozenset(
    {"store", "out", "device", "workers", "val_every", "val_max_cases", "val_overlap", "ckpt_every", "compile",
     "amp", "log_every"}
)
"""Fields that do not change what the weights become (on one device): a resumed run may change them."""

MAX_LR = 10.0
"""The largest learning rate a config takes: Adam and SGD diverge far below it (the paper's rates: 1e-3, 1e-2)."""
MAX_SIDE = 1024
"""The longest patch or input side (voxels): twice a 512-voxel CT slice; a 1024³ float32 input is 4 GiB."""


def check_sides(cfg: Any, *names: str) -> None:
    """Raise ``ValueError`` unless each field of ``names`` is three sizes (z, y, x) of 8 to :data:`MAX_SIDE`
    voxels; they become tuples of ints."""
    for name in names:
        v = tuple(int(p) for p in getattr(cfg, name))
        if len(v) != 3 or not all(8 <= p <= MAX_SIDE for p in v):
            raise ValueError(f"{name} must be three sizes (z, y, x) of 8 to {MAX_SIDE} voxels, got {v!r}")
        object.__setattr__(cfg, name, v)


def check_optimizer(cfg: Any) -> None:
    """Raise ``ValueError`` unless ``cfg.lr`` is None (the default) or in (0, :data:`MAX_LR`], ``momentum`` in
    [0, 1] and ``weight_decay`` >= 0."""
    if cfg.lr is not None and not 0 < cfg.lr <= MAX_LR:
        raise ValueError(f"lr must be > 0 and <= {MAX_LR:g}, got {cfg.lr:g}")
    if not 0 <= cfg.momentum <= 1:
        raise ValueError(f"momentum must be in [0, 1], got {cfg.momentum:g}")
    if cfg.weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {cfg.weight_decay:g}")


class JsonConfig:
    """JSON round trip of a frozen config dataclass (lists come back as tuples, validated by the class)."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    def replace(self, **changes: Any) -> Any:
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    def write_json(self, path: str | Path) -> None:
        """Write the config as indented JSON, credentials in URLs redacted (:func:`catalog.redact.redact_urls`)."""
        from catalog.redact import redact_urls

        Path(path).write_text(json.dumps(redact_urls(self.to_dict()), indent=2, sort_keys=True) + "\n")

    @classmethod
    def read_json(cls, path: str | Path) -> Any:
        """The config written to ``path`` by :meth:`write_json`. Raises a one-line ``ValueError`` naming the file
        (and the field): not JSON, not an object, an unknown field, a value of the wrong type or range."""
        data = read_json(path)
        try:
            return cls.from_dict(data)  # type: ignore[attr-defined]
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None


def _known_fields(cls: type, d: dict[str, Any]) -> dict[str, Any]:
    """``d`` with list values of tuple-typed fields as tuples; unknown keys raise ``ValueError`` naming them."""
    if not isinstance(d, dict):
        raise ValueError(f"not a {cls.__name__} (a JSON object of its fields), but {show(d)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields {unknown}; was it written by another med3d version?")
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


@dataclass(frozen=True, kw_only=True)
class RunSettings(JsonConfig):
    """The fields every run shares, pretraining and fine-tuning: its seed, and where, how fast and how often it
    validates, saves and reports (all but ``seed`` may change on resume)."""

    seed: int = 0
    val_every: int = 0
    """Validate every N steps and at the last step; 0 never validates."""
    val_max_cases: int = 0
    """Validate on at most this many val cases per domain (0: all)."""
    ckpt_every: int = 500
    """Write a checkpoint every N steps (and always at the end); 0 only at the end."""
    log_every: int = 10
    """Refresh the progress bar every N steps (metrics.jsonl gets every step)."""
    device: str | None = None
    """``cpu``, ``cuda``, ``cuda:1``; None picks CUDA when available (under torchrun: ``cuda:LOCAL_RANK``)."""
    amp: bool | None = None
    """bf16 autocast; None means on for CUDA, off for CPU."""
    compile: bool = False
    workers: int = 2
    """DataLoader worker processes per rank."""

    def check_types(self, **annotations: str) -> None:
        """Raise ``ValueError`` naming the first field whose value is not of its type, not finite, or a whole
        number beyond 64 bits (:func:`catalog.values.check_fields`; ``annotations`` widen some fields' types).
        Call first in ``__post_init__``: a config read from a file may hold anything JSON can."""
        check_fields(self, annotations)

    def check_run_settings(self) -> None:
        """Raise ``ValueError`` naming the first out-of-range count or an unknown device (call from
        ``__post_init__``)."""
        problem = device_problem(self.device)
        if problem:
            raise ValueError(problem)
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        for name in ("steps", "batch", "log_every"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("val_every", "val_max_cases", "ckpt_every", "workers"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


@dataclass(frozen=True, kw_only=True)
class TrainConfig(RunSettings):
    """Everything a pretraining run needs, as plain values (JSON round-trip via :meth:`to_dict`/:meth:`from_dict`).

    Sizes are voxels in (z, y, x) order; ``steps`` counts optimiser steps (one batch of ``batch`` patches per
    rank and step, all from one domain).
    """

    store: tuple[str, ...]
    """Paths or URLs of the zarr stores built by ``med3d-prep``; their domains are trained together (names
    unique across the stores). A single string (configs and checkpoints written before several stores were
    possible) means one store."""
    out: str
    """Run folder: ``config.json``, ``checkpoint.pt``, ``metrics.jsonl`` (and TensorBoard events)."""
    encoder: str = "resnet10"
    """Registry name in ``model.nets.resnet.ENCODERS`` (``--depth 50`` means ``resnet50``)."""
    steps: int = 1000
    batch: int = 2
    """Patches per step and rank."""
    patch: tuple[int, int, int] = (64, 64, 64)
    lr: float = 1e-3
    optimizer: str = "adam"
    momentum: float = 0.99
    """SGD only (Nesterov), as nnU-Net trains with."""
    weight_decay: float = 0.0
    scheduler: str = "poly"
    """``poly``: lr·(1 - step/steps)^0.9; ``cosine``: cosine to 0; ``constant``."""
    loss: str = "ce"
    """``ce``: cross-entropy; ``ce+dice``: cross-entropy + soft Dice over the foreground classes."""
    domain_sampling: str = "size"
    fg_fraction: float = 1 / 3
    channel: str = "first"
    """Channel fed from multi-channel domains: ``first`` or ``random`` (augmentation)."""
    exclude: tuple[str, ...] = ()
    """``STORE[:SPLIT]`` specs whose scans are kept out of pretraining (and out of validation)."""
    init: str = "scratch"
    """``scratch`` or a checkpoint path (MedicalNet, Kinetics or ours) for the encoder."""
    val_overlap: float = 0.25
    """Overlap of the sliding-window tiles, as a fraction of the patch size."""

    def __post_init__(self) -> None:
        self.check_types(store="str | tuple[str, ...]")  # one store as a string: configs of earlier versions
        for name, allowed in (("optimizer", OPTIMIZERS), ("scheduler", SCHEDULERS), ("loss", LOSSES),
                              ("domain_sampling", DOMAIN_SAMPLING), ("channel", CHANNELS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}")
        check_sides(self, "patch")
        object.__setattr__(self, "exclude", tuple(str(e) for e in self.exclude))
        stores = (self.store,) if isinstance(self.store, (str, os.PathLike)) else tuple(self.store)
        stores = tuple(os.fspath(s) for s in stores)
        if not stores or not all(stores):
            raise ValueError(f"store: give at least one store path, got {self.store!r}")
        if len(set(stores)) != len(stores):
            raise ValueError(f"store: a store is given twice in {list(stores)}")
        object.__setattr__(self, "store", stores)
        self.check_run_settings()
        check_optimizer(self)
        if not 0 <= self.fg_fraction <= 1:
            raise ValueError(f"fg_fraction must be in [0, 1], got {self.fg_fraction}")
        if not 0 <= self.val_overlap < 1:
            raise ValueError(f"val_overlap must be in [0, 1), got {self.val_overlap}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError`` naming them."""
        return cls(**_known_fields(cls, d))


def config_conflicts(saved: Any, new: Any, runtime: frozenset[str] = RUNTIME_FIELDS) -> list[str]:
    """Fields in which ``new`` differs from ``saved`` (two configs of one dataclass, e.g. :class:`TrainConfig`)
    in a way that would change the weights of a resumed run, by field name; fields in ``runtime`` may differ.

    ``steps`` may grow only with the constant schedule: poly and cosine rates depend on the total. Values are
    compared (and named) with credentials in URLs redacted, as configs are recorded.
    """
    from catalog.redact import redact_urls

    out = []
    for f in sorted(dataclasses.fields(saved), key=lambda f: f.name):
        a, b = redact_urls(getattr(saved, f.name)), redact_urls(getattr(new, f.name))
        if f.name in runtime or a == b:
            continue
        if f.name == "steps" and saved.scheduler == "constant" and b >= a:
            continue
        out.append(f"{f.name}: checkpoint {a!r}, now {b!r}")
    return out
