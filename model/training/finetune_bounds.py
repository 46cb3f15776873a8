"""What a fine-tuning stage's input size may be, given its train volumes and this machine (issue 23, item 11),
checked once the train cases are known and before anything is built, loaded or written.

The pure bounds (sides of 8 to 1024 voxels, a learning rate in (0, 10]) are the config's own
(:class:`~model.training.finetune_config.FinetuneConfig`); here the option that sizes the stage's input
(``--patch``, ``--shape`` or ``--coarse-shape``: :meth:`model.task_api.Task.size_option`) is compared with the
data and the memory:

- no side more than :data:`MAX_UPSAMPLE` times the largest train volume along that axis: a 600³ input made of
  40-voxel volumes is 15× interpolation (or padding) and wrote 3 GB of cache before it failed;
- one batch of inputs (``batch × channels × voxels`` float32) at most :data:`MEMORY_SHARE` of the machine's
  memory: the network's activations are many times that.

The cache a stage writes is checked against the free disk space when it is built
(:func:`model.data.case_cache.check_cache_space`).
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING

from model.data.case_cache import human_bytes
from model.task_api import FinetuneError

if TYPE_CHECKING:
    from model.data.task_streams import TaskData
    from model.task_api import Task
    from model.training.finetune_config import FinetuneConfig

__all__ = ["MAX_UPSAMPLE", "MEMORY_SHARE", "check_stage_sizes", "memory_bytes"]

MAX_UPSAMPLE = 4
"""The largest ratio of an input side to the largest train volume's side along that axis."""
MEMORY_SHARE = 0.5
"""The share of the machine's memory one batch of inputs may take."""


def memory_bytes() -> int:
    """This machine's memory (bytes): psutil's total, or the page count times the page size."""
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except ImportError:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def _option(name: str, size: tuple[int, ...]) -> str:
    return f"--{name.replace('_', '-')} {','.join(map(str, size))}"


def check_stage_sizes(cfg: FinetuneConfig, task: Task, train: TaskData) -> None:
    """Raise :class:`FinetuneError` naming the option when the input size of ``cfg``'s stage (its
    :meth:`~model.task_api.Task.size_option`) exceeds :data:`MAX_UPSAMPLE` × the largest volume of ``train``
    along an axis, or one batch of such inputs more than :data:`MEMORY_SHARE` of :func:`memory_bytes`."""
    name = task.size_option(cfg)
    if name is None or not train.cases:
        return
    size = tuple(int(s) for s in getattr(cfg, name))
    largest = [max(int(c.shape[a]) for c in train.cases) for a in range(3)]
    for axis, side, most in zip("zyx", size, largest):
        if side > MAX_UPSAMPLE * most:
            raise FinetuneError(
                f"{_option(name, size)} is more than {MAX_UPSAMPLE}× the largest train volume of {cfg.store} along "
                f"{axis} ({most} voxels): such inputs are mostly interpolation or padding; use at most "
                f"{MAX_UPSAMPLE * most} along {axis} (largest volume z, y, x: {', '.join(map(str, largest))})")
    channels = max(int(c.n_channels) for c in train.cases) if getattr(cfg, "channels", "first") == "all" else 1
    need = cfg.batch * channels * math.prod(size) * 4
    memory = memory_bytes()
    if need > MEMORY_SHARE * memory:
        raise FinetuneError(
            f"--batch {cfg.batch} × {_option(name, size)}" + (f" × {channels} channels" if channels > 1 else "") +
            f": one batch of float32 inputs is {human_bytes(need)}, more than {MEMORY_SHARE:.0%} of this machine's "
            f"{human_bytes(memory)} of memory (the network's activations take many times more); lower --batch or "
            f"the size")
