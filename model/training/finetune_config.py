"""Frozen configuration of a fine-tuning run (one task, one stage), stored in ``RUN/config.json`` and in every
checkpoint, like :class:`~model.training.config.TrainConfig` for pretraining.

:class:`FinetuneConfig` holds what every task shares (store, encoder, init, steps, optimiser...); each task's
options are the fields of its own subclass (``SegConfig`` in :mod:`model.tasks.seg`: domain, decoder, patch...),
its ``config_type``. A field made with :func:`option` is also a flag of ``med3d-train finetune TASK``. Groups of
options several tasks take are mixins here, since the training pieces that read them live here too:
:class:`PatchOptions` (patches, foreground oversampling, rigid augmentation, sliding window).

The paper's recipes (docs/DESIGN.md § 1) are the defaults: Adam, learning rate 1e-3 from pretrained weights and
1e-2 from scratch (``lr=None`` picks by ``init``).

Configs written before tasks owned their options (issue 20) hold every task's fields: :meth:`from_dict` reads
those (:data:`EARLIER_FIELDS`) and drops the ones that are not the task's.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from model.training.config import RunSettings, _known_fields, check_optimizer, check_sides

__all__ = ["CHANNELS_HELP", "EARLIER_FIELDS", "FINETUNE_RUNTIME_FIELDS", "FinetuneConfig", "PatchOptions", "option", "paper_lr"]

FINETUNE_RUNTIME_FIELDS = frozenset(
    {"store", "out", "device", "workers", "val_every", "val_max_cases", "ckpt_every", "compile", "amp", "log_every",
     "overlap"}
)

EARLIER_FIELDS = frozenset(
    {"patch", "coarse_shape", "roi_margin_mm", "aspp_rates", "decoder_widths", "rotate_deg", "translate",
     "fg_fraction", "domain", "decoder", "channels", "splits", "labels", "shape", "crop", "crop_margin_mm", "overlap"}
)
"""Task options that every config held before tasks owned their options: read, and dropped when not the task's."""


def paper_lr(init: str) -> float:
    """Med3D's transfer learning rate: 1e-2 when training from scratch, 1e-3 from pretrained weights."""
    return 1e-2 if init == "scratch" else 1e-3


def option(default: Any, help: str, *, flag: str | None = None, choices: tuple[str, ...] | None = None,
           show_default: str | bool = True) -> Any:
    """A config field that is also a flag of ``med3d-train finetune TASK``: ``help`` its help line, ``flag`` its
    name (default ``--field-name``), ``choices`` the values it takes. Tuples of numbers are given comma-separated
    (``--patch 64`` means 64,64,64). Use it as ``patch: tuple[int, int, int] = option((64, 64, 64), "...")``."""
    meta = {"help": help, "flag": flag, "choices": choices, "show_default": show_default}
    return dataclasses.field(default=default, metadata=meta)


@dataclass(frozen=True, kw_only=True)
class FinetuneConfig(RunSettings):
    """The options of one stage of a fine-tuning run that every task shares. A task's own options are the fields
    of its subclass (its ``config_type``), checked in :meth:`check_options`."""

    task: str
    """The task's name (``liver``, ``lung``, ``nodule``, ``seg``, ``classify``, or a plug-in's)."""
    store: str
    out: str
    """This stage's run folder (``RUN`` for one-stage tasks, ``RUN/<stage>`` for the others: liver's coarse, fine)."""
    stage: str = "main"
    """``main`` for one-stage tasks; one of the task's ``stages`` otherwise."""
    encoder: str = "resnet10"
    init: str = "scratch"
    """``scratch``, one of our runs or checkpoints, a MedicalNet or a Kinetics ``.pth``."""
    steps: int = 1000
    batch: int = 2
    lr: float | None = None
    """None: :func:`paper_lr` of ``init``."""
    optimizer: str = "adam"
    momentum: float = 0.99
    weight_decay: float = 0.0
    scheduler: str = "poly"
    loss: str = "ce"
    """Segmentation: ``ce`` or ``ce+dice``; classification always uses cross-entropy."""
    measure_split: str = ""
    """The split the run is measured on; "" means the task's default (its ``eval_split``)."""

    def __post_init__(self) -> None:
        # a plug-in's module may not postpone its annotations: a field typed ``int`` is checked as "int"
        self.check_types(**{f.name: f.type.__name__ for f in dataclasses.fields(self) if isinstance(f.type, type)})
        if not self.task or not self.stage:
            raise ValueError(f"task and stage must be names, got {self.task!r}, {self.stage!r}")
        if self.measure_split not in ("", "train", "val", "test"):
            raise ValueError(f"measure_split must be train, val or test, got {self.measure_split!r}")
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be adam or sgd, got {self.optimizer!r}")
        if self.scheduler not in ("poly", "cosine", "constant"):
            raise ValueError(f"scheduler must be poly, cosine or constant, got {self.scheduler!r}")
        if self.loss not in ("ce", "ce+dice"):
            raise ValueError(f"loss must be ce or ce+dice, got {self.loss!r}")
        self.check_run_settings()
        check_optimizer(self)
        self.check_options()

    def check_options(self) -> None:
        """Raise ``ValueError`` naming the first of the task's own options out of range (subclasses)."""

    @property
    def effective_lr(self) -> float:
        return self.lr if self.lr is not None else paper_lr(self.init)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Any:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError`` naming them, except the options every
        config held before tasks owned theirs (:data:`EARLIER_FIELDS`), dropped when they are not this task's."""
        own = {f.name for f in dataclasses.fields(cls)}
        if isinstance(d, dict):
            d = {k: v for k, v in d.items() if k in own or k not in EARLIER_FIELDS}
        return cls(**_known_fields(cls, d))


@dataclass(frozen=True, kw_only=True)
class PatchOptions:
    """Options of tasks that train on patches and segment whole volumes by sliding window (lung, seg, liver's
    fine stage); read by :func:`model.training.finetune_data.patch_loader` and ``make_augment``. Call
    :meth:`check_patch_options` from the task config's ``check_options``."""

    patch: tuple[int, int, int] = option((64, 64, 64), "Patch size: 64 or z,y,x.")
    fg_fraction: float = option(1 / 3, "Share of patches centred on a labelled voxel.", show_default="1/3")
    """nnU-Net's 1/3."""
    rotate_deg: float = option(15.0, "Augmentation: max rotation (degrees) about each axis; 0 disables.",
                               flag="--rotate")
    translate: float = option(0.1, "Augmentation: max translation, fraction of the patch; 0 disables.")
    overlap: float = 0.25
    """Sliding-window overlap (fraction of the patch) at validation and inference."""

    def check_patch_options(self) -> None:
        check_sides(self, "patch")
        if not 0 <= self.fg_fraction <= 1 or not 0 <= self.overlap < 1:
            raise ValueError("fg_fraction must be in [0, 1] and overlap in [0, 1)")
        if self.rotate_deg < 0 or not 0 <= self.translate < 1:
            raise ValueError("rotate_deg must be >= 0 and translate in [0, 1)")


def positive_ints(cfg: Any, *names: str) -> None:
    """Raise ``ValueError`` unless each field of ``names`` is one or more positive ints; they become tuples."""
    for name in names:
        v = tuple(int(p) for p in getattr(cfg, name))
        if not v or min(v) < 1:
            raise ValueError(f"{name} must be one or more positive ints, got {v!r}")
        object.__setattr__(cfg, name, v)


CHANNELS_HELP = ("The first channel of a multi-channel domain (what the encoder was pretrained on), or all of them "
                 "(the first convolution takes every channel, initialised from the pretrained one).")
"""Help of the ``--channels`` flag (``channels: str = option("first", CHANNELS_HELP, choices=("first", "all"))``)."""


def channels_option(cfg: Any) -> None:
    """Raise ``ValueError`` unless ``cfg.channels`` is ``first`` or ``all``."""
    if cfg.channels not in ("first", "all"):
        raise ValueError(f"channels must be first or all, got {cfg.channels!r}")
