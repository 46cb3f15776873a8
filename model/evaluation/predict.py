"""``med3d-train predict``: new raw scans in, masks out, each in its own scan's geometry.

The run records the preprocessing of the store it was trained on (``finetune.json``: target spacing,
percentiles or CT window, air clamp, dtype); each scan goes through the same code path as the build
(:func:`pipeline.preprocess.preprocess_scan`), is segmented on that grid, and the mask is pasted back onto the
scan's own grid (:func:`pipeline.geometry.to_original_grid`), whatever its orientation.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import SimpleITK as sitk
import torch

from model.evaluation.inference import Segmenter

__all__ = ["mask_name", "predict"]


def mask_name(scan: str | Path) -> str:
    """``/x/ct_001.nii.gz`` -> ``ct_001_mask.nii.gz``; a LiTS ``test-volume-N.nii`` -> ``test-segmentation-N.nii``."""
    name = Path(scan).name
    m = re.fullmatch(r"test-volume-(\d+)\.nii", name)
    if m:
        return f"test-segmentation-{m.group(1)}.nii"
    stem = re.sub(r"(\.nii\.gz|\.nii|\.nrrd|\.mha|\.mhd)$", "", name)
    return f"{stem}_mask.nii.gz"


def predict(run: str | Path, scans: Sequence[str | Path], out: str | Path, *, segmenter: Segmenter | None = None,
            modality: str | None = None, spacing_xyz: tuple[float, float, float] | None = None,
            device: str | torch.device = "cpu", amp: bool = False, log: Callable[[str], None] = print) -> list[Path]:
    """Segment every scan of ``scans`` with ``run`` and write one mask per scan into ``out``; returns the paths.

    ``segmenter`` replaces the run's networks (an oracle in tests). ``modality`` (CT or MR) is needed for runs
    trained on a mixed-modality store (VISCERAL). ``spacing_xyz`` (mm) replaces the headers' spacing, for scans
    whose header has none (the masks keep the files' own header).
    """
    from model.evaluation.evaluate import segmenter_for_run
    from model.training.finetune import read_run
    from pipeline.geometry import to_original_grid
    from pipeline.preprocess import preprocess_scan

    spec = read_run(run)
    if spec["task"] == "nodule":
        raise ValueError(f"{run} is a nodule classifier: it takes 48 mm crops around nodules, not whole scans")
    recipe = spec["preprocessing"]
    seg = segmenter or segmenter_for_run(run, device=device, amp=amp)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for scan in scans:
        image, attrs = preprocess_scan(scan, recipe, modality=modality, spacing_xyz=spacing_xyz)
        label = seg(image)
        if label.shape != image.shape:
            raise ValueError(f"{scan}: the segmenter returned {label.shape} for an image of {image.shape}")
        mask = to_original_grid(label, attrs)
        path = out / mask_name(scan)
        sitk.WriteImage(mask, str(path))
        n = int(sitk.GetArrayViewFromImage(mask).astype(bool).sum())
        vol = n * math.prod(mask.GetSpacing())
        log(f"{scan} -> {path} ({n} voxels, {vol / 1000:.1f} ml)")
        written.append(path)
    return written
