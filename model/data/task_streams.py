"""Training streams of the transfer tasks, on the same rules as pretraining (:mod:`model.data.patches`): each
batch is a pure function of ``(seed, step, rank)``, so ``--resume`` draws exactly what the uninterrupted run
would have drawn, and chunk readers open lazily inside DataLoader workers.

- :class:`RoiPatchStream` (liver ``fine``): patches inside the liver's bounding box grown by a random margin.
- :class:`CoarseStream` (liver ``coarse``): whole volumes at a fixed low resolution, from a cache computed once
  per run (:func:`build_coarse_cache`), so no step decodes a full-resolution CT.
- :class:`NoduleStream` (nodule): the LIDC store's 48 mm crops with their benign/malignant label, random flips.
- lung uses :class:`~model.data.patches.PretrainStream` on the one-domain VISCERAL store.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from catalog import load_catalog, load_domains, load_nodules
from catalog.case_arrays import case_array
from catalog.store_format import LABEL

from .case_cache import MANIFEST, build_case_cache, cache_file_name
from .patches import StepStream, _empty, read_volume
from .store_index import SPLITS, CaseEntry, StoreIndex

__all__ = ["CaseStream", "CoarseStream", "NoduleStream", "RoiPatchStream", "TaskData", "build_coarse_cache", "flip_randomly",
           "foreground_box", "nodule_labels", "resize_image", "resize_mask", "task_data"]

NODULE_CLASSES = {"benign": 0, "malignant": 1}


@dataclass(frozen=True)
class TaskData:
    """The cases of one split of a transfer store (one domain), with what the recipes need to know of it."""

    store: str
    domain: str
    split: str
    cases: tuple[CaseEntry, ...]
    num_classes: int
    spacing: tuple[float, float, float]
    """Stored grid spacing (z, y, x) mm of the domain."""

    @property
    def scan_ids(self) -> tuple[str, ...]:
        return tuple(sorted({c.scan_id for c in self.cases}))


def task_data(store: str | os.PathLike[str], split: str, domain: str | None = None,
              splits: Mapping[str, str] | None = None) -> TaskData:
    """The complete, labelled ok cases of ``split`` of one domain of a store: ``domain``, or the store's only
    domain when None (LiTS, VISCERAL or LIDC). ``splits`` (``{store_path: split}``, a split table of
    :mod:`model.data.split_table`) replaces the catalog's splits: the cases it puts in ``split``, from any of the
    catalog's splits."""
    store = os.fspath(store)
    if splits is None:
        index = StoreIndex.from_store(store, split=split)
    else:
        index = _table_index(store, split, splits)
    if domain is None:
        if len(index.domains) != 1:
            raise ValueError(f"{store}: a transfer store holds one domain, this one has "
                             f"{', '.join(index.domains)}; give the store built by build-lits, build-visceral or "
                             "build-lidc, or choose a domain (finetune seg --domain)")
        domain = index.domains[0]
    elif domain not in index.cases:
        raise ValueError(f"{store}: no ok, labelled case of domain {domain!r} in split {split!r}")
    doms = load_domains(store).set_index("domain")
    spacing = tuple(float(s) for s in doms.loc[domain, "target_spacing"])
    return TaskData(store, domain, split, index.cases[domain], index.num_classes[domain], spacing)  # type: ignore


def _table_index(store: str, split: str, splits: Mapping[str, str]) -> StoreIndex:
    """The index of the cases ``splits`` puts in ``split``, gathered from every split of the catalog."""
    wanted = {p for p, s in splits.items() if s == split}
    cases: dict[str, list[CaseEntry]] = {}
    num_classes: dict[str, int] = {}
    for part in SPLITS:
        try:
            index = StoreIndex.from_store(store, split=part)
        except ValueError:  # no labelled case in that split of the catalog
            continue
        for dom, entries in index.cases.items():
            kept = [c for c in entries if c.store_path in wanted]
            if kept:
                cases.setdefault(dom, []).extend(kept)
                num_classes[dom] = index.num_classes[dom]
    if not cases:
        raise ValueError(f"{store}: the split table puts no ok, labelled case in split {split!r}")
    return StoreIndex(store=store, split=split,
                      cases={d: tuple(sorted(cs, key=lambda c: c.store_path)) for d, cs in sorted(cases.items())},
                      num_classes=num_classes)


def _rng(seed: int, step: int, rank: int, item: int) -> np.random.Generator:
    return np.random.default_rng([seed, step, rank, item])


def flip_randomly(arr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``arr`` (C, Z, Y, X) flipped along each spatial axis with probability 1/2 (three draws from ``rng``, in
    axis order), as a contiguous array: the augmentation of whole-input classification batches."""
    flips = [a + 1 for a in range(3) if rng.random() < 0.5]
    return np.ascontiguousarray(np.flip(arr, axis=flips) if flips else arr)


class CaseStream(StepStream):
    """Base of the transfer streams: each item of a batch draws one of :attr:`cases` uniformly from its own
    generator ``(seed, step, rank, item)`` and :meth:`fill` writes it into the batch. A subclass sets
    :attr:`cases`, :attr:`batch_size`, :attr:`seed`, :attr:`domain_name` and the item shapes."""

    cases: list[CaseEntry]
    batch_size: int
    seed: int
    domain_name: str
    in_chans: int = 1
    """Channels of an item's image."""
    image_shape: tuple[int, ...]
    """(Z, Y, X) of an item's image."""
    label_shape: tuple[int, ...]
    """(Z, Y, X) of an item's label map, or () for a class index."""

    def fill(self, case: CaseEntry, rng: np.random.Generator, image: torch.Tensor, label: torch.Tensor) -> None:
        """Write ``case``'s item into ``image`` (in_chans, *image_shape) and ``label`` (*label_shape), views of the
        batch; ``rng`` is the item's generator (the case draw already taken from it)."""
        raise NotImplementedError

    def batch(self, step: int) -> dict[str, Any]:
        image = _empty((self.batch_size, self.in_chans, *self.image_shape), torch.float32)
        label = _empty((self.batch_size, *self.label_shape), torch.int64)
        paths = []
        for item in range(self.batch_size):
            rng = _rng(self.seed, step, self.rank, item)
            case = self.cases[int(rng.integers(len(self.cases)))]
            self.fill(case, rng, image[item], label[item])
            paths.append(case.store_path)
        return {"image": image, "label": label, "domain": self.domain_name, "step": int(step), "cases": paths}


# ---------------------------------------------------------------------------------------------- liver, fine
def foreground_box(label: np.ndarray) -> tuple[tuple[int, int, int], tuple[int, int, int]] | None:
    """Bounding box (lo, hi exclusive), (z, y, x) voxels, of ``label > 0``; None when there is none."""
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hit = np.flatnonzero(np.any(label > 0, axis=other))
        if hit.size == 0:
            return None
        box.append((int(hit[0]), int(hit[-1]) + 1))
    return tuple(b[0] for b in box), tuple(b[1] for b in box)  # type: ignore[return-value]


def liver_boxes(data: TaskData, progress: Callable[[int], None] | None = None) -> dict[str, list[list[int]]]:
    """Every case's liver box from its stored label: {store_path: [lo, hi]}; cases without liver are left out."""
    out = {}
    for case in data.cases:
        lab = case_array(data.store, case.store_path, LABEL, shape=case.shape,
                         n_channels=case.n_channels).read_all()
        box = foreground_box(lab)
        if box is not None:
            out[case.store_path] = [list(box[0]), list(box[1])]
        if progress is not None:
            progress(1)
    if not out:
        raise ValueError(f"{data.store}: no {data.split} case has a liver label (value > 0)")
    return out


def roi_patch_start(box: tuple[Sequence[int], Sequence[int]], margin: Sequence[int], shape: Sequence[int],
                    patch: Sequence[int], rng: np.random.Generator) -> tuple[int, int, int]:
    """A patch start (z, y, x) inside the box grown by ``margin`` voxels per side (clipped to the volume); a
    grown box smaller than the patch lies anywhere inside the patch. Drawn uniformly with ``rng``."""
    start = []
    for lo, hi, m, s, p in zip(box[0], box[1], margin, shape, patch):
        a, b = max(0, lo - m), min(s, hi + m)
        first, last = (a, b - p) if b - a >= p else (b - p, a)
        start.append(int(rng.integers(first, last + 1)))
    return tuple(start)  # type: ignore[return-value]


class RoiPatchStream(CaseStream):
    """Liver ``fine`` batches: ``image`` float32 (B, 1, *patch), ``label`` int64 (B, *patch) with 1 = liver
    (LiTS liver and tumour), 0 elsewhere; patches drawn inside each case's liver box grown by a margin drawn
    from ``margin_mm`` (per axis, in mm, converted with ``spacing``)."""

    def __init__(self, store: str, cases: Sequence[CaseEntry], boxes: dict[str, list[list[int]]], *,
                 patch: Sequence[int], batch: int, margin_mm: tuple[float, float], spacing: Sequence[float],
                 seed: int, task: str = "liver", start_step: int = 0, num_steps: int | None = None,
                 rank: int = 0, world_size: int = 1) -> None:
        super().__init__(store, start_step, num_steps, rank, world_size)
        self.cases = [c for c in cases if c.store_path in boxes]
        self.boxes = boxes
        self.patch, self.batch_size, self.seed, self.task = tuple(patch), int(batch), int(seed), task
        self.margin_mm, self.spacing = margin_mm, tuple(float(s) for s in spacing)
        self.domain_name, self.image_shape, self.label_shape = task, self.patch, self.patch

    def fill(self, case: CaseEntry, rng: np.random.Generator, image: torch.Tensor, label: torch.Tensor) -> None:
        margin = [int(round(rng.uniform(*self.margin_mm) / s)) for s in self.spacing]
        start = roi_patch_start(self.boxes[case.store_path], margin, case.shape, self.patch, rng)
        stop = [a + p for a, p in zip(start, self.patch)]
        img_r, lab_r = self._open(case)
        buf = img_r.read((0, *start), (1, *stop), pad=0.0, out=self._buffer(img_r.dtype, (1, *self.patch)))
        image.copy_(torch.from_numpy(buf))
        lab = lab_r.read(start, stop, pad=0, out=self._buffer(lab_r.dtype, self.patch))
        label.copy_(torch.from_numpy(lab > 0))


# -------------------------------------------------------------------------------------------- liver, coarse
def resize_image(image: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """(Z, Y, X) float -> (*shape) float32, trilinear (align_corners=False), antialiased by area averaging
    first where an axis shrinks by 2× or more (trilinear alone would sample every n-th voxel)."""
    x = image.to(torch.float32)[None, None]
    factors = [max(1, int(s // t)) for s, t in zip(x.shape[-3:], shape)]
    if max(factors) > 1:
        x = F.avg_pool3d(x, kernel_size=factors, stride=factors, ceil_mode=True, count_include_pad=False)
    return F.interpolate(x, size=tuple(int(s) for s in shape), mode="trilinear", align_corners=False)[0, 0]


def resize_mask(mask: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """A binary (Z, Y, X) mask resized like :func:`resize_image`, thresholded at 0.5 -> bool."""
    return resize_image((mask > 0).to(torch.float32), shape) >= 0.5


def build_coarse_cache(data: TaskData, shape: Sequence[int], folder: str | os.PathLike[str],
                       progress: Callable[[int], None] | None = None) -> Path:
    """Write every case of ``data`` at the coarse resolution: ``folder/<domain>__<case_id>.npz`` holding ``image``
    (float16, *shape) and ``label`` (uint8, 1 = liver), plus a manifest (shape, cases, their params hashes).

    Computed once per run (one full decode per case); an existing cache with the same manifest is kept.
    """
    rows = load_catalog(data.store).set_index("store_path")
    manifest = {"shape": [int(s) for s in shape], "store": data.store,
                "cases": {c.store_path: str(rows.loc[c.store_path, "params_hash"]) for c in data.cases}}

    def arrays(case: CaseEntry) -> dict[str, np.ndarray]:
        image, label = read_volume(data.store, case.store_path)
        return {"image": resize_image(torch.from_numpy(image), shape).to(torch.float16).numpy(),
                "label": resize_mask(torch.from_numpy(label), shape).numpy().astype(np.uint8)}

    # float16 image and uint8 label per voxel, and the .npz container's few hundred bytes
    nbytes = len(data.cases) * (math.prod(shape) * 3 + 1024)
    return build_case_cache(folder, manifest, data.cases, arrays, ".npz", progress,
                            space=(nbytes, f"--coarse-shape {','.join(str(int(s)) for s in shape)}"))


class CoarseStream(CaseStream):
    """Liver ``coarse`` batches from the cache: ``image`` (B, 1, *shape) float32, ``label`` (B, *shape) int64,
    whole volumes drawn uniformly; a random flip of the left-right axis with probability 1/2."""

    def __init__(self, cache: str | os.PathLike[str], cases: Sequence[CaseEntry], *, batch: int, seed: int,
                 task: str = "liver", start_step: int = 0, num_steps: int | None = None, rank: int = 0,
                 world_size: int = 1) -> None:
        super().__init__(os.fspath(cache), start_step, num_steps, rank, world_size)
        self.cases = list(cases)
        self.batch_size, self.seed, self.task = int(batch), int(seed), task
        self.shape = tuple(json.loads((Path(cache) / MANIFEST).read_text())["shape"])
        self.domain_name, self.image_shape, self.label_shape = task, self.shape, self.shape

    def fill(self, case: CaseEntry, rng: np.random.Generator, image: torch.Tensor, label: torch.Tensor) -> None:
        with np.load(Path(self.store) / cache_file_name(case.store_path, ".npz")) as z:
            img, lab = z["image"], z["label"]
        if rng.random() < 0.5:  # x is the left-right axis in the LPS store
            img, lab = img[..., ::-1], lab[..., ::-1]
        image[0].copy_(torch.from_numpy(np.ascontiguousarray(img)))
        label.copy_(torch.from_numpy(np.ascontiguousarray(lab)))


# ----------------------------------------------------------------------------------------------------- nodule
def nodule_labels(store: str, cases: Sequence[CaseEntry]) -> dict[str, int]:
    """{store_path: 0 benign | 1 malignant} of the crops in ``cases``, from ``STORE/nodules.parquet``; crops
    whose nodule has no rating are left out."""
    nod = load_nodules(store, missing_ok=True)
    if nod is None:
        raise ValueError(f"{store}: no nodules.parquet; build the LIDC store with `med3d-prep build-lidc`")
    by_case = {r.case_id: r.label for r in nod.itertuples(index=False) if r.case_id}
    out = {}
    for c in cases:
        label = by_case.get(c.store_path.split("/", 1)[1])
        if label in NODULE_CLASSES:
            out[c.store_path] = NODULE_CLASSES[label]
    return out


class NoduleStream(CaseStream):
    """Nodule batches: ``image`` float32 (B, 1, *crop), ``label`` int64 (B,) (0 benign, 1 malignant); crops
    drawn uniformly, each flipped along every axis with probability 1/2. Crops of another size than ``crop``
    are centre-cropped or padded with 0 (the series mean)."""

    def __init__(self, store: str, cases: Sequence[CaseEntry], labels: dict[str, int], *, crop: Sequence[int],
                 batch: int, seed: int, start_step: int = 0, num_steps: int | None = None, rank: int = 0,
                 world_size: int = 1) -> None:
        super().__init__(store, start_step, num_steps, rank, world_size)
        self.cases = [c for c in cases if c.store_path in labels]
        if not self.cases:
            raise ValueError(f"{store}: no rated nodule crop to train on")
        self.labels, self.crop = labels, tuple(int(c) for c in crop)
        self.batch_size, self.seed = int(batch), int(seed)
        self.domain_name, self.image_shape, self.label_shape = "nodule", self.crop, ()

    def read_crop(self, case: CaseEntry) -> np.ndarray:
        """The crop of ``case`` at size ``crop`` (centred), float32 (1, *crop)."""
        start = [(s - c) // 2 for s, c in zip(case.shape, self.crop)]
        stop = [a + c for a, c in zip(start, self.crop)]
        img_r, _ = self._open(case, label=False)
        buf = img_r.read((0, *start), (1, *stop), pad=0.0, out=self._buffer(img_r.dtype, (1, *self.crop)))
        return torch.from_numpy(buf).to(torch.float32).numpy()

    def fill(self, case: CaseEntry, rng: np.random.Generator, image: torch.Tensor, label: torch.Tensor) -> None:
        image.copy_(torch.from_numpy(flip_randomly(self.read_crop(case), rng)))
        label.fill_(self.labels[case.store_path])
