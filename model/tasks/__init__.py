"""Transfer tasks in a registry: one module per task (liver, lung, nodule, seg, ...), each a
:class:`~model.tasks.base.Task` registered with :func:`~model.tasks.base.register_task`.

Every module of this package other than ``base`` and ``run`` is a task module and is imported here, so a new task
is one new file (plus its tests); :func:`get_task` finds it by name. Reading a run folder and loading a trained
stage (:mod:`model.tasks.run`) live here too, so evaluation does not import the training recipes.

>>> from model.tasks import get_task
>>> task = get_task("seg"); task.stages, task.metric
(('main',), 'dice')
"""

from __future__ import annotations

import importlib
import pkgutil

from model.tasks.base import TASKS, FinetuneError, Task, TaskStoreError, get_task, register_task

__all__ = ["TASKS", "FinetuneError", "Task", "TaskStoreError", "get_task", "register_task"]

_NOT_TASKS = {"base", "run", "checks"}

for _module in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if _module.name not in _NOT_TASKS and not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")
