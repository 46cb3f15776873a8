"""Miniature LiTS (Liver Tumor Segmentation challenge) in its real flat layout.

`volume-N.nii` (int16 HU) + `segmentation-N.nii` (uint8: 0 background, 1 liver, 2 tumour) for N = 0..k and
`test-volume-N.nii`, all uncompressed. `volume-N` holds exactly the voxels of the MSD sample's
`Task03_Liver/liver_N` (the same scan, as in the real data) and `test-volume-0` those of `liver_132`.
Volume 2 mimics LiTS volumes 28-47 (from 3D-IRCADb): its header has an identity direction, 1 x 1 x 1 mm spacing
and zero origin although the scan is anisotropic; the true geometry is recorded in SAMPLE.json under "lits".
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from .msd import stored_case
from .phantom import IDENTITY
from .phantom_files import label_values, record, update_manifest, write_nifti

#: LiTS volumes whose header spacing is unusable (identity affine, unit spacing).
NO_SPACING = (2,)


def write_lits_sample(out: Path, *, seed: int = 0, size: str = "tiny") -> list[Path]:
    """Write a LiTS-layout sample into the flat folder `out`; return the files written (SAMPLE.json last).

    size "tiny": volume-0..4 (each axis 16-48 voxels) and test-volume-0..1; size "bench": volume-0..3 and
    test-volume-0..1 at 512 x 512 x 120. Deterministic in `seed` and voxel-identical to the MSD liver sample.
    """
    if size not in ("tiny", "bench"):
        raise ValueError(f"size must be 'tiny' or 'bench', got {size!r}")
    out = Path(out)
    n_train = 4 if size == "bench" else 5
    written: list[Path] = []
    volumes, tests, true_geometry = [], [], {}
    for index in [*range(n_train), -1, -2]:
        data, stored = stored_case("Task03_Liver", seed, index, size)
        image = replace(stored, arrays=stored.arrays[:1])
        quirks = list(data.quirks)
        if index in NO_SPACING:
            true_geometry[f"volume-{index}"] = {"spacing": list(image.spacing), "direction": list(image.direction),
                                                "origin": list(image.origin)}
            image = replace(image, spacing=(1.0, 1.0, 1.0), direction=tuple(float(v) for v in IDENTITY),
                            origin=(0.0, 0.0, 0.0))
            quirks.append("no_spacing")
        if index >= 0:
            name, same = f"volume-{index}", f"Task03_Liver/liver_{index}"
        else:
            name, same = f"test-volume-{-index - 1}", ("Task03_Liver/liver_132" if index == -1 else None)
        written.append(write_nifti(out / f"{name}.nii", image, np.int16))
        entry = {"case": name, "image": f"{name}.nii", "same_scan_as": same, **record(image, "int16", quirks)}
        if index >= 0:
            seg = f"segmentation-{index}.nii"
            written.append(write_nifti(out / seg, replace(image, arrays=stored.arrays[-1:]), np.uint8))
            entry.update(label=seg, label_dtype="uint8",
                         label_values=label_values(stored.arrays[-1]))
            volumes.append(entry)
        else:
            tests.append(entry)
    manifest = {"seed": seed, "size": size, "volumes": volumes, "test": tests,
                "no_spacing": [f"volume-{i}" for i in NO_SPACING],
                "true_spacing": {k: v["spacing"] for k, v in true_geometry.items()},
                "true_geometry": true_geometry}
    written.append(update_manifest(out, "lits", manifest))
    return written
