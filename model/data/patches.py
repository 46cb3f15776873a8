"""Patch streaming from a Med3D store: deterministic sampling, datasets, loader factory (the case index is in
model.data.store_index).

Every batch is a pure function of ``(seed, step, rank)``: the domain of a step comes from a hash of
``(seed, step)`` (the same on every DDP rank, so all ranks train the same branch), and each patch of the batch
from ``np.random.default_rng([seed, step, rank, item])``. No RNG state lives in the loader, so a run resumed at
step k draws exactly the batches the uninterrupted run would have drawn, whatever the number of workers.

>>> index = StoreIndex.from_store("data/store", split="train", exclude_scan_ids=parse_exclude("data/lits:val"))
>>> loader = make_loader("data/store", index, PatchConfig(patch=(128, 128, 128), batch=2), start_step=0,
...                      num_steps=None, rank=0, world_size=1, workers=4)
>>> batch = next(iter(loader))   # {"image": (2, 1, 128, 128, 128) float32, "label": (2, 128, 128, 128) int64, ...}
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from catalog.case_arrays import case_array
from catalog.chunk_read import ChunkedArrayReader
from catalog.store_format import IMAGE, LABEL, node_meta

from .store_index import SPLITS, CaseEntry, StoreIndex, parse_exclude

__all__ = ["SPLITS", "CaseEntry", "PatchConfig", "PatchSpec", "PretrainStream", "StepStream", "StoreIndex",
           "domain_for_step", "make_loader", "parse_exclude", "read_volume", "sample_patch_spec", "stream_loader"]


@dataclass(frozen=True, kw_only=True)
class PatchConfig:
    """How patches are drawn. Stored in checkpoints (``to_dict``) so a resumed run draws the same patches."""

    patch: tuple[int, int, int] = (128, 128, 128)
    """Patch size (z, y, x) in voxels of the store grid."""
    batch: int = 2
    """Patches per batch (per rank); all from the step's domain."""
    fg_fraction: float = 1 / 3
    """Share of patches centred on a stored foreground voxel (nnU-Net's 1/3); the rest start uniformly."""
    domain_sampling: str = "size"
    """"size": domains drawn in proportion to their number of training cases; "uniform": equally often."""
    channel: str = "first"
    """Which channel of a multi-channel domain feeds the one-channel encoder: "first", or "random" (augmentation);
    "all": every channel (the domain's cases must have one number of channels; fine-tuning a C-channel encoder)."""
    seed: int = 0
    pad_value: float = 0.0
    """Image value outside the volume (0 = the volume mean in z-scored units); labels are padded with 0."""

    def __post_init__(self) -> None:
        if len(self.patch) != 3 or min(self.patch) < 1:
            raise ValueError(f"patch must be three positive ints (z, y, x), got {self.patch!r}")
        object.__setattr__(self, "patch", tuple(int(p) for p in self.patch))
        if self.batch < 1:
            raise ValueError(f"batch must be >= 1, got {self.batch}")
        if not 0.0 <= self.fg_fraction <= 1.0:
            raise ValueError(f"fg_fraction must be in [0, 1], got {self.fg_fraction}")
        if self.domain_sampling not in ("size", "uniform"):
            raise ValueError(f"domain_sampling must be 'size' or 'uniform', got {self.domain_sampling!r}")
        if self.channel not in ("first", "random", "all"):
            raise ValueError(f"channel must be 'first', 'random' or 'all', got {self.channel!r}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0 (it seeds numpy's SeedSequence), got {self.seed}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["patch"] = list(self.patch)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PatchConfig":
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown PatchConfig fields {sorted(unknown)}")
        kw = dict(d)
        if "patch" in kw:
            kw["patch"] = tuple(kw["patch"])
        return cls(**kw)


def _hash_unit(*parts: object) -> float:
    """A float in [0, 1) determined by ``parts``: the same on every machine, rank and Python process."""
    digest = hashlib.blake2b(":".join(str(p) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def domain_for_step(seed: int, step: int, domains: Sequence[str], weights: Sequence[float]) -> str:
    """The domain every rank trains at ``step``: drawn in proportion to ``weights`` from a hash of (seed, step)."""
    if len(domains) != len(weights) or not domains:
        raise ValueError(f"need one weight per domain, got {len(domains)} domains and {len(weights)} weights")
    w = np.asarray(weights, dtype=np.float64)
    if not np.all(np.isfinite(w)) or w.min() < 0 or w.sum() <= 0:
        raise ValueError(f"domain weights must be finite, >= 0 and not all 0, got {list(weights)}")
    cum = np.cumsum(w) / w.sum()
    i = int(np.searchsorted(cum, _hash_unit("med3d-domain", seed, step), side="right"))
    return domains[min(i, len(domains) - 1)]


class PatchSpec(NamedTuple):
    """Where one patch comes from: case index in the domain's case list, start (z, y, x) voxels (may be
    negative or run past the volume: padded), channel, and whether it was centred on foreground."""

    case: int
    start: tuple[int, int, int]
    channel: int
    fg: bool


def sample_patch_spec(seed: int, step: int, rank: int, item: int, cases: Sequence[CaseEntry],
                      fg_coords: Callable[[CaseEntry], np.ndarray], cfg: PatchConfig) -> PatchSpec:
    """Draw one patch of a batch, a pure function of (seed, step, rank, item) for given ``cases``.

    A share ``cfg.fg_fraction`` of patches contains a stored foreground voxel (class drawn uniformly among the
    case's classes, then a voxel, then a start that keeps it inside the patch); the others start uniformly.
    Starts range over [min(0, S - P), max(0, S - P)] per axis, so a patch stays inside a volume larger than it
    and a smaller volume lies anywhere inside the (padded) patch. ``fg_coords`` is called only for the chosen
    case (foreground rows are loaded lazily).
    """
    rng = np.random.default_rng([seed, step, rank, item])
    ci = int(rng.integers(len(cases)))
    case = cases[ci]
    want_fg = bool(rng.random() < cfg.fg_fraction)
    channel = int(rng.integers(case.n_channels)) if cfg.channel == "random" else 0
    lo = [min(0, s - p) for s, p in zip(case.shape, cfg.patch)]
    hi = [max(0, s - p) for s, p in zip(case.shape, cfg.patch)]
    fg = fg_coords(case) if want_fg else None
    if fg is not None and len(fg):
        classes = np.unique(fg[:, 0])
        rows = fg[fg[:, 0] == classes[rng.integers(len(classes))]]
        voxel = rows[rng.integers(len(rows)), 1:]
        start = tuple(int(rng.integers(max(l, v - p + 1), min(h, v) + 1))
                      for l, h, v, p in zip(lo, hi, voxel.tolist(), cfg.patch))
        return PatchSpec(ci, start, channel, True)
    start = tuple(int(rng.integers(l, h + 1)) for l, h in zip(lo, hi))
    return PatchSpec(ci, start, channel, False)


class StepStream(IterableDataset):
    """Base of the training streams: one batch per step, :meth:`batch` a pure function of ``step`` (and the
    stream's seed and rank).

    Worker w of W yields steps ``start_step + w, start_step + w + W, ...``; a DataLoader with
    ``batch_size=None`` interleaves workers round-robin, so it yields steps in order whatever W is. Chunk
    readers are opened lazily inside each worker and cached per store path; whole volumes are never loaded.
    """

    def __init__(self, store: str | os.PathLike[str], start_step: int = 0, num_steps: int | None = None,
                 rank: int = 0, world_size: int = 1) -> None:
        super().__init__()
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        if start_step < 0 or (num_steps is not None and num_steps < 0):
            raise ValueError(f"start_step and num_steps must be >= 0, got {start_step}, {num_steps}")
        self.store = os.fspath(store)
        self.start_step, self.num_steps = int(start_step), num_steps
        self.rank, self.world_size = int(rank), int(world_size)
        self._readers: dict[tuple[str, str], tuple[ChunkedArrayReader, ChunkedArrayReader | None]] = {}
        self._scratch: dict[tuple[str, tuple[int, ...]], np.ndarray] = {}

    def __len__(self) -> int:
        if self.num_steps is None:
            raise TypeError(f"an endless {type(self).__name__} (num_steps=None) has no length")
        return self.num_steps

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        w, n = (info.id, info.num_workers) if info is not None else (0, 1)
        step = self.start_step + w
        end = None if self.num_steps is None else self.start_step + self.num_steps
        while end is None or step < end:
            yield self.batch(step)
            step += n

    def batch(self, step: int) -> dict[str, Any]:
        raise NotImplementedError

    def _open(self, case: CaseEntry, label: bool = True) -> tuple[ChunkedArrayReader, ChunkedArrayReader | None]:
        """The case's image (and label) readers, opened on first use (from ``case.store``, or the stream's store
        when that is ""), their metadata checked against the case's catalog shape and channels."""
        key = (case.store, case.store_path)
        readers = self._readers.get(key)
        if readers is None:
            root, geometry = case.store or self.store, {"shape": case.shape, "n_channels": case.n_channels}
            readers = (case_array(root, case.store_path, IMAGE, **geometry),
                       case_array(root, case.store_path, LABEL, **geometry) if label else None)
            self._readers[key] = readers
        return readers

    def _buffer(self, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        key = (np.dtype(dtype).str, tuple(shape))
        buf = self._scratch.get(key)
        if buf is None:
            buf = self._scratch[key] = np.empty(shape, dtype)
        return buf

    def __getstate__(self) -> dict[str, Any]:
        # Readers and scratch buffers are per process: a worker starts with none.
        return {**self.__dict__, "_readers": {}, "_scratch": {}}


class PretrainStream(StepStream):
    """Batches for multi-branch pretraining, one per step, each from one domain (see :class:`StepStream`).

    Each item: ``image`` float32 (B, C, Z, Y, X) (C = 1, or every channel with ``channel="all"``), ``label``
    int64 (B, Z, Y, X), ``domain`` str, ``step`` int,
    ``cases`` list of store paths. Cases of a multi-store index are read from their own store (``CaseEntry.store``),
    the others from ``store``.
    """

    def __init__(self, store: str | os.PathLike[str], index: StoreIndex, cfg: PatchConfig, start_step: int = 0,
                 num_steps: int | None = None, rank: int = 0, world_size: int = 1) -> None:
        super().__init__(store, start_step, num_steps, rank, world_size)
        self.index, self.cfg = index, cfg
        self._weights = index.weights(cfg.domain_sampling)
        self.in_chans = 1
        if cfg.channel == "all":
            counts = sorted({c.n_channels for cs in index.cases.values() for c in cs})
            if len(counts) != 1:
                raise ValueError(f"channel 'all' needs one number of channels in every case, the index has {counts}")
            self.in_chans = counts[0]

    def batch(self, step: int) -> dict[str, Any]:
        """The batch of ``step`` for this rank (pure: the same on every call)."""
        cfg = self.cfg
        domain = domain_for_step(cfg.seed, step, self.index.domains, self._weights)
        cases = self.index.cases[domain]
        image = _empty((cfg.batch, self.in_chans, *cfg.patch), torch.float32)
        label = _empty((cfg.batch, *cfg.patch), torch.int64)
        paths = []
        for item in range(cfg.batch):
            spec = sample_patch_spec(cfg.seed, step, self.rank, item, cases, self.index.foreground, cfg)
            case = cases[spec.case]
            img_r, lab_r = self._open(case)
            stop = [s + p for s, p in zip(spec.start, cfg.patch)]
            # Read in the stored dtype, then cast with torch: numpy's float16 -> float32 cast is ~30x slower.
            buf = img_r.read((spec.channel, *spec.start), (spec.channel + self.in_chans, *stop), pad=cfg.pad_value,
                             out=self._buffer(img_r.dtype, (self.in_chans, *cfg.patch)))
            image[item].copy_(torch.from_numpy(buf))
            lab = lab_r.read(spec.start, stop, pad=0, out=self._buffer(lab_r.dtype, cfg.patch))
            label[item].copy_(torch.from_numpy(lab))
            paths.append(case.store_path)
        return {"image": image, "label": label, "domain": domain, "step": int(step), "cases": paths}


def _empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised tensor; inside a DataLoader worker it is allocated in shared memory, so sending it to
    the main process does not copy it into shared memory first (what default_collate does for its batches)."""
    if get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    proto = torch.empty(0, dtype=dtype)
    storage = proto._typed_storage()._new_shared(int(np.prod(shape)))
    return proto.new(storage).view(shape)


def _worker_init(worker_id: int) -> None:
    # One Blosc thread per worker: the workers already occupy the cores, more threads only contend.
    import numcodecs.blosc

    numcodecs.blosc.set_nthreads(1)


def make_loader(store: str | os.PathLike[str], index: StoreIndex, cfg: PatchConfig, start_step: int = 0,
                num_steps: int | None = None, rank: int = 0, world_size: int = 1, workers: int = 4,
                prefetch_factor: int = 2) -> DataLoader:
    """A DataLoader over :class:`PretrainStream` yielding one batch dict per step, in step order.

    Persistent workers when ``workers > 0``, pinned memory when CUDA is available, ``prefetch_factor``
    (2..4) batches in flight per worker.
    """
    return stream_loader(PretrainStream(store, index, cfg, start_step, num_steps, rank, world_size), workers,
                         prefetch_factor)


def stream_loader(ds: StepStream, workers: int = 2, prefetch_factor: int = 2) -> DataLoader:
    """A DataLoader yielding ``ds``'s batches in step order (``batch_size=None``): persistent workers with one
    Blosc thread each when ``workers > 0``, pinned memory when CUDA is available."""
    if not 2 <= prefetch_factor <= 4:
        raise ValueError(f"prefetch_factor must be in 2..4, got {prefetch_factor}")
    kw: dict[str, Any] = {}
    if workers > 0:
        kw = {"persistent_workers": True, "prefetch_factor": prefetch_factor, "worker_init_fn": _worker_init}
    return DataLoader(ds, batch_size=None, num_workers=workers, pin_memory=torch.cuda.is_available(), **kw)


def read_volume(store: str | os.PathLike[str], store_path: str,
                channel: int | None = 0) -> tuple[np.ndarray, np.ndarray | None]:
    """A whole stored case for validation: image channel as float32 (Z, Y, X) z-scored units (``channel=None``:
    every channel, (C, Z, Y, X)), and the label uint8 (Z, Y, X) (int16 if stored so), or None for an unlabelled
    case. The arrays' metadata must agree with the case's catalog row (:func:`catalog.case_arrays.case_array`)
    before anything is allocated."""
    store = os.fspath(store)
    img = case_array(store, store_path, IMAGE)
    if channel is None:
        raw = img.read((0, 0, 0, 0), tuple(img.shape))
    elif not 0 <= channel < img.shape[0]:
        raise ValueError(f"{store}/{store_path}: channel {channel} out of range (it has {img.shape[0]})")
    else:
        raw = img.read((channel, 0, 0, 0), (channel + 1, *img.shape[1:]))[0]
    image = torch.from_numpy(raw).to(torch.float32).numpy()
    label = None
    if node_meta(store, store_path, LABEL) is not None:
        label = case_array(store, store_path, LABEL).read_all()
    return image, label
