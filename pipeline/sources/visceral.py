"""VISCERAL Anatomy benchmark folders → Case records for the Med3D lung segmentation transfer.

Layout: volumes ``<patient>_<volume>_<modality>_<region>.nii.gz`` (modality CT, CTce, MRT1, MRT1cefs; e.g.
``10000100_1_CTce_ThAb.nii.gz``) and one mask per structure ``<volume name>_<RadLexID>_<annotator>.nii.gz``
(``10000100_1_CTce_ThAb_1302_3.nii.gz``), in ``Volumes/`` and ``Segmentations/`` or any other folders below the
root (searched recursively). ``.fcsv`` landmark/lesion files and masks of other structures are ignored.

Decisions (the paper trains one lung model on all four modalities, so they share one domain):

- **One domain** ``visceral``: one target spacing (per-axis median) and per-volume z-score as for 3DSeg-8. Each
  case carries its own :attr:`Case.modality` ("CT" for CT/CTce, "MR" for MRT1/MRT1cefs), so the CT air clamp
  applies to CT volumes only; the catalog's ``source_modality`` keeps the VISCERAL name.
- **Labels**: lungs are RadLex 1302 (right) and 1326 (left). ``merged``: both → 1; ``separate``: right 1, left 2.
- **Unannotated**: a missing mask is unknown, not empty. A volume needs masks of both lungs; with none, or with
  only one (the other lung's voxels would be taught as background), it is stored without a label, split
  "unannotated", and never trained or tested on.
- **Annotators**: several masks of one structure → the lowest annotator id, recorded in ``extra``.
- **Test split** (:func:`choose_test_patients`): paper 72 train / 8 test with every modality in test; drawn by
  seeded hash at patient level among the annotated volumes whose headers show they will build (volume and lung
  masks readable, on one grid: a test volume that then fails would leave its modality out of test); the rest is
  hashed to train/val by the catalog.
"""
from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from catalog.files import image_stem
from catalog.splits import hash_unit
from volume import geometry

from ..config import Case, DomainSpec

DOMAIN = "visceral"
MODALITIES = ("CT", "CTce", "MRT1", "MRT1cefs")
RIGHT_LUNG, LEFT_LUNG = 1302, 1326
LUNG_LABELS = {
    "merged": {RIGHT_LUNG: 1, LEFT_LUNG: 1},
    "separate": {RIGHT_LUNG: 1, LEFT_LUNG: 2},
}
#: Paper: 8 of 80 volumes in test.
PAPER_TEST_VOLUMES = 8

_MOD = "|".join(MODALITIES)
_VOLUME = re.compile(rf"^(?P<patient>\d+)_(?P<visit>\d+)_(?P<mod>{_MOD})_(?P<region>[A-Za-z0-9]+)$")
_MASK = re.compile(rf"^(?P<volume>\d+_\d+_(?:{_MOD})_[A-Za-z0-9]+)_(?P<radlex>\d+)_(?P<annotator>\d+)$")


def visceral_spec(lung_labels: str = "merged") -> DomainSpec:
    if lung_labels not in LUNG_LABELS:
        raise ValueError(f"lung_labels must be one of {sorted(LUNG_LABELS)}, got {lung_labels!r}")
    labels = {0: "background", 1: "lung"} if lung_labels == "merged" else \
        {0: "background", 1: "right lung", 2: "left lung"}
    return DomainSpec(name=DOMAIN, source_dataset="VISCERAL Anatomy", modality="CT/MR", channel_names=("image",),
                      labels=labels)


@dataclass(frozen=True)
class _Volume:
    name: str
    path: Path
    patient: str
    modality: str


def _stem(path: Path) -> str | None:
    return None if path.name.startswith("._") else image_stem(path.name)  # ._*: macOS resource forks


def _buildable(volume: Path, masks: list[Path]) -> bool:
    """Whether the headers of a volume and its masks are readable and describe one grid (as convert demands)."""
    try:
        ref = geometry.read_header(str(volume))
        others = [geometry.read_header(str(m)) for m in masks]
    except ValueError:
        return False
    return all(
        h.size == ref.size and np.allclose(h.spacing, ref.spacing, atol=1e-3, rtol=1e-5)
        and np.allclose(h.origin, ref.origin, atol=max(1e-3, 1e-3 * max(ref.spacing)), rtol=0)
        and np.allclose(h.direction, ref.direction, atol=1e-4)
        for h in others
    )


def n_test_volumes(n_annotated: int, n_modalities: int, wanted: int = PAPER_TEST_VOLUMES) -> int:
    """Test volumes to draw: the paper's 8, but at most a fifth of the annotated volumes (a 13-volume sample
    keeps 9 for training), and never fewer than one per modality present."""
    return min(wanted, max(n_modalities, round(0.2 * n_annotated)))


def choose_test_patients(volumes: list[tuple[str, str, str]], n_test: int, seed: int) -> set[str]:
    """Patients whose annotated volumes form the fixed test split.

    ``volumes``: (volume name, patient, modality) of the annotated volumes. Each modality's volumes are ranked by
    a seeded hash of the volume name; modalities take turns adding the patient of their next-ranked volume until
    each has one test volume, then two where it has at least three (so one stays for training) and ``n_test``
    allows two per modality; then the globally next-ranked patients fill up to ``n_test`` volumes. A patient's
    volumes all go to test together (patient-level split), so the count can exceed ``n_test`` by the other
    volumes of the last patient drawn.
    """
    rank = {name: hash_unit(seed, "visceral-test", name) for name, _, _ in volumes}
    by_mod: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for name, patient, mod in sorted(volumes, key=lambda v: rank[v[0]]):
        by_mod[mod].append((name, patient))
    per_mod = 2 if n_test >= 2 * len(by_mod) else 1
    quota = {m: min(per_mod, len(v) - 1) if len(v) >= 3 else 1 for m, v in by_mod.items()}
    chosen: set[str] = set()

    def in_test(mod: str | None = None) -> int:
        return sum(1 for name, patient, m in volumes if patient in chosen and (mod is None or m == mod))

    for level in (1, 2):
        for mod in sorted(by_mod):
            while in_test(mod) < min(level, quota[mod]):
                nxt = next((p for _, p in by_mod[mod] if p not in chosen), None)
                if nxt is None:
                    break
                chosen.add(nxt)
    for name, patient, _ in sorted(volumes, key=lambda v: rank[v[0]]):
        if in_test() >= n_test:
            break
        chosen.add(patient)
    return chosen


def scan_visceral(
    root: str | Path, *, lung_labels: str = "merged", n_test: int = PAPER_TEST_VOLUMES, seed: int = 0,
) -> tuple[DomainSpec, list[Case], list[str]]:
    """List the VISCERAL volumes under ``root`` with their lung masks. Returns (spec, cases, notes for the user).

    ``scan_id`` is ``visceral:<volume name>``, ``patient_id`` the patient number. ``n_test`` is the wanted test
    size (scaled down for small sets, see :func:`test_count`); ``seed`` draws it.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: not a folder; pass the folder holding Volumes/ and Segmentations/")
    spec = visceral_spec(lung_labels)
    values = LUNG_LABELS[lung_labels]
    volumes, masks, ignored = _visceral_files(root, values)
    if not volumes:
        raise ValueError(f"{root}: no <patient>_<volume>_<modality>_<region>.nii.gz volume "
                         f"(modalities {', '.join(MODALITIES)})")
    notes = []
    if ignored:
        notes.append(f"{ignored} NIfTI file(s) ignored (masks of other structures, other names)")
    orphans = sorted(set(masks) - set(volumes))
    if orphans:
        notes.append(f"lung masks without their volume (ignored): {', '.join(orphans)}")
    annotated = [v for v in volumes.values() if all(masks[v.name].get(r) for r in (RIGHT_LUNG, LEFT_LUNG))]
    test_patients = _test_patients(annotated, masks, n_test, seed, notes)
    cases = [_visceral_case(v, masks.get(v.name, {}), values, test_patients)
             for v in sorted(volumes.values(), key=lambda v: v.name)]
    n_tests = sum(1 for c in cases if c.split_hint == "test")
    notes.append(
        f"{len(volumes)} volumes: {len(annotated)} with both lungs annotated ({n_tests} fixed as test, "
        f"{len(annotated) - n_tests} for train/val), {len(volumes) - len(annotated)} unannotated"
    )
    return spec, cases, notes


def _visceral_files(root: Path, values: dict[int, int]
                    ) -> tuple[dict[str, _Volume], dict[str, dict[int, dict[int, Path]]], int]:
    """(volumes by name, lung masks by volume → RadLex id → annotator, count of other NIfTI files) under
    ``root``; a ValueError when a volume is there twice."""
    volumes: dict[str, _Volume] = {}
    masks: dict[str, dict[int, dict[int, Path]]] = defaultdict(lambda: defaultdict(dict))
    ignored = 0
    for path in sorted(root.rglob("*.nii*")):
        stem = _stem(path)
        if stem is None or not path.is_file():
            continue
        if m := _VOLUME.match(stem):
            if stem in volumes:
                raise ValueError(f"volume {stem} found twice: {volumes[stem].path} and {path}; keep one")
            volumes[stem] = _Volume(stem, path, m["patient"], m["mod"])
        elif (m := _MASK.match(stem)) and int(m["radlex"]) in values:
            masks[m["volume"]][int(m["radlex"])][int(m["annotator"])] = path
        else:
            ignored += 1
    return volumes, masks, ignored


def _test_patients(annotated: list[_Volume], masks: dict[str, dict[int, dict[int, Path]]], n_test: int, seed: int,
                   notes: list[str]) -> set[str]:
    """The patients drawn for the fixed test split among the volumes that can be built (notes say which cannot,
    and which modality has no annotated volume)."""
    # Rule: the lowest annotator id (VISCERAL numbers its annotators; any fixed choice would do, this one is
    # stable when more annotations are added later).
    lung_files = {v.name: [masks[v.name][r][min(masks[v.name][r])] for r in (RIGHT_LUNG, LEFT_LUNG)]
                  for v in annotated}
    eligible = [v for v in annotated if _buildable(v.path, lung_files[v.name])]
    if len(eligible) < len(annotated):
        notes.append("not drawn for test (header unreadable or a lung mask on another grid): "
                     + ", ".join(sorted(v.name for v in annotated if v not in eligible)))
    n_mod = len({v.modality for v in eligible})
    n_draw = n_test_volumes(len(eligible), n_mod, n_test)
    test_patients = choose_test_patients([(v.name, v.patient, v.modality) for v in eligible], n_draw, seed)
    # A patient-level split: an ineligible volume of a test patient goes to test with its patient.
    missing_mods = sorted(set(MODALITIES) - {v.modality for v in annotated})
    if missing_mods:
        notes.append(f"no annotated volume of modality {', '.join(missing_mods)}: not in train or test")
    return set(test_patients)


def _visceral_case(v: _Volume, found: dict[int, dict[int, Path]], values: dict[int, int],
                   test_patients: set[str]) -> Case:
    """The case of volume ``v``: both lung masks (the lowest annotator's) as label parts, or unlabelled in split
    "unannotated" when a lung is missing."""
    extra: dict = {"source_modality": v.modality}
    parts: list[tuple[str, int]] = []
    for radlex in (RIGHT_LUNG, LEFT_LUNG):
        by_annotator = found.get(radlex, {})
        if by_annotator:
            annotator = min(by_annotator)  # the rule of _test_patients
            parts.append((str(by_annotator[annotator]), values[radlex]))
            extra[f"annotator_{radlex}"] = annotator
            if len(by_annotator) > 1:
                extra[f"other_annotators_{radlex}"] = sorted(a for a in by_annotator if a != annotator)
    if len(parts) == 2:
        split = "test" if v.patient in test_patients else None
        extra["lung_annotation"] = "both"
    else:
        have = [str(r) for r in (RIGHT_LUNG, LEFT_LUNG) if found.get(r)]
        extra["lung_annotation"] = f"only {have[0]}" if have else "none"
        parts, split = [], "unannotated"
    return Case(domain=DOMAIN, case_id=v.name, scan_id=f"visceral:{v.name}", patient_id=v.patient,
                images=(str(v.path),), label_parts=tuple(parts), split_hint=split,
                modality="CT" if v.modality.startswith("CT") else "MR", extra=extra)
