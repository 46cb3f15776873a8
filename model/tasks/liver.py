"""``liver``: the LiTS liver transfer of Med3D § 3.3 in two stages: ``coarse`` (the whole volume resized to
``coarse_shape``, a 1×1×1 head) and ``fine`` (patches inside the liver box, a DenseASPP head); measured on the
store's patient-level ``val`` split, since LiTS test labels are not public."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dataclasses import dataclass

from model.task_api import TaskStoreError
from model.tasks.base import BinarySegTask, register_task
from model.training.config import check_sides
from model.training.finetune_config import FinetuneConfig, PatchOptions, option, positive_ints

if TYPE_CHECKING:
    import torch

    from model.data.task_streams import TaskData
    from model.training.loop import DistEnv


@dataclass(frozen=True, kw_only=True)
class LiverConfig(FinetuneConfig, PatchOptions):
    """``finetune liver``: ``coarse`` (whole volumes resized) then ``fine`` (patches in the liver box, DenseASPP);
    the patch options are the fine stage's."""

    coarse_shape: tuple[int, int, int] = option((64, 128, 128), "Coarse stage: whole volumes resized to z,y,x.")
    roi_margin_mm: tuple[float, float] = option((5.0, 25.0), "Fine stage: random ROI margin lo,hi (mm).",
                                                flag="--roi-margin")
    """The liver box grows by a margin drawn uniformly from this range (mm, per side and axis) in training;
    inference uses the middle of the range around stage 1's mask."""
    aspp_rates: tuple[int, ...] = option((2, 4, 6, 8, 12), "Fine stage: DenseASPP dilation rates.")
    """DenseASPP's 2D 3, 6, 12, 18, 24 would mostly read padding on the 8-16 voxel feature grids of 3D patches."""

    def check_options(self) -> None:
        self.check_patch_options()
        check_sides(self, "coarse_shape")
        positive_ints(self, "aspp_rates")
        lo, hi = (float(m) for m in self.roi_margin_mm)
        if not 0 <= lo <= hi:
            raise ValueError(f"roi_margin_mm must be (lo, hi) with 0 <= lo <= hi, got {self.roi_margin_mm!r}")
        object.__setattr__(self, "roi_margin_mm", (lo, hi))


@register_task
class LiverTask(BinarySegTask):
    name = "liver"
    help = "LiTS store (build-lits): liver, coarse then fine stage"
    stages = ("coarse", "fine")
    eval_split = "val"
    config_type = LiverConfig

    def check_store(self, store: str, options: dict[str, Any] | None = None) -> None:
        from catalog import load_domains

        doms = load_domains(store)
        liver = [r for r in doms.itertuples(index=False)
                 if r.modality == "CT" and "liver" in [str(n).lower() for n in (r.labels or [])]]
        if len(doms) != 1 or not liver:
            found = ", ".join(f"{r.domain} ({r.modality}: {', '.join(map(str, r.labels or []))})"
                              for r in doms.itertuples(index=False))
            raise TaskStoreError(f"{store}: the liver task needs a LiTS-like store: exactly one domain, CT, with a "
                                 f"class named 'liver' (build it with `med3d-prep build-lits`); this store holds "
                                 f"{len(doms)} domain(s): {found}. For any other labelled store use `med3d-train "
                                 "finetune seg --domain NAME`")

    def head(self, cfg: LiverConfig) -> str:
        return f"liver_{cfg.stage}"

    def net_options(self, cfg: LiverConfig, in_chans: int) -> dict[str, Any]:
        return {"aspp_rates": list(cfg.aspp_rates), "in_chans": int(in_chans)}

    def size_option(self, cfg: LiverConfig) -> str | None:
        return "coarse_shape" if cfg.stage == "coarse" else "patch"

    def num_classes(self, train: TaskData, cfg: LiverConfig) -> int:
        return 2  # liver (LiTS liver and tumour) against the rest

    def loader(self, cfg: LiverConfig, train: TaskData, run_dir: Path, *, start: int, steps: int,
               env: DistEnv, progress: bool) -> tuple[Any, Callable | None]:
        from model.data import task_streams as td
        from model.data.patches import stream_loader
        from model.training.finetune_data import make_augment, progress_bar

        common = {"start_step": start, "num_steps": steps, "rank": env.rank, "world_size": env.world_size}
        if cfg.stage == "coarse":
            with progress_bar(len(train.cases), "coarse cache", progress) as bar:
                cache = td.build_coarse_cache(train, cfg.coarse_shape, run_dir / "cache" / "train", bar.update)
            ds = td.CoarseStream(cache, train.cases, batch=cfg.batch, seed=cfg.seed, **common)
            return stream_loader(ds, cfg.workers), None
        with progress_bar(len(train.cases), "liver boxes", progress) as bar:
            boxes = td.liver_boxes(train, bar.update)
        ds = td.RoiPatchStream(train.store, train.cases, boxes, patch=cfg.patch, batch=cfg.batch,
                               margin_mm=cfg.roi_margin_mm, spacing=train.spacing, seed=cfg.seed, **common)
        return stream_loader(ds, cfg.workers), make_augment(cfg, train.spacing, env.rank)

    def validator(self, cfg: LiverConfig, data: TaskData, run_dir: Path, *, device: torch.device,
                  amp: bool) -> Callable[[torch.nn.Module], dict[str, Any]]:
        """Coarse: Dice at the coarse resolution; fine: Dice inside the true liver box grown by the mean margin."""
        import numpy as np
        import torch
        from model.data import task_streams as td
        from model.data.patches import read_volume
        from model.evaluation.inference import PatchSegmenter
        from model.evaluation.seg_metrics import mask_dice
        from model.training.finetune_data import val_result

        cases = list(data.cases[: cfg.val_max_cases or None])
        if cfg.stage == "coarse":
            cache = td.build_coarse_cache(data, cfg.coarse_shape, run_dir / "cache" / data.split)

            @torch.no_grad()
            def coarse(net: torch.nn.Module) -> dict[str, Any]:
                net.eval()
                scores = []
                for case in cases:
                    with np.load(cache / f"{case.store_path.replace('/', '__')}.npz") as z:
                        img, lab = z["image"].astype(np.float32), z["label"]
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                        logits = net(torch.from_numpy(img)[None, None].to(device))
                    scores.append(mask_dice(logits.float().argmax(dim=1)[0].cpu().numpy(), lab))
                return val_result(scores, data.split)

            return coarse

        boxes = td.liver_boxes(data)
        margin_mm = sum(cfg.roi_margin_mm) / 2

        def fine(net: torch.nn.Module) -> dict[str, Any]:
            seg = PatchSegmenter(net, cfg.patch, 2, overlap=cfg.overlap, batch=cfg.batch, device=device, amp=amp)
            scores = []
            for case in cases:
                if case.store_path not in boxes:
                    continue
                image, label = read_volume(data.store, case.store_path)
                lo, hi = boxes[case.store_path]
                m = [int(round(margin_mm / s)) for s in data.spacing]
                lo = [max(0, a - k) for a, k in zip(lo, m)]
                hi = [min(s, b + k) for b, k, s in zip(hi, m, case.shape)]
                pred = seg.probs(image, (tuple(lo), tuple(hi))).argmax(dim=0).numpy()
                scores.append(mask_dice(pred, label[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]))
            return val_result(scores, data.split)

        return fine

    def segmenter(self, run: str | Path, spec: dict[str, Any], *, device: Any = "cpu", amp: bool = False,
                  batch: int = 2, overlap: float | None = None) -> Callable:
        """The chain: coarse, then fine when that stage exists."""
        from model.evaluation.inference import LiverSegmenter
        from model.run_folder import load_stage

        coarse, ccfg = load_stage(run, "coarse", device, config_type=LiverConfig)
        fine, fcfg = (load_stage(run, "fine", device, config_type=LiverConfig) if (Path(run) / "fine" / "checkpoint.pt").is_file()
                      else (None, ccfg))
        return LiverSegmenter(coarse, fine, coarse_shape=ccfg.coarse_shape, patch=fcfg.patch,
                              spacing=spec["preprocessing"]["target_spacing"],
                              margin_mm=sum(fcfg.roi_margin_mm) / 2,
                              overlap=fcfg.overlap if overlap is None else overlap, batch=batch, device=device,
                              amp=amp)

    def pred_name(self, case_id: str, labelled: bool) -> str:
        """LiTS test volumes are named as a LiTS submission (``test-segmentation-N.nii``)."""
        m = re.fullmatch(r"test-volume-(\d+)", case_id)
        if not labelled and m:
            return f"test-segmentation-{m.group(1)}.nii"
        return f"{case_id}.nii.gz"
