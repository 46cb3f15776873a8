"""Reading, canonical orientation, target size and 4D channel splitting."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from pipeline import geometry

from helpers import write_nifti


def test_canonical_permutation_and_spacing_of_a_permuted_volume(tmp_path):
    # file axes: i runs along S (z), j along L (x), k along P (y)
    direction = (0, 1, 0, 0, 0, 1, 1, 0, 0)
    path = write_nifti(tmp_path / "p.nii.gz", np.zeros((4, 5, 6), np.int16), spacing_xyz=(3.0, 0.5, 0.7),
                       direction=direction)
    hdr = geometry.read_header(path)
    assert geometry.canonical_permutation(hdr.direction) == (2, 0, 1)
    assert hdr.canonical_spacing_zyx() == pytest.approx((3.0, 0.7, 0.5))
    img = geometry.reorient(sitk.ReadImage(path))
    assert img.GetSpacing() == pytest.approx((0.5, 0.7, 3.0))
    assert np.allclose(img.GetDirection(), np.eye(3).ravel())


def test_oblique_volume_keeps_residual_rotation(tmp_path):
    a = np.deg2rad(15)
    rot = (np.cos(a), -np.sin(a), 0, np.sin(a), np.cos(a), 0, 0, 0, 1)
    path = write_nifti(tmp_path / "o.nii.gz", np.zeros((4, 5, 6), np.int16), spacing_xyz=(1, 2, 3), direction=rot)
    hdr = geometry.read_header(path)
    assert hdr.canonical_spacing_zyx() == (3.0, 2.0, 1.0)
    img = geometry.reorient(sitk.ReadImage(path))
    assert np.allclose(img.GetDirection(), rot, atol=1e-6)


def test_4d_scalar_nifti_is_split_into_channels(tmp_path):
    chans = [sitk.GetImageFromArray(np.full((3, 4, 5), c, np.float32)) for c in range(4)]
    for ch in chans:
        ch.SetSpacing((0.9, 0.8, 2.5))
    img4 = sitk.JoinSeries(chans)
    path = str(tmp_path / "four.nii.gz")
    sitk.WriteImage(img4, path)
    hdr = geometry.read_header(path)
    assert hdr.n_channels == 4 and hdr.size == (5, 4, 3) and hdr.spacing == pytest.approx((0.9, 0.8, 2.5))
    out = geometry.read_channels(path)
    assert len(out) == 4 and all(o.GetDimension() == 3 for o in out)
    assert [float(sitk.GetArrayViewFromImage(o).mean()) for o in out] == [0, 1, 2, 3]
    assert geometry.reorient(out[2]).GetSpacing() == pytest.approx((0.9, 0.8, 2.5))


def test_target_size_and_resample_extent():
    assert geometry.target_size((512, 512, 100), (0.7, 0.7, 2.5), (0.8, 0.8, 1.0)) == (448, 448, 250)
    img = sitk.GetImageFromArray(np.arange(60, dtype=np.float32).reshape(3, 4, 5))
    img.SetSpacing((2.0, 2.0, 2.0))
    out = geometry.resample(img, (1.0, 1.0, 1.0), "linear")
    assert out.GetSize() == (10, 8, 6) and out.GetOrigin() == img.GetOrigin()


def test_missing_and_unreadable_files_name_the_file(tmp_path):
    with pytest.raises(ValueError, match="nope.nii.gz: file not found"):
        geometry.read_header(str(tmp_path / "nope.nii.gz"))
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="bad.nii.gz: cannot read"):
        geometry.read_channels(str(bad))


def test_median_spacing():
    assert geometry.median_spacing([(5, 0.7, 0.7), (1, 0.8, 0.8), (2.5, 0.6, 0.6)]) == (2.5, 0.7, 0.7)
    with pytest.raises(ValueError):
        geometry.median_spacing([])


def test_upsampling_keeps_source_values_at_the_far_edge():
    # 5 mm slices to 1.5 mm: the last new slice centre (148.5 mm) lies beyond the source's last half slice
    # (147.5 mm); it must take the edge value, not a 0 HU (water) slab.
    img = sitk.GetImageFromArray(np.full((30, 8, 8), -800, np.int16))
    img.SetSpacing((1.0, 1.0, 5.0))
    res = sitk.GetArrayFromImage(geometry.resample(img, (1.0, 1.0, 1.5), "linear", pixel_type=sitk.sitkFloat32))
    assert res.shape == (100, 8, 8)
    assert np.all(res == -800)
    lab = sitk.GetImageFromArray(np.ones((30, 8, 8), np.uint8))
    lab.SetSpacing((1.0, 1.0, 5.0))
    assert np.all(sitk.GetArrayFromImage(geometry.resample(lab, (1.0, 1.0, 1.5), "nearest")) == 1)


@pytest.mark.parametrize("new_spacing", [(0.7, 0.9, 1.3), (2.0, 2.0, 0.6), (1.0, 1.0, 3.0)])
def test_slab_resampling_equals_whole_volume_resampling(new_spacing):
    rng = np.random.default_rng(0)
    img = sitk.GetImageFromArray(rng.normal(0, 100, (23, 31, 29)).astype(np.float32))
    img.SetSpacing((1.1, 0.9, 2.5))
    img.SetOrigin((-10.0, 4.0, 30.0))
    a = np.deg2rad(12)
    img.SetDirection((np.cos(a), -np.sin(a), 0, np.sin(a), np.cos(a), 0, 0, 0, 1))
    whole = sitk.GetArrayFromImage(geometry.resample(img, new_spacing, "linear", pixel_type=sitk.sitkFloat32))
    parts = list(geometry.resample_slabs(img, new_spacing, "linear", slab_bytes=4 * 31 * 29 * 3))
    assert len(parts) > 2 and parts[0][0] == 0 and parts[-1][1] == whole.shape[0]
    stacked = np.concatenate([sitk.GetArrayFromImage(p[2]) for p in parts])
    assert stacked.shape == whole.shape
    assert np.allclose(stacked, whole, atol=1e-4, rtol=0)
