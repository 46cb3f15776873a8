"""Label volumes: composing per-structure masks, validating values, resampling to the store grid.

Pure functions on SimpleITK images and numpy arrays; errors are ``CaseError``s naming the file.
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from volume import geometry
from volume.diagnose import CaseError
from volume.labels import compose_masks

from .config import Case, DomainSpec
from .store import foreground_rows


def compose_label(case: Case, ref: sitk.Image) -> tuple[sitk.Image, int]:
    """One uint8 label on ``ref``'s grid from ``case.label_parts`` (:func:`volume.labels.compose_masks`, each mask
    read with the case's spacing override). Returns (label, count of voxels claimed by masks of different
    values); raises CaseError naming the mask when it cannot be read or lies on another grid than the image."""
    return compose_masks(case.label_parts,
                         lambda path: geometry.read_single(path, case.spacing_override, what="mask"),
                         ref, case.images[0])


def check_label_values(arr: np.ndarray, spec: DomainSpec, files: str) -> None:
    """Raise CaseError when the label holds non-integers, negative values (even declared ones) or values that the
    dataset does not declare.

    The common case (integers within the declared contiguous ids) costs one min/max pass; ``np.unique`` only
    runs on the offending voxels.
    """
    if not np.issubdtype(arr.dtype, np.integer):
        flat = arr.reshape(-1)
        for i in range(0, flat.size, 1 << 20):
            part = flat[i:i + (1 << 20)]
            if not (np.isfinite(part).all() and (part == np.round(part)).all()):
                raise CaseError(f"{files}: label holds non-integer values")
    declared = set(spec.labels) | {0}
    lo, hi = arr.min(), arr.max()
    if lo < 0:  # stored as uint8, -1 would wrap to 255 and pass for a class (even when declared)
        negative = sorted({int(v) for v in np.unique(arr[arr < 0])})
        raise CaseError(f"{files}: negative label value(s) {negative[:5]}: label values are class indices "
                        "0..K-1; remap them to unused non-negative values (and dataset.json's labels with them)")
    contiguous = declared == set(range(max(declared) + 1))
    if contiguous and lo >= 0 and hi <= max(declared):
        return
    bad = np.unique(arr[arr > max(declared)]) if contiguous else np.unique(arr)
    unknown = sorted({int(v) for v in bad} - declared)
    if unknown:
        raise CaseError(
            f"{files}: label values {unknown} are not in {spec.source_dataset}'s labels {sorted(spec.labels)}"
        )


def resample_label(label_img: sitk.Image, spec: DomainSpec, spacing_xyz, files: str) -> np.ndarray:
    """Validate, reorient and nearest-neighbour resample a label onto the store grid: (Z, Y, X) uint8 (int16 when
    a dataset has more than 255 classes)."""
    label_img = geometry.reorient(label_img)
    check_label_values(sitk.GetArrayViewFromImage(label_img), spec, files)
    ltype = sitk.sitkUInt8 if spec.num_classes <= 255 else sitk.sitkInt16
    if label_img.GetPixelID() != ltype:
        label_img = sitk.Cast(label_img, ltype)
    return sitk.GetArrayFromImage(geometry.resample(label_img, spacing_xyz, "nearest"))


def summarize_label(label: np.ndarray, num_classes: int, per_class: int, seed: int
                    ) -> tuple[list[int], list[int], np.ndarray]:
    """(values present, voxels per present value, sampled foreground rows (class, z, y, x)) on the stored grid.

    One pass finds the foreground voxels; counts and samples come from them (foreground is a small share of a
    volume, so this beats counting every class over the whole array).
    """
    flat = label.reshape(-1)
    nz = np.flatnonzero(flat)
    classes = flat[nz]
    counts = np.bincount(classes, minlength=num_classes).astype(np.int64)
    counts[0] = flat.size - nz.size
    values = [int(v) for v in np.flatnonzero(counts)]
    return values, [int(counts[v]) for v in values], foreground_rows(nz, classes, label.shape, per_class, seed)
