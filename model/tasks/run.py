"""A fine-tuning run folder, read back: its ``finetune.json``, the trained network of one stage, and output paths
that cannot leave their folder.

Only the configuration and checkpoint files of training are read here (:mod:`model.training.finetune_config`,
:mod:`model.training.checkpoint`); evaluation and prediction import this module, not the training recipes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model.tasks.base import FinetuneError

if TYPE_CHECKING:
    import torch

    from model.nets.transfer import TransferNet
    from model.training.finetune_config import FinetuneConfig

__all__ = ["RUN_FILE", "inside", "load_stage", "net_options", "read_run"]

RUN_FILE = "finetune.json"


def read_run(run: str | Path) -> dict[str, Any]:
    """``RUN/finetune.json``; a clear error for a folder that is not a fine-tuning run."""
    path = Path(run) / RUN_FILE
    if not path.is_file():
        raise FinetuneError(f"{run} is not a fine-tuning run (no {RUN_FILE}); run `med3d-train finetune` first")
    return json.loads(path.read_text())


def net_options(cfg: FinetuneConfig, in_chans: int = 1) -> dict[str, Any]:
    """The options of :func:`model.nets.transfer.build_transfer_net` that ``cfg`` sets, and the input channels
    (which the store decides; a checkpoint records them)."""
    return {"aspp_rates": cfg.aspp_rates, "decoder_widths": cfg.decoder_widths, "in_chans": int(in_chans)}


def load_stage(run: str | Path, stage: str, device: torch.device | str = "cpu"
               ) -> tuple[TransferNet, FinetuneConfig]:
    """The trained network of one stage of a run (eval mode, on ``device``) and its config."""
    from model.nets.transfer import build_transfer_net
    from model.tasks.base import get_task
    from model.training.checkpoint import CHECKPOINT_NAME, load_checkpoint
    from model.training.finetune_config import FinetuneConfig

    folder = Path(run) if stage == "main" else Path(run) / stage
    ckpt = load_checkpoint(folder / CHECKPOINT_NAME)
    cfg = FinetuneConfig.from_dict(ckpt["config"])
    net = build_transfer_net(get_task(cfg.task).kind(cfg), cfg.encoder, int(ckpt["num_classes"]),
                             net_options(cfg, int(ckpt.get("in_chans", 1))))
    net.load_state_dict(ckpt["model"])
    if int(ckpt["step"]) < cfg.steps:
        print(f"note: {folder} stopped at step {ckpt['step']} of {cfg.steps} (resume it with --resume)")
    return net.to(device).eval(), cfg


def inside(folder: str | Path, name: str) -> Path:
    """``folder/name`` resolved, checked to lie inside ``folder``: a name from a store's catalog (a case id like
    ``../../x``) or from a file name must never steer a write elsewhere. Raises ValueError naming both."""
    root = Path(folder).resolve()
    path = (root / name).resolve()
    if path.parent != root or not name or Path(name).name != name:
        raise ValueError(f"refusing to write {name!r}: it would land at {path}, outside {root}; the store's "
                         "catalog (case_id) or the input's file name is malformed")
    return path
