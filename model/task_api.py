"""What a transfer task is: the small interface every task module implements, and the registry.

A task (``liver``, ``lung``, ``nodule``, ``seg``, ...) is one subclass of :class:`Task` in its own module of
:mod:`model.tasks`, registered with :func:`register_task`. ``finetune``, ``evaluate``, ``predict``, ``compare``
and the CLI look tasks up with :func:`get_task` and hold no task names. What a task declares:

============================ =================================================================================
``name``, ``help``           registry key and the CLI's one-line description
``stages``                   stage names in training order (``("main",)`` for a one-stage task)
``metric``                   name of the main metric (``dice`` or ``accuracy``; a fraction, higher is better)
``eval_split``               the split ``evaluate`` measures on by default
``segmentation``             whether it outputs masks (``predict`` writes masks) or class scores
``default_loss``             the loss when ``--loss`` is not given (``ce`` or ``ce+dice``)
``check_store(store, opts)`` refuse a store of the wrong kind (domain, modality, classes) before anything is
                             written; raise :class:`TaskStoreError` naming the store and what to build instead
``data(cfg, split)``         the :class:`~model.data.transfer.TaskData` of one split
``choose_eval_split``        the evaluation split for a store (default: ``eval_split``)
``finetune_options``         the run's options completed from the store (e.g. its one domain)
``run_info(cfg)``            extra entries of ``finetune.json`` (e.g. class names)
``kind(cfg)``                the network kind (a key of :data:`model.nets.transfer.HEADS`) of ``cfg``'s stage
``num_classes(train, cfg)``  output classes of the network
``multichannel``             whether ``--channels all`` (every channel of the domain) is allowed
``in_chans(train, cfg)``     input channels of the network (1 unless ``--channels all``)
``size_option(cfg)``         the config field sizing the stage's input (``patch``, ``shape``, ``coarse_shape`` or
                             None), bounded by the train volumes and the memory before any work
``loader(...)``              the stage's DataLoader and on-device augmentation
``validator(...)``           ``net -> {"metric", "split", "cases"}`` for ``val`` rows of metrics.jsonl
``segmenter(run, spec)``     (segmentation tasks) the trained run as a segmenter (image -> label map)
``evaluate(...)``            measure a run on a split: ``(summary, cases table)``
                             (:class:`BinarySegTask`: the binary metrics; ``summarize`` adds to them)
``pred_name(case_id, ...)``  the file name of a predicted mask
``write_run_files(root, cfg)`` files the run folder needs besides ``finetune.json`` (e.g. a copy of an input)
``eval_rows(run, store, ...)`` the catalog rows ``evaluate`` measures on a split (default: the split's ok rows)
``predict_scans(...)``       (classifying tasks) ``predict`` on raw scans: a table of class probabilities
============================ =================================================================================

Adding a task is one new module in this package (it is imported by :mod:`model.tasks` on start) and its tests.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from model.data.transfer import TaskData
    from model.training.finetune_config import FinetuneConfig
    from model.training.loop import DistEnv

__all__ = ["TASKS", "FinetuneError", "Task", "TaskStoreError", "get_task", "register_task"]


class FinetuneError(ValueError):
    """A fine-tuning run cannot start (or be read) as asked; the message says what to do."""


class TaskStoreError(FinetuneError):
    """The store is not of the kind a task trains or measures on (item 8 of issue 15)."""


Validator = Callable[["torch.nn.Module"], dict[str, Any]]


class Task:
    """Base of the transfer tasks; see the module docstring for what a subclass sets and overrides."""

    name: str = ""
    help: str = ""
    stages: tuple[str, ...] = ("main",)
    metric: str = "dice"
    eval_split: str = "test"
    segmentation: bool = True
    default_loss: str = "ce"
    multichannel: bool = False

    # ---------------------------------------------------------------------------------------------- store
    def check_store(self, store: str, options: dict[str, Any] | None = None) -> None:
        """Raise :class:`TaskStoreError` when ``store`` is not a store this task can use (no files written)."""

    def data(self, cfg: FinetuneConfig, split: str) -> TaskData:
        """The complete, labelled ok cases of ``split`` (one domain)."""
        from model.data.transfer import task_data

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
    def kind(self, cfg: FinetuneConfig) -> str:
        raise NotImplementedError

    def num_classes(self, train: TaskData, cfg: FinetuneConfig) -> int:
        return int(train.num_classes)

    def in_chans(self, train: TaskData, cfg: FinetuneConfig) -> int:
        """Input channels of the network: 1, or with ``cfg.channels == "all"`` the domain's channels."""
        if cfg.channels != "all":
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


class BinarySegTask(Task):
    """A task segmenting one foreground class (liver, lung): ``evaluate`` writes the masks and the binary
    metrics of :func:`~model.evaluation.evaluate.evaluate_binary`; :meth:`summarize` may add to the summary."""

    def evaluate(self, run: str | Path, spec: dict[str, Any], store: str, split: str, rows: pd.DataFrame,
                 out: Path, *, segmenter: Callable | None, device: Any, amp: bool, progress: bool
                 ) -> tuple[dict[str, Any], pd.DataFrame]:
        from model.evaluation.evaluate import evaluate_binary

        seg = segmenter or self.segmenter(run, spec, device=device, amp=amp)
        summary, table = evaluate_binary(self, store, split, rows, seg, out, progress)
        return self.summarize(summary, table), table

    def summarize(self, summary: dict[str, Any], table: pd.DataFrame) -> dict[str, Any]:
        """The evaluation summary, given the per-case table; default as is."""
        return summary


TASKS: dict[str, Task] = {}
"""Registry: task name -> :class:`Task` instance (filled when :mod:`model.tasks` is imported)."""


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: add an instance of ``cls`` to :data:`TASKS` under ``cls.name``."""
    if not cls.name or cls.name in TASKS:
        raise ValueError(f"task {cls.name!r} has no name or is already registered")
    TASKS[cls.name] = cls()
    return cls


def get_task(name: str) -> Task:
    """The registered task ``name``; :class:`FinetuneError` naming the choices for an unknown one."""
    import model.tasks  # noqa: F401  (registers the task modules)

    try:
        return TASKS[name]
    except KeyError:
        raise FinetuneError(f"unknown task {name!r}: one of {', '.join(TASKS)}") from None
