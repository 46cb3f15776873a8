"""Inputs of the ``classify`` task: one fixed-size volume per case, and the training stream over them.

A case's input is its stored image (channel 0, the store's z-scored units) resized to ``shape`` (z, y, x) with
:func:`~model.data.task_streams.resize_image`; with ``crop="mask"`` the stored mask's bounding box (any value > 0),
grown by ``margin_mm`` per side and axis and clipped to the volume, is cut out first. Training, validation,
``evaluate`` and ``predict`` all go through :func:`classify_input`, so they see the same voxels.

Inputs are computed once per run and split (:func:`build_input_cache`, one ``.npy`` per case plus a manifest, as
the liver coarse cache), so no step decodes a full-resolution volume; a cache that would not fit the free disk space
is refused before its first file is written. :class:`ClassifyStream` draws cases
uniformly, flips each along every axis with probability 1/2, and is a pure function of ``(seed, step, rank)``
like every stream, so ``--resume`` is exact.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from .case_cache import MANIFEST, build_case_cache, cache_file_name
from .patches import read_volume
from .store_index import CaseEntry
from .task_streams import CaseStream, flip_randomly, foreground_box, resize_image

__all__ = ["CROPS", "ClassifyStream", "build_input_cache", "classify_input", "crop_box"]

CROPS = ("none", "mask")


def crop_box(label: np.ndarray, margin_mm: float, spacing: Sequence[float]
             ) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """The bounding box (lo, hi exclusive; z, y, x voxels) of ``label > 0`` grown by ``margin_mm`` per side
    (converted with ``spacing``, mm per voxel, z, y, x) and clipped to the volume. ValueError when empty."""
    box = foreground_box(label)
    if box is None:
        raise ValueError("the mask is empty: nothing to crop around")
    grow = [int(round(margin_mm / float(s))) for s in spacing]
    lo = tuple(max(0, a - g) for a, g in zip(box[0], grow))
    hi = tuple(min(n, b + g) for b, g, n in zip(box[1], grow, label.shape))
    return lo, hi  # type: ignore[return-value]


def classify_input(image: np.ndarray, label: np.ndarray | None, shape: Sequence[int], *, crop: str = "none",
                   margin_mm: float = 0.0, spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """(Z, Y, X) or (C, Z, Y, X) image (and mask for ``crop="mask"``) -> the network's input, float32 (1, *shape)
    or (C, *shape), each channel cropped and resized alike."""
    if crop not in CROPS:
        raise ValueError(f"crop must be one of {', '.join(CROPS)}, got {crop!r}")
    channels = image[None] if image.ndim == 3 else image
    if crop == "mask":
        if label is None:
            raise ValueError("--crop mask needs the case's mask, and it has none")
        lo, hi = crop_box(label, margin_mm, spacing)
        channels = channels[:, lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    return torch.stack([resize_image(torch.from_numpy(np.ascontiguousarray(ch, dtype=np.float32)), shape)
                        for ch in channels]).numpy()


def store_input(store: str, case: CaseEntry, shape: Sequence[int], *, crop: str, margin_mm: float,
                spacing: Sequence[float], channels: str = "first") -> np.ndarray:
    """:func:`classify_input` of a stored case (``store``/``case.store_path``): its first channel, or with
    ``channels="all"`` every channel; errors name the case."""
    image, label = read_volume(store, case.store_path, None if channels == "all" else 0)
    try:
        return classify_input(image, label, shape, crop=crop, margin_mm=margin_mm, spacing=spacing)
    except ValueError as exc:
        raise ValueError(f"{store}/{case.store_path}: {exc}") from exc


def build_input_cache(store: str, cases: Sequence[CaseEntry], spacings: dict[str, Sequence[float]],
                      folder: str | os.PathLike[str], *, shape: Sequence[int], crop: str, margin_mm: float,
                      channels: str = "first", progress: Callable[[int], None] | None = None) -> Path:
    """Write :func:`store_input` of every case to ``folder/<domain>__<case>.npy`` (float32, (C, *shape)) and a
    manifest of the settings and the cases' preprocessing hashes; a folder whose manifest matches is kept as is.
    Files are replaced atomically, so several processes (DDP ranks) may build the same cache."""
    from catalog import load_catalog

    hashes = load_catalog(store).set_index("store_path")["params_hash"].astype(str)
    manifest = {"store": store, "shape": [int(s) for s in shape], "crop": crop, "margin_mm": float(margin_mm),
                "cases": {p: hashes.get(p, "") for p in sorted(c.store_path for c in cases)}}
    if channels == "all":  # a key only then, so the caches of runs made before the option stay valid
        manifest["channels"] = "all"
    # float32 (C, *shape) and the 128-byte .npy header per case, checked against the disk before any is written
    nbytes = sum((c.n_channels if channels == "all" else 1) * math.prod(shape) * 4 + 128 for c in cases)
    return build_case_cache(
        folder, manifest, cases, ending=".npy", progress=progress,
        arrays=lambda case: store_input(store, case, shape, crop=crop, margin_mm=margin_mm,
                                        spacing=spacings[case.store_path], channels=channels),
        space=(nbytes, f"--shape {','.join(str(int(s)) for s in shape)}"))


def cached_input(folder: str | os.PathLike[str], case: CaseEntry) -> np.ndarray:
    """A case's input from a cache of :func:`build_input_cache`, float32 (C, *shape)."""
    return np.load(Path(folder) / cache_file_name(case.store_path, ".npy"))


class ClassifyStream(CaseStream):
    """Classification batches from an input cache: ``image`` float32 (B, C, *shape), ``label`` int64 (B,) (the
    class index); cases drawn uniformly, each flipped along every axis with probability 1/2."""

    def __init__(self, cache: str | os.PathLike[str], cases: Sequence[CaseEntry], targets: dict[str, int], *,
                 batch: int, seed: int, start_step: int = 0, num_steps: int | None = None, rank: int = 0,
                 world_size: int = 1) -> None:
        super().__init__(os.fspath(cache), start_step, num_steps, rank, world_size)
        self.cases = [c for c in cases if c.store_path in targets]
        if not self.cases:
            raise ValueError(f"{cache}: no labelled case to train on")
        self.targets, self.batch_size, self.seed = targets, int(batch), int(seed)
        self.shape = tuple(json.loads((Path(cache) / MANIFEST).read_text())["shape"])
        self.domain_name, self.image_shape, self.label_shape = "classify", self.shape, ()
        self.in_chans = int(cached_input(cache, self.cases[0]).shape[0])

    def fill(self, case: CaseEntry, rng: np.random.Generator, image: torch.Tensor, label: torch.Tensor) -> None:
        image.copy_(torch.from_numpy(flip_randomly(cached_input(self.store, case), rng)))
        label.fill_(self.targets[case.store_path])
