"""Encoder weights as ``.safetensors`` with their card inside: no pickle, loadable by any safetensors reader.

``med3d-train export RUN --format safetensors OUT`` writes ``OUT/model.safetensors`` (or ``OUT`` itself when it
ends in ``.safetensors``) and ``README.md`` beside it (:mod:`model.export.model_card`), so the folder can be
uploaded to a model hub as it is. The file holds the encoder's state dict under its own names (``conv1.weight``,
``layer1.0.bn1.running_mean``..., MedicalNet's names without the ``module.`` prefix) and two metadata strings:
``format`` = ``med3d-encoder`` and ``med3d_card`` = the card (:func:`model.card.checkpoint_card`) as JSON. That
card is what ``OUT.json`` is for a ``.pth``: ``finetune --init model.safetensors`` reads it for the leakage
check (the card's ``scan_ids``) and the preprocessing warning, and ``med3d-prep build-* --like model.safetensors``
replays its recipe (:func:`catalog.card.read_card`).

Reading goes through :func:`catalog.safetensors_header.read_header` first, so a damaged or crafted file is one
:class:`WeightsFileError` line naming it, never a traceback from the library.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from catalog.safetensors_header import CARD_KEY, FORMAT_KEY
from model.weight_files import TORCH_DTYPES, WeightsFileError, checked_header

__all__ = ["ENCODER_FORMAT", "WEIGHTS_NAME", "SafetensorsExport", "encoder_tensors", "export_safetensors",
           "safetensors_record", "safetensors_target"]

ENCODER_FORMAT = "med3d-encoder"
"""The ``format`` metadata of our exported encoders."""
WEIGHTS_NAME = "model.safetensors"
"""The weights' file name when OUT is a folder: the name model hubs look for."""

@dataclass(frozen=True)
class SafetensorsExport:
    """What :func:`export_safetensors` wrote: the weights, the model card (None without a card), tensor count."""

    weights: Path
    readme: Path | None
    tensors: int


def safetensors_target(out: str | os.PathLike[str]) -> Path:
    """The weights file of ``OUT``: itself when it ends in ``.safetensors``, else ``OUT/model.safetensors`` (a
    folder, existing or to be made). Raises ValueError for another file ending (``OUT.pth``) or an existing file."""
    path = Path(out)
    if path.suffix == ".safetensors":
        return path
    if path.suffix and not path.is_dir():
        raise ValueError(f"OUT {out}: --format safetensors writes a folder (OUT/{WEIGHTS_NAME} and its README.md) "
                         "or FILE.safetensors; give one of those")
    if path.exists() and not path.is_dir():
        raise ValueError(f"OUT {out} is a file; --format safetensors writes a folder or FILE.safetensors")
    return path / WEIGHTS_NAME


def encoder_tensors(encoder: nn.Module) -> dict[str, torch.Tensor]:
    """The encoder's state dict as contiguous CPU copies under its own names (safetensors refuses shared or
    strided storage)."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in encoder.state_dict().items()}


def export_safetensors(encoder: nn.Module, card: dict[str, Any] | None, out: str | os.PathLike[str], *,
                       license: str = "other") -> SafetensorsExport:
    """Write ``encoder``'s weights to ``out`` (:func:`safetensors_target`) with ``card`` in the metadata and, with a
    card, the model card ``README.md`` beside them (``license``: its front matter's licence id).

    Both files are written atomically; a ``README.md`` already there that this command did not write is refused
    before anything is written (exporting into a project folder must not replace its README)."""
    from safetensors.torch import save_file

    from catalog.atomic import write_atomic
    from model.export.model_card import check_readme_free, model_card_markdown

    target = safetensors_target(out)
    readme = None
    if card is not None:
        readme = check_readme_free(target.parent)
    tensors = encoder_tensors(encoder)
    metadata = {FORMAT_KEY: ENCODER_FORMAT, "encoder": str(getattr(encoder, "name", type(encoder).__name__))}
    if card is not None:
        metadata[CARD_KEY] = json.dumps(card, sort_keys=False)
    write_atomic(target, lambda tmp: save_file(tensors, tmp, metadata=metadata), ".safetensors")
    if readme is not None:
        text = model_card_markdown(card, target.name, license=license)

        def write(tmp: str) -> None:
            Path(tmp).write_text(text, encoding="utf-8")

        write_atomic(readme, write, ".md")
    return SafetensorsExport(target, readme, len(tensors))


def safetensors_record(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What ``--init model.safetensors`` brings besides weights (:func:`model.training.finetune.init_record`): the
    encoder its shapes fit (read from the header alone, no tensor loaded), and from its card the scans it was
    trained on. Without a card: kind ``state_dict`` and unknown scans, as a bare ``.pth``."""
    from catalog.card import CardError, find_card
    from model.nets.weights import detect_depth

    path = Path(path)
    header = checked_header(path)
    shapes = {name: torch.empty(e.shape, dtype=TORCH_DTYPES[e.dtype], device="meta")
              for name, e in header.tensors.items()}
    encoder = detect_depth(shapes)
    try:
        card = find_card(path)
    except CardError as exc:
        raise WeightsFileError(str(exc)) from None
    if card is not None and card.get("kind") in ("pretrain", "finetune"):
        ids = card.get("scan_ids")
        return {"kind": "med3d", "encoder": None if encoder == "unknown" else encoder,
                "scan_ids": None if ids is None else sorted(map(str, ids)), "path": str(path)}
    return {"kind": "state_dict", "encoder": None if encoder == "unknown" else encoder, "scan_ids": None,
            "path": str(path)}
