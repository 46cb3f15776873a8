"""Files that both the networks (weight export) and training (checkpoints) write: an atomic ``torch.save``.

Kept apart from :mod:`model.training` so that :mod:`model.nets` needs nothing of the training loop.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from catalog.atomic import usual_mode

__all__ = ["atomic_torch_save"]


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
