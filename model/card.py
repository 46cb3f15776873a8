"""The card of exported weights, from one of our checkpoints: architecture, preprocessing per domain, run.

``med3d-train export RUN OUT.pth`` writes ``OUT.json`` with :func:`checkpoint_card` (format: :mod:`catalog.card`).
A pretraining checkpoint names its stores (``config["store"]``) and the cases it trained on per domain
(``index``): each domain's recipe and case counts are read from those stores, which must still be readable. A
fine-tuning checkpoint recorded its store's recipe (``preprocessing``) when it trained: that record is the card's,
completed with the store's case counts where the store is still there.
"""

from __future__ import annotations

import os
from typing import Any

from torch import nn

from catalog.card import CardError, intensity_rule, make_card, store_domains

__all__ = ["checkpoint_card", "encoder_architecture"]

def encoder_architecture(encoder: nn.Module) -> dict[str, Any]:
    """What a loader must build to take these weights, from the encoder itself (:meth:`Encoder.architecture`):
    registry name, family, input and output channels, per stage its channels and output stride, and the
    family's own fields (ResNet: depth, shortcut type, block type, each stage's stride and dilation)."""
    return encoder.architecture()


def _stores(config: dict[str, Any]) -> list[str]:
    store = config.get("store")
    return [store] if isinstance(store, str) else [str(s) for s in store or []]


def _pretrain_domains(ckpt: dict[str, Any]) -> dict[str, dict[str, Any]]:
    wanted = [str(d) for d in ckpt.get("domains") or ckpt.get("classes") or []]
    cases = (ckpt.get("index") or {}).get("cases") or {}
    trained = {d: len(cases[d]) for d in wanted if d in cases}
    stores = _stores(ckpt["config"])
    out: dict[str, dict[str, Any]] = {}
    for store in stores:
        out.update(store_domains(store, [d for d in wanted if d not in out], trained_on=trained))
    lost = [d for d in wanted if d not in out]
    if lost:
        raise CardError(f"domain(s) {', '.join(lost)} of the checkpoint are in none of its stores "
                        f"({', '.join(stores)}): the stores were rebuilt or moved")
    return out


def _finetune_domains(ckpt: dict[str, Any]) -> dict[str, dict[str, Any]]:
    recipe = dict(ckpt.get("preprocessing") or {})
    if not recipe.get("target_spacing"):
        raise CardError("the fine-tuning checkpoint records no preprocessing of its store (written by an older "
                        "version): fine-tune again to export it with a card")
    name = str(recipe.pop("domain"))
    store = _stores(ckpt["config"])[0]
    trained = {name: len(ckpt.get("scan_ids") or [])}
    try:
        entry = store_domains(store, [name], trained_on=trained).get(name, {})
    except CardError:
        entry = {}  # the store is gone: the recorded recipe is all the card needs
    entry = {"store": store, **entry, **recipe, "intensity_rule": intensity_rule(recipe)}
    entry.setdefault("cases", {"trained_on": trained[name]})
    return {name: entry}


def checkpoint_card(ckpt: dict[str, Any], encoder: nn.Module, weights: str | os.PathLike[str],
                    checkpoint: str | os.PathLike[str]) -> dict[str, Any]:
    """The card of ``encoder`` exported from ``ckpt`` (a loaded pretraining or fine-tuning checkpoint read from
    ``checkpoint``) to ``weights``. Raises :class:`catalog.card.CardError` when the preprocessing cannot be
    known (a pretraining store no longer readable, a fine-tuning checkpoint without its record)."""
    finetuned = "task" in ckpt
    extra = {"task": ckpt["task"], "stage": ckpt.get("stage")} if finetuned else \
        {"excluded_scan_ids": list(ckpt.get("excluded") or [])}
    # Every scan the weights were trained on, through their own --init too: finetune --init OUT.pth checks
    # with it that they never saw the scans a task is measured on, as it does for our checkpoints.
    extra["scan_ids"] = sorted({str(s) for s in (ckpt.get("scan_ids") or [])}
                               | {str(s) for s in (ckpt.get("init_scan_ids") or [])})
    return make_card(kind="finetune" if finetuned else "pretrain", architecture=encoder_architecture(encoder),
                     domains=_finetune_domains(ckpt) if finetuned else _pretrain_domains(ckpt),
                     config=dict(ckpt["config"]), metrics=dict(ckpt.get("metrics") or {}),
                     step=int(ckpt["step"]), weights=weights, checkpoint=checkpoint, **extra)
