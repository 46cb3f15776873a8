"""Helpers shared by the transfer tests."""
from __future__ import annotations

from pathlib import Path


def tiny_pretrain(folder: Path) -> str:
    """A one-step ResNet-10 pretraining run on a fresh synthetic store; returns its checkpoint path."""
    from conftest import _build_store
    from model.training.config import TrainConfig
    from model.training.pretrain import pretrain

    store = _build_store(folder / "raw", folder / "store", {"alpha": [0, 1, 2]}, seed=5, scan_prefix="pre-")
    cfg = TrainConfig(store=store, out=str(folder / "run"), encoder="resnet10", steps=1, batch=1,
                      patch=(16, 16, 16), workers=0, device="cpu", val_every=0, ckpt_every=0)
    return str(pretrain(cfg, progress=False, log=lambda s: None).checkpoint)
