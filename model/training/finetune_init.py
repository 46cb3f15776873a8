"""What the ``--init`` weights of a fine-tuning run bring besides weights, and the checks made of them before
anything is written: the encoder they hold, the scans they were trained on (a run may not be measured on scans its
weights saw) and their card's preprocessing against the store's."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any


from model.task_api import FinetuneError
from model.training.checkpoint import CHECKPOINT_NAME
from model.training.loop import DistEnv

__all__ = ["check_init_card", "check_leakage", "init_record", "resolve_init"]


def _run_stages(folder: Path) -> list[str]:
    """The stages a fine-tuning run folder's ``finetune.json`` lists ([] for another folder or a damaged file)."""
    from model.run_folder import RUN_FILE, read_run

    if not (folder / RUN_FILE).is_file():
        return []
    try:
        stages = read_run(folder).get("stages")
    except FinetuneError:
        return []
    return [str(s) for s in stages] if isinstance(stages, list) else []


def resolve_init(init: str) -> Path | None:
    """``scratch`` -> None; a run folder -> its checkpoint (a run of several stages, as its ``finetune.json`` lists
    them: its last stage's, as liver's fine, else the earlier one's); a file -> itself. Raises FileNotFoundError naming what is missing."""
    if init == "scratch":
        return None
    path = Path(init)
    if path.is_dir():
        later_first = [st for st in reversed(_run_stages(path)) if st != "main"]
        for rel in (CHECKPOINT_NAME, *(f"{st}/{CHECKPOINT_NAME}" for st in dict.fromkeys(later_first))):
            if (path / rel).is_file():
                return path / rel
        raise FileNotFoundError(f"--init {init}: a folder without {CHECKPOINT_NAME}; give a run folder, a checkpoint "
                                "or a MedicalNet/Kinetics .pth")
    if not path.is_file():
        raise FileNotFoundError(f"--init {init}: no such file or folder (or 'scratch')")
    return path


def init_record(init: str) -> dict[str, Any]:
    """What an ``--init`` brings besides weights: its encoder name (None when unknown), the scans it was trained
    on (None when the file does not say: MedicalNet, Kinetics), and its kind (scratch, med3d, medicalnet,
    kinetics, state_dict)."""
    path = resolve_init(init)
    if path is None:
        return {"kind": "scratch", "encoder": None, "scan_ids": [], "path": None}
    if path.suffix == ".safetensors":  # its card is in its metadata (model.export.safetensors_card)
        from model.export.safetensors_card import safetensors_record

        return safetensors_record(path)
    from model.files import read_weights_file

    obj = read_weights_file(path)  # weights_only; numpy scalars allowed (nnU-Net's checkpoint_final.pth)
    if isinstance(obj, dict) and obj.get("format") == "med3d-train":
        ids = set(obj.get("scan_ids") or []) | set(obj.get("init_scan_ids") or [])
        return {"kind": "med3d", "encoder": obj.get("encoder"), "scan_ids": sorted(ids), "path": str(path)}
    from model.nets.weights import _unwrap, detect_depth

    fmt, state = _unwrap(obj)
    try:
        encoder = detect_depth(state)
    except ValueError:
        encoder = None
    card = _init_card(path)
    if card is not None and card.get("kind") in ("pretrain", "finetune"):
        # weights we exported (``med3d-train export``): ours, with the scans they saw when the card lists them
        ids = card.get("scan_ids")
        return {"kind": "med3d", "encoder": encoder, "scan_ids": None if ids is None else sorted(map(str, ids)),
                "path": str(path)}
    return {"kind": fmt, "encoder": encoder, "scan_ids": None, "path": str(path)}


def _init_card(path: Path) -> dict[str, Any] | None:
    """The card beside ``--init`` weights, or None; a damaged card is a :class:`FinetuneError` naming it."""
    from catalog.card import CardError, find_card

    try:
        return find_card(path)
    except CardError as exc:
        raise FinetuneError(str(exc)) from exc


def check_leakage(record: dict[str, Any], eval_ids: set[str], init: str, split: str,
                   log: Callable[[str], None]) -> None:
    if record["kind"] == "scratch":
        return
    if record["scan_ids"] is None:
        log(f"warning: --init {init} ({record['kind']} weights) does not record which scans it was trained on; "
            f"whether it saw the {split} scans this run is measured on cannot be checked")
        return
    seen = sorted(eval_ids & set(record["scan_ids"]))
    if seen:
        raise FinetuneError(
            f"--init {init} was trained on {len(seen)} scan(s) of the {split} split this task is measured on: "
            f"{', '.join(seen[:10])}{' ...' if len(seen) > 10 else ''}. Pretrain with --exclude STORE:{split} "
            "(e.g. --exclude data/lits_store:val) or choose another --init")


def check_init_card(record: dict[str, Any], store: str, preprocessing: dict[str, Any],
                     log: Callable[[str], None]) -> None:
    """Compare the ``--init`` weights' card (``OUT.json`` beside the ``.pth``, written by ``med3d-train export``)
    with ``store``'s preprocessing (``preprocessing``: :func:`catalog.card.case_recipe` of a train case) and warn
    through ``log`` when they differ: spacing, intensity rule. Weights without a card say nothing; a damaged
    card is a :class:`FinetuneError` naming it. Called once per :func:`finetune`, before anything is written."""
    from catalog.card import CardError, mismatch_warning

    if record["path"] is None or not DistEnv.from_environ().is_main:
        return
    try:
        warning = mismatch_warning(record["path"], store, preprocessing)
    except CardError as exc:
        raise FinetuneError(str(exc)) from exc
    if warning:
        log(warning)
