"""Files that both the networks (weight export) and training (checkpoints) write and read: an atomic
``torch.save``, and ``torch.load(weights_only=True)`` of weight files written by other tools.

Kept apart from :mod:`model.training` so that :mod:`model.nets` needs nothing of the training loop.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from catalog.atomic import usual_mode

__all__ = ["atomic_torch_save", "overreaching_tensor", "read_weights_file"]


def atomic_torch_save(obj: Any, path: str | os.PathLike[str], before_replace: Any = None) -> Path:
    """``torch.save`` to a temporary file in the target folder, fsync, then ``os.replace``: readers see the old
    file or the new one, never a torn one. The file gets the usual permissions (umask), not mkstemp's 0600.
    ``before_replace()`` runs once the temporary file is complete, just before it takes ``path``'s place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, usual_mode())
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable (a power loss could otherwise bring back the old file)
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return path
    try:
        os.fsync(dir_fd)
    except OSError:
        pass  # some file systems refuse fsync on a directory
    finally:
        os.close(dir_fd)
    return path


def overreaching_tensor(obj: Any, key: str = "") -> str | None:
    """Where a loaded file (nested dicts, lists, tuples) holds a tensor whose elements need more bytes than its
    storage has, and how many: ``"model.conv1.weight: 2,000,000,000 elements over 4 bytes of storage"``; None when
    no tensor does. Such a tensor is a stride-0 or expanded view (``torch.zeros(1).expand(2_000_000_000)`` saves as
    4 bytes); any copy of it (``.clone()``, ``load_state_dict``, ``.numpy().astype``, ``.tolist()``) would allocate
    what its shape claims, so a file holding one is refused before anything is copied out of it."""
    stack = [(key, obj)]  # a loop, not recursion: a crafted file may nest lists deeper than the stack goes
    while stack:
        where, item = stack.pop()
        if isinstance(item, torch.Tensor):
            need, have = item.numel() * item.element_size(), item.untyped_storage().nbytes()
            if need > have:
                return f"{where or 'the file'}: {item.numel():,} elements over {have:,} bytes of storage"
        elif isinstance(item, dict):
            stack.extend((f"{where}.{k}" if where else str(k), v) for k, v in reversed(list(item.items())))
        elif isinstance(item, (list, tuple)):
            stack.extend((f"{where}.{i}" if where else str(i), v) for i, v in reversed(list(enumerate(item))))
    return None


def _numpy_scalar_globals() -> list[Any]:
    """The numpy objects a pickled numpy scalar needs (nnU-Net's checkpoints log metrics as numpy floats):
    rebuilding one calls no code but numpy's own scalar constructor."""
    import numpy as np

    core = getattr(np, "_core", None) or np.core
    kinds = [type(np.dtype(t)) for t in (np.float16, np.float32, np.float64, np.int32, np.int64, np.bool_)]
    return [core.multiarray.scalar, np.dtype, *kinds]


def read_weights_file(path: str | os.PathLike[str]) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, numpy scalars allowed: MedicalNet, Kinetics, our
    checkpoints and nnU-Net's ``checkpoint_final.pth`` load without unpickling anything else."""
    with torch.serialization.safe_globals(_numpy_scalar_globals()):
        return torch.load(path, map_location="cpu", weights_only=True)
