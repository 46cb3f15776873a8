"""The pieces the tasks' loaders and validators share (each task's own choice of them is in
:mod:`model.tasks`): on-device augmentation, the patch loader of a one-domain store with foreground oversampling,
and the shape of a validation result (``val`` rows of ``metrics.jsonl``, key ``metric``).

Validation is cheap and on the stored grid; the full chain on the source grid is ``med3d-train evaluate``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from model.data.task_streams import TaskData
from model.training.finetune_config import PatchOptions
from model.training.loop import DistEnv

__all__ = ["make_augment", "patch_loader", "progress_bar", "val_result"]


def make_augment(cfg: PatchOptions, spacing: tuple[float, float, float], rank: int = 0) -> Callable | None:
    """Rotation (±``rotate_deg`` about each axis, in mm space: ``spacing`` (z, y, x) of the stored grid) +
    translation (±``translate`` of the patch) on the device, drawn from (seed, rank, step); None when both
    are 0."""
    if cfg.rotate_deg == 0 and cfg.translate == 0:
        return None
    from model.data.augment import apply_rigid, rigid_params

    seed = cfg.seed * 1_000_003 + rank

    def augment(image: torch.Tensor, label: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        theta = rigid_params(seed, step, image.shape[0], max_rotation_deg=cfg.rotate_deg,
                             max_translation=cfg.translate, shape=image.shape[-3:], spacing=spacing)
        return apply_rigid(image, label, theta)

    return augment


def progress_bar(total: int, desc: str, enabled: bool) -> Any:
    """A tqdm bar over ``total`` cases (disabled when ``enabled`` is False)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="case", disable=not enabled, dynamic_ncols=True)


def patch_loader(cfg: PatchOptions, train: TaskData, *, start: int, steps: int, env: DistEnv
                 ) -> tuple[Any, Callable | None]:
    """Patches of ``cfg.patch`` from ``train``'s one domain, a share ``cfg.fg_fraction`` centred on a labelled
    voxel (:class:`~model.data.patches.PretrainStream`), with the rigid augmentation."""
    from model.data.patches import PatchConfig, PretrainStream, StoreIndex, stream_loader

    index = StoreIndex(store=train.store, split="train", cases={train.domain: train.cases},
                       num_classes={train.domain: train.num_classes})
    pc = PatchConfig(patch=cfg.patch, batch=cfg.batch, fg_fraction=cfg.fg_fraction, seed=cfg.seed,
                     channel="all" if getattr(cfg, "channels", "first") == "all" else "first")
    stream = PretrainStream(train.store, index, pc, start_step=start, num_steps=steps, rank=env.rank,
                            world_size=env.world_size)
    return stream_loader(stream, cfg.workers), make_augment(cfg, train.spacing, env.rank)


def val_result(values: list[float], split: str, **extra: Any) -> dict[str, Any]:
    """A validation row: the mean of the defined (non-NaN) ``values`` as ``metric``, and how many there were."""
    ok = [v for v in values if not np.isnan(v)]
    return {"metric": float(np.mean(ok)) if ok else float("nan"), "split": split, "cases": len(ok), **extra}
