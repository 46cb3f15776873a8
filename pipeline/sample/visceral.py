"""Miniature VISCERAL Anatomy benchmark in its real layout (lung transfer task of Med3D).

`Volumes/<patient>_<volume>_<modality>_<region>.nii.gz` for the four modalities CT (whole body, native),
CTce (thorax-abdomen, contrast), MRT1 (whole body) and MRT1cefs (abdomen, contrast, fat-suppressed), and
`Segmentations/<volume name>_<RadLexID>_<annotator>.nii.gz` binary masks on exactly the volume's grid: lungs are
1302 (right) and 1326 (left); 58 liver, 86 spleen and 480 aorta are there to be ignored. Quirks, fixed by name:
10000106_1_CTce_ThAb has no lung masks (unannotated: unknown, not empty), 10000104_1_CTce_ThAb has the right lung
from annotators 1 and 5 (slightly different masks), 10000021_1_CT_wb is padded with -2048 HU outside a circular
field of view, 10000131_1_MRT1_wb is stored RAS, patient 10000130 has two volumes (MRT1 and MRT1cefs), and
`_landmarks_` / `_lesions_` .fcsv files lie among the masks.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from .phantom import IDENTITY, RAS, Grid, T, add_metal, bias_field, case_rng, circular_fov, ct_image, mr_image, torso
from .phantom_files import place, record, update_manifest, write_nifti

#: RadLex id -> tissues that make up the structure's mask.
STRUCTURES: dict[int, tuple[int, ...]] = {1302: (T.LUNG_R,), 1326: (T.LUNG_L,),
                                          58: (T.LIVER, T.VESSEL, T.LIVER_TUMOUR), 86: (T.SPLEEN,),
                                          480: (T.AORTA,)}
LUNGS = (1302, 1326)

#: modality -> (region, anatomical t range, in-plane spacings mm, slice spacings mm, tiny shape (x, y, z)).
MODALITIES: dict[str, tuple[str, tuple[float, float], tuple[float, ...], tuple[float, ...], tuple[int, int, int]]] = {
    "CT": ("wb", (-1.45, 1.35), (0.793, 0.84, 0.977), (1.5, 2.0, 3.0), (40, 32, 48)),
    "CTce": ("ThAb", (-0.75, 0.95), (0.604, 0.703, 0.781, 0.82), (1.0, 1.25, 1.5, 2.0), (44, 36, 36)),
    "MRT1": ("wb", (-1.45, 1.35), (1.25, 1.302, 1.406), (5.0, 6.0, 5.5), (36, 28, 40)),
    "MRT1cefs": ("ab", (-0.75, 0.42), (1.172, 1.328, 1.484, 1.25), (3.0, 4.0, 6.0, 3.5), (40, 32, 24)),
}
_BENCH_SHAPE = {"CT": (256, 256, 192), "CTce": (256, 256, 160), "MRT1": (192, 160, 128), "MRT1cefs": (192, 160, 64)}

#: (volume name, {RadLex id: annotators}, fcsv files (kind, annotator), quirks)
VOLUMES: tuple[tuple[str, dict[int, tuple[int, ...]], tuple[tuple[str, int], ...], tuple[str, ...]], ...] = (
    ("10000020_1_CT_wb", {1302: (3,), 1326: (3,), 58: (3,), 86: (3,), 480: (3,)}, (("landmarks", 3),), ()),
    ("10000021_1_CT_wb", {1302: (2,), 1326: (2,)}, (), ("pad:-2048",)),
    ("10000022_1_CT_wb", {1302: (4,), 1326: (4,), 58: (4,)}, (), ()),
    ("10000100_1_CTce_ThAb", {1302: (3,), 1326: (3,), 58: (3,), 86: (3,), 480: (3,)}, (("landmarks", 3),), ()),
    ("10000104_1_CTce_ThAb", {1302: (1, 5), 1326: (1,)}, (), ("two_annotators:1302",)),
    ("10000105_1_CTce_ThAb", {1302: (2,), 1326: (2,), 480: (2,)}, (("lesions", 2),), ()),
    ("10000106_1_CTce_ThAb", {58: (3,), 86: (3,)}, (("lesions", 3),), ("lungs_unannotated",)),
    ("10000130_1_MRT1_wb", {1302: (3,), 1326: (3,), 58: (3,)}, (), ()),
    ("10000131_1_MRT1_wb", {1302: (1,), 1326: (1,)}, (), ("ras",)),
    ("10000132_1_MRT1_wb", {1302: (4,), 1326: (4,)}, (("landmarks", 4),), ()),
    ("10000130_1_MRT1cefs_ab", {1302: (3,), 1326: (3,), 86: (3,)}, (), ()),
    ("10000140_1_MRT1cefs_ab", {1302: (2,), 1326: (2,)}, (), ()),
    ("10000141_1_MRT1cefs_ab", {1302: (1,), 1326: (1,), 480: (1,)}, (), ()),
    ("10000142_1_MRT1cefs_ab", {1302: (5,), 1326: (5,)}, (("landmarks", 5),), ()),
)

_MR_LUT = {
    "MRT1": ({T.FAT: 1.0, T.SOFT: 0.35, T.BONE: 0.05, T.MARROW: 0.7, T.LUNG_R: 0.04, T.LUNG_L: 0.04,
              T.LIVER: 0.55, T.VESSEL: 0.25, T.LIVER_TUMOUR: 0.4, T.SPLEEN: 0.4, T.KIDNEY: 0.45, T.AORTA: 0.15,
              T.PANCREAS: 0.55, T.HEART: 0.3, T.BLOOD: 0.2, T.GAS: 0.02, T.CSF: 0.15, T.BRAIN: 0.6}, 1200.0),
    "MRT1cefs": ({T.FAT: 0.15, T.SOFT: 0.35, T.BONE: 0.05, T.MARROW: 0.2, T.LUNG_R: 0.03, T.LUNG_L: 0.03,
                  T.LIVER: 0.7, T.VESSEL: 0.95, T.LIVER_TUMOUR: 0.5, T.SPLEEN: 0.75, T.KIDNEY: 0.9, T.AORTA: 1.0,
                  T.PANCREAS: 0.65, T.HEART: 0.6, T.BLOOD: 0.95, T.GAS: 0.02, T.CSF: 0.2}, 900.0),
}


def _second_reader(mask: np.ndarray) -> np.ndarray:
    """Another annotator's outline: the mask eroded by one voxel in-plane (4-neighbourhood), never emptied."""
    m = mask.copy()
    m[:, 1:, :] &= mask[:, :-1, :]
    m[:, :-1, :] &= mask[:, 1:, :]
    m[:, :, 1:] &= mask[:, :, :-1]
    m[:, :, :-1] &= mask[:, :, 1:]
    return m if m.any() else mask


def _fcsv(name: str, kind: str, rng: np.random.Generator) -> str:
    """A small 3D Slicer markups file (landmarks or lesion centres, RAS mm)."""
    labels = ("Trachea bifurcation", "Aortic arch", "Xiphoid", "L1 vertebra") if kind == "landmarks" \
        else ("lesion 1", "lesion 2")
    rows = [f"vtkMRMLMarkupsFiducialNode_{i},{x:.3f},{y:.3f},{z:.3f},0,0,0,1,1,1,0,{lab},,"
            for i, (lab, (x, y, z)) in enumerate(zip(labels, rng.uniform(-150, 150, (len(labels), 3))))]
    return ("# Markups fiducial file version = 4.4\n# CoordinateSystem = 0\n"
            "# columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID\n"
            + "\n".join(rows) + f"\n# volume {name}\n")


def write_visceral_sample(out: Path, *, seed: int = 0, size: str = "tiny") -> list[Path]:
    """Write 14 VISCERAL Anatomy volumes (3 CT, 4 CTce, 3 MRT1, 4 MRT1cefs) with masks and .fcsv files.

    Tiny volumes are 24-48 voxels per axis; "bench" volumes 64-256. Returns the files written (SAMPLE.json last).
    """
    if size not in ("tiny", "bench"):
        raise ValueError(f"size must be 'tiny' or 'bench', got {size!r}")
    out = Path(out)
    written: list[Path] = []
    entries = []
    for index, (name, structures, fcsv, quirks) in enumerate(VOLUMES):
        patient, visit, modality, region = name.split("_")
        reg, t_range, inplane, slices, tiny = MODALITIES[modality]
        assert reg == region, name
        rng = case_rng(seed, 20, index, 1 if size == "bench" else 0)
        nx, ny, nz = _BENCH_SHAPE[modality] if size == "bench" else \
            tuple(int(v + rng.integers(-3, 4)) for v in tiny)
        grid = Grid((nz, ny, nx), t_range)
        canvas = torso(grid, rng, liver_tumour=index % 3 == 0)
        done = list(quirks)
        if modality.startswith("CT"):
            image = ct_image(canvas, rng, contrast=modality == "CTce")
            done.append(f"metal:{add_metal(image, rng, int(rng.integers(3, 7)))}")
            for q in quirks:
                if q.startswith("pad:"):
                    circular_fov(image, int(q[4:]))
        else:
            lut, scale = _MR_LUT[modality]
            image = np.round(mr_image(canvas, lut, rng, scale=scale, bias=bias_field(grid.shape, rng, 0.3)))
        count = sum(1 for n, *_ in VOLUMES[:index] if n.split("_")[2] == modality)
        spacing = (inplane[count % len(inplane)], inplane[count % len(inplane)], slices[count % len(slices)])
        masks, files = [], []
        for radlex, annotators in structures.items():
            mask = np.isin(canvas, STRUCTURES[radlex])
            if not mask.any():
                raise RuntimeError(f"{name}: structure {radlex} is empty (internal phantom error)")
            for k, annotator in enumerate(annotators):
                masks.append((_second_reader(mask) if k else mask).astype(np.uint8))
                files.append(f"{name}_{radlex}_{annotator}.nii.gz")
        center = tuple(float(v) for v in np.round(rng.uniform(-40, 40, 3), 2))
        stored = place([image, *masks], spacing, perm=RAS if "ras" in quirks else IDENTITY, center_mm=center)
        written.append(write_nifti(out / "Volumes" / f"{name}.nii.gz", stored, np.int16, channel=0))
        for k, file in enumerate(files):
            written.append(write_nifti(out / "Segmentations" / file, stored, np.uint8, channel=k + 1))
        for kind, annotator in fcsv:
            path = out / "Segmentations" / f"{name}_{kind}_{annotator}.fcsv"
            path.write_text(_fcsv(name, kind, rng))
            written.append(path)
        single = replace(stored, arrays=stored.arrays[:1])
        entries.append({"volume": name, "patient": patient, "modality": modality, "region": region,
                        "image": f"Volumes/{name}.nii.gz", **record(single, "int16", done),
                        "masks": {f[len(name) + 1: -len(".nii.gz")]: f"Segmentations/{f}" for f in files},
                        "lungs_annotated": all(r in structures for r in LUNGS),
                        "fcsv": [f"Segmentations/{name}_{k}_{a}.fcsv" for k, a in fcsv]})
    manifest = {"seed": seed, "size": size, "volumes": entries,
                "unannotated_lungs": [e["volume"] for e in entries if not e["lungs_annotated"]],
                "lung_radlex": {"right": 1302, "left": 1326}}
    written.append(update_manifest(out, "visceral", manifest))
    return written
