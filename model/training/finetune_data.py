"""What each transfer stage trains on and is validated with: the loader (and on-device augmentation) of a stage,
and the validation metric logged during training (``val`` rows of ``metrics.jsonl``, key ``metric``).

Validation here is cheap and on the stored grid (the full chain on the original grid, with the LiTS metric
set, is ``med3d-train evaluate``): lung Dice of whole volumes; liver coarse Dice at the coarse resolution;
liver fine Dice inside the true liver box grown by the mean margin; nodule accuracy.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.data.transfer import TaskData
from model.training.finetune_config import FinetuneConfig
from model.training.loop import DistEnv

__all__ = ["binary_dice", "make_augment", "stage_loader", "stage_validator"]


def binary_dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of ``pred > 0`` against ``truth > 0``; NaN when both are empty."""
    p, t = np.asarray(pred) > 0, np.asarray(truth) > 0
    denom = int(p.sum()) + int(t.sum())
    return float("nan") if denom == 0 else 2.0 * int(np.logical_and(p, t).sum()) / denom


def make_augment(cfg: FinetuneConfig, spacing: tuple[float, float, float], rank: int = 0) -> Callable | None:
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


def _bar(total: int, desc: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="case", disable=not enabled, dynamic_ncols=True)


def stage_loader(cfg: FinetuneConfig, train: TaskData, run_dir: Path, *, start: int, steps: int, env: DistEnv,
                 progress: bool = True) -> tuple[Any, Callable | None]:
    """The DataLoader of ``cfg``'s stage from step ``start`` for ``steps`` steps, and its augmentation."""
    from model.data.patches import PatchConfig, PretrainStream, StoreIndex, stream_loader
    from model.data import transfer as td

    common = {"start_step": start, "num_steps": steps, "rank": env.rank, "world_size": env.world_size}
    if cfg.task == "lung":
        index = StoreIndex(store=train.store, split="train", cases={train.domain: train.cases},
                           num_classes={train.domain: train.num_classes})
        pc = PatchConfig(patch=cfg.patch, batch=cfg.batch, fg_fraction=cfg.fg_fraction, seed=cfg.seed)
        return stream_loader(PretrainStream(train.store, index, pc, **common), cfg.workers), \
            make_augment(cfg, train.spacing, env.rank)
    if cfg.task == "nodule":
        labels = td.nodule_labels(train.store, train.cases)
        crop = train.cases[0].shape
        ds = td.NoduleStream(train.store, train.cases, labels, crop=crop, batch=cfg.batch, seed=cfg.seed, **common)
        return stream_loader(ds, cfg.workers), None
    if cfg.stage == "coarse":
        with _bar(len(train.cases), "coarse cache", progress) as bar:
            cache = td.build_coarse_cache(train, cfg.coarse_shape, run_dir / "cache" / "train", bar.update)
        ds = td.CoarseStream(cache, train.cases, batch=cfg.batch, seed=cfg.seed, **common)
        return stream_loader(ds, cfg.workers), None
    with _bar(len(train.cases), "liver boxes", progress) as bar:
        boxes = td.liver_boxes(train, bar.update)
    ds = td.RoiPatchStream(train.store, train.cases, boxes, patch=cfg.patch, batch=cfg.batch,
                           margin_mm=cfg.roi_margin_mm, spacing=train.spacing, seed=cfg.seed, **common)
    return stream_loader(ds, cfg.workers), make_augment(cfg, train.spacing, env.rank)


def stage_validator(cfg: FinetuneConfig, data: TaskData, run_dir: Path, *, device: torch.device,
                    amp: bool) -> Callable[[torch.nn.Module], dict[str, Any]]:
    """A function ``net -> {"metric", "split", "cases", ...}`` measuring ``cfg``'s stage on ``data``."""
    from model.data import transfer as td
    from model.data.patches import read_volume
    from model.evaluation.inference import PatchSegmenter

    cases = list(data.cases[: cfg.val_max_cases or None])
    split = data.split

    def done(values: list[float], **extra: Any) -> dict[str, Any]:
        ok = [v for v in values if not np.isnan(v)]
        return {"metric": float(np.mean(ok)) if ok else float("nan"), "split": split, "cases": len(ok), **extra}

    if cfg.task == "nodule":
        labels = td.nodule_labels(data.store, cases)
        stream = td.NoduleStream(data.store, cases, labels, crop=cases[0].shape, batch=1, seed=0)

        @torch.no_grad()
        def nodule(net: torch.nn.Module) -> dict[str, Any]:
            net.eval()
            hits = []
            for case in stream.cases:
                x = torch.from_numpy(stream.read_crop(case))[None].to(device)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    pred = int(net(x).float().argmax(dim=1).item())
                hits.append(float(pred == labels[case.store_path]))
            return done(hits)

        return nodule

    if cfg.stage == "coarse":
        cache = td.build_coarse_cache(data, cfg.coarse_shape, run_dir / "cache" / split)

        @torch.no_grad()
        def coarse(net: torch.nn.Module) -> dict[str, Any]:
            net.eval()
            scores = []
            for case in cases:
                with np.load(cache / f"{case.store_path.replace('/', '__')}.npz") as z:
                    img, lab = z["image"].astype(np.float32), z["label"]
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    logits = net(torch.from_numpy(img)[None, None].to(device))
                scores.append(binary_dice(logits.float().argmax(dim=1)[0].cpu().numpy(), lab))
            return done(scores)

        return coarse

    boxes = td.liver_boxes(data) if cfg.task == "liver" else {}
    n_classes = 2 if cfg.task == "liver" else data.num_classes
    margin_mm = sum(cfg.roi_margin_mm) / 2

    def segment(net: torch.nn.Module) -> dict[str, Any]:
        seg = PatchSegmenter(net, cfg.patch, n_classes, overlap=cfg.overlap, batch=cfg.batch, device=device,
                             amp=amp)
        scores = []
        for case in cases:
            image, label = read_volume(data.store, case.store_path)
            if cfg.task == "liver":
                if case.store_path not in boxes:
                    continue
                lo, hi = boxes[case.store_path]
                m = [int(round(margin_mm / s)) for s in data.spacing]
                lo = [max(0, a - k) for a, k in zip(lo, m)]
                hi = [min(s, b + k) for b, k, s in zip(hi, m, case.shape)]
                pred = seg.probs(image, (tuple(lo), tuple(hi))).argmax(dim=0).numpy()
                label = label[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
            else:
                pred = seg(image)
            scores.append(binary_dice(pred, label))
        return done(scores)

    return segment
