"""Rigid (rotation + translation) augmentation of a batch of 3D patches, on the device, with tensor ops.

Two steps, as TorchIO does: parameters are drawn once, as a pure function of ``(seed, step)``
(:func:`rigid_params`), then applied deterministically to image and label (:func:`apply_rigid`), so a resumed run
augments exactly as the uninterrupted one would have, on any device.

Conventions (all tuples are in the project's (z, y, x) order, i.e. array axes (D, H, W)):

- **Forward transform.** A content point at physical position ``q`` (mm, relative to the patch centre) moves to
  ``R q + t``. ``R = Rz @ Ry @ Rx`` rotates by the angles about the z, y and x axes, right-handed in the
  (x, y, z) = (W, H, D) frame. A positive translation moves the content towards higher indices.
- **Translations** are fractions of the patch extent along each axis (0.1 = a tenth of the patch), so they need
  neither the patch shape nor the spacing: a translation of ``k`` voxels along an axis of ``N`` voxels is ``k / N``.
- **Anisotropy.** ``F.affine_grid`` works in normalized coordinates, in which every axis spans [-1, 1] whatever its
  length in voxels or mm. A rotation applied there to a non-cubic patch (or anisotropic voxels) is a rotation
  composed with a shear and scaling. We therefore rotate in physical space and convert: with
  ``S = diag(N_k s_k / 2)`` (half the patch extent in mm, per axis), the sampling matrix is
  ``theta = S^-1 R^T S`` and offset ``-S^-1 R^T t``. Pass ``shape`` (and ``spacing`` in mm, default isotropic) to
  :func:`rigid_params` / :func:`rigid_matrix`; without ``shape`` the patch is taken as a cube of isotropic voxels.
  :func:`random_rigid` takes the shape from the image.
- ``theta`` is what ``F.affine_grid(theta, size, align_corners=False)`` expects: it maps an output location to the
  input location sampled there (normalized (x, y, z) order).

>>> theta = rigid_params(seed=0, step=12, batch=2, max_rotation_deg=15.0, max_translation=0.1,
...                      shape=(64, 128, 128), spacing=(2.5, 0.8, 0.8))
>>> image, label = apply_rigid(image, label, theta)          # image (2, 1, 64, 128, 128), label (2, 64, 128, 128)
"""
from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["apply_rigid", "random_rigid", "rigid_matrix", "rigid_params", "rigid_seed"]

Triple = tuple[float, float, float]


def _triple(value: float | Sequence[float], name: str) -> Triple:
    """``value`` as a (z, y, x) triple of non-negative floats (a scalar applies to all three axes)."""
    vals = (float(value),) * 3 if isinstance(value, (int, float)) else tuple(float(v) for v in value)
    if len(vals) != 3 or not all(math.isfinite(v) and v >= 0 for v in vals):
        raise ValueError(f"{name} must be a number or a (z, y, x) triple of finite numbers >= 0, got {value!r}")
    return vals  # type: ignore[return-value]


def rigid_seed(seed: int, step: int) -> int:
    """The 63-bit seed of the CPU generator for ``(seed, step)``: the same on every machine and process."""
    digest = hashlib.blake2b(f"med3d-rigid:{int(seed)}:{int(step)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & (2**63 - 1)


def _rotation_xyz(angles_deg: torch.Tensor) -> torch.Tensor:
    """(B, 3) angles about z, y, x in degrees -> (B, 3, 3) rotation matrices in the (x, y, z) frame."""
    a = torch.deg2rad(angles_deg.to(torch.float64))
    cz, cy, cx = torch.cos(a).unbind(-1)
    sz, sy, sx = torch.sin(a).unbind(-1)
    one, zero = torch.ones_like(cz), torch.zeros_like(cz)

    def mat(*rows: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return torch.stack([torch.stack(r, dim=-1) for r in rows], dim=-2)

    rx = mat((one, zero, zero), (zero, cx, -sx), (zero, sx, cx))
    ry = mat((cy, zero, sy), (zero, one, zero), (-sy, zero, cy))
    rz = mat((cz, -sz, zero), (sz, cz, zero), (zero, zero, one))
    return rz @ ry @ rx


def rigid_matrix(angles_deg: torch.Tensor, translation: torch.Tensor, *,
                 shape: Sequence[int] | None = None, spacing: Sequence[float] | None = None) -> torch.Tensor:
    """Sampling matrices for given rotations and translations: (B, 3, 4) float32 on the CPU, for ``F.affine_grid``.

    Args:
        angles_deg: (B, 3) rotation angles in degrees about the z, y, x axes (see the module docstring).
        translation: (B, 3) translations (z, y, x) as fractions of the patch extent (``k / N`` = ``k`` voxels).
        shape: patch size (D, H, W) in voxels; ``None``: a cube (normalized coordinates are physical ones).
        spacing: voxel spacing (z, y, x) in mm, used with ``shape`` so the rotation is rigid in mm; default 1 mm.
    """
    angles_deg, translation = torch.as_tensor(angles_deg), torch.as_tensor(translation)
    if angles_deg.dim() != 2 or angles_deg.shape[-1] != 3 or translation.shape != angles_deg.shape:
        raise ValueError(f"angles_deg and translation must both be (B, 3), got {tuple(angles_deg.shape)} and "
                         f"{tuple(translation.shape)}")
    if shape is None:
        if spacing is not None:
            raise ValueError("spacing needs the patch shape: pass shape=(D, H, W) as well")
        extent_zyx = torch.full((3,), 2.0, dtype=torch.float64)
    else:
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"shape must be (D, H, W) voxels >= 1, got {tuple(shape)}")
        sp = (1.0, 1.0, 1.0) if spacing is None else tuple(float(s) for s in spacing)
        if len(sp) != 3 or not all(math.isfinite(s) and s > 0 for s in sp):
            raise ValueError(f"spacing must be (z, y, x) mm > 0, got {spacing!r}")
        extent_zyx = torch.tensor([n * s for n, s in zip(shape, sp)], dtype=torch.float64)
    half_xyz = extent_zyx.flip(0) / 2                                    # S, the normalized -> mm scale
    t_xyz = translation.to(torch.float64).flip(-1) * extent_zyx.flip(0)  # mm
    r_inv = _rotation_xyz(angles_deg).transpose(-1, -2)                  # R^T = R^-1
    a = r_inv * half_xyz[None, None, :] / half_xyz[None, :, None]        # S^-1 R^T S
    b = -(r_inv @ t_xyz[..., None])[..., 0] / half_xyz                   # -S^-1 R^T t
    return torch.cat([a, b[..., None]], dim=-1).to(torch.float32)


def rigid_params(seed: int, step: int, batch: int, *, max_rotation_deg: float | Sequence[float],
                 max_translation: float | Sequence[float], p: float = 1.0, shape: Sequence[int] | None = None,
                 spacing: Sequence[float] | None = None) -> torch.Tensor:
    """Random rigid transforms for one batch: (B, 3, 4) float32 CPU sampling matrices (``F.affine_grid`` input).

    A pure function of ``(seed, step)`` (and the other arguments): drawn from
    ``torch.Generator().manual_seed(rigid_seed(seed, step))`` on the CPU, whatever device they are applied on.
    Per sample: angles about z, y, x uniform in ``±max_rotation_deg`` (degrees), translations uniform in
    ``±max_translation`` (fractions of the patch extent, (z, y, x)); with probability ``1 - p`` the identity.
    Every sample draws the same number of values whatever ``p``, so changing ``p`` keeps the other draws.

    Args:
        shape, spacing: patch size (D, H, W) and voxel spacing (z, y, x) mm, so rotations are rigid in mm on
            non-cubic patches; without ``shape`` the patch is taken as a cube of isotropic voxels.
    """
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be a probability in [0, 1], got {p}")
    max_rot = torch.tensor(_triple(max_rotation_deg, "max_rotation_deg"), dtype=torch.float64)
    max_tr = torch.tensor(_triple(max_translation, "max_translation"), dtype=torch.float64)
    gen = torch.Generator().manual_seed(rigid_seed(seed, step))
    u = torch.rand(batch, 7, generator=gen, dtype=torch.float64)
    angles = (2 * u[:, 0:3] - 1) * max_rot
    translation = (2 * u[:, 3:6] - 1) * max_tr
    applied = (u[:, 6] < p)[:, None]
    angles, translation = angles * applied, translation * applied
    return rigid_matrix(angles, translation, shape=shape, spacing=spacing)


def apply_rigid(image: torch.Tensor, label: torch.Tensor, theta: torch.Tensor, *,
                pad_image: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Resample image (trilinear) and label (nearest) with the sampling matrices ``theta``, on their device.

    Args:
        image: (B, C, D, H, W) floating point (float32, float64, bfloat16, float16).
        label: (B, D, H, W) integer labels (int64, uint8...).
        theta: (B, 3, 4) from :func:`rigid_params` / :func:`rigid_matrix`; moved to the image's device.
        pad_image: image value outside the input patch (e.g. the normalized intensity of air); labels get 0.

    Returns ``(image, label)`` with the input shapes, dtypes and device. The grid and the interpolation are
    computed in float32 (float64 for a float64 image) and cast back: a bf16 grid has ~3 significant digits,
    a quarter voxel of error across a 128-voxel patch. Identity matrices give the input back (the image to
    rounding, the label exactly).
    """
    if image.dim() != 5 or not image.is_floating_point():
        raise ValueError(f"image must be a floating (B, C, D, H, W) tensor, got {image.dtype} {tuple(image.shape)}")
    if label.dim() != 4 or label.is_floating_point():
        raise ValueError(f"label must be an integer (B, D, H, W) tensor, got {label.dtype} {tuple(label.shape)}")
    b, _, d, h, w = image.shape
    if label.shape != (b, d, h, w):
        raise ValueError(f"label {tuple(label.shape)} does not match image {tuple(image.shape)} (B, D, H, W)")
    if theta.shape != (b, 3, 4):
        raise ValueError(f"theta must be ({b}, 3, 4) for a batch of {b}, got {tuple(theta.shape)}")
    work = torch.float64 if image.dtype == torch.float64 else torch.float32
    grid = F.affine_grid(theta.to(device=image.device, dtype=work), [b, 1, d, h, w], align_corners=False)
    img = image.to(work)
    if pad_image:
        # Zero padding of (image - pad) then + pad is padding with ``pad``, also for border voxels that mix both.
        img = img - pad_image
    out = F.grid_sample(img, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if pad_image:
        out = out + pad_image
    lab = F.grid_sample(label[:, None].to(work), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return out.to(image.dtype), lab[:, 0].round().to(label.dtype)


def random_rigid(image: torch.Tensor, label: torch.Tensor, seed: int, step: int, *,
                 max_rotation_deg: float | Sequence[float], max_translation: float | Sequence[float],
                 p: float = 1.0, spacing: Sequence[float] | None = None,
                 pad_image: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`rigid_params` for this batch's shape (rotations rigid in mm given ``spacing`` (z, y, x)), then
    :func:`apply_rigid`. Shapes as in :func:`apply_rigid`."""
    theta = rigid_params(seed, step, image.shape[0], max_rotation_deg=max_rotation_deg,
                         max_translation=max_translation, p=p, shape=tuple(image.shape[2:]), spacing=spacing)
    return apply_rigid(image, label, theta, pad_image=pad_image)
