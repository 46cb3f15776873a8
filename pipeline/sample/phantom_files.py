"""Synthetic raw volumes as files: a canonical LPS phantom placed in a file's index order and orientation (signed
permutations, oblique rotations), written as NIfTI, and recorded in the sample's manifest (``SAMPLE.json``)."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from .phantom import IDENTITY

__all__ = ["Stored", "label_values", "place", "record", "rotation", "update_manifest", "write_macos_junk",
           "write_nifti"]


def rotation(axis: int, degrees: float) -> np.ndarray:
    """3x3 rotation about physical axis 0 x, 1 y or 2 z (LPS)."""
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    i, j = [a for a in range(3) if a != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


@dataclass(frozen=True)
class Stored:
    """An array in file index order (numpy (k, j, i)) and its ITK geometry (spacing/origin per index axis)."""

    arrays: tuple[np.ndarray, ...]
    spacing: tuple[float, float, float]
    direction: tuple[float, ...]
    origin: tuple[float, float, float]


def place(arrays: Sequence[np.ndarray], spacing_xyz: Sequence[float], *, perm: Sequence[int] = IDENTITY,
          oblique: tuple[int, float] | None = None, center_mm: Sequence[float] = (0.0, 0.0, 0.0)) -> Stored:
    """Store canonical (z, y, x) LPS arrays along a signed-permutation direction `perm` (row-major, ITK
    convention: columns are index axes), optionally rotated by `oblique` = (physical axis, degrees).
    The arrays are transposed/flipped so the anatomy stays where it is; spacing_xyz is per physical axis (mm)."""
    p = np.asarray(perm, float).reshape(3, 3)
    phys = [int(np.argmax(np.abs(p[:, m]))) for m in range(3)]
    order = [2 - phys[2 - n] for n in range(3)]
    flips = tuple(2 - m for m in range(3) if p[phys[m], m] < 0)
    out = tuple(np.ascontiguousarray(np.flip(a.transpose(order), flips) if flips else a.transpose(order))
                for a in arrays)
    spacing = tuple(float(spacing_xyz[phys[m]]) for m in range(3))
    d = (rotation(*oblique) @ p) if oblique else p
    size = np.array(out[0].shape[::-1], float)
    origin = np.asarray(center_mm, float) - d @ (np.asarray(spacing) * (size - 1) / 2)
    return Stored(out, spacing, tuple(float(v) for v in d.ravel()), tuple(round(float(v), 4) for v in origin))


def write_nifti(path: Path, stored: Stored, dtype: np.dtype | type, channel: int | None = None) -> Path:
    """Write one channel (default: all; several are joined with sitk.JoinSeries into a 4D scalar NIfTI,
    dim[4] = channels, as MSD stores multi-modal images). Compression follows the suffix (.nii.gz / .nii)."""
    arrays = stored.arrays if channel is None else (stored.arrays[channel],)
    images = []
    for a in arrays:
        img = sitk.GetImageFromArray(np.asarray(a).astype(dtype, copy=False))
        img.SetSpacing(stored.spacing)
        img.SetDirection(stored.direction)
        img.SetOrigin(stored.origin)
        images.append(img)
    image = images[0] if len(images) == 1 else sitk.JoinSeries(images)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), path.name.endswith(".gz"))
    return path


def write_macos_junk(path: Path, rng: np.random.Generator) -> Path:
    """Write an AppleDouble `._name` resource-fork file: a few bytes that are not a NIfTI."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + rng.bytes(int(rng.integers(8, 40))))
    return path


def record(stored: Stored, dtype: str, quirks: Sequence[str]) -> dict:
    """Manifest entry for a written image: shape (x, y, z[, c]), spacing (mm), direction, origin, dtype, quirks."""
    shape = list(stored.arrays[0].shape[::-1]) + ([len(stored.arrays)] if len(stored.arrays) > 1 else [])
    return {"shape": shape, "spacing": [round(s, 6) for s in stored.spacing],
            "direction": [round(v, 6) for v in stored.direction], "origin": list(stored.origin),
            "dtype": dtype, "quirks": list(quirks)}


def update_manifest(out: Path, key: str, entry: dict) -> Path:
    """Set `key` of out/SAMPLE.json (one section per source, so writers can share a folder)."""
    path = out / "SAMPLE.json"
    manifest: dict = {}
    if path.exists():
        try:
            manifest = json.loads(path.read_text())
        except ValueError:
            manifest = {}
    manifest[key] = entry
    path.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return path


def label_values(label: np.ndarray) -> list[int]:
    """Sorted label values present in a small-valued label array (much faster than np.unique on 512^2 x 120)."""
    return [v for v in range(int(label.max()) + 1) if (label == v).any()]
