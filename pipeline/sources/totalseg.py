"""TotalSegmentator dataset folders → Case records with one composed label per subject.

Layout (v1 and v2 on Zenodo): ``<root>/<subject>/ct.nii.gz``, one binary mask per class in
``<root>/<subject>/segmentations/<class>.nii.gz``, and ``<root>/meta.csv`` (semicolon-separated in v2; columns
``image_id`` and ``split`` = train / val / test among others).

Decisions:

- **Classes**: the user picks them (``classes``, values 1..N in the given order) or names groups
  (:data:`~pipeline.sources.totalseg_classes.GROUPS`: TotalSegmentator v2's own five parts, or ``all``);
  several groups are concatenated in the given order. The masks are composed by the pipeline
  (``Case.label_parts``, as for VISCERAL): voxels > 0 of a mask take its value, a later class wins where masks
  overlap (the overlap is counted in the case attrs).
- **Missing masks**: TotalSegmentator writes every class file for every subject, empty when the structure is
  not in the field of view; an absent structure is an empty mask, which composes to background. A mask *file*
  that is missing is therefore damage, not absence: the subject becomes a failed row naming the file (unlike
  VISCERAL, where a missing mask means "not annotated"). A class that no subject has is a typo and refused
  before any work.
- **Splits**: the dataset's own ``split`` column is kept (``Case.split_hint``), so TotalSegmentator's test
  subjects stay out of pretraining and its val subjects are validated on; subjects missing from meta.csv (or
  every subject, without meta.csv) are split by the catalog's patient hash. The dataset gives no patient id, so
  each subject is its own patient.
- **Domain** ``totalseg`` (overridable), CT; scan ids ``totalseg:<subject>``.
"""
from __future__ import annotations

import csv
import difflib
from pathlib import Path

from ..config import Case, DomainSpec, unsafe_case_id
from .naming import check_domain_name
from .totalseg_classes import GROUPS

DOMAIN = "totalseg"
SPLITS = ("train", "val", "test")
IMAGE = "ct.nii.gz"
MASKS = "segmentations"


def resolve_classes(classes: list[str] | None = None, groups: list[str] | None = None) -> tuple[str, ...]:
    """The class list of a build: ``classes`` as given, or the groups' classes concatenated. Exactly one of
    them must be given; duplicates are refused (a class would get two values)."""
    if bool(classes) == bool(groups):
        raise ValueError("give the classes to compose (--classes liver,spleen,...) or groups (--groups organs; "
                         f"groups: {', '.join(GROUPS)}), not both and not neither")
    if groups:
        unknown = [g for g in groups if g not in GROUPS]
        if unknown:
            raise ValueError(f"unknown TotalSegmentator group(s) {unknown}; choose from {', '.join(GROUPS)}")
        out = tuple(c for g in groups for c in GROUPS[g])
    else:
        out = tuple(c.strip() for c in classes if c.strip())
    dup = sorted({c for c in out if out.count(c) > 1})
    if dup:
        raise ValueError(f"class(es) listed twice: {', '.join(dup)}; each class gets one label value")
    for c in out:
        if unsafe_case_id(c) or c.startswith("."):
            raise ValueError(f"{c!r} is not a class file name (segmentations/<class>.nii.gz)")
    if len(out) > 255:
        raise ValueError(f"{len(out)} classes: at most 255 fit a uint8 label")
    return out


def read_meta(root: Path) -> tuple[dict[str, str], list[str]]:
    """Subject → split from ``root/meta.csv`` (``;`` or ``,`` separated), and notes. Empty without a meta.csv."""
    path = root / "meta.csv"
    if not path.is_file():
        return {}, [f"{path}: not found; every subject is split by the catalog's patient hash"]
    with open(path, newline="", encoding="utf-8-sig") as fh:
        header = fh.readline()
        fh.seek(0)
        rows = list(csv.DictReader(fh, delimiter=";" if ";" in header else ","))
    if not rows or not {"image_id", "split"} <= set(rows[0]):
        raise ValueError(f"{path}: expected columns image_id and split (TotalSegmentator's meta.csv), got "
                         f"{sorted(rows[0]) if rows else 'no rows'}")
    out = {}
    for i, row in enumerate(rows, start=2):
        subject, split = (row["image_id"] or "").strip(), (row["split"] or "").strip().lower()
        if split not in SPLITS:
            raise ValueError(f"{path}: line {i}: split {row['split']!r} for {subject!r}; expected "
                             f"{', '.join(SPLITS)}")
        out[subject] = split
    return out, []


def totalseg_spec(classes: tuple[str, ...], domain: str = DOMAIN, source: str = "TotalSegmentator") -> DomainSpec:
    return DomainSpec(name=domain, source_dataset=source, modality="CT", channel_names=("CT",),
                      labels={0: "background", **{i: c for i, c in enumerate(classes, start=1)}})


def scan_totalseg(root: str | Path, classes: list[str] | None = None, groups: list[str] | None = None, *,
                  domain: str = DOMAIN) -> tuple[DomainSpec, list[Case], list[str]]:
    """List the subjects under ``root`` with their masks for the chosen classes. Returns (spec, cases, notes)."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: not a folder; pass the TotalSegmentator folder holding s0000/ct.nii.gz ...")
    chosen = resolve_classes(classes, groups)
    check_domain_name(domain, f"--domain {domain}")
    subjects = sorted(p for p in root.iterdir()
                      if p.is_dir() and not p.name.startswith(".") and ((p / IMAGE).exists() or (p / MASKS).is_dir()))
    if not subjects:
        raise ValueError(f"{root}: no subject folder (<subject>/{IMAGE} with {MASKS}/<class>.nii.gz)")
    available: set[str] = set()
    for subject in subjects:
        if (subject / MASKS).is_dir():
            available |= {p.name[: -len(".nii.gz")] for p in (subject / MASKS).iterdir()
                          if p.name.endswith(".nii.gz") and not p.name.startswith("._")}
    unknown = [c for c in chosen if c not in available]
    if unknown:
        hints = [f"{c} (did you mean {', '.join(m)}?)" if (m := difflib.get_close_matches(c, available, 2)) else c
                 for c in unknown]
        raise ValueError(f"{root}: no subject has a mask of {'; '.join(hints)}; class names are the file names "
                         f"in <subject>/{MASKS}/")
    split_of, notes = read_meta(root)
    spec = totalseg_spec(chosen, domain, source=root.resolve().name or "TotalSegmentator")
    cases = []
    for subject in subjects:
        sid = subject.name
        problem = unsafe_case_id(sid)
        if problem:
            raise ValueError(f"{subject}: the subject name {problem}; rename the folder")
        parts = tuple((str(subject / MASKS / f"{c}.nii.gz"), value) for value, c in enumerate(chosen, start=1))
        cases.append(Case(domain=domain, case_id=sid, scan_id=f"totalseg:{sid}", patient_id=sid,
                          images=(str(subject / IMAGE),), label_parts=parts, split_hint=split_of.get(sid)))
    unlisted = [c.case_id for c in cases if c.case_id not in split_of]
    if split_of and unlisted:
        notes.append(f"{len(unlisted)} subject(s) not in meta.csv, split by hash: {', '.join(unlisted[:5])}")
    absent = sorted(set(split_of) - {c.case_id for c in cases})
    if absent:
        notes.append(f"{len(absent)} subject(s) of meta.csv have no folder here (not built): "
                     f"{', '.join(absent[:5])}{'...' if len(absent) > 5 else ''}")
    missing = sum(1 for c in cases for path, _ in c.label_parts if not Path(path).exists())
    if missing:
        notes.append(f"{missing} mask file(s) of the chosen classes are missing: those subjects fail, naming them")
    return spec, cases, notes
