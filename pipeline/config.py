"""Frozen preprocessing configuration, stored with what it produced (store attrs, catalog rows)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any

from catalog.names import unsafe_name as unsafe_case_id  # one rule for building and reading a store
from catalog.values import check_fields
from volume.integrity import DEFAULT_MAX_VOXELS

from .blosc_codecs import CODECS, IMAGE_CODECS

FORMAT_VERSION = 1

_DTYPES = ("float16", "float32")


@dataclass(frozen=True, kw_only=True)
class PrepConfig:
    """How raw volumes become store arrays.

    Every field that changes the bytes written for a case enters :meth:`params_hash`; re-running a build with
    a different hash rewrites the case, with the same hash skips it.
    """

    dtype: str = "float16"
    """Stored image dtype. float16 halves the store; z-scored values lose < 1e-3 relative precision."""
    chunks: tuple[int, int, int] = (64, 64, 64)
    """Chunk shape (z, y, x) of every array; an image chunk holds one channel."""
    image_codec: str = "raw"
    """How image chunks are stored: ``raw`` (Blosc level 0: each chunk file is a 16-byte Blosc header followed
    by the float16 voxels as they are, still an ordinary bytes + Blosc zarr array) or one of the Blosc codecs
    (compressed at :attr:`clevel`, byte shuffle). Raw is the default because random patch reads are the hot
    path of training and scanner noise leaves CT chunks nearly incompressible: the direct reader reads a raw
    chunk's overlapped rows with one ``preadv`` and decodes nothing, 2.6 ms per random 128³ patch against
    8.1 ms for LZ4HC level 1, at 2.1× the bytes (LZ4HC keeps 0.47 of them). Choose a codec (``lz4hc``) where
    disk or network bandwidth, not CPU, bounds reads. Measured by benchmarks/loader.py (docs/DECISIONS.md)."""
    codec: str = "lz4hc"
    clevel: int = 1
    """Blosc codec and level (byte shuffle) of labels and foreground samples, and of images when
    :attr:`image_codec` names a codec. Chosen on z-scored float16 64³ chunks of noisy CT (the bench CTs,
    16-23 HU of scanner noise in soft tissue): LZ4HC level 1 encodes a chunk in ~1.2 ms against level 5's ~15 ms
    and decodes it in ~0.21 ms (level 5 ~0.17, the fastest of the cheap encoders: lz4 ~0.26, lz4 + bit shuffle
    ~0.31, zstd 0.55-0.76) into 0.47 of the raw float16 bytes (level 5: 0.44). Labels, mostly background,
    shrink ~50-100× and decode fast."""
    clip_percentiles: tuple[float, float] = (0.5, 99.5)
    air_hu: float = -1024.0
    """CT only: values below this (scanner padding outside the field of view: -2048, -3024) clamp to it
    before statistics and resampling, so the 0.5 percentile is not the padding value."""
    ct_window: tuple[float, float] | None = None
    """CT only: clip to this HU window before the z-score (LiTS uses (-200, 250)); None keeps percentiles."""
    image_interpolation: str = "linear"
    label_interpolation: str = "nearest"
    foreground_samples: int = 1000
    """Foreground voxel coordinates stored per class, for foreground-centred patch sampling."""
    val_fraction: float = 0.1
    split_seed: int = 0
    max_voxels: int = DEFAULT_MAX_VOXELS
    """Largest input volume (voxels × channels) the build reads; a header announcing more is refused before any
    read (a damaged header would otherwise make the reader try to allocate it). 2·10⁹: 5× a 512×512×1500 CT."""

    def __post_init__(self) -> None:
        check_fields(self)  # types and finite numbers first: int(inf) is an OverflowError, NaN passes comparisons
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {_DTYPES}, got {self.dtype!r}")
        if self.codec not in CODECS:
            raise ValueError(f"codec must be one of {CODECS}, got {self.codec!r}")
        if self.image_codec not in IMAGE_CODECS:
            raise ValueError(f"image_codec must be one of {IMAGE_CODECS}, got {self.image_codec!r}")
        if not 0 <= int(self.clevel) <= 9:
            raise ValueError(f"clevel must be 0-9, got {self.clevel!r}")
        if len(self.chunks) != 3 or min(self.chunks) < 1:
            raise ValueError(f"chunks must be three positive ints (z, y, x), got {self.chunks!r}")
        lo, hi = self.clip_percentiles
        if not 0 <= lo < hi <= 100:
            raise ValueError(f"clip_percentiles must satisfy 0 <= lo < hi <= 100, got {self.clip_percentiles}")
        if self.image_interpolation not in ("linear", "bspline"):
            raise ValueError("image_interpolation must be 'linear' or 'bspline'")
        if self.label_interpolation != "nearest":
            raise ValueError("label_interpolation must be 'nearest'")
        if not 0 <= self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if int(self.max_voxels) < 1:
            raise ValueError(f"max_voxels must be a positive voxel count, got {self.max_voxels}")
        if self.foreground_samples < 0:
            raise ValueError(f"foreground_samples must be >= 0, got {self.foreground_samples}")
        if self.ct_window is not None and not self.ct_window[0] < self.ct_window[1]:
            raise ValueError(f"ct_window must be lo < hi (HU), got {tuple(self.ct_window)}")
        object.__setattr__(self, "max_voxels", int(self.max_voxels))
        object.__setattr__(self, "chunks", tuple(int(c) for c in self.chunks))
        object.__setattr__(self, "clip_percentiles", tuple(float(p) for p in self.clip_percentiles))
        if self.ct_window is not None:
            object.__setattr__(self, "ct_window", tuple(float(w) for w in self.ct_window))

    # Splits are assigned over the whole catalog, not per case: they do not change a case's bytes.
    # Nor does the voxel limit: it decides whether a case is read at all, not what is written for it.
    _NOT_HASHED = frozenset({"val_fraction", "split_seed", "max_voxels"})

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PrepConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown PrepConfig fields {sorted(unknown)}")
        kw = dict(d)
        for key in ("chunks", "clip_percentiles", "ct_window"):
            if kw.get(key) is not None:
                kw[key] = tuple(kw[key])
        return cls(**kw)

    def params_hash(self, **extra: Any) -> str:
        """A short content hash of everything that determines a case's stored bytes (plus ``extra``,
        e.g. the target spacing)."""
        payload = {k: v for k, v in self.to_dict().items() if k not in self._NOT_HASHED}
        if payload["image_codec"] == payload["codec"]:
            # Images compressed like labels, the only layout before image_codec existed: such configs hash as
            # they did then, so a store built with the LZ4HC level 1 default re-run with --image-codec lz4hc
            # skips its cases (stores of the earlier level 5 default differ in clevel, hence in bytes and hash).
            del payload["image_codec"]
        payload["format_version"] = FORMAT_VERSION
        payload.update({k: _jsonable(v) for k, v in extra.items()})
        blob = json.dumps(payload, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def _jsonable(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_jsonable(x) for x in v]
    if isinstance(v, float) and v.is_integer():
        return float(v)
    return v


@dataclass(frozen=True, kw_only=True)
class DomainSpec:
    """One domain (dataset) of a store: what its volumes are and which labels they carry."""

    name: str
    source_dataset: str
    modality: str
    """"CT" or "MR": CT gets air clamping (and windowing when configured). A domain that mixes both (VISCERAL)
    says e.g. "CT/MR" and its cases carry their own :attr:`Case.modality`."""
    channel_names: tuple[str, ...]
    labels: dict[int, str] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return max(self.labels, default=0) + 1

    @property
    def is_ct(self) -> bool:
        return self.modality == "CT"


@dataclass(frozen=True, kw_only=True)
class Case:
    """One volume to convert: where its files are and who it is.

    ``scan_id`` names the scan across datasets (MSD ``liver_7`` and LiTS ``volume-7`` are both ``lits:7``), so
    a scan used to validate a transfer can be kept out of pretraining. ``patient_id`` drives the splits.
    """

    domain: str
    case_id: str
    scan_id: str
    patient_id: str
    images: tuple[str, ...]
    """Image files; a 4D file holds several channels, otherwise one file per channel. Every path of a case
    (images, label, label parts) is made absolute on creation (relative ones against the working directory), so
    the catalog's ``source_image``/``source_label`` name the files from any working directory."""
    label: str | None = None
    label_parts: tuple[tuple[str, int], ...] = ()
    """Used when ``label`` is None: (mask file, label value) pairs composed into one label (VISCERAL stores one
    mask per structure). Voxels > 0 of a mask take its value; masks are painted in the order given, so where
    masks overlap the later one wins (the count of such voxels is recorded in the case attrs). Every mask must
    lie on the image's grid."""
    split_hint: str | None = None
    """A split the source fixes: "test" (MSD imagesTs, LiTS test-volume-N, the VISCERAL test volumes),
    "unannotated" (VISCERAL volumes without lung masks). The catalog keeps it; None lets the catalog assign
    train/val by patient hash (unlabelled cases without a hint become "test")."""
    spacing_override: tuple[float, float, float] | None = None
    """(x, y, z) mm in file axis order, replacing a header without usable spacing."""
    modality: str | None = None
    """"CT" or "MR" for this volume when its domain mixes modalities; None uses the domain's. Decides the CT air
    clamp and window."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Free metadata stored in the case attrs. Known keys reach catalog columns: ``spacing_flag`` (why the
    spacing is not the header's), ``source_modality`` (the dataset's own modality name, e.g. VISCERAL CTce)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "images", tuple(os.path.abspath(p) for p in self.images))
        if self.label:
            object.__setattr__(self, "label", os.path.abspath(self.label))
        object.__setattr__(self, "label_parts", tuple((os.path.abspath(p), v) for p, v in self.label_parts))
        for what, name in (("domain", self.domain), ("case id", self.case_id)):
            problem = unsafe_case_id(name)
            if problem:
                raise ValueError(f"{what} {name!r} {problem} (from {self.images[0] if self.images else '?'})")

    @property
    def store_path(self) -> str:
        return f"{self.domain}/{self.case_id}"

    @property
    def has_label_source(self) -> bool:
        """Whether the case brings a label (one file or composed masks)."""
        return bool(self.label or self.label_parts)

    @property
    def label_files(self) -> tuple[str, ...]:
        """Every file the label is read from."""
        return (self.label,) if self.label else tuple(path for path, _ in self.label_parts)

    def effective_modality(self, spec: DomainSpec) -> str:
        return self.modality or spec.modality
