"""``lung``: the VISCERAL lung transfer of Med3D § 3.3: patches with foreground oversampling, the paper's
upsampling decoder, Dice on the labelled ``test`` split (per modality in the summary)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dataclasses import dataclass

from model.task_api import TaskStoreError
from model.tasks.base import BinarySegTask, register_task
from model.training.finetune_config import FinetuneConfig, PatchOptions, positive_ints

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from model.data.task_streams import TaskData
    from model.training.loop import DistEnv


@dataclass(frozen=True, kw_only=True)
class LungConfig(FinetuneConfig, PatchOptions):
    """``finetune lung``: patches with foreground oversampling, the paper's upsampling decoder."""

    decoder_widths: tuple[int, ...] = (256, 128, 64)
    """Channels of the decoder's three upsampling groups."""

    def check_options(self) -> None:
        self.check_patch_options()
        positive_ints(self, "decoder_widths")


def whole_volume_dice(cfg: LungConfig, data: TaskData, n_classes: int, *, device: torch.device,
                      amp: bool) -> Callable[[torch.nn.Module], dict[str, Any]]:
    """Validator: Dice of foreground (any class > 0) of whole stored volumes segmented by sliding window."""
    from model.data.patches import read_volume
    from model.evaluation.inference import PatchSegmenter
    from model.evaluation.seg_metrics import mask_dice
    from model.training.finetune_data import val_result

    cases = list(data.cases[: cfg.val_max_cases or None])

    def segment(net: torch.nn.Module) -> dict[str, Any]:
        seg = PatchSegmenter(net, cfg.patch, n_classes, overlap=cfg.overlap, batch=cfg.batch, device=device,
                             amp=amp)
        scores = []
        for case in cases:
            image, label = read_volume(data.store, case.store_path)
            scores.append(mask_dice(seg(image), label))
        return val_result(scores, data.split)

    return segment


@register_task
class LungTask(BinarySegTask):
    name = "lung"
    help = "VISCERAL store (build-visceral): lungs"
    config_type = LungConfig

    def check_store(self, store: str, options: dict[str, Any] | None = None) -> None:
        from catalog import load_domains

        doms = load_domains(store)
        ok = len(doms) == 1 and str(doms["source_dataset"].iloc[0]).startswith("VISCERAL") and any(
            "lung" in str(n).lower() for n in (doms["labels"].iloc[0] or []))
        if not ok:
            found = ", ".join(f"{r.domain} ({r.source_dataset}, {r.modality})" for r in doms.itertuples(index=False))
            raise TaskStoreError(f"{store}: the lung task needs a VISCERAL store with lung labels (build it with "
                                 f"`med3d-prep build-visceral`); this store holds {found}. For any other labelled "
                                 "store use `med3d-train finetune seg`")

    def head(self, cfg: LungConfig) -> str:
        return "lung"

    def net_options(self, cfg: LungConfig, in_chans: int) -> dict[str, Any]:
        return {"decoder_widths": list(cfg.decoder_widths), "in_chans": int(in_chans)}

    def loader(self, cfg: LungConfig, train: TaskData, run_dir: Path, *, start: int, steps: int,
               env: DistEnv, progress: bool) -> tuple[Any, Callable | None]:
        from model.training.finetune_data import patch_loader

        return patch_loader(cfg, train, start=start, steps=steps, env=env)

    def validator(self, cfg: LungConfig, data: TaskData, run_dir: Path, *, device: torch.device,
                  amp: bool) -> Callable[[torch.nn.Module], dict[str, Any]]:
        return whole_volume_dice(cfg, data, data.num_classes, device=device, amp=amp)

    def segmenter(self, run: str | Path, spec: dict[str, Any], *, device: Any = "cpu", amp: bool = False,
                  batch: int = 2, overlap: float | None = None) -> Callable:
        from model.evaluation.inference import PatchSegmenter
        from model.run_folder import load_stage

        net, cfg = load_stage(run, "main", device, config_type=LungConfig)
        return PatchSegmenter(net, cfg.patch, int(net.head.classifier.out_channels),
                              overlap=cfg.overlap if overlap is None else overlap, batch=batch, device=device,
                              amp=amp)

    def summarize(self, summary: dict[str, Any], table: pd.DataFrame) -> dict[str, Any]:
        """Adds ``dice_per_modality`` (VISCERAL has CT and MR scans)."""
        if summary["labelled_cases"]:
            summary["dice_per_modality"] = {str(k): float(v) for k, v in
                                            table.groupby("modality")["dice"].mean().items()}
        return summary
