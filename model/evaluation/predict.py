"""``med3d-train predict``: new raw scans in, masks out, each in its own scan's geometry.

The run records the preprocessing of the store it was trained on (``finetune.json``: target spacing,
percentiles or CT window, air clamp, dtype); each scan goes through the same code path as the build
(:func:`pipeline.preprocess.preprocess_scan`), is segmented on that grid, and the label map (one value per
class, as the store's labels) is pasted back onto the scan's own grid (:func:`pipeline.geometry.to_original_grid`),
whatever its orientation.

Inputs are files or folders of files. Files named as nnU-Net names channels (``CASE_0000.nii.gz``,
``CASE_0001.nii.gz``, ... as in an ``imagesTs`` folder) are one case: the mask is ``CASE.nii.gz`` (nnU-Net's name
for predictions), on the grid of ``CASE_0000``, which is the channel the network reads (the first channel, as in
training). Any other file ``NAME.nii.gz`` gives ``NAME_mask.nii.gz``; a LiTS ``test-volume-N.nii`` gives
``test-segmentation-N.nii``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import SimpleITK as sitk
import torch

from model.evaluation.inference import Segmenter

__all__ = ["SCAN_ENDINGS", "collect_scans", "mask_name", "predict"]

SCAN_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
"""File endings ``predict`` takes as scans in a folder."""

_CHANNEL = re.compile(r"(?P<case>.+)_(?P<channel>\d{4})$")


def _stem(name: str) -> str:
    for end in SCAN_ENDINGS:
        if name.endswith(end):
            return name[: -len(end)]
    return name


def mask_name(scan: str | Path) -> str:
    """``/x/ct_001.nii.gz`` -> ``ct_001_mask.nii.gz``; a LiTS ``test-volume-N.nii`` -> ``test-segmentation-N.nii``;
    an nnU-Net channel file ``/x/case_7_0000.nii.gz`` -> ``case_7.nii.gz``."""
    name = Path(scan).name
    m = re.fullmatch(r"test-volume-(\d+)\.nii", name)
    if m:
        return f"test-segmentation-{m.group(1)}.nii"
    channel = _CHANNEL.fullmatch(_stem(name))
    if channel:
        return f"{channel.group('case')}.nii.gz"
    return f"{_stem(name)}_mask.nii.gz"


def collect_scans(inputs: Sequence[str | Path]) -> list[tuple[Path, str]]:
    """The cases of ``inputs`` (files, or folders whose scan files are taken, sorted) as (file the network reads,
    mask name). nnU-Net channel files of one case count once, by their lowest channel (``_0000``); a case whose
    channels lack ``_0000`` is refused. Raises ValueError naming the input."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.is_file() and p.name.endswith(SCAN_ENDINGS))
            if not found:
                raise ValueError(f"{item}: no scan file ({', '.join(SCAN_ENDINGS)}) in this folder")
            files += found
        else:
            files.append(item)
    cases: dict[str, tuple[Path, str]] = {}
    for path in files:
        channel = _CHANNEL.fullmatch(_stem(path.name))
        key = str(path.parent / channel.group("case")) if channel else str(path)
        if channel and channel.group("channel") != "0000":
            cases.setdefault(key, (Path(""), mask_name(path)))
            continue
        cases[key] = (path, mask_name(path))
    missing = [k for k, (p, _) in cases.items() if p == Path("")]
    if missing:
        raise ValueError(f"{missing[0]}: channel files without their _0000 file; the network reads channel 0000")
    names = [name for _, name in cases.values()]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"two inputs would write the same mask {twice[0]}; predict them into separate folders")
    return list(cases.values())


def predict(run: str | Path, scans: Sequence[str | Path], out: str | Path, *, segmenter: Segmenter | None = None,
            modality: str | None = None, spacing_xyz: tuple[float, float, float] | None = None,
            device: str | torch.device = "cpu", amp: bool = False, log: Callable[[str], None] = print) -> list[Path]:
    """Segment every scan of ``scans`` (files or folders, see :func:`collect_scans`) with ``run`` and write one
    mask per case into ``out``; returns the paths.

    ``segmenter`` replaces the run's networks (an oracle in tests). ``modality`` (CT or MR) is needed for runs
    trained on a mixed-modality store (VISCERAL). ``spacing_xyz`` (mm) replaces the headers' spacing, for scans
    whose header has none (the masks keep the files' own header).
    """
    from model.tasks import get_task
    from model.tasks.run import inside, read_run
    from pipeline.geometry import to_original_grid
    from pipeline.preprocess import preprocess_scan

    spec = read_run(run)
    task = get_task(spec["task"])
    if not task.segmentation:
        raise ValueError(f"{run} is a {spec['task']} run: it classifies, predict writes masks of segmentation runs")
    cases = collect_scans(scans)
    out = Path(out)
    targets = [inside(out, name) for _, name in cases]  # every name checked before the first write
    recipe = spec["preprocessing"]
    seg = segmenter or task.segmenter(run, spec, device=device, amp=amp)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for (scan, _), path in zip(cases, targets):
        image, attrs = preprocess_scan(scan, recipe, modality=modality, spacing_xyz=spacing_xyz)
        label = seg(image)
        if label.shape != image.shape:
            raise ValueError(f"{scan}: the segmenter returned {label.shape} for an image of {image.shape}")
        mask = to_original_grid(label, attrs)
        sitk.WriteImage(mask, str(path))
        n = int(sitk.GetArrayViewFromImage(mask).astype(bool).sum())
        vol = n * math.prod(mask.GetSpacing())
        log(f"{scan} -> {path} ({n} voxels, {vol / 1000:.1f} ml)")
        written.append(path)
    return written
