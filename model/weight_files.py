"""Weight files read without pickle (safetensors), and the errors of loading weights: below both the weight loader
(:mod:`model.nets.weights`) and the exports (:mod:`model.export.safetensors_card`), so neither imports the other
(beside :mod:`model.files`, for the same reason: :mod:`model.nets` reads files without knowing the store)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from catalog.safetensors_header import SafetensorsHeaderError, read_header

__all__ = ["TORCH_DTYPES", "WeightsFileError", "WeightsMismatchError", "checked_header", "load_safetensors"]


class WeightsMismatchError(ValueError):
    """A checkpoint does not fit the encoder; the message names the keys and the likely cause."""


class WeightsFileError(WeightsMismatchError):
    """A weights file that cannot be read (damaged, truncated, crafted); one line naming the file. A
    :class:`~model.nets.weights.WeightsMismatchError`, so every command that loads ``--init`` weights already
    reports it as one line."""


TORCH_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                 "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                 "BOOL": torch.bool}


def checked_header(path: Path):
    try:
        return read_header(path)
    except SafetensorsHeaderError as exc:
        raise WeightsFileError(str(exc)) from None


def load_safetensors(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(state dict, metadata) of the safetensors file ``path``, on the CPU. The header is checked first
    (:func:`catalog.safetensors_header.read_header`); whatever the library still refuses is a
    :class:`WeightsFileError` naming the file too."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights {str(path)!r} do not exist")
    header = checked_header(path)
    try:
        tensors = load_file(path, device="cpu")
    except Exception as exc:  # SafetensorError, or an OSError/RuntimeError from mapping the file
        raise WeightsFileError(f"{path}: the safetensors library cannot read it ({type(exc).__name__}: "
                               f"{str(exc).splitlines()[0][:120] if str(exc) else ''}); export it again") from None
    return tensors, header.metadata


