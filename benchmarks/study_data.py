"""The real stores of the label-efficiency study (benchmarks/study.py), built from ``../shared/data/real``.

- ``hippo``: the 200 MSD hippocampus MR cases (``msd_full/Task04_Hippocampus``, build-msd), the study's target.
- ``la``: the 80 left-atrium LGE-MRI volumes (``nnunet/Dataset101_LeftAtrium``, build-nnunet), a pretraining
  domain; read from ``../shared`` only (its redistribution terms are not stated).
- ``ct``: the abdominal CT with its four organ masks (``ct/``), composed into one label map (liver 1, spleen 2,
  left kidney 3, left upper lung lobe 4) in an nnU-Net v2 folder under the work folder, then build-nnunet: a
  second pretraining domain (CT) with no hippocampus in it.

Each build is resumable (a re-run converts only what is missing) and prints its own progress.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "data" / "real"
BIN = Path(sys.executable).parent

CT_ORGANS = ("liver", "spleen", "kidney_left", "lung_upper_lobe_left")


def ct_nnunet(work: Path) -> Path:
    """The real CT and its organ masks as an nnU-Net v2 raw dataset (one case) under ``work``; returns it."""
    import numpy as np
    import SimpleITK as sitk

    ds = work / "raw" / "Dataset102_AbdomenCT"
    label_file = ds / "labelsTr" / "ct_sm.nii.gz"
    if label_file.is_file():
        return ds
    (ds / "imagesTr").mkdir(parents=True, exist_ok=True)
    (ds / "labelsTr").mkdir(parents=True, exist_ok=True)
    image = sitk.ReadImage(str(REAL / "ct" / "example_ct_sm.nii.gz"))
    composed = None
    for value, organ in enumerate(CT_ORGANS, start=1):
        mask = sitk.GetArrayFromImage(sitk.ReadImage(str(REAL / "ct" / f"example_ct_sm_{organ}.nii.gz"))) > 0
        composed = np.zeros(mask.shape, np.uint8) if composed is None else composed
        composed[mask & (composed == 0)] = value
    label = sitk.GetImageFromArray(composed)
    label.CopyInformation(image)
    sitk.WriteImage(image, str(ds / "imagesTr" / "ct_sm_0000.nii.gz"))
    sitk.WriteImage(label, str(label_file))
    labels = {"background": 0, **{organ: v for v, organ in enumerate(CT_ORGANS, start=1)}}
    (ds / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": labels,
                                                 "numTraining": 1, "file_ending": ".nii.gz"}, indent=2))
    return ds


def run(cmd: list[str]) -> None:
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def build_stores(work: Path, workers: int = 2) -> dict[str, Path]:
    """Build (or finish building) the three stores under ``work``; returns their paths by name."""
    work.mkdir(parents=True, exist_ok=True)
    stores = {"hippo": work / "hippo_store", "la": work / "la_store", "ct": work / "ct_store"}
    common = ["--workers", str(workers), "--no-progress"]
    run([str(BIN / "med3d-prep"), "build-msd", str(REAL / "msd_full" / "Task04_Hippocampus"), str(stores["hippo"]),
         *common])
    run([str(BIN / "med3d-prep"), "build-nnunet", str(REAL / "nnunet" / "Dataset101_LeftAtrium"),
         str(stores["la"]), "--domain", "left_atrium", *common])
    run([str(BIN / "med3d-prep"), "build-nnunet", str(ct_nnunet(work)), str(stores["ct"]), "--domain", "abdomen_ct",
         *common])
    return stores


if __name__ == "__main__":
    build_stores(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "data" / "study")
