"""The transfer tasks: one module per task (liver, lung, nodule, seg, classify), each a
:class:`~model.task_api.Task` subclass registered with :func:`~model.tasks.base.register_task`; plug-in tasks
come from the ``med3d.tasks`` entry points (:mod:`model.tasks.base`).

Every module of this package is imported here, so a new built-in task is one new file (plus its tests);
:func:`~model.tasks.base.get_task` finds it by name.

>>> from model.tasks.base import get_task
>>> task = get_task("seg"); task.stages, task.metric
(('main',), 'dice')
"""

from __future__ import annotations

import importlib
import pkgutil

for _module in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")
