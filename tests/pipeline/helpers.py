"""Test helpers for building stores from real or synthetic files."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import zarr

from pipeline.geometry import index_to_physical


def source_label_stats(path: str, value: int) -> tuple[float, np.ndarray]:
    """Volume (mm³) and physical centroid (LPS mm) of one label value in a source file."""
    img = sitk.ReadImage(str(path))
    arr = sitk.GetArrayViewFromImage(img)
    idx = np.argwhere(arr == value)
    spacing_zyx = img.GetSpacing()[::-1]
    pts = index_to_physical(idx, img.GetOrigin(), img.GetDirection(), spacing_zyx)
    return len(idx) * float(np.prod(spacing_zyx)), pts.mean(axis=0)


def stored_label_stats(store: str, store_path: str, value: int) -> tuple[float, np.ndarray]:
    grp = zarr.open_group(store, path=store_path, mode="r")
    lab = grp["label"][...]
    idx = np.argwhere(lab == value)
    a = grp.attrs
    pts = index_to_physical(idx, a["origin"], a["direction"], a["spacing"])
    return len(idx) * float(np.prod(a["spacing"])), pts.mean(axis=0)


def write_nifti(path, arr_zyx: np.ndarray, spacing_xyz=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0),
                direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)) -> str:
    img = sitk.GetImageFromArray(arr_zyx)
    img.SetSpacing(tuple(float(s) for s in spacing_xyz))
    img.SetOrigin(tuple(float(o) for o in origin))
    img.SetDirection(tuple(float(d) for d in direction))
    sitk.WriteImage(img, str(path))
    return str(path)
