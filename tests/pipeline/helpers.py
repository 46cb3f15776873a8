"""Test helpers for building stores from real or synthetic files."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import zarr

from volume.geometry import index_to_physical


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


# Catalog columns that follow from the voxels and the build parameters, not from file names or provenance.
STAT_COLUMNS = ["n_channels", "modality", "orig_shape", "orig_spacing", "target_spacing", "shape", "p005", "p995",
                "mean", "std", "air_clamped_fraction", "has_label", "label_values", "label_voxels",
                "foreground_voxels", "foreground_mm3", "status"]


def assert_same_stores(store_a: str, domain_a: str, store_b: str, domain_b: str, *, splits: bool = True) -> None:
    """Two stores hold the same volumes: every case of ``domain_a`` in ``store_a`` has a case of the same id in
    ``domain_b`` of ``store_b`` with equal image, label and foreground arrays, equal geometry attrs and equal
    catalog statistics (and splits, unless ``splits`` is False); the target spacings are equal. The stored
    foreground sample is drawn with a seed from the case's store path, so it is compared only within one domain
    name."""
    from catalog import load_catalog, load_domains

    cat_a = load_catalog(store_a).query("domain == @domain_a").set_index("case_id").sort_index()
    cat_b = load_catalog(store_b).query("domain == @domain_b").set_index("case_id").sort_index()
    assert list(cat_a.index) == list(cat_b.index)
    columns = STAT_COLUMNS + (["split"] if splits else [])
    for case in cat_a.index:
        for col in columns:
            a, b = cat_a.loc[case, col], cat_b.loc[case, col]
            assert np.array_equal(np.asarray(a), np.asarray(b)), (case, col, a, b)
        if cat_a.loc[case, "status"] != "ok":
            continue
        ga = zarr.open_group(store_a, path=f"{domain_a}/{case}", mode="r")
        gb = zarr.open_group(store_b, path=f"{domain_b}/{case}", mode="r")
        assert sorted(ga.array_keys()) == sorted(gb.array_keys())
        for name in ga.array_keys():
            if name == "foreground" and domain_a != domain_b:
                continue
            np.testing.assert_array_equal(ga[name][...], gb[name][...], err_msg=f"{case}/{name}")
        for key in ("spacing", "origin", "direction"):
            np.testing.assert_allclose(ga.attrs[key], gb.attrs[key], atol=1e-5, err_msg=f"{case} {key}")
    doms_a = load_domains(store_a).set_index("domain").loc[domain_a]
    doms_b = load_domains(store_b).set_index("domain").loc[domain_b]
    for col in ("target_spacing", "num_classes", "labels", "n_channels", "modality", "n_volumes"):
        assert np.array_equal(np.asarray(doms_a[col]), np.asarray(doms_b[col])), (col, doms_a[col], doms_b[col])
