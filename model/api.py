"""The transfer commands as Python functions that take a task by name, as the command line does: each finds the
task (:func:`model.tasks.base.get_task`, built-in or plug-in; for a run folder, the task its ``finetune.json``
names) and calls the function of :mod:`model.training` or :mod:`model.evaluation`, which takes the task object.

>>> from model.api import evaluate, finetune
>>> finetune("seg", "data/hippo_store", "runs/hippo", init="runs/pretrain", steps=400)
>>> evaluate("runs/hippo", "data/hippo_store")
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from model.tasks.base import get_task

__all__ = ["evaluate", "finetune", "predict", "run_task", "segmenter_for_run"]


def run_task(run: str | Path) -> Any:
    """The task of a fine-tuning run folder (its ``finetune.json``'s ``task``)."""
    from model.run_folder import read_run

    return get_task(str(read_run(run).get("task")))


def finetune(task: str, store: str, out: str, **kw: Any) -> list[Any]:
    """:func:`model.training.finetune.finetune` of the task named ``task``."""
    from model.training.finetune import finetune as run

    return run(get_task(task), store, out, **kw)


def evaluate(run: str | Path, store: str, **kw: Any) -> dict[str, Any]:
    """:func:`model.evaluation.evaluate.evaluate` of ``run`` with its own task."""
    from model.evaluation.evaluate import evaluate as measure

    return measure(run, store, task=run_task(run), **kw)


def predict(run: str | Path, scans: Sequence[str | Path], out: str | Path, **kw: Any) -> Any:
    """``predict`` of ``run`` with its own task: masks of a segmentation run
    (:func:`model.evaluation.predict.predict`), class probabilities of a classifying one
    (:meth:`~model.task_api.Task.predict_scans`, whose keywords it takes)."""
    from model.evaluation.predict import predict as segment
    from model.run_folder import read_run

    task = run_task(run)
    if task.segmentation:
        return segment(run, scans, out, task=task, **kw)
    return task.predict_scans(run, read_run(run, task), scans, out, **kw)


def segmenter_for_run(run: str | Path, **kw: Any) -> Any:
    """:func:`model.evaluation.evaluate.segmenter_for_run` of ``run`` with its own task."""
    from model.evaluation.evaluate import segmenter_for_run as segmenter

    return segmenter(run, task=run_task(run), **kw)
