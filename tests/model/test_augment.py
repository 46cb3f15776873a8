"""Rigid augmentation: exact results for identity, 90° rotations and voxel shifts; determinism of the draw;
physical (mm) rotation of non-cubic patches; label volume preservation; bf16 and CUDA."""
from __future__ import annotations

import math

import pytest
import torch

from model.data.augment import apply_rigid, random_rigid, rigid_matrix, rigid_params, rigid_seed


def _batch(shape: tuple[int, int, int] = (12, 12, 12), b: int = 2, classes: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    label = torch.randint(0, classes, (b, *shape), generator=g)
    image = torch.randn(b, 2, *shape, generator=g) + label[:, None].float()
    return image, label


def _ball(shape: tuple[int, int, int], radius_mm: float, spacing=(1.0, 1.0, 1.0), centre_mm=(0.0, 0.0, 0.0)):
    """(1, D, H, W) int64 label of a ball of ``radius_mm`` around ``centre_mm`` (relative to the patch centre)."""
    axes = [(torch.arange(n, dtype=torch.float64) - (n - 1) / 2) * s - c
            for n, s, c in zip(shape, spacing, centre_mm)]
    zz, yy, xx = torch.meshgrid(*axes, indexing="ij")
    return ((zz**2 + yy**2 + xx**2) <= radius_mm**2).long()[None]


def _rot(angles_zyx, b: int = 1, **kw) -> torch.Tensor:
    return rigid_matrix(torch.tensor([angles_zyx] * b, dtype=torch.float64), torch.zeros(b, 3), **kw)


def test_identity_returns_input():
    image, label = _batch()
    for theta in (rigid_params(3, 4, 2, max_rotation_deg=0, max_translation=0),
                  rigid_params(3, 4, 2, max_rotation_deg=30, max_translation=0.2, p=0.0)):
        assert torch.equal(theta, torch.eye(3, 4).expand(2, 3, 4))
        out, lab = apply_rigid(image, label, theta)
        torch.testing.assert_close(out, image, atol=1e-5, rtol=0)
        assert torch.equal(lab, label) and lab.dtype == torch.int64


@pytest.mark.parametrize("angles, k, dims", [([90.0, 0, 0], 1, (3, 2)), ([0, 90.0, 0], 1, (1, 3)),
                                             ([0, 0, 90.0], 1, (2, 1)), ([-90.0, 0, 0], 1, (2, 3)),
                                             ([180.0, 0, 0], 2, (2, 3))])
def test_right_angle_rotation_of_a_cube_is_rot90(angles, k, dims):
    # Right-handed about z (D axis): x -> y, i.e. torch.rot90 from W towards H.
    image, label = _batch((10, 10, 10))
    out, lab = apply_rigid(image, label, _rot(angles, b=2))
    assert torch.equal(lab, torch.rot90(label, k, dims))
    expected = torch.rot90(image, k, tuple(d + 1 for d in dims))
    torch.testing.assert_close(out[..., 1:-1, 1:-1, 1:-1], expected[..., 1:-1, 1:-1, 1:-1], atol=1e-4, rtol=0)


@pytest.mark.parametrize("axis, k", [(0, 3), (1, -2), (2, 5)])
def test_translation_by_voxels_is_a_zero_filled_shift(axis, k):
    shape = (8, 10, 12)
    image, label = _batch(shape)
    t = torch.zeros(2, 3)
    t[:, axis] = k / shape[axis]
    out, lab = apply_rigid(image, label, rigid_matrix(torch.zeros(2, 3), t, shape=shape), pad_image=-5.0)
    shifted = torch.roll(label, k, dims=axis + 1)
    idx = [slice(None)] * 4
    idx[axis + 1] = slice(0, k) if k > 0 else slice(k, None)
    shifted[tuple(idx)] = 0
    assert torch.equal(lab, shifted)
    img_shift = torch.roll(image, k, dims=axis + 2)
    img_idx = [slice(None)] * 5
    img_idx[axis + 2] = idx[axis + 1]
    img_shift[tuple(img_idx)] = -5.0
    torch.testing.assert_close(out, img_shift, atol=1e-4, rtol=0)


def test_rotation_of_a_non_cubic_patch_is_rigid_in_voxels():
    # (16, 32, 32) at 1 mm: voxel centres sit at half-integer mm on every axis, so a 90° turn about x maps
    # centres onto centres; the output's central 16 rows in y are the input turned, the rest lies outside.
    shape = (16, 32, 32)
    image, label = _batch(shape, b=1)
    out, lab = apply_rigid(image, label, _rot([0, 0, 90.0], shape=shape))
    assert torch.equal(lab[:, :, 8:24, :], torch.rot90(label[:, :, 8:24, :], 1, (2, 1)))
    assert (lab[:, :, :8] == 0).all() and (lab[:, :, 24:] == 0).all()
    torch.testing.assert_close(out[:, :, 1:-1, 9:23, 1:-1],
                               torch.rot90(image[:, :, :, 8:24, :], 1, (3, 2))[:, :, 1:-1, 1:-1, 1:-1],
                               atol=1e-4, rtol=0)


def test_rotation_with_anisotropic_spacing_is_rigid_in_mm():
    # A box of 8 mm (z) x 16 mm (y) x 6 mm (x) on 2 x 1 x 1 mm voxels, turned 90° about x, becomes 16 x 8 x 6 mm.
    shape, spacing = (16, 24, 24), (2.0, 1.0, 1.0)
    label = torch.zeros(1, *shape, dtype=torch.long)
    label[:, 6:10, 4:20, 9:15] = 1                     # z 8 mm, y 16 mm, x 6 mm, centred
    image = label[:, None].float()
    _, lab = apply_rigid(image, label, _rot([0, 0, 90.0], shape=shape, spacing=spacing))
    nz = lab[0].nonzero()
    extent_mm = [(int(nz[:, i].max() - nz[:, i].min()) + 1) * s for i, s in enumerate(spacing)]
    assert extent_mm[2] == 6.0
    assert abs(extent_mm[0] - 16.0) <= 2.0 and abs(extent_mm[1] - 8.0) <= 1.0
    # Rotating in normalized coordinates instead (no shape) shears the box: 20 x 6 x 6 mm.
    _, naive = apply_rigid(image, label, _rot([0, 0, 90.0]))
    nz = naive[0].nonzero()
    assert [(int(nz[:, i].max() - nz[:, i].min()) + 1) * s for i, s in enumerate(spacing)] == [20.0, 6.0, 6.0]


def test_labels_stay_in_the_input_set():
    image, label = _batch((14, 14, 14), b=3, classes=5)
    label[label == 3] = 7                                  # classes {0, 1, 2, 4, 7}
    theta = rigid_params(11, 2, 3, max_rotation_deg=(30, 20, 40), max_translation=0.15)
    _, lab = apply_rigid(image, label, theta)
    assert set(lab.unique().tolist()) <= {0, 1, 2, 4, 7}
    assert lab.dtype == label.dtype


def test_params_are_a_pure_function_of_seed_and_step():
    kw = dict(max_rotation_deg=(10.0, 20.0, 30.0), max_translation=(0.1, 0.0, 0.2))
    a = rigid_params(5, 17, 4, **kw)
    torch.manual_seed(123)                                 # the global RNG plays no part
    assert torch.equal(a, rigid_params(5, 17, 4, **kw))
    assert not torch.allclose(a, rigid_params(5, 18, 4, **kw))
    assert not torch.allclose(a, rigid_params(6, 17, 4, **kw))
    assert rigid_seed(5, 17) == rigid_seed(5, 17) != rigid_seed(5, 18)
    assert a.shape == (4, 3, 4) and a.dtype == torch.float32
    # Rotation part orthonormal (cube), zero y-translation, translations within ±2·max in normalized units.
    r = a[:, :, :3].double()
    torch.testing.assert_close(r @ r.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(4, 3, 3),
                               atol=1e-6, rtol=0)
    assert not torch.allclose(a[:, :, 3], torch.zeros(4, 3))
    # The drawn angles stay within their bounds: recover them from R^T = Rz Ry Rx (theta holds R^T).
    rt = r.transpose(1, 2)
    ang_y = torch.rad2deg(torch.asin(-rt[:, 2, 0]))
    ang_z = torch.rad2deg(torch.atan2(rt[:, 1, 0], rt[:, 0, 0]))
    ang_x = torch.rad2deg(torch.atan2(rt[:, 2, 1], rt[:, 2, 2]))
    assert ang_z.abs().max() <= 10 + 1e-4 and ang_y.abs().max() <= 20 + 1e-4 and ang_x.abs().max() <= 30 + 1e-4
    assert ang_x.abs().max() > 1.0


def test_probability_p_leaves_some_samples_identity():
    theta = rigid_params(0, 0, 200, max_rotation_deg=20, max_translation=0.1, p=0.5)
    identity = (theta == torch.eye(3, 4)).flatten(1).all(dim=1)
    assert 60 < int(identity.sum()) < 140
    full = rigid_params(0, 0, 200, max_rotation_deg=20, max_translation=0.1, p=1.0)
    torch.testing.assert_close(theta[~identity], full[~identity])     # the same draws, only switched off


def test_label_volume_preserved_under_random_rotation():
    shape, spacing = (24, 40, 40), (1.6, 1.0, 1.0)
    label = _ball(shape, 11.0, spacing).expand(2, *shape).clone()
    label[1] = _ball(shape, 9.0, spacing, centre_mm=(1.0, -2.0, 3.0))[0] * 2
    image = label[:, None].float()
    before = [int((label[i] > 0).sum()) for i in range(2)]
    for step in range(3):
        _, lab = random_rigid(image, label, 1, step, max_rotation_deg=45, max_translation=0.05, spacing=spacing)
        for i in range(2):
            after = int((lab[i] > 0).sum())
            assert abs(after - before[i]) / before[i] < 0.03, (step, i, before[i], after)
        assert set(lab[1].unique().tolist()) == {0, 2}


def test_bf16_image_on_cpu():
    image, label = _batch((10, 10, 10))
    theta = _rot([90.0, 0, 0], b=2)
    out, lab = apply_rigid(image.bfloat16(), label, theta)
    ref, ref_lab = apply_rigid(image, label, theta)
    assert out.dtype == torch.bfloat16 and torch.equal(lab, ref_lab)
    torch.testing.assert_close(out.float(), ref, atol=0.05, rtol=0.02)


def test_pad_value_and_errors():
    image, label = _batch((8, 8, 8), b=1)
    t = torch.tensor([[0.0, 0.0, 0.5]])
    out, lab = apply_rigid(image, label, rigid_matrix(torch.zeros(1, 3), t, shape=(8, 8, 8)), pad_image=-3.0)
    assert torch.all(out[..., :4] == -3.0) and torch.all(lab[..., :4] == 0)
    with pytest.raises(ValueError, match="label"):
        apply_rigid(image, label[:, :4], rigid_matrix(torch.zeros(1, 3), t))
    with pytest.raises(ValueError, match="theta"):
        apply_rigid(image, label, torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="max_rotation_deg"):
        rigid_params(0, 0, 1, max_rotation_deg=(1.0, 2.0), max_translation=0.0)
    with pytest.raises(ValueError, match="p must"):
        rigid_params(0, 0, 1, max_rotation_deg=1.0, max_translation=0.0, p=1.5)
    assert math.isclose(float(rigid_matrix(torch.zeros(1, 3), t)[0, 0, 3]), -1.0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    image, label = _batch((16, 20, 24), b=2)
    theta = rigid_params(2, 9, 2, max_rotation_deg=25, max_translation=0.1, shape=(16, 20, 24),
                         spacing=(2.0, 1.0, 0.8))
    ref, ref_lab = apply_rigid(image, label, theta)
    out, lab = apply_rigid(image.cuda().bfloat16(), label.cuda(), theta)
    assert out.device.type == "cuda" and out.dtype == torch.bfloat16 and lab.device.type == "cuda"
    torch.testing.assert_close(out.float().cpu(), ref, atol=0.06, rtol=0.02)
    # Nearest sampling can flip a voxel whose sample point lies within rounding of a boundary.
    assert (lab.cpu() != ref_lab).float().mean() < 1e-3
    out32, _ = apply_rigid(image.cuda(), label.cuda(), theta)
    torch.testing.assert_close(out32.cpu(), ref, atol=1e-4, rtol=0)
