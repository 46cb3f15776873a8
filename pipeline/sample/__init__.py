"""Deterministic miniature raw datasets in the real on-disk layouts (MSD 3DSeg-8, LiTS, LIDC-IDRI, VISCERAL).

Used by `make demo`, the tests and the benchmarks; every byte follows from the seed. Each writer records what
it wrote (cases, shapes, spacings, dtypes, quirks) under its own key of `SAMPLE.json` in its output folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from .lidc import write_lidc_sample
from .lits import write_lits_sample
from .msd import write_msd_sample
from .visceral import write_visceral_sample

WRITERS: dict[str, Callable[..., list[Path]]] = {"msd": write_msd_sample, "lits": write_lits_sample,
                                                 "lidc": write_lidc_sample, "visceral": write_visceral_sample}


NNUNET_TASK = "Task04_Hippocampus"
"""The MSD sample task that ``write_all`` also lays out in nnU-Net v2's raw format (``nnunet/Dataset004_Hippocampus``):
the demo's dataset for ``med3d-prep build-nnunet`` and ``med3d-train finetune seg``."""


def write_all(out: str | Path, *, seed: int = 0, size: str = "tiny", only: str = "all") -> dict[str, list[Path]]:
    """Write every source (or only one: msd, lits, lidc, visceral, nnunet) into out/<source>; files written per
    source. ``nnunet`` is the MSD sample's hippocampus task in nnU-Net v2 layout (it writes the MSD sample too)."""
    from .nnunet import msd_to_nnunet

    sources = [*WRITERS, "nnunet"]
    if only != "all" and only not in sources:
        raise ValueError(f"unknown sample source {only!r}; choose 'all' or one of {sorted(sources)}")
    names = list(WRITERS) if only == "all" else ["msd"] if only == "nnunet" else [only]
    folders = [Path(out) / name for name in names] + ([Path(out) / "nnunet"] if only in ("all", "nnunet") else [])
    for folder in folders:
        _check_target(folder, seed, size)
    written = {name: WRITERS[name](Path(out) / name, seed=seed, size=size) for name in names}
    if only in ("all", "nnunet"):
        folder = msd_to_nnunet(Path(out) / "msd" / NNUNET_TASK, Path(out) / "nnunet")
        written["nnunet"] = sorted(p for p in folder.rglob("*") if p.is_file())
    for folder in folders:
        (folder / MARKER).write_text(json.dumps({"seed": seed, "size": size}) + "\n")
    written = {name: [p for p in paths if p.name != MARKER] for name, paths in written.items()}
    return written


MARKER = ".med3d-sample.json"
"""In each source folder: the seed and size that wrote it, so a re-run with others refuses instead of mixing."""


def _check_target(folder: Path, seed: int, size: str) -> None:
    """``folder`` must be absent, empty, or a sample of the same seed and size (re-writing it changes nothing):
    another sample's files would otherwise mix with this one's (two LIDC studies per patient, labels of one
    seed beside images of the other), and a store built before would name files that changed under it."""
    if not folder.is_dir() or not any(folder.iterdir()):
        return
    try:
        made = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        made = None
    if made == {"seed": seed, "size": size}:
        return
    what = f"a sample of seed {made.get('seed')}, size {made.get('size')}" if isinstance(made, dict) else \
        "files that are not a sample of this seed and size"
    raise ValueError(f"{folder} already holds {what}; sample writes seed {seed}, size {size} into an empty folder: "
                     "remove it or choose another OUT")


__all__ = ["WRITERS", "write_all", "write_lidc_sample", "write_lits_sample", "write_msd_sample",
           "write_visceral_sample"]
