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


def write_all(out: str | Path, *, seed: int = 0, size: str = "tiny", only: str = "all") -> dict[str, list[Path]]:
    """Write every source (or only one: msd, lits, lidc, visceral) into out/<source>; files written per source."""
    if only != "all" and only not in WRITERS:
        raise ValueError(f"unknown sample source {only!r}; choose 'all' or one of {sorted(WRITERS)}")
    names = list(WRITERS) if only == "all" else [only]
    return {name: WRITERS[name](Path(out) / name, seed=seed, size=size) for name in names}


__all__ = ["WRITERS", "write_all", "write_lidc_sample", "write_lits_sample", "write_msd_sample",
           "write_visceral_sample"]
