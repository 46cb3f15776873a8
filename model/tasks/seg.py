"""``seg``: segmentation on any store that build-msd, build-nnunet, build-totalseg or build-3dseg8 made.

One domain of the store (``--domain`` when it holds several); its classes and their names from the store's
domains table (from dataset.json); its splits from the catalog, measured on ``test`` when that split has labelled
cases, else on ``val``. Patches with foreground oversampling (``fg_fraction``, nnU-Net's 1/3), CE + Dice by
default, the rigid augmentation; the decoder is ``med3d`` (the paper's upsampling head on the stride-8 dilated
features) or ``unet`` (:class:`~model.nets.unet_decoder.UNetDecoder`, skips from every encoder stage).

Evaluation: per case and per foreground class, Dice, HD95 and ASSD in mm on the source file's own grid, and their
means over cases. A class absent from both the prediction and the truth of a case gives NaN for all three (there
is nothing to score; the case is left out of that class's mean, as nnU-Net does); a class in one mask only gives
Dice 0 and NaN distances (no surface to measure to).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dataclasses import dataclass

from model.task_api import Task, TaskStoreError
from model.tasks.base import register_task
from model.training.finetune_config import (CHANNELS_HELP, FinetuneConfig, PatchOptions, channels_option, option,
                                            positive_ints)

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    import torch

    from model.data.task_streams import TaskData
    from model.training.loop import DistEnv


def class_names(labels: Any, num_classes: int) -> list[str]:
    """Names of classes 0..num_classes-1 from a domains-table ``labels`` entry (a list indexed by value, or a
    mapping value -> name), safe as CSV column suffixes (whitespace -> ``_``); ``class<N>`` where none is given."""
    if isinstance(labels, dict):
        given = {int(k): str(v) for k, v in labels.items()}
    else:
        given = {i: str(v) for i, v in enumerate(list(labels) if labels is not None else [])}
    names = [re.sub(r"\s+", "_", given.get(v, "").strip()) or f"class{v}" for v in range(num_classes)]
    return [n if names.count(n) == 1 else f"{n}_{v}" for v, n in enumerate(names)]


def per_class_scores(pred: np.ndarray, truth: np.ndarray, classes: int,
                     spacing_zyx: tuple[float, ...] | None = None) -> list[dict[str, float]]:
    """For each foreground class 1..classes-1: ``dice`` (NaN when the class is in neither mask) and, with
    ``spacing_zyx`` (mm), ``hd95_mm`` and ``assd_mm`` (NaN unless the class is in both masks)."""
    from model.evaluation.seg_metrics import dice_from_counts, overlap_counts, surface_metrics

    out = []
    for value in range(1, classes):
        p, t = pred == value, truth == value
        inter, n_p, n_t = overlap_counts(p, t)
        rec = {"dice": dice_from_counts(inter, n_p, n_t)}
        if spacing_zyx is not None:
            rec.update(surface_metrics(p, t, spacing_zyx) if n_p and n_t else
                       {"hd95_mm": float("nan"), "assd_mm": float("nan")})
        out.append(rec)
    return out


SPLITS_FILE = "splits.csv"
"""The run's copy of its ``--splits`` table."""


@dataclass(frozen=True, kw_only=True)
class SegConfig(FinetuneConfig, PatchOptions):
    """``finetune seg``: patches of one domain of the store; sizes are voxels (z, y, x)."""

    domain: str | None = option(None, "The store's domain to train on (needed when it holds several).",
                                show_default=False)
    """None: the store's only domain."""
    decoder: str = option("med3d", "The paper's upsampling head on the dilated encoder, or a U-Net decoder with "
                          "skip connections from every encoder stage.", choices=("med3d", "unet"))
    channels: str = option("first", CHANNELS_HELP, choices=("first", "all"))
    """``all``: the encoder's first convolution takes every channel, initialised from the one-channel weights
    repeated and divided by the number of channels."""
    splits: str = option("", "A split table (CSV: case_id, split = train|val|test) in place of the store's splits; "
                         "cases it does not list are not used.", show_default=False)
    """Copied into the run as splits.csv (:mod:`model.data.split_table`). "" : the catalog's splits."""
    decoder_widths: tuple[int, ...] = (256, 128, 64)
    """``med3d`` decoder: channels of its three upsampling groups."""

    def check_options(self) -> None:
        if self.decoder not in ("med3d", "unet"):
            raise ValueError(f"decoder must be med3d or unet, got {self.decoder!r}")
        channels_option(self)
        self.check_patch_options()
        positive_ints(self, "decoder_widths")


@register_task
class SegTask(Task):
    name = "seg"
    help = "any segmentation store (build-msd, build-nnunet, build-totalseg, build-3dseg8); --domain, --decoder"
    config_type = SegConfig
    default_loss = "ce+dice"

    # ---------------------------------------------------------------------------------------------- store
    def _domains(self, store: str) -> pd.DataFrame:
        from catalog import load_domains

        return load_domains(store).set_index("domain")

    def check_store(self, store: str, options: dict[str, Any] | None = None) -> None:
        doms = self._domains(store)
        domain = (options or {}).get("domain")
        if domain is None and len(doms) > 1:
            raise TaskStoreError(f"{store} holds {len(doms)} domains ({', '.join(doms.index)}); choose one with "
                                 "--domain")
        if domain is not None and domain not in doms.index:
            raise TaskStoreError(f"{store}: no domain {domain!r}; its domains: {', '.join(doms.index)}")
        name = domain if domain is not None else doms.index[0]
        if int(doms.loc[name, "num_classes"]) < 2:
            raise TaskStoreError(f"{store}: domain {name!r} has no foreground class to segment (num_classes "
                                 f"{int(doms.loc[name, 'num_classes'])})")
        if (options or {}).get("classes") and list(options["classes"][1:]) != class_names(
                doms.loc[name, "labels"], int(doms.loc[name, "num_classes"]))[1:]:
            raise TaskStoreError(f"{store}: domain {name!r} has classes "
                                 f"{class_names(doms.loc[name, 'labels'], int(doms.loc[name, 'num_classes']))}, "
                                 f"the run was trained on {options['classes']}; evaluate it on its own kind of store")

    def finetune_options(self, store: str, options: dict[str, Any]) -> dict[str, Any]:
        if options.get("domain") is None:
            options["domain"] = str(self._domains(store).index[0])
        if options.get("splits"):
            self._splits(str(options["splits"]), store, str(options["domain"]))  # refused before anything is written
            options["splits"] = str(Path(options["splits"]).resolve())
        return options

    def _splits(self, table: str, store: str, domain: str) -> dict[str, str]:
        """``{store_path: split}`` of a split table; its refusals as :class:`TaskStoreError`."""
        from model.data.split_table import SplitTableError, read_split_table

        try:
            return read_split_table(table, store, domain)
        except SplitTableError as exc:
            raise TaskStoreError(str(exc)) from exc

    def choose_eval_split(self, store: str, options: dict[str, Any]) -> str:
        """``test`` when the domain has labelled ok test cases (in the ``--splits`` table when given), else
        ``val``."""
        from catalog import load_catalog, select

        if options.get("splits"):
            return "test" if "test" in self._splits(options["splits"], store, options["domain"]).values() else "val"
        rows = select(load_catalog(store), domain=options.get("domain"), split="test", labelled=True)
        return "test" if not rows.empty else "val"

    def data(self, cfg: SegConfig, split: str) -> TaskData:
        from model.data.task_streams import task_data

        splits = self._splits(cfg.splits, cfg.store, str(cfg.domain)) if cfg.splits else None
        return task_data(cfg.store, split, cfg.domain, splits)

    def run_info(self, cfg: SegConfig) -> dict[str, Any]:
        doms = self._domains(cfg.store)
        info = {"domain": cfg.domain, "decoder": cfg.decoder, "channels": cfg.channels,
                "classes": class_names(doms.loc[cfg.domain, "labels"], int(doms.loc[cfg.domain, "num_classes"]))}
        return {**info, "splits": SPLITS_FILE} if cfg.splits else info

    def write_run_files(self, root: Path, cfg: SegConfig) -> None:
        """With ``--splits``: copy the table to ``root/splits.csv``; a run folder holding another table is
        refused."""
        import filecmp
        import shutil

        if not cfg.splits:
            return
        dest = root / SPLITS_FILE
        if dest.is_file() and not filecmp.cmp(dest, cfg.splits, shallow=False):
            raise TaskStoreError(f"{root} was trained with another split table ({dest} differs from {cfg.splits}); "
                                 "pass that table again to resume, or choose another --out")
        shutil.copyfile(cfg.splits, dest)

    def eval_rows(self, run: str | Path, store: str, spec: dict[str, Any], split: str) -> pd.DataFrame:
        """The ok cases of ``split`` of the run's domain: the catalog's split, or the run's own split table."""
        from catalog import load_catalog, select

        if not spec.get("splits"):
            return super().eval_rows(run, store, spec, split)
        splits = self._splits(str(Path(run) / spec["splits"]), store, str(spec["domain"]))
        rows = select(load_catalog(store), domain=spec["domain"])
        return rows[rows["store_path"].map(splits).eq(split)]

    # ------------------------------------------------------------------------------------------- training
    def head(self, cfg: SegConfig) -> str:
        return f"seg_{cfg.decoder}"

    def net_options(self, cfg: SegConfig, in_chans: int) -> dict[str, Any]:
        return {"decoder_widths": list(cfg.decoder_widths), "in_chans": int(in_chans)}

    def loader(self, cfg: SegConfig, train: TaskData, run_dir: Path, *, start: int, steps: int,
               env: DistEnv, progress: bool) -> tuple[Any, Callable | None]:
        from model.training.finetune_data import patch_loader

        return patch_loader(cfg, train, start=start, steps=steps, env=env)

    def validator(self, cfg: SegConfig, data: TaskData, run_dir: Path, *, device: torch.device,
                  amp: bool) -> Callable[[torch.nn.Module], dict[str, Any]]:
        """Mean over cases of the mean foreground-class Dice, whole stored volumes by sliding window."""
        import numpy as np

        from model.data.patches import read_volume
        from model.evaluation.inference import PatchSegmenter
        from model.training.finetune_data import val_result

        cases = list(data.cases[: cfg.val_max_cases or None])

        def segment(net: torch.nn.Module) -> dict[str, Any]:
            seg = PatchSegmenter(net, cfg.patch, data.num_classes, overlap=cfg.overlap, batch=cfg.batch,
                                 device=device, amp=amp)
            scores = []
            for case in cases:
                image, label = read_volume(data.store, case.store_path, None if cfg.channels == "all" else 0)
                dice = [r["dice"] for r in per_class_scores(seg(image), label, data.num_classes)]
                scores.append(float(np.nanmean(dice)) if not np.isnan(dice).all() else float("nan"))
            return val_result(scores, data.split)

        return segment

    # ----------------------------------------------------------------------------------------- evaluation
    def segmenter(self, run: str | Path, spec: dict[str, Any], *, device: Any = "cpu", amp: bool = False,
                  batch: int = 2, overlap: float | None = None) -> Callable:
        from model.evaluation.inference import PatchSegmenter
        from model.run_folder import load_stage

        net, cfg = load_stage(run, "main", device, config_type=SegConfig)
        return PatchSegmenter(net, cfg.patch, len(spec["classes"]),
                              overlap=cfg.overlap if overlap is None else overlap, batch=batch, device=device,
                              amp=amp)

    def evaluate(self, run: str | Path, spec: dict[str, Any], store: str, split: str, rows: pd.DataFrame,
                 out: Path, *, segmenter: Callable | None, device: Any, amp: bool, progress: bool
                 ) -> tuple[dict[str, Any], pd.DataFrame]:
        """``cases.csv``: ``case_id`` and per foreground class ``dice_<name>``, ``hd95_mm_<name>``,
        ``assd_mm_<name>`` on the source grid; the summary holds their means over cases (NaN left out) and
        ``metric``, the mean over classes of the mean Dice."""
        import numpy as np
        import pandas as pd
        import SimpleITK as sitk

        from model.evaluation.evaluate import segment_cases

        names = list(spec["classes"])
        seg = segmenter or self.segmenter(run, spec, device=device, amp=amp)
        records = []
        for row, attrs, pred, truth, path in segment_cases(self, store, split, rows, seg, out, progress):
            rec: dict[str, Any] = {"case_id": row.case_id}
            if truth is not None:
                spacing = attrs.original_spacing_zyx
                scores = per_class_scores(sitk.GetArrayViewFromImage(pred), sitk.GetArrayViewFromImage(truth),
                                          len(names), spacing)
                for name, score in zip(names[1:], scores):
                    rec.update({f"dice_{name}": score["dice"], f"hd95_mm_{name}": score["hd95_mm"],
                                f"assd_mm_{name}": score["assd_mm"]})
            rec["prediction"] = str(path)
            records.append(rec)
        columns = ["case_id"] + [f"{m}_{n}" for n in names[1:] for m in ("dice", "hd95_mm", "assd_mm")]
        table = pd.DataFrame(records).reindex(columns=[*columns, "prediction"])
        summary: dict[str, Any] = {"task": self.name, "split": split, "metric_name": "dice", "cases": len(table),
                                   "labelled_cases": int(rows["has_label"].sum()), "domain": spec.get("domain"),
                                   "classes": names[1:]}
        for col in columns[1:]:
            values = table[col].to_numpy(dtype=float)
            summary[f"{col}_mean"] = float(np.nanmean(values)) if (~np.isnan(values)).any() else float("nan")
        dice = [summary[f"dice_{n}_mean"] for n in names[1:] if not np.isnan(summary[f"dice_{n}_mean"])]
        summary["metric"] = float(np.mean(dice)) if dice else float("nan")
        return summary, table
