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

A checkpoint may come from anywhere (a copied run folder), so nothing in it is materialised before it is checked:
the file is memory-mapped (``mmap=True``), every tensor must need no more bytes than its storage holds (a stride-0
view of 2·10⁹ elements is 8 bytes on disk and 16 GB once copied), and every tensor of the model, the optimiser
state and the random number generator states must have the shape the freshly built network (from the run's
config) and the generators have (:func:`load_model_state`, :func:`restore_training_state`). A refusal is one
line naming the file and the key.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.files import atomic_torch_save, overreaching_tensor

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_NAME",
    "CheckpointError",
    "load_latest_checkpoint",
    "previous_path",
    "REQUIRED_KEYS",
    "load_checkpoint",
    "load_model_state",
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
    truncated copy, a bad disk) still leaves one to resume from. The format tag is added, credentials in URLs
    (a store's ``s3://KEY:SECRET@...``) are redacted (:func:`catalog.redact.redact_urls`). Returns the path.
    """
    from catalog.redact import redact_urls

    data = redact_urls({"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION, **payload})
    path = Path(path)
    if not keep_previous or not path.exists():
        return atomic_torch_save(data, path)
    # Rotate only once the new file is complete: a crash between the two renames leaves the previous one.
    return atomic_torch_save(data, path, before_replace=lambda: os.replace(path, previous_path(path)))


def load_model_state(net: torch.nn.Module, ckpt: Mapping[str, Any], source: object = "the checkpoint", *,
                     error: type[Exception] | None = None) -> None:
    """Load ``ckpt["model"]`` into ``net`` (built from the run's config) after checking that it holds exactly the
    network's keys, each of the network's shape; else ``error`` (default :class:`CheckpointError`), one line
    naming ``source`` and the first key that differs. ``net`` may live on the meta device (a shape check only)."""
    check_model_state(ckpt.get("model"), net.state_dict(), source, error=error)
    if next(iter(net.state_dict().values()), torch.empty(0)).device.type != "meta":
        net.load_state_dict(ckpt["model"])


def check_model_state(saved: Any, expected: Mapping[str, torch.Tensor], source: object = "the checkpoint", *,
                      error: type[Exception] | None = None) -> None:
    """Refuse a saved state dict whose keys or shapes are not ``expected``'s (see :func:`load_model_state`)."""
    fail = error or CheckpointError
    if not isinstance(saved, Mapping):
        raise fail(f"{source}: model: not a state dict ({type(saved).__name__}): the checkpoint is damaged")
    for key, want in expected.items():
        got = saved.get(key)
        if not isinstance(got, torch.Tensor):
            raise fail(f"{source}: model.{key}: {'missing' if got is None else 'not a tensor'}; the network "
                       "built from the run's config has it: the checkpoint belongs to another network or is damaged")
        if tuple(got.shape) != tuple(want.shape):
            raise fail(f"{source}: model.{key}: shape {list(got.shape)}, the network built from the run's config "
                       f"has {list(want.shape)}: the checkpoint belongs to another network or is damaged")
    extra = sorted(str(k) for k in saved if k not in expected)
    if extra:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise fail(f"{source}: model.{extra[0]}{more}: not a key of the network built from the run's config: the "
                   "checkpoint belongs to another network or is damaged")


def _check_optimizer_state(saved: Any, optimizer: torch.optim.Optimizer, source: object,
                           fail: type[Exception]) -> None:
    """Every saved optimiser state tensor that is not a scalar (Adam's ``exp_avg``, SGD's ``momentum_buffer``)
    must have its parameter's shape, and the parameter groups the optimiser's sizes: before ``load_state_dict``
    copies or casts anything."""
    groups = saved.get("param_groups") if isinstance(saved, Mapping) else None
    state = saved.get("state") if isinstance(saved, Mapping) else None
    if not isinstance(groups, list) or not isinstance(state, Mapping):
        raise fail(f"{source}: optimizer: not an optimiser state (state, param_groups): the checkpoint is damaged")
    if len(groups) != len(optimizer.param_groups):
        raise fail(f"{source}: optimizer.param_groups: {len(groups)} group(s), the run's optimiser has "
                   f"{len(optimizer.param_groups)}: the checkpoint is damaged")
    params: dict[Any, torch.Tensor] = {}
    for i, (saved_group, group) in enumerate(zip(groups, optimizer.param_groups)):
        ids = saved_group.get("params") if isinstance(saved_group, Mapping) else None
        if not isinstance(ids, list) or len(ids) != len(group["params"]):
            n = len(ids) if isinstance(ids, list) else "no"
            raise fail(f"{source}: optimizer.param_groups.{i}.params: {n} parameters, the network has "
                       f"{len(group['params'])}: the checkpoint belongs to another network or is damaged")
        params.update(zip(ids, group["params"]))
    for pid, entry in state.items():
        param = params.get(pid)
        if param is None or not isinstance(entry, Mapping):
            raise fail(f"{source}: optimizer.state.{pid}: no parameter of the network has this state: the "
                       "checkpoint is damaged")
        for name, value in entry.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0 and tuple(value.shape) != tuple(param.shape):
                raise fail(f"{source}: optimizer.state.{pid}.{name}: shape {list(value.shape)}, its parameter has "
                           f"{list(param.shape)}: the checkpoint belongs to another network or is damaged")


def _check_rng_state(saved: Any, source: object, fail: type[Exception]) -> None:
    """The generators' states must have the sizes this process's generators have (``tolist()`` and numpy casts
    of a crafted 2·10⁹-element state would allocate it)."""
    want = {("torch",): tuple(torch.get_rng_state().shape), ("python", "state"): (625,), ("numpy", "key"): (624,)}
    for path, shape in want.items():
        value: Any = saved
        for part in path:
            value = value.get(part) if isinstance(value, Mapping) else None
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != shape:
            got = list(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise fail(f"{source}: rng.{'.'.join(path)}: {got}, a generator state is {list(shape)}: the checkpoint "
                       "is damaged")
    cuda = saved.get("cuda") or []
    if not isinstance(cuda, list) or any(not isinstance(t, torch.Tensor) or t.numel() > 1 << 16 for t in cuda):
        raise fail(f"{source}: rng.cuda: not a list of CUDA generator states: the checkpoint is damaged")


def restore_training_state(ckpt: Mapping[str, Any], optimizer: torch.optim.Optimizer,
                           scheduler: Any, source: object = "the checkpoint", *,
                           error: type[Exception] | None = None) -> tuple[int, dict[str, Any]]:
    """Put a loaded checkpoint's optimiser, scheduler and random number generator states back; returns (the
    completed step to continue from, the metrics summary saved with it). The optimiser's and generators' saved
    tensors are checked against the parameters and generators first (``error``, default
    :class:`CheckpointError`, naming ``source`` and the key)."""
    fail = error or CheckpointError
    _check_optimizer_state(ckpt["optimizer"], optimizer, source, fail)
    _check_rng_state(ckpt["rng"], source, fail)
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    set_rng_state(ckpt["rng"])
    return int(ckpt["step"]), dict(ckpt.get("metrics") or {})


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load one of our checkpoints with ``torch.load(weights_only=True)`` and check its keys.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for a file that is not a med3d-train
    checkpoint (e.g. MedicalNet weights, which belong to ``--init``) or one holding a tensor that claims more
    elements than its storage holds (:func:`model.files.overreaching_tensor`). The file is memory-mapped: its
    tensors are read when used, and only what the checks let through is ever copied.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True, mmap=True)
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
    problem = overreaching_tensor(data)
    if problem:
        raise CheckpointError(f"{path}: {problem} (a stride-0 or expanded view): a damaged or crafted checkpoint; "
                              "nothing was copied out of it")
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
