"""LiTS (Liver Tumor Segmentation challenge) folders → Case records.

Layout: ``volume-N.nii`` (HU, int16) + ``segmentation-N.nii`` (0 background, 1 liver, 2 tumour) for the 131
training volumes and ``test-volume-N.nii`` (no public labels) for the 70 test volumes; uncompressed NIfTI. The
download splits them over folders ("Training Batch 1", "Training Batch 2", the test folder), so the root is
searched recursively; ``.nii.gz`` copies are accepted too.

Spacing: volumes 28–47 (from 3D-IRCADb) carry an identity affine that readers take for a plausible 1 × 1 × 1 mm.
Such a header (see :func:`has_usable_spacing`) gets the mean spacing of the training volumes whose spacing is
usable, flagged ``no_spacing:train_mean`` in the catalog; a spacing table (:func:`read_spacing_csv`) replaces
any header, flagged ``override:csv``. The domain's target spacing is the training volumes' mean (the paper's
"average spacing"): build with ``spacing_rule="mean"``.
"""
from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import numpy as np

from catalog.files import image_stem
from volume import geometry
from volume.preprocess import has_usable_spacing

from ..config import Case, DomainSpec

DOMAIN = "lits"
LITS_SPEC = DomainSpec(
    name=DOMAIN, source_dataset="LiTS", modality="CT", channel_names=("CT",),
    labels={0: "background", 1: "liver", 2: "tumour"},
)
#: The window of the paper (HU), applied instead of the 0.5/99.5 percentiles.
LITS_WINDOW = (-200.0, 250.0)

FLAG_NO_SPACING = "no_spacing:train_mean"
FLAG_OVERRIDE = "override:csv"

_FILE = re.compile(r"^(volume|segmentation|test-volume)-(\d+)\.nii(\.gz)?$")


def case_name(name: str) -> str:
    """A file or case name without folder and image ending: ``Batch1/volume-3.nii`` → ``volume-3``."""
    name = Path(name.strip()).name
    return image_stem(name) or name


def read_spacing_csv(path: str | Path) -> dict[str, tuple[float, float, float]]:
    """A spacing table: case (or file) name → (x, y, z) mm in the file's axis order.

    Columns: ``case`` or ``file`` (``volume-28``, ``volume-28.nii``, ``test-volume-3.nii``), ``spacing_x``,
    ``spacing_y``, ``spacing_z``. Raises ValueError naming the file and row of the first malformed entry.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read the spacing table ({exc})") from None
    reader = csv.DictReader(text.splitlines())
    fields = [f.strip() for f in reader.fieldnames or []]
    reader.fieldnames = fields
    key = "case" if "case" in fields else "file" if "file" in fields else None
    need = ["spacing_x", "spacing_y", "spacing_z"]
    if key is None or any(c not in fields for c in need):
        raise ValueError(
            f"{path}: header {fields} must name a 'case' (or 'file') column and spacing_x, spacing_y, spacing_z (mm)"
        )
    table: dict[str, tuple[float, float, float]] = {}
    for row_no, row in enumerate(reader, start=2):  # row 1 is the header
        if not any((v or "").strip() for v in row.values() if isinstance(v, str)):
            continue  # blank line
        name = case_name(row.get(key) or "")
        if not name:
            raise ValueError(f"{path}: row {row_no}: empty {key!r}")
        try:
            spacing = tuple(float((row.get(c) or "").strip()) for c in need)
        except ValueError:
            raise ValueError(
                f"{path}: row {row_no} ({name}): spacing_x/y/z must be numbers in mm, got "
                f"{[row.get(c) for c in need]}"
            ) from None
        if not all(math.isfinite(s) and s > 0 for s in spacing):
            raise ValueError(f"{path}: row {row_no} ({name}): spacings must be positive, got {list(spacing)}")
        if name in table:
            raise ValueError(f"{path}: row {row_no}: {name} is listed twice")
        table[name] = spacing
    return table


def _file_spacing(spacing_zyx, direction) -> tuple[float, float, float]:
    """Canonical (z, y, x) spacing → (x, y, z) in the axis order of a file with this direction."""
    perm = geometry.canonical_permutation(direction)
    lps = tuple(reversed(tuple(spacing_zyx)))
    return tuple(float(lps[perm[f]]) for f in range(3))


def scan_lits(
    root: str | Path, spacing_table: dict[str, tuple[float, float, float]] | None = None,
) -> tuple[DomainSpec, list[Case], list[str]]:
    """List the LiTS volumes under ``root``. Returns (domain spec, cases, notes for the user).

    Training volumes get ``scan_id`` ``lits:N`` (the identity MSD Task03_Liver's ``liver_N`` also gets) and no
    split hint (the catalog hashes them to train/val); test volumes get ``lits-test:N``, no label and split
    "test". A volume without its segmentation keeps the expected path, so it becomes a failed row naming it.
    Headers are read here (cheap) to find unusable spacings.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: not a folder; pass the folder holding volume-N.nii / segmentation-N.nii")
    files = _lits_files(root)
    volumes = sorted(n for kind, n in files if kind == "volume")
    tests = sorted(n for kind, n in files if kind == "test-volume")
    if not volumes and not tests:
        raise ValueError(f"{root}: no volume-N.nii or test-volume-N.nii files")
    notes = [f"segmentation-{n} has no volume-{n}: ignored" for kind, n in sorted(files)
             if kind == "segmentation" and ("volume", n) not in files]

    table = dict(spacing_table or {})
    entries = [("volume", n) for n in volumes] + [("test-volume", n) for n in tests]
    headers: dict[tuple[str, int], geometry.Header | None] = {}
    for key in entries:
        try:
            headers[key] = geometry.read_header(str(files[key]))
        except ValueError:
            headers[key] = None  # the build reports it as a failed case
    mean_zyx = _trusted_mean_spacing([headers[("volume", n)] for n in volumes], volumes, table)
    cases = [_lits_case(kind, n, files, headers[(kind, n)], table, mean_zyx, notes) for kind, n in entries]
    if table:
        notes.append(f"spacing table rows matching no volume (ignored): {', '.join(sorted(table))}")
    return LITS_SPEC, cases, notes


def _lits_files(root: Path) -> dict[tuple[str, int], Path]:
    """{(kind, N): file} of every LiTS file under ``root`` (volume, segmentation, test-volume); a ValueError
    when one is there twice."""
    files: dict[tuple[str, int], Path] = {}
    for path in sorted(root.rglob("*.nii*")):
        m = _FILE.match(path.name)
        if not m or not path.is_file():
            continue
        key = (m.group(1), int(m.group(2)))
        if key in files:
            raise ValueError(f"{key[0]}-{key[1]} found twice: {files[key]} and {path}; keep one")
        files[key] = path
    return files


def _trusted_mean_spacing(headers: list[geometry.Header | None], volumes: list[int],
                          table: dict[str, tuple[float, float, float]]) -> tuple[float, ...] | None:
    """Mean (z, y, x) spacing over training volumes with a trustworthy spacing (usable header or a table
    entry), in canonical axes so volumes stored in different axis orders average like with like."""
    trusted = []
    for n, hdr in zip(volumes, headers):
        if hdr is None:
            continue
        name = f"volume-{n}"
        if name in table:
            hdr = geometry.Header(**{**vars(hdr), "spacing": table[name]})
        elif not has_usable_spacing(hdr):
            continue
        trusted.append(hdr.canonical_spacing_zyx())
    return tuple(float(v) for v in np.mean(trusted, axis=0)) if trusted else None


def _lits_case(kind: str, n: int, files: dict[tuple[str, int], Path], hdr: geometry.Header | None,
               table: dict[str, tuple[float, float, float]], mean_zyx: tuple[float, ...] | None,
               notes: list[str]) -> Case:
    """The case of volume (or test volume) ``n``: its spacing from the table (the row is used up), else the
    training mean when its header's is unusable (noted)."""
    name = f"{kind}-{n}"
    override, extra = None, {}
    if name in table:
        override, extra["spacing_flag"] = table.pop(name), FLAG_OVERRIDE
    elif hdr is not None and not has_usable_spacing(hdr):
        if mean_zyx is None:
            raise ValueError(
                f"{files[(kind, n)]}: no usable spacing in its header and no training volume with usable "
                "spacing to average; pass a spacing table (--spacing-override)"
            )
        override = _file_spacing(mean_zyx, hdr.direction)
        extra["spacing_flag"] = FLAG_NO_SPACING
        notes.append(f"{name}: header spacing {hdr.spacing} unusable; using the training mean "
                     f"{tuple(round(s, 4) for s in override)} mm (x, y, z)")
    if kind == "volume":
        seg = files.get(("segmentation", n), files[(kind, n)].with_name(f"segmentation-{n}.nii"))
        return Case(domain=DOMAIN, case_id=name, scan_id=f"lits:{n}", patient_id=f"lits:{n}",
                    images=(str(files[(kind, n)]),), label=str(seg), spacing_override=override, extra=extra)
    return Case(domain=DOMAIN, case_id=name, scan_id=f"lits-test:{n}", patient_id=f"lits-test:{n}",
                images=(str(files[(kind, n)]),), split_hint="test", spacing_override=override, extra=extra)
