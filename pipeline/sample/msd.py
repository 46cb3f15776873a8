"""Miniature Medical Segmentation Decathlon (3DSeg-8 tasks) in the real on-disk layout, with its quirks.

`TaskNN_Name/dataset.json`, `imagesTr/`, `labelsTr/`, `imagesTs/`; 4D scalar NIfTI for the multi-modal tasks
(BrainTumour, Prostate), uint8 or float32 images, float32 label files, `._` macOS junk, RAS-stored, permuted and
oblique directions, CT padding outside a circular field of view, metal voxels. Which case carries which quirk is
fixed by its index (see QUIRKS) so tests and docs can name them; all values come from `seed`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from .phantom import (IDENTITY, RAS, SAGITTAL, Grid, T, add_metal, bias_field, case_rng, circular_fov, ct_image,
                      ellipsoid, mr_image, paint, to_uint8, torso)
from .phantom_files import Stored, label_values, place, record, update_manifest, write_macos_junk, write_nifti

_REL = "1.0 04/05/2018"
_JSON_NAME = {1: "BRATS", 2: "LeftAtrium", 3: "LiTS", 5: "PROSTATE"}  # dataset.json "name" where not the folder's
_MSK = "Memorial Sloan Kettering Cancer Center"


@dataclass(frozen=True)
class Task:
    """One MSD task: dataset.json fields, case names, tissue -> label map, voxel spacing and grid."""

    number: int
    name: str
    description: str
    reference: str
    modality: dict[str, str]
    labels: dict[str, str]
    train: tuple[str, ...]  # eight names; tiny uses the first `n_tiny`
    test: str
    label_of: dict[int, int]  # tissue id -> label id
    kind: str  # ct | brain | heart | hippocampus | prostate
    n_tiny: int = 5
    t_range: tuple[float, float] = (-1.0, 1.0)
    spacing: tuple[tuple[float, float, float], ...] = ((1.0, 1.0, 1.0),)  # (x, y, z) mm, cycled over cases
    image_dtype: str = "float32"


def _names(fmt: str, ids: Sequence[int]) -> tuple[str, ...]:
    return tuple(fmt.format(i) for i in ids)


TASKS: dict[str, Task] = {f"Task{t.number:02d}_{t.name}": t for t in (
    Task(1, "BrainTumour", "Gliomas segmentation tumour and oedema in on brain images",
         "https://www.med.upenn.edu/sbia/brats2017.html",
         {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
         {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"},
         _names("BRATS_{:03d}", range(1, 9)), "BRATS_485",
         {T.EDEMA: 1, T.NECROSIS: 2, T.ENHANCING: 3}, "brain", n_tiny=4),
    Task(2, "Heart", "Left atrium segmentation", "King's College London", {"0": "MRI"},
         {"0": "background", "1": "left atrium"}, _names("la_{:03d}", (3, 4, 5, 7, 9, 10, 11, 14)), "la_001",
         {T.ATRIUM: 1}, "heart", n_tiny=4, t_range=(0.15, 0.75), spacing=((1.25, 1.25, 1.37),)),
    Task(3, "Liver", "Liver and Liver Tumor Segmentation", "https://competitions.codalab.org/competitions/17094",
         {"0": "CT"}, {"0": "background", "1": "liver", "2": "cancer"}, _names("liver_{}", range(8)),
         "liver_132", {T.LIVER: 1, T.VESSEL: 1, T.LIVER_TUMOUR: 2}, "ct", t_range=(-0.5, 0.45),
         image_dtype="int16"),
    Task(4, "Hippocampus", "Left and right hippocampus segmentation", " Vanderbilt University Medical Center",
         {"0": "MRI"}, {"0": "background", "1": "Anterior", "2": "Posterior"},
         _names("hippocampus_{:03d}", (1, 3, 4, 6, 7, 8, 11, 14)), "hippocampus_002",
         {T.HIPPO_ANT: 1, T.HIPPO_POST: 2}, "hippocampus", n_tiny=6),
    Task(5, "Prostate", "Prostate transitional zone and peripheral zone segmentation",
         "Radboud University, Nijmegen Medical Centre", {"0": "T2", "1": "ADC"},
         {"0": "background", "1": "PZ", "2": "TZ"}, _names("prostate_{:02d}", (0, 1, 2, 4, 6, 7, 10, 13)),
         "prostate_03", {T.PZ: 1, T.TZ: 2}, "prostate", n_tiny=4,
         spacing=((0.625, 0.625, 3.6), (0.6, 0.6, 4.0), (0.625, 0.625, 3.6), (0.65, 0.65, 3.0))),
    Task(7, "Pancreas", "Pancreas and cancer segmentation", _MSK, {"0": "CT"},
         {"0": "background", "1": "pancreas", "2": "cancer"},
         _names("pancreas_{:03d}", (1, 4, 5, 6, 10, 12, 15, 19)), "pancreas_002",
         {T.PANCREAS: 1, T.PANCREAS_TUMOUR: 2}, "ct", t_range=(-0.45, 0.2), image_dtype="int16"),
    Task(8, "HepaticVessel", "Hepatic Vessel and Tumour Segmentation", _MSK, {"0": "CT"},
         {"0": "background", "1": "Vessel", "2": "Tumour"},
         _names("hepaticvessel_{:03d}", (1, 2, 4, 5, 7, 8, 10, 11)), "hepaticvessel_003",
         {T.VESSEL: 1, T.LIVER_TUMOUR: 2}, "ct", t_range=(-0.3, 0.4), image_dtype="int16"),
    Task(9, "Spleen", "Spleen Segmentation", _MSK, {"0": "CT"}, {"0": "background", "1": "spleen"},
         _names("spleen_{}", (2, 3, 6, 8, 9, 10, 12, 13)), "spleen_1", {T.SPLEEN: 1}, "ct", n_tiny=4,
         t_range=(-0.35, 0.4), image_dtype="int16"),
)}

#: Quirks by training-case index (the test image is index -1): orientation, storage dtypes, CT padding, junk.
QUIRKS: dict[str, dict[int, tuple[str, ...]]] = {
    "Task01_BrainTumour": {0: ("macos_junk",), 1: ("ras",), 2: ("oblique:0:15",), 3: ("float32_label",)},
    "Task02_Heart": {0: ("uint8_image",), 1: ("oblique:1:18",), 2: ("sagittal", "uint8_image", "float32_label"),
                     3: ("ras",)},
    "Task03_Liver": {1: ("pad:-2048",), 2: ("float32_label",), 3: ("pad:-3024",), 4: ("ras",)},
    "Task04_Hippocampus": {0: ("ras", "uint8_image", "macos_junk"), 1: ("ras", "float32_label"), 2: ("ras",),
                           3: ("ras",), 4: ("ras",), 5: ("ras", "uint8_image"), 6: ("ras",), 7: ("ras",),
                           -1: ("ras", "macos_junk")},
    "Task05_Prostate": {0: ("float32_label", "macos_junk"), 1: ("oblique:0:12",), 2: ("ras",)},
    "Task07_Pancreas": {1: ("float32_label",), 2: ("pad:-2048",)},
    "Task08_HepaticVessel": {0: ("pad:-2048",), 3: ("float32_image",), -1: ("pad:-2048",)},
    "Task09_Spleen": {1: ("pad:-3024",), 2: ("float32_label",), 3: ("ras",)},
}

_CT_INPLANE = (0.6250, 0.6641, 0.7031, 0.7422, 0.7813, 0.8203, 0.8594, 0.8984)  # FOV 320..460 mm / 512
_CT_SLICE = (1.0, 1.5, 2.0, 2.5, 3.0, 5.0, 1.25, 4.0)
_BENCH_INPLANE = (0.703125, 0.71875, 0.734375, 0.75, 0.765625, 0.78125, 0.796875, 0.7421875)


@dataclass
class CaseData:
    """A synthesized case: canonical (z, y, x) LPS channel arrays, label, spacing (x, y, z) mm, quirks."""

    channels: list[np.ndarray]
    label: np.ndarray
    spacing: tuple[float, float, float]
    image_dtype: str
    quirks: list[str] = field(default_factory=list)
    perm: tuple[int, ...] = IDENTITY
    oblique: tuple[int, float] | None = None
    label_dtype: str = "uint8"


def _brain(grid: Grid, rng: np.random.Generator) -> np.ndarray:
    canvas = np.zeros(grid.shape, np.uint8)
    paint(canvas, ellipsoid(grid, (0, 0, 0), (0.8, 0.88, 0.8), wobble=0.04, rng=rng), T.GM)
    paint(canvas, ellipsoid(grid, (0, 0.02, 0), (0.66, 0.74, 0.64), wobble=0.06, rng=rng), T.WM)
    for side in (-1, 1):
        paint(canvas, ellipsoid(grid, (0.1 * side, -0.05, 0.1), (0.06, 0.28, 0.12)), T.CSF)
    c = np.array([rng.choice([-1, 1]) * rng.uniform(0.25, 0.4), rng.uniform(-0.3, 0.3), rng.uniform(-0.2, 0.3)])
    brain = [T.GM, T.WM, T.CSF]
    paint(canvas, ellipsoid(grid, c, (0.3, 0.34, 0.3), wobble=0.15, rng=rng), T.EDEMA, where=brain)
    paint(canvas, ellipsoid(grid, c, (0.17, 0.19, 0.17), wobble=0.1, rng=rng), T.ENHANCING, where=[T.EDEMA])
    paint(canvas, ellipsoid(grid, c, (0.1, 0.11, 0.1)), T.NECROSIS, where=[T.ENHANCING])
    return canvas


_BRAIN_LUT = {  # per channel (FLAIR, T1w, t1gd, T2w): relative intensity per tissue and scale (a.u.)
    "FLAIR": ({T.CSF: 0.12, T.WM: 0.5, T.GM: 0.62, T.EDEMA: 1.0, T.NECROSIS: 0.7, T.ENHANCING: 0.8}, 420.0),
    "T1w": ({T.CSF: 0.2, T.WM: 0.8, T.GM: 0.6, T.EDEMA: 0.45, T.NECROSIS: 0.3, T.ENHANCING: 0.5}, 610.0),
    "t1gd": ({T.CSF: 0.2, T.WM: 0.75, T.GM: 0.58, T.EDEMA: 0.45, T.NECROSIS: 0.3, T.ENHANCING: 1.0}, 700.0),
    "T2w": ({T.CSF: 1.0, T.WM: 0.35, T.GM: 0.5, T.EDEMA: 0.85, T.NECROSIS: 0.9, T.ENHANCING: 0.6}, 900.0),
}
_HEART_LUT = {T.FAT: 0.9, T.SOFT: 0.3, T.BONE: 0.05, T.MARROW: 0.6, T.LUNG_R: 0.04, T.LUNG_L: 0.04,
              T.HEART: 0.3, T.BLOOD: 0.95, T.ATRIUM: 0.95, T.AORTA: 0.9, T.LIVER: 0.35, T.SPLEEN: 0.45,
              T.GAS: 0.02, T.CSF: 0.8, T.VESSEL: 0.6}
_HIPPO_LUT = {T.GM: 0.55, T.WM: 0.8, T.CSF: 0.15, T.HIPPO_ANT: 0.58, T.HIPPO_POST: 0.56}
_PROSTATE_LUT = {
    "T2": ({T.FAT: 0.85, T.SOFT: 0.25, T.BONE: 0.05, T.MARROW: 0.55, T.BLADDER: 1.0, T.GAS: 0.02, T.PZ: 0.75,
            T.TZ: 0.4}, 800.0),
    "ADC": ({T.FAT: 0.05, T.SOFT: 0.45, T.BONE: 0.05, T.MARROW: 0.15, T.BLADDER: 1.0, T.GAS: 0.0, T.PZ: 0.55,
             T.TZ: 0.42}, 3000.0),
}


def _heart(grid: Grid, rng: np.random.Generator) -> np.ndarray:
    canvas = torso(grid, rng, vessels=False)
    c = np.array([0.04, 0.08, 0.5]) + rng.uniform(-0.03, 0.03, 3)
    paint(canvas, ellipsoid(grid, c, (0.13, 0.09, 0.1), wobble=0.1, rng=rng), T.ATRIUM,
          where=[T.HEART, T.BLOOD, T.SOFT, T.LUNG_L, T.LUNG_R, T.AORTA])
    return canvas


def _hippocampus(grid: Grid, rng: np.random.Generator) -> np.ndarray:
    canvas = np.full(grid.shape, T.GM, np.uint8)
    paint(canvas, ellipsoid(grid, (0.55, 0, 0.3), (0.5, 1.3, 0.5), wobble=0.1, rng=rng), T.WM)
    paint(canvas, ellipsoid(grid, (0.25, -0.1, 0.35), (0.12, 0.7, 0.1)), T.CSF)
    c = rng.uniform(-0.05, 0.05, 3)
    paint(canvas, ellipsoid(grid, c + (0.0, 0.3, 0.0), (0.3, 0.4, 0.28), wobble=0.08, rng=rng), T.HIPPO_POST)
    paint(canvas, ellipsoid(grid, c + (0.0, -0.3, -0.05), (0.35, 0.38, 0.35), wobble=0.08, rng=rng), T.HIPPO_ANT)
    return canvas


def _prostate(grid: Grid, rng: np.random.Generator) -> np.ndarray:
    canvas = np.zeros(grid.shape, np.uint8)
    paint(canvas, ellipsoid(grid, (0, 0.05, 0), (0.85, 0.62, 9.0)), T.FAT)
    paint(canvas, ellipsoid(grid, (0, 0.05, 0), (0.74, 0.52, 9.0)), T.SOFT)
    for side in (-1, 1):
        paint(canvas, ellipsoid(grid, (0.55 * side, 0.05, 0), (0.14, 0.14, 0.6)), T.BONE)
        paint(canvas, ellipsoid(grid, (0.55 * side, 0.05, 0), (0.1, 0.1, 0.5)), T.MARROW)
    paint(canvas, ellipsoid(grid, (0, -0.22, 0.75), (0.25, 0.2, 0.4), wobble=0.05, rng=rng), T.BLADDER)
    paint(canvas, ellipsoid(grid, (0, 0.38, 0), (0.1, 0.08, 1.4)), T.SOFT)
    paint(canvas, ellipsoid(grid, (0, 0.38, 0), (0.05, 0.04, 1.4)), T.GAS)
    c = np.array([0.0, 0.12, -0.05]) + rng.uniform(-0.03, 0.03, 3)
    paint(canvas, ellipsoid(grid, c, (0.2, 0.16, 0.45), wobble=0.06, rng=rng), T.PZ)
    paint(canvas, ellipsoid(grid, c + (0, -0.06, 0.08), (0.13, 0.1, 0.32), wobble=0.06, rng=rng), T.TZ,
          where=[T.PZ])
    return canvas


def _shape(task: Task, rng: np.random.Generator, size: str) -> tuple[int, int, int]:
    """Grid size (x, y, z) in voxels."""
    r = lambda lo, hi: int(rng.integers(lo, hi + 1))  # noqa: E731
    if size == "bench":
        return {"ct": (512, 512, 120), "brain": (240, 240, 155), "heart": (320, 320, r(100, 130)),
                "hippocampus": (r(34, 38), r(48, 52), r(32, 38)), "prostate": (320, 320, r(18, 24))}[task.kind]
    return {"ct": (r(40, 48), r(40, 48), r(16, 32)), "brain": (r(36, 44), r(40, 48), r(28, 36)),
            "heart": (r(36, 44), r(36, 44), r(24, 32)), "hippocampus": (r(33, 38), r(44, 48), r(30, 38)),
            "prostate": (r(40, 48), r(40, 48), r(14, 20))}[task.kind]


def synthesize(folder: str, seed: int, index: int, size: str = "tiny") -> CaseData:
    """Synthesize case `index` of an MSD task (-1, -2, ...: test images) in canonical LPS, before storage quirks.

    Task03_Liver case N is also LiTS `volume-N` (the same scan), so both writers call this.
    """
    task = TASKS[folder]
    rng = case_rng(seed, task.number, 999 - index if index < 0 else index, 1 if size == "bench" else 0)
    nx, ny, nz = _shape(task, rng, size)
    grid = Grid((nz, ny, nx), task.t_range)
    quirks = list(QUIRKS.get(folder, {}).get(index, ()))
    slot = index % 8
    if task.kind == "ct":
        pick = _BENCH_INPLANE if size == "bench" else _CT_INPLANE
        order = case_rng(seed, task.number, 99).permutation(8)  # distinct spacings across a task's cases
        dz = 2.5 if size == "bench" else _CT_SLICE[order[(slot + 3) % 8]]
        spacing = (pick[order[slot]], pick[order[slot]], dz)
        canvas = torso(grid, rng, liver_tumour=2 in task.label_of.values() and task.number != 7,
                       pancreas_tumour=task.number == 7)
        hu = ct_image(canvas, rng, contrast=True, realistic=size == "bench")  # bench: real scanner noise
        quirks.append(f"metal:{add_metal(hu, rng, int(rng.integers(3, 9)))}")
        for q in quirks:
            if q.startswith("pad:"):
                circular_fov(hu, int(q[4:]))
        channels = [hu]
    else:
        spacing = task.spacing[slot % len(task.spacing)]
        bias = bias_field(grid.shape, rng, 0.25)
        if task.kind == "brain":
            canvas = _brain(grid, rng)
            channels = [mr_image(canvas, lut, rng, scale=s, bias=bias) * (canvas != T.AIR)
                        for lut, s in _BRAIN_LUT.values()]
        elif task.kind == "prostate":
            canvas = _prostate(grid, rng)
            channels = [mr_image(canvas, lut, rng, scale=s, bias=bias if name == "T2" else None)
                        for name, (lut, s) in _PROSTATE_LUT.items()]
        else:
            canvas = (_heart if task.kind == "heart" else _hippocampus)(grid, rng)
            lut = _HEART_LUT if task.kind == "heart" else _HIPPO_LUT
            channels = [mr_image(canvas, lut, rng, scale=float(rng.uniform(300, 900)), bias=bias)]
    table = np.zeros(256, np.uint8)
    for tissue, lab in task.label_of.items():
        table[tissue] = lab
    label = table[canvas]
    if index >= 0 and set(label_values(label)) != {0, *task.label_of.values()}:
        raise RuntimeError(f"{folder} case {index}: a labelled structure is missing (internal phantom error)")
    data = CaseData(channels, label, spacing, task.image_dtype, quirks)
    for q in quirks:
        if q == "ras":
            data.perm = RAS
        elif q == "sagittal":
            data.perm = SAGITTAL
        elif q.startswith("oblique:"):
            data.oblique = (int(q.split(":")[1]), float(q.split(":")[2]))
        elif q.endswith("_image"):
            data.image_dtype = q[: -len("_image")]
        elif q == "float32_label":
            data.label_dtype = "float32"
    if data.image_dtype == "uint8":
        data.channels = [to_uint8(c) for c in data.channels]
    return data


def stored_case(folder: str, seed: int, index: int, size: str = "tiny") -> tuple[CaseData, Stored]:
    """Synthesize a case and lay out its arrays (channels..., label last) in file index order with geometry."""
    data = synthesize(folder, seed, index, size)
    center = np.round(case_rng(seed, TASKS[folder].number, 500 + index).uniform(-60, 60, 3), 2)  # table, mm
    return data, place(data.channels + [data.label], data.spacing, perm=data.perm, oblique=data.oblique,
                       center_mm=tuple(float(v) for v in center))


def write_msd_sample(out: Path, *, seed: int = 0, size: str = "tiny",
                     tasks: Sequence[str] | None = None) -> list[Path]:
    """Write the 3DSeg-8 MSD task folders under `out` and return the written files (SAMPLE.json last).

    size "tiny": 4-6 training cases per task, each axis 14-48 voxels. size "bench": 8 training cases; CT tasks
    are 512 x 512 x 120 at 0.70-0.80 mm x 2.5 mm with realistic scanner noise (Gaussian, 16-23 HU in soft
    tissue, more in fat, lung and air: ``ct_image(realistic=True)``); tasks default to ["Task03_Liver"].
    Deterministic in `seed`.
    """
    if size not in ("tiny", "bench"):
        raise ValueError(f"size must be 'tiny' or 'bench', got {size!r}")
    chosen = list(tasks) if tasks is not None else (["Task03_Liver"] if size == "bench" else list(TASKS))
    unknown = [t for t in chosen if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown MSD task(s) {unknown}; choose from {sorted(TASKS)}")
    out = Path(out)
    written: list[Path] = []
    manifest: dict = {"seed": seed, "size": size, "tasks": {}}
    for folder in chosen:
        task = TASKS[folder]
        root = out / folder
        n_train = 8 if size == "bench" else task.n_tiny
        cases, entries = [], []
        for index in [*range(n_train), -1]:
            name = task.test if index < 0 else task.train[index]
            data, stored = stored_case(folder, seed, index, size)
            n_ch = len(data.channels)
            image_stored = replace(stored, arrays=stored.arrays[:n_ch])
            sub = "imagesTs" if index < 0 else "imagesTr"
            written.append(write_nifti(root / sub / f"{name}.nii.gz", image_stored, np.dtype(data.image_dtype)))
            entry = {"case": name, "split": "test" if index < 0 else "train", "image": f"{folder}/{sub}/{name}.nii.gz",
                     **record(image_stored, data.image_dtype, data.quirks)}
            if index >= 0:
                written.append(write_nifti(root / "labelsTr" / f"{name}.nii.gz", stored,
                                           np.dtype(data.label_dtype), channel=n_ch))
                entry.update(label=f"{folder}/labelsTr/{name}.nii.gz", label_dtype=data.label_dtype,
                             label_values=label_values(data.label))
                cases.append({"image": f"./imagesTr/{name}.nii.gz", "label": f"./labelsTr/{name}.nii.gz"})
            if "macos_junk" in data.quirks:
                junk_rng = case_rng(seed, task.number, 700 + index)
                for d in ([sub, "labelsTr"] if index >= 0 else [sub]):
                    written.append(write_macos_junk(root / d / f"._{name}.nii.gz", junk_rng))
            entries.append(entry)
        meta = {"name": _JSON_NAME.get(task.number, task.name),
                "description": f"{task.description} [synthetic miniature written by pipeline.sample]",
                "reference": task.reference, "licence": "CC-BY-SA 4.0",
                "relase": "2.0 04/05/2018" if task.number == 1 else _REL,
                "tensorImageSize": "4D" if len(task.modality) > 1 else "3D", "modality": task.modality,
                "labels": task.labels, "numTraining": n_train, "numTest": 1, "training": cases,
                "test": [f"./imagesTs/{task.test}.nii.gz"]}
        (root / "dataset.json").write_text(json.dumps(meta, indent=4) + "\n")
        written.append(root / "dataset.json")
        manifest["tasks"][folder] = {"dataset_json": f"{folder}/dataset.json", "cases": entries}
    written.append(update_manifest(out, "msd", manifest))
    return written


__all__ = ["TASKS", "QUIRKS", "CaseData", "stored_case", "synthesize", "write_msd_sample"]
