"""Training checkpoints: atomic writes, ``weights_only`` loads, random number generator state as tensors.

A checkpoint is a plain dict that ``torch.load(weights_only=True)`` accepts (tensors, numbers, strings, lists,
dicts; no pickled objects)::

    {"format": "med3d-train", "format_version": 1,
     "model": state dict (encoder.*, head.branches.<domain>.*), "optimizer": ..., "scheduler": ...,
     "step": completed optimiser steps, "config": TrainConfig.to_dict(), "rng": rng_state(),
     "encoder": "resnet50", "domains": [...], "classes": {domain: n}, "scan_ids": [...], "excluded": [...],
     "metrics": summary dict}

numpy's ``get_state()`` holds an ndarray, which ``weights_only`` refuses; it is stored here as an int64 tensor
plus ints, and Python's ``random`` state likewise.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.files import atomic_torch_save

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_NAME",
    "CheckpointError",
    "load_latest_checkpoint",
    "previous_path",
    "REQUIRED_KEYS",
    "load_checkpoint",
    "restore_training_state",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
]

CHECKPOINT_FORMAT = "med3d-train"
CHECKPOINT_VERSION = 1
CHECKPOINT_NAME = "checkpoint.pt"
REQUIRED_KEYS = ("model", "optimizer", "scheduler", "step", "config", "rng")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used (truncated, corrupt, foreign); the message names the file."""


def previous_path(path: str | os.PathLike[str]) -> Path:
    """Where the checkpoint before ``path`` is kept: ``checkpoint.pt`` -> ``checkpoint.prev.pt``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def rng_state() -> dict[str, Any]:
    """The state of every random number generator a run touches, as tensors and ints (``weights_only``-safe).

    Keys: ``torch`` (CPU generator, uint8 tensor), ``cuda`` (list of per-device uint8 tensors, empty when CUDA is
    not initialised), ``python`` ({version, state int64 tensor (625,), gauss_next}), ``numpy`` ({key int64 tensor
    (624,), pos, has_gauss, cached_gaussian}).
    """
    version, py_state, gauss = random.getstate()
    name, key, pos, has_gauss, cached = np.random.get_state()
    assert name == "MT19937", name
    cuda = [s.clone() for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_initialized() else []
    return {
        "torch": torch.get_rng_state().clone(),
        "cuda": cuda,
        "python": {"version": int(version), "state": torch.tensor(py_state, dtype=torch.int64),
                   "gauss_next": None if gauss is None else float(gauss)},
        "numpy": {"key": torch.from_numpy(np.asarray(key, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore the generators saved by :func:`rng_state` (CUDA only when this process has the same devices)."""
    torch.set_rng_state(state["torch"].to("cpu", torch.uint8))
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.to("cpu", torch.uint8) for s in cuda])
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss_next"]))
    npst = state["numpy"]
    key = npst["key"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", key, npst["pos"], npst["has_gauss"], npst["cached_gaussian"]))


def save_checkpoint(payload: Mapping[str, Any], path: str | os.PathLike[str], *, keep_previous: bool = True
                    ) -> Path:
    """Write ``payload`` to ``path`` atomically: a temporary file in the same folder, fsync, then ``os.replace``.

    A crash mid-write leaves the previous checkpoint intact. With ``keep_previous`` the checkpoint it replaces
    is kept as :func:`previous_path` (the last two survive), so a checkpoint damaged after it was written (a
    truncated copy, a bad disk) still leaves one to resume from. The format tag is added. Returns the path.
    """
    data = {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION, **payload}
    path = Path(path)
    if not keep_previous or not path.exists():
        return atomic_torch_save(data, path)
    # Rotate only once the new file is complete: a crash between the two renames leaves the previous one.
    return atomic_torch_save(data, path, before_replace=lambda: os.replace(path, previous_path(path)))


def restore_training_state(ckpt: Mapping[str, Any], optimizer: torch.optim.Optimizer,
                           scheduler: Any) -> tuple[int, dict[str, Any]]:
    """Put a loaded checkpoint's optimiser, scheduler and random number generator states back; returns (the
    completed step to continue from, the metrics summary saved with it)."""
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    set_rng_state(ckpt["rng"])
    return int(ckpt["step"]), dict(ckpt.get("metrics") or {})


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load one of our checkpoints with ``torch.load(weights_only=True)`` and check its keys.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for a file that is not a med3d-train
    checkpoint (e.g. MedicalNet weights, which belong to ``--init``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, EOFError, UnpicklingError... for damaged files
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise CheckpointError(
            f"checkpoint {path} is truncated or corrupt ({type(exc).__name__}: {first}); resume falls back to "
            f"{previous_path(path).name} when it exists, or start a new run") from None
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        what = sorted(data)[:8] if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(
            f"{path} is not a med3d-train checkpoint (top level: {what}); encoder weights from MedicalNet or "
            "Kinetics go to `--init PATH`"
        )
    if data.get("format_version", 0) > CHECKPOINT_VERSION:
        raise ValueError(f"{path} has checkpoint format {data['format_version']}; this med3d reads up to "
                         f"{CHECKPOINT_VERSION}: upgrade med3d")
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {missing}; it was cut short or written by another tool")
    return data


def load_latest_checkpoint(path: str | os.PathLike[str], log: Any = print,
                           map_location: str | torch.device = "cpu") -> dict[str, Any] | None:
    """The checkpoint at ``path`` or, when that one is missing or unusable, the previous one kept beside it
    (saying so through ``log``); None when neither exists. Raises :class:`CheckpointError` when the only
    checkpoint there is damaged, naming it."""
    path = Path(path)
    prev = previous_path(path)
    try:
        return load_checkpoint(path, map_location)
    except FileNotFoundError:
        if not prev.is_file():
            return None
        log(f"{path.name} is missing in {path.parent} (a crash between two writes); resuming from {prev.name}")
    except CheckpointError as exc:
        if not prev.is_file():
            raise
        log(f"warning: {exc}; falling back to the previous checkpoint {prev}")
    data = load_checkpoint(prev, map_location)
    log(f"resuming from the previous checkpoint {prev} (step {int(data['step'])})")
    return data
