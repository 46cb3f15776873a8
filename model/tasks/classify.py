"""``classify``: one class per case of any store, from a label table (``--labels TABLE.csv``).

The table names a case (``case_id``) or scan (``scan_id``) and its class per row, optionally its split (format and
refusals: :mod:`model.data.classify_table`); it is checked against the store before anything is written and
copied into the run as ``RUN/labels.csv``, so ``evaluate`` does not need it again. The classes are its distinct
values, sorted, recorded in ``finetune.json``.

Input: the whole stored volume resized to ``--shape`` (z, y, x), or with ``--crop mask`` the mask's bounding box
grown by ``--crop-margin`` mm, then resized (:mod:`model.data.classify_stream`); random flips. Network: the
encoder and the nodule recipe's head (global average pooling + linear, network kind ``nodule``), cross-entropy.
Measured by accuracy on ``test`` when the table has test cases, else ``val``; ``evaluate`` adds balanced
accuracy, macro AUC and the confusion matrix (:mod:`model.evaluation.classify_eval`); ``predict`` writes class
probabilities of raw scans (whole-volume runs only: a raw scan has no mask to crop around).
"""

from __future__ import annotations

import filecmp
import functools
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dataclasses import dataclass

from model.task_api import FinetuneError, Task, TaskStoreError
from model.tasks.base import register_task
from model.training.config import check_sides
from model.training.finetune_config import CHANNELS_HELP, FinetuneConfig, channels_option, option

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from model.data.classify_table import LabelTable
    from model.data.task_streams import TaskData
    from model.training.loop import DistEnv

TABLE_FILE = "labels.csv"
"""The run's copy of its label table."""


def run_table(run: str | Path, spec: dict[str, Any], store: str) -> LabelTable:
    """The run's own label table (``RUN/labels.csv``) matched to ``store``; :class:`TaskStoreError` when the
    store does not hold the run's cases."""
    from model.data.classify_table import LabelTableError, match_table

    try:
        return match_table(Path(run) / spec["labels"], store, crop=spec["crop"])
    except LabelTableError as exc:
        raise TaskStoreError(f"{store} cannot measure {run}: {exc}. Evaluate on the store the run was trained on "
                             f"({spec.get('store')})") from exc


@dataclass(frozen=True, kw_only=True)
class ClassifyConfig(FinetuneConfig):
    """``finetune classify``: one class per case from a label table."""

    labels: str = option("", "The label table (CSV: case_id or scan_id, label, optional split).", show_default=False)
    """Copied into the run as labels.csv."""
    shape: tuple[int, int, int] = option((64, 64, 64), "Inputs resized to z,y,x.")
    """Every input (whole volume, or the mask crop) is resized to this shape (z, y, x)."""
    crop: str = option("none", "The whole volume, or the mask's bounding box grown by --crop-margin.",
                       choices=("none", "mask"))
    crop_margin_mm: float = option(10.0, "--crop mask: margin around the mask's box (mm per side).",
                                   flag="--crop-margin")
    channels: str = option("first", CHANNELS_HELP, choices=("first", "all"))

    def check_options(self) -> None:
        channels_option(self)
        if self.crop not in ("none", "mask") or not self.crop_margin_mm >= 0:
            raise ValueError(f"crop must be none or mask and crop_margin_mm >= 0, got {self.crop!r}, "
                             f"{self.crop_margin_mm!r}")
        check_sides(self, "shape")


@functools.lru_cache(maxsize=8)
def _matched(labels: str, mtime_ns: int, size: int, store: str, crop: str) -> LabelTable:
    """:func:`~model.data.classify_table.match_table`, memoised on the file's path, time and size."""
    from model.data.classify_table import match_table

    return match_table(labels, store, crop=crop)


@register_task
class ClassifyTask(Task):
    name = "classify"
    help = ("any store + a label table (--labels CSV: case_id or scan_id, label, optional split): whole volume "
            "resized to --shape, or --crop mask")
    metric = "accuracy"
    segmentation = False
    config_type = ClassifyConfig

    # ---------------------------------------------------------------------------------------------- store
    def _table(self, labels: str, store: str, crop: str) -> LabelTable:
        """The table matched to the store (read once per process while the file is unchanged)."""
        from model.data.classify_table import LabelTableError

        if not labels:
            raise FinetuneError("finetune classify needs --labels TABLE.csv: one row per case with a case_id (or "
                                "scan_id) and a label column, optionally a split column")
        try:
            stat = Path(labels).stat()
            return _matched(labels, stat.st_mtime_ns, stat.st_size, store, crop)
        except FileNotFoundError:
            raise FinetuneError(f"{labels}: no such label table; give a CSV file with a case_id and a label "
                                "column") from None
        except LabelTableError as exc:
            raise FinetuneError(str(exc)) from exc

    def finetune_options(self, store: str, options: dict[str, Any]) -> dict[str, Any]:
        """Check the table against the store (every refusal before anything is written); record its absolute
        path."""
        self._table(str(options.get("labels") or ""), store, str(options.get("crop", "none")))
        options["labels"] = str(Path(options["labels"]).resolve())
        return options

    def choose_eval_split(self, store: str, options: dict[str, Any]) -> str:
        """``test`` when the table has test cases, else ``val``."""
        table = self._table(str(options.get("labels") or ""), store, str(options.get("crop", "none")))
        return "test" if not table.split("test").empty else "val"

    def data(self, cfg: ClassifyConfig, split: str) -> TaskData:
        from model.data.task_streams import TaskData

        table = self._table(cfg.labels, cfg.store, cfg.crop)
        cases = table.cases(split)
        if not cases:
            raise ValueError(f"{cfg.labels}: no case in split {split!r}")
        rows = table.split(split)
        return TaskData(cfg.store, ",".join(sorted(set(rows["domain"]))), split, cases, len(table.classes),
                        table.spacings[cases[0].store_path])

    def run_info(self, cfg: ClassifyConfig) -> dict[str, Any]:
        table = self._table(cfg.labels, cfg.store, cfg.crop)
        return {"classes": list(table.classes), "labels": TABLE_FILE, "labels_source": cfg.labels,
                "shape": list(cfg.shape), "crop": cfg.crop, "crop_margin_mm": cfg.crop_margin_mm,
                "channels": cfg.channels}

    def write_run_files(self, root: Path, cfg: ClassifyConfig) -> None:
        """Copy the label table to ``root/labels.csv``; a run folder holding another table is refused."""
        dest = root / TABLE_FILE
        if dest.is_file() and not filecmp.cmp(dest, cfg.labels, shallow=False):
            raise FinetuneError(f"{root} was trained with another label table ({dest} differs from {cfg.labels}); "
                                "pass that table again to resume, or choose another --out")
        shutil.copyfile(cfg.labels, dest)

    # ------------------------------------------------------------------------------------------- training
    def head(self, cfg: ClassifyConfig) -> str:
        return "nodule"  # the network shape: global average pooling + linear (model.nets.transfer.HEADS)

    def size_option(self, cfg: ClassifyConfig) -> str | None:
        return "shape"  # every input, whole volume or mask crop, is resized to it

    def num_classes(self, train: TaskData, cfg: ClassifyConfig) -> int:
        return int(train.num_classes)

    def _cache(self, cfg: ClassifyConfig, data: TaskData, run_dir: Path, progress: bool) -> Path:
        from model.data.classify_stream import build_input_cache
        from model.training.finetune_data import progress_bar

        table = self._table(cfg.labels, cfg.store, cfg.crop)
        with progress_bar(len(data.cases), f"classify inputs ({data.split})", progress) as bar:
            return build_input_cache(cfg.store, data.cases, table.spacings, run_dir / "cache" / data.split,
                                     shape=cfg.shape, crop=cfg.crop, margin_mm=cfg.crop_margin_mm,
                                     channels=cfg.channels, progress=bar.update)

    def loader(self, cfg: ClassifyConfig, train: TaskData, run_dir: Path, *, start: int, steps: int,
               env: DistEnv, progress: bool) -> tuple[Any, Callable | None]:
        from model.data.classify_stream import ClassifyStream
        from model.data.patches import stream_loader

        cache = self._cache(cfg, train, run_dir, progress)
        targets = self._table(cfg.labels, cfg.store, cfg.crop).targets
        ds = ClassifyStream(cache, train.cases, targets, batch=cfg.batch, seed=cfg.seed, start_step=start,
                            num_steps=steps, rank=env.rank, world_size=env.world_size)
        return stream_loader(ds, cfg.workers), None

    def validator(self, cfg: ClassifyConfig, data: TaskData, run_dir: Path, *, device: torch.device,
                  amp: bool) -> Callable[[torch.nn.Module], dict[str, Any]]:
        """Accuracy over the evaluation split's cases (the first ``val_max_cases``)."""
        import torch

        from model.data.classify_stream import cached_input
        from model.training.finetune_data import val_result

        cases = list(data.cases[: cfg.val_max_cases or None])
        cache = self._cache(cfg, data, run_dir, False)
        targets = self._table(cfg.labels, cfg.store, cfg.crop).targets

        @torch.no_grad()
        def accuracy(net: torch.nn.Module) -> dict[str, Any]:
            net.eval()
            hits = []
            for case in cases:
                x = torch.from_numpy(cached_input(cache, case))[None].to(device)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    pred = int(net(x).float().argmax(dim=1).item())
                hits.append(float(pred == targets[case.store_path]))
            return val_result(hits, data.split)

        return accuracy

    # ----------------------------------------------------------------------------------------- evaluation
    def eval_rows(self, run: str | Path, store: str, spec: dict[str, Any], split: str) -> pd.DataFrame:
        """The catalog rows of the cases the run's table puts in ``split`` (sorted by store path)."""
        from catalog import load_catalog

        paths = set(run_table(run, spec, store).split(split)["store_path"])
        cat = load_catalog(store)
        return cat[cat["store_path"].isin(paths)].sort_values("store_path")

    def evaluate(self, run: str | Path, spec: dict[str, Any], store: str, split: str, rows: pd.DataFrame,
                 out: Path, *, segmenter: Callable | None, device: Any, amp: bool, progress: bool
                 ) -> tuple[dict[str, Any], pd.DataFrame]:
        """Accuracy, balanced accuracy, macro AUC and the confusion matrix; writes ``predictions.csv``."""
        from model.evaluation.classify_eval import evaluate_classifier
        from model.run_folder import load_stage

        network = load_stage(run, "main", device, config_type=ClassifyConfig)
        return evaluate_classifier(run, spec, run_table(run, spec, store), split, rows, out, network=network,
                                   device=device, amp=amp,
                                   progress=progress)

    def predict_scans(self, run: str | Path, spec: dict[str, Any], scans: Any, out: str | Path, *,
                      modality: str | None, spacing_xyz: tuple[float, float, float] | None, device: Any,
                      amp: bool, max_voxels: int | None = None, overwrite: bool = False,
                      log: Callable[[str], None]) -> Path:
        from model.evaluation.classify_eval import predict_classes
        from model.run_folder import load_stage

        return predict_classes(run, spec, scans, out, network=lambda: load_stage(run, "main", device,
                                                                                 config_type=ClassifyConfig),
                               modality=modality, spacing_xyz=spacing_xyz, device=device,
                               amp=amp, max_voxels=max_voxels, overwrite=overwrite, log=log)
