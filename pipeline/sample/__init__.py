"""Deterministic miniature raw datasets in the real on-disk layouts (MSD 3DSeg-8, LiTS, LIDC-IDRI, VISCERAL).

Used by `make demo`, the tests and the benchmarks; every byte follows from the seed. Each writer records what
it wrote (cases, shapes, spacings, dtypes, quirks) under its own key of `SAMPLE.json` in its output folder.
"""

from __future__ import annotations

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
    written = {name: WRITERS[name](Path(out) / name, seed=seed, size=size) for name in names}
    if only in ("all", "nnunet"):
        folder = msd_to_nnunet(Path(out) / "msd" / NNUNET_TASK, Path(out) / "nnunet")
        written["nnunet"] = sorted(p for p in folder.rglob("*") if p.is_file())
    return written


__all__ = ["WRITERS", "write_all", "write_lidc_sample", "write_lits_sample", "write_msd_sample",
           "write_visceral_sample"]
