"""Medical Segmentation Decathlon task folders (the eight 3DSeg-8 tasks) → Case records.

Layout: ``TaskNN_Name/dataset.json`` with ``modality``, ``labels``, ``training: [{image, label}]`` and
``test: [...]`` (paths start with ``./``), images in ``imagesTr``/``imagesTs``, labels in ``labelsTr``. The
real folders hold macOS ``._`` junk files: we list cases from dataset.json, never by globbing.
"""
from __future__ import annotations

import re
from pathlib import Path

from catalog.files import image_stem

from ..config import Case, DomainSpec, unsafe_case_id
from .naming import file_inside, read_json_object

# The eight MSD tasks of 3DSeg-8 (Lung and Colon are not part of it) and their domain names in the store.
TASKS_3DSEG8: dict[str, str] = {
    "Task01_BrainTumour": "brain_tumour",
    "Task02_Heart": "heart",
    "Task03_Liver": "liver",
    "Task04_Hippocampus": "hippocampus",
    "Task05_Prostate": "prostate",
    "Task07_Pancreas": "pancreas",
    "Task08_HepaticVessel": "hepatic_vessel",
    "Task09_Spleen": "spleen",
}

_LIVER_CASE = re.compile(r"^liver_(\d+)$")


def resolve_tasks(names: list[str] | None) -> list[str]:
    """Task folder names from user input (``Task04_Hippocampus`` or the domain name ``hippocampus``)."""
    if not names:
        return list(TASKS_3DSEG8)
    by_domain = {v: k for k, v in TASKS_3DSEG8.items()}
    out = []
    for name in names:
        name = name.strip()
        if name in TASKS_3DSEG8:
            out.append(name)
        elif name in by_domain:
            out.append(by_domain[name])
        else:
            valid = ", ".join(TASKS_3DSEG8)
            raise ValueError(f"unknown 3DSeg-8 task {name!r}; valid: {valid} (or their domain names)")
    return out


def scan_id_for(task: str, case_id: str) -> str:
    """Identity of the scan behind an MSD case. Task03_Liver is the LiTS training set under other names:
    ``liver_N`` is LiTS ``volume-N``, so both get ``lits:N``."""
    if task == "Task03_Liver":
        m = _LIVER_CASE.match(case_id)
        if m:
            return f"lits:{int(m.group(1))}"
    return f"msd:{task}:{case_id}"


def _case_id(path: str) -> str:
    name = Path(path).name
    return image_stem(name) or name


def _checked_case_id(image: str, meta_path: Path, where: str) -> str:
    cid = _case_id(image)
    problem = unsafe_case_id(cid)
    if problem:
        raise ValueError(f"{meta_path}: {where}: the case id {cid!r} taken from its file name {problem}; "
                         "rename the file")
    return cid


def _entries(meta: dict, key: str, meta_path: Path) -> list:
    entries = meta.get(key, [])
    if not isinstance(entries, list):
        raise ValueError(f"{meta_path}: {key!r} must be a list of cases, got {type(entries).__name__}")
    return entries


def read_task(task_dir: Path, domain: str | None = None) -> tuple[DomainSpec, list[Case]]:
    """Read one task folder's dataset.json into its domain spec and cases (training and test). ``domain`` names
    the store domain (default: the 3DSeg-8 name, else the folder name in lower case)."""
    task = task_dir.name
    meta_path = task_dir / "dataset.json"
    meta = read_json_object(meta_path, "an MSD task folder needs its dataset.json")
    for key in ("modality", "labels", "training"):
        if key not in meta:
            raise ValueError(f"{meta_path}: no {key!r} entry; is this an MSD dataset.json?")
    for key in ("modality", "labels"):
        if not isinstance(meta[key], dict) or not all(str(k).lstrip("-").isdigit() for k in meta[key]):
            raise ValueError(f"{meta_path}: {key!r} must map integer ids to names, got {meta[key]!r}")
    modality_names = [str(meta["modality"][k]) for k in sorted(meta["modality"], key=int)]
    is_ct = any(m.strip().upper() == "CT" for m in modality_names)
    domain = domain or TASKS_3DSEG8.get(task) or re.sub(r"[^a-z0-9]+", "_", task.lower()).strip("_")
    spec = DomainSpec(
        name=domain,
        source_dataset=task,
        modality="CT" if is_ct else "MR",
        channel_names=tuple(m.strip() for m in modality_names),
        labels={int(k): str(v) for k, v in meta["labels"].items()},
    )
    cases = []
    for i, entry in enumerate(_entries(meta, "training", meta_path)):
        where = f"training entry {i}"
        if not isinstance(entry, dict) or "image" not in entry:
            raise ValueError(f"{meta_path}: {where}: expected {{\"image\": ..., \"label\": ...}}, got {entry!r}")
        image = file_inside(task_dir, entry["image"], meta_path, where, "task folder")
        cid = _checked_case_id(entry["image"], meta_path, where)  # the listed name, not a link's target
        label = (file_inside(task_dir, entry["label"], meta_path, where, "task folder")
                 if entry.get("label") else None)
        cases.append(Case(
            domain=domain, case_id=cid, scan_id=scan_id_for(task, cid), patient_id=cid,
            images=(image,), label=label,
        ))
    for i, entry in enumerate(_entries(meta, "test", meta_path)):
        where = f"test entry {i}"
        rel = entry.get("image") if isinstance(entry, dict) else entry
        image = file_inside(task_dir, rel, meta_path, where, "task folder")
        cid = _checked_case_id(rel, meta_path, where)
        cases.append(Case(
            domain=domain, case_id=cid, scan_id=scan_id_for(task, cid), patient_id=cid,
            images=(image,), label=None, split_hint="test",
        ))
    if not cases:
        raise ValueError(f"{meta_path}: lists no case ('training' and 'test' are empty): nothing to build; use "
                         "the task's own dataset.json")
    seen: dict[str, int] = {}
    for c in cases:
        seen[c.case_id] = seen.get(c.case_id, 0) + 1
    dup = sorted(k for k, n in seen.items() if n > 1)
    if dup:
        raise ValueError(f"{meta_path}: cases listed more than once: {', '.join(dup[:5])}; remove the duplicates")
    return spec, cases


def scan_msd(root: str | Path, tasks: list[str] | None = None) -> tuple[list[tuple[DomainSpec, list[Case]]], list[str]]:
    """Find the requested 3DSeg-8 task folders under ``root``. Returns (found tasks, missing task names)."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: not a folder; pass the folder that holds the TaskNN_Name folders")
    found, missing = [], []
    for task in resolve_tasks(tasks):
        task_dir = root / task
        if task_dir.is_dir():
            found.append(read_task(task_dir))
        else:
            missing.append(task)
    return found, missing
