"""Reading, canonical orientation, target size and 4D channel splitting."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from volume import geometry

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


def _assert_same_images(ours: list[sitk.Image], ref: list[sitk.Image]) -> None:
    assert len(ours) == len(ref)
    for a, b in zip(ours, ref):
        assert a.GetPixelID() == b.GetPixelID() and a.GetSize() == b.GetSize()
        assert np.allclose(a.GetSpacing(), b.GetSpacing()) and np.allclose(a.GetOrigin(), b.GetOrigin())
        assert np.allclose(a.GetDirection(), b.GetDirection())
        assert np.array_equal(sitk.GetArrayViewFromImage(a), sitk.GetArrayViewFromImage(b))


def test_verified_nifti_read_equals_simpleitk(real_dir, tmp_path):
    """read_channels decompresses NIfTI itself (CRC-checked, NaN kept) and builds the images from ITK's header:
    voxels, pixel type and geometry must equal SimpleITK's own read, for uint8/float32/int16, 3D and 4D
    (BrainTumour, Prostate), RAS and oblique samples, and uncompressed LiTS files."""
    from pipeline.sample.lits import write_lits_sample
    from pipeline.sample.msd import write_msd_sample

    write_msd_sample(tmp_path / "msd", seed=0, tasks=["Task01_BrainTumour", "Task05_Prostate", "Task09_Spleen"])
    write_lits_sample(tmp_path / "lits", seed=0)
    files = sorted(real_dir.rglob("*.nii.gz")) + sorted((tmp_path / "msd").rglob("*Tr/*.nii.gz")) \
        + sorted((tmp_path / "lits").glob("volume-*.nii"))
    files = [p for p in files if not p.name.startswith("._")]  # macOS junk the sources never list
    assert len(files) > 20
    for path in files:
        _assert_same_images(geometry.read_channels(str(path)), geometry.read_channels_itk(path))
    assert any(len(geometry.read_channels(str(p))) == 4 for p in files)


def test_multi_member_gzip_and_scaled_nifti_read_like_simpleitk(real_dir, tmp_path):
    import gzip

    src = real_dir / "msd" / "Task04_Hippocampus" / "imagesTr" / "hippocampus_003.nii.gz"
    raw = gzip.decompress(src.read_bytes())
    multi = tmp_path / "multi.nii.gz"  # two gzip members, as pigz/bgzip write: legal, and its ISIZE is partial
    multi.write_bytes(gzip.compress(raw[:100_000]) + gzip.compress(raw[100_000:]))
    _assert_same_images(geometry.read_channels(str(multi)), geometry.read_channels_itk(src))
    img = sitk.GetImageFromArray(np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6))
    scaled = tmp_path / "scaled.nii.gz"
    sitk.WriteImage(img, str(scaled))
    data = bytearray(gzip.decompress(scaled.read_bytes()))
    data[112:120] = np.array([2.0, -1.0], "<f4").tobytes()  # scl_slope, scl_inter: ITK returns floats
    scaled.write_bytes(gzip.compress(bytes(data)))
    ours = geometry.read_channels(str(scaled))
    _assert_same_images(ours, geometry.read_channels_itk(scaled))
    assert sitk.GetArrayViewFromImage(ours[0])[0, 0, 1] == 2 * 1 - 1


def test_corrupt_gzip_that_simpleitk_reads_silently_is_refused(tmp_path):
    """Bytes flipped deep inside a larger .nii.gz: header and trailer are intact (the header checks pass, ITK
    reads the file), but the one decompression that feeds the build checks the CRC-32."""
    from volume import integrity

    rng = np.random.default_rng(0)
    path = write_nifti(tmp_path / "big.nii.gz", rng.integers(0, 200, (64, 96, 96)).astype(np.int16))
    data = bytearray(open(path, "rb").read())
    at = len(data) * 3 // 4
    data[at:at + 4] = bytes(b ^ 0x5A for b in data[at:at + 4])
    open(path, "wb").write(bytes(data))
    assert integrity.check_file(path) is not None  # header-time checks cannot see it
    with pytest.raises(integrity.IntegrityError, match=r"big.nii.gz: corrupt gzip stream after [\d,]+ uncompressed"):
        geometry.read_channels(path)
