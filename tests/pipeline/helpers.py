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


def ngff_extent(store: str, store_path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(image extent (z, y, x) mm, image translation, label extent, label translation) as an OME-Zarr reader
    computes them: validated by ome-zarr-models, array shape × the level's scale."""
    from ome_zarr_models import v05

    group = zarr.open_group(store, path=store_path, mode="r")
    image = v05.Image.from_zarr(group)
    (level,) = image.ome_attributes.multiscales[0].datasets
    scale, translation = (t for t in level.coordinateTransformations)
    shape = np.array(group[level.path].shape)
    extent = (shape * np.array(scale.scale))[1:], np.array(translation.translation)[1:]
    if image.labels is None:
        return (*extent, None, None)
    from catalog.ngff import LABEL_IMAGE
    from catalog.store_format import LABEL

    assert image.labels.label_paths == [LABEL]
    label = v05.ImageLabel.from_zarr(zarr.open_group(store, path=f"{store_path}/{LABEL_IMAGE}", mode="r"))
    (lvl,) = label.ome_attributes.multiscales[0].datasets
    lscale, ltrans = (t for t in lvl.coordinateTransformations)
    lshape = np.array(group[f"{LABEL_IMAGE}/{lvl.path}"].shape)
    return (*extent, lshape * np.array(lscale.scale), np.array(ltrans.translation))


def check_ngff_case(store: str, row) -> None:
    """The case validates and sits at its physical size: extent = shape × spacing, translation = origin."""
    from catalog.case_arrays import case_array
    from catalog.ngff import LABEL_IMAGE, LEVEL
    from catalog.store_format import LABEL, CaseAttrs

    attrs = CaseAttrs.read(store, row.store_path)
    extent, origin, lextent, lorigin = ngff_extent(store, row.store_path)
    expected = np.array(row.shape) * np.array(row.target_spacing)
    assert np.allclose(extent, expected) and np.allclose(origin, attrs.origin[::-1]), row.store_path
    assert (lextent is not None) == bool(row.has_label), row.store_path
    if row.has_label:
        assert np.allclose(lextent, expected) and np.allclose(lorigin, origin)
        linked = zarr.open_array(store, path=f"{row.store_path}/{LABEL_IMAGE}/{LEVEL}", mode="r")[...]
        assert np.array_equal(linked, case_array(store, row.store_path, LABEL).read_all())
