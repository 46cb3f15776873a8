"""``med3d-train predict``: new raw scans in, masks out, each in its own scan's geometry.

The run records the preprocessing of the store it was trained on (``finetune.json``: target spacing,
percentiles or CT window, air clamp, dtype); each scan goes through the same code path as the build
(:func:`volume.preprocess.preprocess_scan`), is segmented on that grid, and the label map (one value per
class, as the store's labels) is pasted back onto the scan's own grid (:func:`volume.original_grid.to_original_grid`),
whatever its orientation.

Inputs are files or folders of files. Files named as nnU-Net names channels (``CASE_0000.nii.gz``,
``CASE_0001.nii.gz``, ... as in an ``imagesTs`` folder) are one case: the mask is ``CASE.nii.gz`` (nnU-Net's name
for predictions), on the grid of ``CASE_0000``, which is the channel the network reads (the first channel, as in
training); a run fine-tuned with ``--channels all`` reads every channel file, in ``_NNNN`` order, which must share
``CASE_0000``'s grid and be numbered without a gap (``_0000, _0001, _0002, _0004`` lacks ``_0003``: refused, rather
than ``_0004`` fed as the fourth channel), as many channels as the network reads. Any other file ``NAME.nii.gz``
gives ``NAME_mask.nii.gz``; a LiTS ``test-volume-N.nii`` gives ``test-segmentation-N.nii``.
A folder of one DICOM series' slices is one case (:mod:`volume.dicom_series`): ``FOLDER_mask.nii.gz``, or with
``output_format="dicom-seg"`` a DICOM Segmentation object ``FOLDER_seg.dcm`` (:mod:`model.export.dicom_seg`).

Before any voxel is read, every file of every case (each channel file of an nnU-Net case) passes the build's
header checks and ``--max-voxels`` (as stored and as resampled): a damaged or crafted header (a 32767³ claim, a
``vox_offset`` of inf, a 300 mm voxel, a gzip bomb) skips its case with one line naming the file; the other
cases are predicted, and :class:`ScansSkippedError` then ends the call (docs/DECISIONS.md).

Before anything is written, every output path is checked (:func:`check_outputs`): one that is an input file (``OUT``
the scans' own folder, where ``CASE_0000`` gives ``CASE.nii.gz`` and ``CASE.nii.gz`` is a scan too) is refused,
and one that exists already is refused unless ``overwrite`` (``--overwrite``) is given: predict never replaces a
file it has not written in the same call, and never an input.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import SimpleITK as sitk
import torch

from catalog.files import IMAGE_ENDINGS, image_stem
from model.evaluation.inference import Segmenter
from model.task_api import Task

__all__ = ["SCAN_ENDINGS", "ScanCase", "ScansSkippedError", "check_case", "check_channel_files", "check_outputs",
           "collect_cases",
           "collect_scans", "mask_name", "predict"]

SCAN_ENDINGS = IMAGE_ENDINGS
"""File endings ``predict`` takes as scans in a folder: the project's one list (:mod:`catalog.files`)."""

_CHANNEL = re.compile(r"(?P<case>.+)_(?P<channel>\d{4})$")


def _stem(name: str) -> str:
    return image_stem(name) or name


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


@dataclass(frozen=True)
class ScanCase:
    """One case to predict: the file the network reads, the mask's file name, and every file of the case (the
    nnU-Net channel files ``CASE_0000``, ``CASE_0001``...; the scan alone otherwise), each header-checked."""

    scan: Path
    mask: str
    files: tuple[Path, ...]


def collect_cases(inputs: Sequence[str | Path]) -> list[ScanCase]:
    """The cases of ``inputs`` (files, or folders whose scan files are taken, sorted). nnU-Net channel files of
    one case count once, read by their lowest channel (``_0000``); a case whose channels lack ``_0000`` is
    refused. Raises ValueError naming the input."""
    from volume.dicom_series import is_series_folder, series_files

    files: list[Path] = []
    series: list[ScanCase] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.is_file() and p.name.endswith(SCAN_ENDINGS))
            if not found and is_series_folder(item):  # a DICOM series folder: one case (volume.dicom_series)
                series.append(ScanCase(scan=item, mask=f"{item.name}_mask.nii.gz", files=series_files(item)))
                continue
            if not found:
                raise ValueError(f"{item}: no scan file ({', '.join(SCAN_ENDINGS)}) or DICOM series in this folder")
            files += found
        else:
            files.append(item)
    groups: dict[str, list[Path]] = {}
    for path in files:
        channel = _CHANNEL.fullmatch(_stem(path.name))
        key = str(path.parent / channel.group("case")) if channel else str(path)
        groups.setdefault(key, [])
        if path not in groups[key]:
            groups[key].append(path)
    cases = []
    for key, paths in groups.items():
        first = [p for p in paths if (m := _CHANNEL.fullmatch(_stem(p.name))) is None or m.group("channel") == "0000"]
        if not first:
            raise ValueError(f"{key}: channel files without their _0000 file; the network reads channel 0000")
        cases.append(ScanCase(scan=first[0], mask=mask_name(first[0]), files=tuple(sorted(paths))))
    cases += series
    names = [c.mask for c in cases]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"two inputs would write the same mask {twice[0]}; predict them into separate folders")
    return cases


def collect_scans(inputs: Sequence[str | Path]) -> list[tuple[Path, str]]:
    """The cases of ``inputs`` (see :func:`collect_cases`) as (file the network reads, mask name)."""
    return [(c.scan, c.mask) for c in collect_cases(inputs)]


def check_case(case: ScanCase, recipe: dict[str, Any], *, max_voxels: int | None, modality: str | None = None,
               spacing_xyz: tuple[float, float, float] | None = None) -> None:
    """The build's header checks (:func:`volume.preprocess.check_headers`) on every file of ``case``, what
    preprocessing needs of the scan's header (:func:`volume.preprocess.check_scan_header`: a modality, a
    trustworthy spacing), then the size of the scan resampled to the recipe's target spacing against
    ``max_voxels``: header bytes only, no voxel is read. ``spacing_xyz`` (mm) replaces the headers' spacing, as
    ``--spacing`` does. Raises ValueError whose one-line message names the file and the fix."""
    from volume import integrity
    from volume.dicom_series import is_series_folder, scan_series, series_modality
    from volume.preprocess import check_headers, check_scan_header

    if is_series_folder(case.scan):  # every slice's header; the modality the series says
        modality = series_modality(scan_series(case.scan, max_voxels), modality, recipe["modality"])
    else:
        check_headers([str(f) for f in case.files], max_voxels, spacing_xyz)
    header, _ = check_scan_header(case.scan, recipe, modality=modality, spacing_xyz=spacing_xyz)
    target_spacing_zyx = recipe["target_spacing"]
    if spacing_xyz is not None:
        header = dataclasses.replace(header, spacing=tuple(spacing_xyz))
    integrity.check_resampled_voxels(str(case.scan), header.canonical_size_zyx(), header.canonical_spacing_zyx(),
                                     target_spacing_zyx, header.n_channels, max_voxels)


def check_channel_files(case: ScanCase) -> None:
    """Refuse an nnU-Net case whose channel files are not numbered ``_0000`` to ``_NNNN`` without a gap: the
    network would read the file after the gap as the missing channel. Raises ValueError naming the case and the
    first missing file."""
    numbers = {}
    for f in case.files:
        m = _CHANNEL.fullmatch(_stem(f.name))
        if m:
            numbers[int(m.group("channel"))] = f
    missing = next((c for c in range(len(numbers)) if c not in numbers), None)
    if missing is None:
        return
    first = numbers[0]
    m = _CHANNEL.fullmatch(_stem(first.name))
    gone = first.with_name(f"{m.group('case')}_{missing:04d}{first.name[len(_stem(first.name)):]}")
    have = ", ".join(f"_{c:04d}" for c in sorted(numbers))
    raise ValueError(f"{first.parent / m.group('case')}: channel file {gone} is missing (the case has {have}); "
                     "a case's channel files are numbered from _0000 without a gap")


def preprocess_case(case: ScanCase, recipe: dict[str, Any], *, in_chans: int, modality: str | None,
                    spacing_xyz: tuple[float, float, float] | None) -> tuple[Any, dict[str, Any]]:
    """:func:`volume.preprocess.preprocess_scan` of ``case``: its scan, and with ``in_chans`` above 1 its other
    channel files too (a network fine-tuned with ``--channels all``), which must be numbered without a gap
    (:func:`check_channel_files`) and hold ``in_chans`` channels in all; refused before any voxel is read."""
    from volume.dicom_series import is_series_folder, scan_series, series_modality
    from volume.preprocess import preprocess_scan

    if is_series_folder(case.scan):  # a DICOM series: one channel, the modality its headers say
        modality = series_modality(scan_series(case.scan), modality, recipe["modality"])
        return preprocess_scan(case.scan, recipe, modality=modality, spacing_xyz=spacing_xyz, in_chans=in_chans)
    if in_chans > 1:
        check_channel_files(case)
    extra = [f for f in case.files if f != case.scan] if in_chans > 1 else []
    return preprocess_scan(case.scan, recipe, modality=modality, spacing_xyz=spacing_xyz, in_chans=in_chans,
                           channel_files=extra)


def check_outputs(targets: Sequence[Path], inputs: Iterable[str | Path], *, overwrite: bool = False) -> None:
    """Refuse outputs that would replace an input file (the same path, or the same file under another name: a
    hard link, a symbolic link, another letter case), whatever ``overwrite`` says, and outputs that exist
    already unless ``overwrite``. Call it before the first write. Raises ValueError, one line naming the paths."""
    given: dict[Any, Path] = {}
    for f in map(Path, inputs):
        given[f.resolve()] = f
        with contextlib.suppress(OSError):
            st = f.stat()
            given[(st.st_dev, st.st_ino)] = f
    existing = []
    for target in map(Path, targets):
        try:
            st = target.stat()
        except FileNotFoundError:
            st = None
        scan = given.get(target.resolve()) or (given.get((st.st_dev, st.st_ino)) if st else None)
        if scan is not None:
            raise ValueError(f"refusing to write {target}: it is the input {scan}; predict never replaces its "
                             "inputs: give another --out folder")
        if st is not None:
            existing.append(target)
    if existing and not overwrite:
        more, they = (f" and {len(existing) - 1} more", "they exist") if len(existing) > 1 else ("", "it exists")
        raise ValueError(f"refusing to write {existing[0]}{more}: {they} already, and predict replaces no file it "
                         "has not written in this call; give --overwrite to replace, or another --out folder")


class ScansSkippedError(ValueError):
    """Some cases failed the header checks and were skipped; the others were predicted. ``written``: the masks
    written, ``skipped``: (file, reason) of each skipped case."""

    def __init__(self, message: str, written: list[Path], skipped: list[tuple[Path, str]]) -> None:
        super().__init__(message)
        self.written, self.skipped = written, skipped


def predict(run: str | Path, scans: Sequence[str | Path], out: str | Path, *, task: Task,
            segmenter: Segmenter | None = None,
            modality: str | None = None, spacing_xyz: tuple[float, float, float] | None = None,
            device: str | torch.device = "cpu", amp: bool = False, max_voxels: int | None = None,
            overwrite: bool = False, output_format: str = "nifti", log: Callable[[str], None] = print) -> list[Path]:
    """Segment every scan of ``scans`` (files or folders, see :func:`collect_cases`) with ``run`` (a run of
    ``task``) and write one mask per case into ``out``; returns the paths.

    Before any voxel is read, every file of every case passes the build's header checks (:func:`check_case`:
    damaged or truncated files, impossible spacings, more than ``max_voxels`` voxels as stored or resampled;
    None: the build's default, :data:`volume.integrity.DEFAULT_MAX_VOXELS`). A case that fails is skipped with
    a line through ``log`` and the others are predicted; then :class:`ScansSkippedError` says which were skipped
    (a ValueError: the CLI exits non-zero). When every case fails, nothing is loaded or written.

    ``segmenter`` replaces the run's networks (an oracle in tests). ``modality`` (CT or MR) is needed for runs
    trained on a mixed-modality store (VISCERAL). ``spacing_xyz`` (mm) replaces the headers' spacing, for scans
    whose header has none (the masks keep the files' own header). A mask path that is an input file is
    refused, and one that exists already unless ``overwrite`` (:func:`check_outputs`), before anything is read.
    ``output_format``: ``nifti``, or ``dicom-seg`` for DICOM series inputs (:mod:`model.export.mask_formats`).
    """
    from model.export.mask_formats import mask_writer
    from model.run_folder import inside, read_run, stage_steps
    from volume.integrity import DEFAULT_MAX_VOXELS
    from volume.original_grid import to_original_grid

    spec = read_run(run, task)
    if not task.segmentation:
        raise ValueError(f"{run} is a {spec['task']} run: it classifies, predict writes masks of segmentation runs")
    if spacing_xyz is not None and not (len(spacing_xyz) == 3 and all(math.isfinite(v) and v > 0 for v in spacing_xyz)):
        raise ValueError(f"the given spacing {tuple(spacing_xyz)} is not three positive voxel sizes (mm)")
    cases = collect_cases(scans)
    out = Path(out)
    # every name checked before the first write: one plain file name in OUT, no input, nothing there already
    writer = mask_writer(output_format, run, spec, log)
    targets = [inside(out, writer.name(case), what="mask name", source=case.scan) for case in cases]
    check_outputs(targets, [f for case in cases for f in case.files], overwrite=overwrite)
    recipe = spec["preprocessing"]
    limit = DEFAULT_MAX_VOXELS if max_voxels is None else max_voxels
    good, skipped = [], []
    for case, path in zip(cases, targets):
        try:
            check_case(case, recipe, max_voxels=limit, modality=modality, spacing_xyz=spacing_xyz)
        except ValueError as exc:
            log(f"skipped: {exc}")
            skipped.append((case.scan, str(exc)))
        else:
            good.append((case, path))
    written: list[Path] = []
    if good:
        if segmenter is None:
            stage_steps(run, spec, log)  # says so when the run has not finished
        seg = segmenter or task.segmenter(run, spec, device=device, amp=amp)
        out.mkdir(parents=True, exist_ok=True)
    n_chans = int(getattr(seg, "in_chans", 1)) if good else 1
    for case, path in good:
        scan = case.scan
        try:
            image, attrs = preprocess_case(case, recipe, in_chans=n_chans, modality=modality, spacing_xyz=spacing_xyz)
        except ValueError as exc:  # what the header could not tell: the voxels, the channel files
            log(f"skipped: {exc}")
            skipped.append((scan, str(exc)))
            continue
        label = seg(image)
        if label.shape != image.shape[-3:]:
            raise ValueError(f"{scan}: the segmenter returned {label.shape} for an image of {image.shape}")
        mask = to_original_grid(label, attrs)
        writer.write(mask, path, case)
        n = int(sitk.GetArrayViewFromImage(mask).astype(bool).sum())
        vol = n * math.prod(mask.GetSpacing())
        log(f"{scan} -> {path} ({n} voxels, {vol / 1000:.1f} ml)")
        written.append(path)
    if skipped:
        names = ", ".join(str(p) for p, _ in skipped[:3]) + (", ..." if len(skipped) > 3 else "")
        which = skipped[0][1] if len(skipped) == 1 else f"{names} (see the 'skipped:' lines)"
        raise ScansSkippedError(f"{len(skipped)} of {len(cases)} case(s) skipped: {which}; {len(written)} mask(s) "
                                f"written{f' to {out}' if written else ''}", written, skipped)
    return written
