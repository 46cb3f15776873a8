"""Frozen configuration of a fine-tuning run (one task, one stage), stored in ``RUN/config.json`` and in every
checkpoint, like :class:`~model.training.config.TrainConfig` for pretraining.

The paper's recipes (docs/DESIGN.md § 1) are the defaults: Adam, learning rate 1e-3 from pretrained weights and 1e-2
from scratch (``lr=None`` picks by ``init``); the liver task in two stages (``coarse``: the whole volume resized
to ``coarse_shape``; ``fine``: patches inside the liver ROI, DenseASPP head, rotation + translation augmentation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from model.training.config import RunSettings, _known_fields, check_optimizer, check_sides

__all__ = ["FINETUNE_RUNTIME_FIELDS", "FinetuneConfig", "paper_lr"]

FINETUNE_RUNTIME_FIELDS = frozenset(
    {"store", "out", "device", "workers", "val_every", "val_max_cases", "ckpt_every", "compile", "amp", "log_every",
     "overlap"}
)


def paper_lr(init: str) -> float:
    """Med3D's transfer learning rate: 1e-2 when training from scratch, 1e-3 from pretrained weights."""
    return 1e-2 if init == "scratch" else 1e-3


@dataclass(frozen=True, kw_only=True)
class FinetuneConfig(RunSettings):
    """One stage of one transfer task. Sizes are voxels (z, y, x) of the store grid unless they say mm."""

    task: str
    """A task of :data:`model.tasks.TASKS`: ``liver`` (LiTS store), ``lung`` (VISCERAL store), ``nodule`` (LIDC
    store), ``seg`` (any segmentation store)..."""
    store: str
    out: str
    """This stage's run folder (``RUN`` for lung and nodule, ``RUN/coarse`` and ``RUN/fine`` for liver)."""
    stage: str = "main"
    """``main`` (lung, nodule); ``coarse`` or ``fine`` (liver)."""
    encoder: str = "resnet10"
    init: str = "scratch"
    """``scratch``, one of our runs or checkpoints, a MedicalNet or a Kinetics ``.pth``."""
    steps: int = 1000
    batch: int = 2
    patch: tuple[int, int, int] = (64, 64, 64)
    """Patch size for ``lung`` and liver ``fine``; nodule crops are used whole and coarse volumes are resized."""
    coarse_shape: tuple[int, int, int] = (64, 128, 128)
    """Liver ``coarse``: the whole volume is resized to this shape (z, y, x) for training and inference."""
    roi_margin_mm: tuple[float, float] = (5.0, 25.0)
    """Liver ``fine``: the liver box grows by a margin drawn uniformly from this range (mm, per side and axis)
    in training; inference uses the middle of the range around stage 1's mask."""
    aspp_rates: tuple[int, ...] = (2, 4, 6, 8, 12)
    """Liver ``fine``: DenseASPP dilation rates on the stride-8 features (DenseASPP's 2D 3, 6, 12, 18, 24 would
    mostly read padding on the 8-16 voxel feature grids of 3D patches)."""
    decoder_widths: tuple[int, ...] = (256, 128, 64)
    """Lung: channels of the decoder's three upsampling groups."""
    rotate_deg: float = 15.0
    """Augmentation (liver ``fine``, lung): random rotation about each axis within ±rotate_deg (0 disables)."""
    translate: float = 0.1
    """Augmentation: random translation up to this fraction of the patch size per axis (0 disables)."""
    lr: float | None = None
    """None: :func:`paper_lr` of ``init``."""
    optimizer: str = "adam"
    momentum: float = 0.99
    weight_decay: float = 0.0
    scheduler: str = "poly"
    loss: str = "ce"
    """Segmentation: ``ce`` or ``ce+dice``; nodule classification always uses cross-entropy."""
    fg_fraction: float = 1 / 3
    """Patch tasks (lung, seg): share of patches centred on a labelled voxel (nnU-Net's 1/3)."""
    domain: str | None = None
    """seg: the store's domain trained on (None: the store's only domain)."""
    decoder: str = "med3d"
    """seg: ``med3d`` (the paper's upsampling decoder on the stride-8 features) or ``unet`` (skip connections
    from every encoder stage)."""
    channels: str = "first"
    """seg, classify: ``first`` (the first channel of a multi-channel domain, as the one-channel encoder was
    pretrained) or ``all`` (every channel; the encoder's first convolution takes them all, initialised from the
    one-channel weights repeated and divided by the number of channels)."""
    splits: str = ""
    """seg: a split table (CSV: case_id, split) replacing the catalog's splits; cases it does not list are not used
    (:mod:`model.data.split_table`). Copied into the run as splits.csv. "" : the catalog's splits."""
    labels: str = ""
    """classify: the label table (CSV: case id, class, optional split), copied into the run as labels.csv."""
    shape: tuple[int, int, int] = (64, 64, 64)
    """classify: every input (whole volume, or the mask crop) is resized to this shape (z, y, x)."""
    crop: str = "none"
    """classify: ``none`` (the whole volume) or ``mask`` (the mask's bounding box grown by crop_margin_mm)."""
    crop_margin_mm: float = 10.0
    measure_split: str = ""
    """The split the run is measured on; "" means the task's default (:attr:`eval_split`)."""
    overlap: float = 0.25
    """Sliding-window overlap (fraction of the patch) at validation and inference."""

    def __post_init__(self) -> None:
        from model.tasks import TASKS

        self.check_types()
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        stages = TASKS[self.task].stages
        if self.stage not in stages:
            raise ValueError(f"task {self.task!r} has stages {', '.join(stages)}, got {self.stage!r}")
        if self.decoder not in ("med3d", "unet"):
            raise ValueError(f"decoder must be med3d or unet, got {self.decoder!r}")
        if self.channels not in ("first", "all"):
            raise ValueError(f"channels must be first or all, got {self.channels!r}")
        if self.channels == "all" and not TASKS[self.task].multichannel:
            raise ValueError(f"channels all: task {self.task!r} reads one channel; finetune seg and classify take "
                             "every channel")
        if self.measure_split not in ("", "train", "val", "test"):
            raise ValueError(f"measure_split must be train, val or test, got {self.measure_split!r}")
        if self.crop not in ("none", "mask") or not self.crop_margin_mm >= 0:
            raise ValueError(f"crop must be none or mask and crop_margin_mm >= 0, got {self.crop!r}, "
                             f"{self.crop_margin_mm!r}")
        check_sides(self, "patch", "coarse_shape", "shape")
        for name in ("aspp_rates", "decoder_widths"):
            v = tuple(int(p) for p in getattr(self, name))
            if not v or min(v) < 1:
                raise ValueError(f"{name} must be one or more positive ints, got {v!r}")
            object.__setattr__(self, name, v)
        lo, hi = (float(m) for m in self.roi_margin_mm)
        if not 0 <= lo <= hi:
            raise ValueError(f"roi_margin_mm must be (lo, hi) with 0 <= lo <= hi, got {self.roi_margin_mm!r}")
        object.__setattr__(self, "roi_margin_mm", (lo, hi))
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be adam or sgd, got {self.optimizer!r}")
        if self.scheduler not in ("poly", "cosine", "constant"):
            raise ValueError(f"scheduler must be poly, cosine or constant, got {self.scheduler!r}")
        if self.loss not in ("ce", "ce+dice"):
            raise ValueError(f"loss must be ce or ce+dice, got {self.loss!r}")
        self.check_run_settings()
        check_optimizer(self)
        if not 0 <= self.fg_fraction <= 1 or not 0 <= self.overlap < 1:
            raise ValueError("fg_fraction must be in [0, 1] and overlap in [0, 1)")
        if self.rotate_deg < 0 or not 0 <= self.translate < 1:
            raise ValueError("rotate_deg must be >= 0 and translate in [0, 1)")

    @property
    def kind(self) -> str:
        """The network kind of :data:`model.nets.transfer.HEADS` this stage trains."""
        from model.tasks import get_task

        return get_task(self.task).kind(self)

    @property
    def effective_lr(self) -> float:
        return self.lr if self.lr is not None else paper_lr(self.init)

    @property
    def eval_split(self) -> str:
        from model.tasks import get_task

        return self.measure_split or get_task(self.task).eval_split

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FinetuneConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError`` naming them."""
        return cls(**_known_fields(cls, d))
