"""What a transfer task is: the interface every task implements, and the only view of tasks that training,
evaluation and the run-folder reader have.

Tasks sit on top (docs/DECISIONS.md, issue 20): :mod:`model.training` and :mod:`model.evaluation` receive a
:class:`Task` object and never look one up by name; the command line (and ``study``) find tasks by name with
:func:`model.tasks.base.get_task`, which holds the registry (the modules of :mod:`model.tasks` and the Python entry
points of group ``med3d.tasks``). This module imports no task, no training recipe and no evaluation.

A task is a subclass of :class:`Task`. What it declares:

============================ =================================================================================
``name``, ``help``           registry key and the CLI's one-line description
``config_type``              its options: a frozen dataclass subclassing
                             :class:`~model.training.finetune_config.FinetuneConfig` (the options every task
                             shares); a field made with
                             :func:`~model.training.finetune_config.option` is a flag of ``finetune TASK``
``stages``                   stage names in training order (``("main",)`` for a one-stage task)
``metric``                   name of the main metric (``dice`` or ``accuracy``; a fraction, higher is better)
``eval_split``               the split ``evaluate`` measures on by default
``segmentation``             whether it outputs masks (``predict`` writes masks) or class scores
``default_loss``             the loss when ``--loss`` is not given (``ce`` or ``ce+dice``)
``check_store(store, opts)`` refuse a store of the wrong kind (domain, modality, classes) before anything is
                             written; raise :class:`TaskStoreError` naming the store and what to build instead
``data(cfg, split)``         the :class:`~model.data.task_streams.TaskData` of one split
``choose_eval_split``        the evaluation split for a store (default: ``eval_split``)
``finetune_options``         the run's options completed from the store (e.g. its one domain)
``run_info(cfg)``            extra entries of ``finetune.json`` (e.g. class names)
``head(cfg)``                the network head of ``cfg``'s stage (a key of :data:`model.nets.transfer.HEADS`)
``net_options(cfg, chans)``  the head's options (decoder widths, ASPP rates) and the input channels; recorded in
                             the checkpoint, which is rebuilt from them alone
``num_classes(train, cfg)``  output classes of the network
``in_chans(train, cfg)``     input channels of the network (1 unless the config has ``channels = "all"``)
``size_option(cfg)``         the config field sizing the stage's input (``patch``, ``shape``, ``coarse_shape`` or
                             None), bounded by the train volumes and the memory before any work
``loader(...)``              the stage's DataLoader and on-device augmentation
``validator(...)``           ``net -> {"metric", "split", "cases"}`` for ``val`` rows of metrics.jsonl
``segmenter(run, spec)``     (segmentation tasks) the trained run as a segmenter (image -> label map)
``evaluate(...)``            measure a run on a split: ``(summary, cases table)``
``pred_name(case_id, ...)``  the file name of a predicted mask
``write_run_files(root, cfg)`` files the run folder needs besides ``finetune.json`` (e.g. a copy of an input)
``eval_rows(run, store, ...)`` the catalog rows ``evaluate`` measures on a split (default: the split's ok rows)
``predict_scans(...)``       (classifying tasks) ``predict`` on raw scans: a table of class probabilities
============================ =================================================================================

``spec`` is always a run's ``finetune.json`` (a dict); a new task is one module: in :mod:`model.tasks`, or in a
package of its own registered under the entry point group ``med3d.tasks`` (README, "Add your own task").
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model.training.finetune_config import FinetuneConfig

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from model.data.task_streams import TaskData
    from model.training.loop import DistEnv

__all__ = ["FinetuneError", "Task", "TaskStoreError", "Validator"]


class FinetuneError(ValueError):
    """A fine-tuning run cannot start (or be read) as asked; the message says what to do."""


class TaskStoreError(FinetuneError):
    """The store is not of the kind a task trains or measures on (item 8 of issue 15)."""


Validator = Callable[["torch.nn.Module"], dict[str, Any]]


class Task:
    """Base of the transfer tasks; see the module docstring for what a subclass sets and overrides."""

    name: str = ""
    help: str = ""
    config_type: type[FinetuneConfig] = FinetuneConfig
    stages: tuple[str, ...] = ("main",)
    metric: str = "dice"
    eval_split: str = "test"
    segmentation: bool = True
    default_loss: str = "ce"

    # ---------------------------------------------------------------------------------------------- store
    def check_store(self, store: str, options: dict[str, Any] | None = None) -> None:
        """Raise :class:`TaskStoreError` when ``store`` is not a store this task can use (no files written)."""

    def data(self, cfg: FinetuneConfig, split: str) -> TaskData:
        """The complete, labelled ok cases of ``split`` (one domain)."""
        from model.data.task_streams import task_data

        return task_data(cfg.store, split)

    def choose_eval_split(self, store: str, options: dict[str, Any]) -> str:
        """The split a run on ``store`` is measured on (recorded in ``finetune.json``)."""
        return self.eval_split

    def finetune_options(self, store: str, options: dict[str, Any]) -> dict[str, Any]:
        """``options`` completed with what the task derives from the store (e.g. the domain); default as is."""
        return options

    def run_info(self, cfg: FinetuneConfig) -> dict[str, Any]:
        """Extra entries of ``RUN/finetune.json`` that evaluate and predict need (e.g. class names)."""
        return {}

    def write_run_files(self, root: Path, cfg: FinetuneConfig) -> None:
        """Write what ``root`` (the run folder, created) needs besides ``finetune.json``; default nothing. Called
        on the main process before ``finetune.json`` is written; raise :class:`FinetuneError` to refuse."""

    # ------------------------------------------------------------------------------------------- training
    def head(self, cfg: FinetuneConfig) -> str:
        """The network head of ``cfg``'s stage: a key of :data:`model.nets.transfer.HEADS`."""
        raise NotImplementedError

    def net_options(self, cfg: FinetuneConfig, in_chans: int) -> dict[str, Any]:
        """The options of :func:`model.nets.transfer.build_transfer_net` for ``cfg``'s stage (JSON values):
        ``in_chans`` and what the head takes (``decoder_widths``, ``aspp_rates``). The checkpoint records them."""
        return {"in_chans": int(in_chans)}

    def config(self, **options: Any) -> FinetuneConfig:
        """This task's config of ``options`` (its own fields and the shared ones), checked."""
        return self.config_type(task=self.name, **options)

    def num_classes(self, train: TaskData, cfg: FinetuneConfig) -> int:
        return int(train.num_classes)

    def in_chans(self, train: TaskData, cfg: FinetuneConfig) -> int:
        """Input channels of the network: 1, or with ``cfg.channels == "all"`` the domain's channels."""
        if getattr(cfg, "channels", "first") != "all":
            return 1
        counts = sorted({c.n_channels for c in train.cases})
        if len(counts) != 1:
            raise FinetuneError(f"{cfg.store}: the train cases of domain {train.domain!r} have {counts} channels; "
                                "--channels all needs one number")
        return counts[0]

    def size_option(self, cfg: FinetuneConfig) -> str | None:
        """The :class:`FinetuneConfig` field that sizes the input of ``cfg``'s stage (voxels z, y, x), which
        :func:`model.training.finetune_bounds.check_stage_sizes` bounds by the train volumes and the memory:
        ``patch`` (default), ``shape``, ``coarse_shape``, or None when inputs keep the data's own size."""
        return "patch"

    def loader(self, cfg: FinetuneConfig, train: TaskData, run_dir: Path, *, start: int, steps: int,
               env: DistEnv, progress: bool) -> tuple[Any, Callable | None]:
        raise NotImplementedError

    def validator(self, cfg: FinetuneConfig, data: TaskData, run_dir: Path, *, device: torch.device,
                  amp: bool) -> Validator:
        raise NotImplementedError

    # ----------------------------------------------------------------------------------------- evaluation
    def segmenter(self, run: str | Path, spec: dict[str, Any], *, device: Any = "cpu", amp: bool = False,
                  batch: int = 2, overlap: float | None = None) -> Callable:
        raise FinetuneError(f"{run}: a {self.name} run classifies; it has no segmenter (predict takes "
                            "segmentation runs)")

    def evaluate(self, run: str | Path, spec: dict[str, Any], store: str, split: str, rows: pd.DataFrame,
                 out: Path, *, segmenter: Callable | None, device: Any, amp: bool, progress: bool
                 ) -> tuple[dict[str, Any], pd.DataFrame]:
        raise NotImplementedError

    def eval_rows(self, run: str | Path, store: str, spec: dict[str, Any], split: str) -> pd.DataFrame:
        """The catalog rows ``evaluate`` measures a run (``spec``: its ``finetune.json``) on: the ok cases of
        ``split`` (of the run's domain when it records one)."""
        from catalog import load_catalog, select

        rows = select(load_catalog(store), split=split)
        return rows[rows["domain"] == spec["domain"]] if spec.get("domain") else rows

    def predict_scans(self, run: str | Path, spec: dict[str, Any], scans: Any, out: str | Path, *,
                      modality: str | None, spacing_xyz: tuple[float, float, float] | None, device: Any,
                      amp: bool, max_voxels: int | None = None, overwrite: bool = False,
                      log: Callable[[str], None]) -> Path:
        """``predict`` of a task that classifies: one row of class probabilities per raw scan, written to a
        table in ``out`` (which must not be an input, nor exist unless ``overwrite``); returns its path."""
        raise FinetuneError(f"{run}: a {self.name} run classifies its store's crops; predict takes segmentation "
                            "and classify runs")

    def pred_name(self, case_id: str, labelled: bool) -> str:
        """File name of the mask predicted for ``case_id`` in ``RUN/eval/<split>/pred``."""
        return f"{case_id}.nii.gz"
