"""The task registry, and what several task modules share.

:func:`get_task` and :func:`all_tasks` are how the command line (and ``study``) find tasks by name: the task
modules of this package (each registers its :class:`~model.task_api.Task` subclass with :func:`register_task`),
then the Python entry points of group ``med3d.tasks`` (``name = "package.module:TaskClass"``), so a task in a
package of its own is one module and one line of its ``pyproject.toml``. Training and evaluation never look tasks
up: they receive the object (docs/DECISIONS.md, issue 20).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model.task_api import FinetuneError, Task

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["ENTRY_POINT_GROUP", "BinarySegTask", "all_tasks", "get_task", "register_task"]

ENTRY_POINT_GROUP = "med3d.tasks"
"""Python entry point group of plug-in tasks: each names a :class:`~model.task_api.Task` subclass."""

_TASKS: dict[str, Task] = {}
"""Registry: task name -> :class:`Task` instance (the built-in modules register on import)."""
_PLUGINS_LOADED: list[bool] = []


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: add an instance of ``cls`` to the registry under ``cls.name``."""
    if not cls.name or cls.name in _TASKS:
        raise ValueError(f"task {cls.name!r} has no name or is already registered")
    _TASKS[cls.name] = cls()
    return cls


def _load_plugins() -> None:
    """Register the tasks of the ``med3d.tasks`` entry points (once per process); a plug-in that fails to load or
    takes a registered name is a :class:`FinetuneError` naming its entry point and package."""
    from importlib.metadata import entry_points

    if _PLUGINS_LOADED:
        return
    _PLUGINS_LOADED.append(True)
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        where = f"entry point {ep.name} = {ep.value} (group {ENTRY_POINT_GROUP}" + \
            (f", package {ep.dist.name})" if ep.dist is not None else ")")
        try:
            obj = ep.load()
        except Exception as exc:  # a plug-in's own import error: named, not a traceback from deep inside
            raise FinetuneError(f"{where} failed to load: {type(exc).__name__}: {exc}") from exc
        cls = obj if isinstance(obj, type) else type(obj)
        if not issubclass(cls, Task):
            raise FinetuneError(f"{where} is {obj!r}, not a subclass of model.task_api.Task")
        if type(_TASKS.get(cls.name)) is cls:
            continue  # the module registered itself with @register_task
        if cls.name in _TASKS:
            raise FinetuneError(f"{where}: task name {cls.name!r} is taken already; rename the plug-in's task")
        register_task(cls)


def all_tasks() -> dict[str, Task]:
    """Every task, built-in and plug-in, by name (a copy)."""
    import model.tasks  # noqa: F401  (registers the task modules)

    _load_plugins()
    return dict(_TASKS)


def get_task(name: str) -> Task:
    """The task ``name``; :class:`FinetuneError` naming the choices for an unknown one."""
    tasks = all_tasks()
    try:
        return tasks[name]
    except KeyError:
        raise FinetuneError(f"unknown task {name!r}: one of {', '.join(tasks)} (a plug-in task is found through "
                            f"its package's {ENTRY_POINT_GROUP} entry point: is the package installed?)") from None


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
