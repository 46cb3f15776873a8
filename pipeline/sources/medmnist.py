"""MedMNIST 3D (``FLAG.npz``, 28³; ``FLAG_64.npz``, MedMNIST+ 64³) → a store and its label table
``STORE/labels.csv``, so that ``med3d-train finetune classify STORE --labels STORE/labels.csv --shape 28,28,28``
runs the MedMNIST benchmark with the file's own train/val/test split.

A MedMNIST file holds ``train_images`` (N, D, H, W) uint8 and ``train_labels`` (N, 1), and the same for ``val``
and ``test``. Each volume becomes one case of domain ``<flag>`` (``adrenalmnist3d``):

- case id ``<flag>_<split>_<NNNN>`` and scan id ``medmnist:<flag>:<split>:<NNNN>``, NNNN its index in the file's
  split. The 28³ and 64³ files hold the same samples in the same order (same labels, matching volumes), so both
  sizes of a sample share its scan id. MedMNIST publishes no patient ids: each volume is its own patient.
- the image, (1, D, H, W) float32 with the axes as the file has them (taken as z, y, x; MedMNIST records no
  orientation), **z-scored with the volume's own mean and standard deviation, unclipped** (:func:`normalize_volume`:
  the build's ``clip + z-score`` with percentiles 0 and 100; a constant volume is stored as zeros). The catalog's
  ``mean``/``std`` (uint8 units) map it back: ``value × std + mean`` is the file's volume. Why z-scored and not
  ``uint8 / 255``: docs/DECISIONS.md, "build-medmnist".
- spacing 1 mm, **marked unknown**: MedMNIST records no voxel size (its volumes were resized from scans of any
  spacing to 28³ or 64³), so the catalog's ``spacing_flag`` is ``no_spacing:1mm`` and the domain plan says
  ``spacing_known: false``.
- no mask (``has_label`` False); the class is in ``STORE/labels.csv`` (``case_id,label,split``: the file's label
  index and split) and the class names in ``domains.parquet`` (``labels``, index = label value), from the
  ``medmnist`` package's ``INFO[flag]["label"]`` when it can be imported, else the indices ("0", "1", ...).

A file that is not a 3D MedMNIST ``.npz`` is refused with one :class:`MedmnistError` naming the file and what is
wrong, before anything is written. The store is written into a hidden folder beside ``STORE`` and renamed to it
when complete, so a refused file or a failed build leaves no ``STORE`` behind. An existing non-empty ``STORE`` is
refused, unless it was built from the same file (same sha256): then it is reported as already built and left as
it is.

The first case is written by :func:`pipeline.store.write_case`; every other case is written like it by
:class:`_CaseWriter` (its arrays' metadata files, its codec, the marker last): ~1 ms per case against the ~10-18 ms
of zarr-python's machinery per case, VesselMNIST3D's 1,908 volumes in seconds.
"""
from __future__ import annotations

import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["FLAGS", "LABELS_FILE", "SPACING_FLAG", "SPLITS", "MedmnistData", "MedmnistError", "MedmnistSet",
           "class_names", "flag_from_name", "normalize_volume", "read_medmnist"]

SPLITS = ("train", "val", "test")
LABELS_FILE = "labels.csv"
SPACING_FLAG = "no_spacing:1mm"
"""The catalog's ``spacing_flag`` of every MedMNIST case: the source has no voxel size, 1 mm is recorded."""
PERCENTILES = (0.0, 100.0)
"""No clip before the z-score: a 0.5/99.5 clip would flatten a shape mask that fills < 0.5% of its volume (the
smallest VesselMNIST3D vessel fills 0.03%) into a constant."""


@dataclass(frozen=True)
class MedmnistSet:
    """What the project needs to know of one 3D MedMNIST set; class names come from the ``medmnist`` package."""

    n_classes: int
    """Labels must lie in 0 .. n_classes - 1."""
    modality: str
    """Descriptive (the catalog's ``modality``): ``CT`` (CT crops), ``mask`` (binary shape masks), ``EM``
    (electron microscopy). MedMNIST stores every set as uint8 0-255, never in HU, so no CT rule applies."""


FLAGS: dict[str, MedmnistSet] = {
    "organmnist3d": MedmnistSet(11, "CT"),
    "nodulemnist3d": MedmnistSet(2, "CT"),
    "adrenalmnist3d": MedmnistSet(2, "mask"),
    "fracturemnist3d": MedmnistSet(3, "CT"),
    "vesselmnist3d": MedmnistSet(2, "mask"),
    "synapsemnist3d": MedmnistSet(2, "EM"),
}


class MedmnistError(ValueError):
    """The file is not a 3D MedMNIST ``.npz`` or the store cannot take it; the message names the file and the fix."""


def flag_from_name(path: str | os.PathLike[str]) -> tuple[str | None, int | None]:
    """(flag, size) from a MedMNIST file name: ``adrenalmnist3d.npz`` → ("adrenalmnist3d", None),
    ``adrenalmnist3d_64.npz`` → ("adrenalmnist3d", 64); flag None when the name is no 3D MedMNIST set's."""
    stem = re.sub(r"\.npz$", "", Path(path).name.lower())
    m = re.fullmatch(r"(.+?)(?:_(\d+))?", stem)
    if m is None or m.group(1) not in FLAGS:
        return None, None
    return m.group(1), int(m.group(2)) if m.group(2) else None


def class_names(flag: str) -> tuple[tuple[str, ...], str]:
    """(class names of ``flag`` by label index, where they came from): ``medmnist.INFO[flag]["label"]`` when the
    package imports and names every class, else the indices as strings."""
    n = FLAGS[flag].n_classes
    try:
        import medmnist  # optional; its import pulls torch and torchvision, hence only here

        names = medmnist.INFO[flag]["label"]
        if set(names) == {str(i) for i in range(n)}:
            return tuple(str(names[str(i)]) for i in range(n)), "names from medmnist.INFO"
        why = f"indices: medmnist.INFO names {len(names)} classes, not {n}"
    except Exception as exc:  # not installed, or broken in any way: the names are cosmetic, the indices suffice
        why = f"indices: medmnist not importable ({type(exc).__name__})"
    return tuple(str(i) for i in range(n)), why


@dataclass(frozen=True, eq=False)
class MedmnistData:
    """A checked MedMNIST file: volumes (N, Z, Y, X) uint8 and labels (N,) int64 per split."""

    path: str
    flag: str
    shape: tuple[int, int, int]
    images: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    classes: tuple[str, ...]
    classes_from: str
    sha256: str
    size_bytes: int

    @property
    def counts(self) -> dict[str, int]:
        return {s: int(len(self.labels[s])) for s in SPLITS}

    @property
    def width(self) -> int:
        """Digits of the index in case ids (at least 4), so ids sort in file order."""
        return max(4, len(str(max(self.counts.values()) - 1)))

    def case_id(self, split: str, i: int) -> str:
        return f"{self.flag}_{split}_{i:0{self.width}d}"

    def scan_id(self, split: str, i: int) -> str:
        return f"medmnist:{self.flag}:{split}:{i:0{self.width}d}"

    def class_counts(self, split: str) -> list[int]:
        return np.bincount(self.labels[split], minlength=len(self.classes)).tolist()


def _refuse(path: str, what: str) -> MedmnistError:
    return MedmnistError(f"{path}: not a 3D MedMNIST file: {what}")


def _load(npz: Any, key: str, path: str) -> np.ndarray:
    try:
        return npz[key]
    except MemoryError:
        raise _refuse(path, f"{key} is too large to read (its header announces more than this machine holds)") \
            from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:  # CRC error, cut short, pickled objects
        raise _refuse(path, f"{key} cannot be read ({type(exc).__name__}: {exc}); download the file again") from None


def read_medmnist(path: str | os.PathLike[str], flag: str | None = None) -> MedmnistData:
    """Read and check a MedMNIST 3D ``.npz``; ``flag`` overrides the one read from the file name (renamed files).

    Refused with a :class:`MedmnistError` naming the file: no such file, not a zip archive of ``.npy`` arrays, a
    name that is no 3D set's (without ``flag``), a missing ``{train,val,test}_{images,labels}`` entry, images that
    are not uint8 (N, D, H, W), volumes of different shapes, a shape other than the ``_SIZE`` of the name, labels
    that are not one integer per volume or lie outside the set's classes, a split without volumes.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MedmnistError(f"{path}: no such file")
    size = None
    if flag is None:
        flag, size = flag_from_name(path)
        if flag is None:
            raise MedmnistError(f"{path}: cannot tell which 3D MedMNIST set this is from its name; name it "
                                f"<flag>.npz or <flag>_64.npz, or pass --flag (one of {', '.join(FLAGS)})")
    elif flag not in FLAGS:
        raise MedmnistError(f"--flag {flag!r} is not a 3D MedMNIST set; use one of {', '.join(FLAGS)}")
    if not zipfile.is_zipfile(path):
        raise _refuse(path, "not an .npz archive (no zip structure: cut short, or another kind of file); "
                            "download it again from MedMNIST")
    try:
        npz = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise _refuse(path, f"numpy cannot open it ({type(exc).__name__}: {exc})") from None
    with npz:
        wanted = [f"{s}_{k}" for s in SPLITS for k in ("images", "labels")]
        missing = [k for k in wanted if k not in npz.files]
        if missing:
            raise _refuse(path, f"no {', '.join(missing)} (it holds: {', '.join(npz.files) or 'nothing'})")
        images, labels = {}, {}
        for split in SPLITS:
            img, lab = _load(npz, f"{split}_images", path), _load(npz, f"{split}_labels", path)
            if img.dtype != np.uint8 or img.ndim != 4:
                raise _refuse(path, f"{split}_images is {img.dtype} of shape {img.shape}; 3D MedMNIST volumes "
                                    "are uint8 (N, D, H, W)")
            if lab.dtype.kind not in "iu" or not (lab.ndim == 1 or (lab.ndim == 2 and lab.shape[1] == 1)):
                raise _refuse(path, f"{split}_labels is {lab.dtype} of shape {lab.shape}; expected integers (N, 1), "
                                    "one class per volume")
            if len(img) != len(lab):
                raise _refuse(path, f"{split}_images holds {len(img)} volumes but {split}_labels {len(lab)} labels")
            if len(img) == 0:
                raise _refuse(path, f"{split}_images holds no volume")
            images[split], labels[split] = img, lab.reshape(-1).astype(np.int64)
    shapes = {s: tuple(int(n) for n in images[s].shape[1:]) for s in SPLITS}
    if len(set(shapes.values())) != 1:
        raise _refuse(path, "volumes of different shapes: " + ", ".join(f"{s} {v}" for s, v in shapes.items()))
    shape = shapes["train"]
    if size is not None and shape != (size,) * 3:
        raise _refuse(path, f"the name says {size}³ but the volumes are {'×'.join(map(str, shape))}; rename the "
                            f"file, or pass --flag {flag}")
    n = FLAGS[flag].n_classes
    for split in SPLITS:
        bad = np.flatnonzero((labels[split] < 0) | (labels[split] >= n))
        if bad.size:
            raise _refuse(path, f"{split}_labels holds {sorted(set(labels[split][bad].tolist()))[:5]} (rows "
                                f"{', '.join(map(str, bad[:5].tolist()))}), but {flag} has {n} classes (0-{n - 1}); "
                                f"is it another set? pass --flag")
    names, names_from = class_names(flag)
    from ..convert import sha256_file

    sha = sha256_file(path)
    return MedmnistData(path=os.path.abspath(path), flag=flag, shape=shape, images=images, labels=labels,
                        classes=names, classes_from=names_from, sha256=sha, size_bytes=os.path.getsize(path))


def normalize_volume(volume: np.ndarray):
    """(Z, Y, X) uint8 → (float32 (Z, Y, X) z-scored with the volume's own mean and std, unclipped;
    :class:`volume.intensity.ChannelStats` in uint8 units). The build's own functions with percentiles 0/100, so
    ``predict`` replays the same rule from the store's recipe; a constant volume becomes zeros."""
    from volume.intensity import channel_stats, normalize_

    stats = channel_stats(volume, PERCENTILES)
    return normalize_(volume.astype(np.float32), stats), stats
