"""The full spatial + intensity augmentation of nnU-Net's recipe, as one resampling and a few elementwise ops.

:mod:`model.data.augment` rotates and translates; this module adds what nnU-Net's default training transforms
do besides (and what ``benchmarks/loader_peers.py`` gives all three loaders): scaling and mirroring, folded into
the same sampling matrix so that image and label are resampled once (one ``grid_sample`` each, however many
spatial transforms apply), then multiplicative brightness, contrast and gamma on the image.

Parameters are drawn once per batch as a pure function of ``(seed, step)`` (:func:`augment_params`, on the CPU,
from their own stream: the rigid augmentation's draws are not changed by it) and applied deterministically
(:func:`apply_augment`), on any device. Defaults (:class:`AugmentSpec`) are nnU-Net v2's for 3D: rotation
±30° about each axis with p 0.2, scaling in [0.7, 1.4] with p 0.2, mirroring of each axis with p 0.5, brightness
×[0.75, 1.25] with p 0.15, contrast ×[0.75, 1.25] with p 0.15 (range kept), gamma in [0.7, 1.5] with p 0.3
(mean and std kept). Scaling ``s > 1`` enlarges the content (the patch shows ``1/s`` of the extent).
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import torch

from .augment import apply_rigid, rigid_matrix

__all__ = ["AugmentParams", "AugmentSpec", "apply_augment", "apply_intensity", "augment_params"]

_DRAWS = 15  # uniform numbers per sample: the layout below; fixed, so a changed probability keeps the others


@dataclass(frozen=True)
class AugmentSpec:
    rotation_deg: float = 30.0
    p_rotation: float = 0.2
    scale: tuple[float, float] = (0.7, 1.4)
    p_scale: float = 0.2
    p_mirror: float = 0.5
    brightness: tuple[float, float] = (0.75, 1.25)
    p_brightness: float = 0.15
    contrast: tuple[float, float] = (0.75, 1.25)
    p_contrast: float = 0.15
    gamma: tuple[float, float] = (0.7, 1.5)
    p_gamma: float = 0.3

    def __post_init__(self) -> None:
        for name in ("p_rotation", "p_scale", "p_mirror", "p_brightness", "p_contrast", "p_gamma"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], got {getattr(self, name)}")
        for name in ("scale", "brightness", "contrast", "gamma"):
            lo, hi = getattr(self, name)
            if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo <= hi):
                raise ValueError(f"{name} must be a range 0 < low <= high, got {(lo, hi)}")
        if not (math.isfinite(self.rotation_deg) and 0 <= self.rotation_deg <= 180):
            raise ValueError(f"rotation_deg must be in [0, 180], got {self.rotation_deg}")


@dataclass(frozen=True)
class AugmentParams:
    """One batch's draws: ``theta`` (B, 3, 4) sampling matrices, and per sample ``brightness``, ``contrast``,
    ``gamma`` factors (1 where not applied), plus the raw draws for tests (``angles_deg`` (B, 3), ``scale`` (B,),
    ``mirror`` (B, 3) bool in (z, y, x))."""

    theta: torch.Tensor
    angles_deg: torch.Tensor
    scale: torch.Tensor
    mirror: torch.Tensor
    brightness: torch.Tensor
    contrast: torch.Tensor
    gamma: torch.Tensor


def _seed(seed: int, step: int) -> int:
    digest = hashlib.blake2b(f"med3d-augment:{int(seed)}:{int(step)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & (2**63 - 1)


def _ranged(u: torch.Tensor, applied: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    return torch.where(applied, lo + u * (hi - lo), torch.ones_like(u))


def augment_params(spec: AugmentSpec, seed: int, step: int, batch: int, *, shape: tuple[int, int, int],
                   spacing: tuple[float, float, float] | None = None) -> AugmentParams:
    """Draw one batch's augmentation (a pure function of its arguments). ``shape``: the patch (D, H, W); with
    ``spacing`` (z, y, x) mm the rotation is rigid in mm, as in :func:`model.data.augment.rigid_matrix`."""
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    u = torch.rand(batch, _DRAWS, generator=torch.Generator().manual_seed(_seed(seed, step)), dtype=torch.float64)
    rotate = u[:, 3] < spec.p_rotation
    angles = (2 * u[:, 0:3] - 1) * spec.rotation_deg * rotate[:, None]
    scale = _ranged(u[:, 4], u[:, 5] < spec.p_scale, *spec.scale)
    mirror = u[:, 6:9] < spec.p_mirror
    theta = rigid_matrix(angles, torch.zeros_like(angles), shape=shape, spacing=spacing).to(torch.float64)
    flip_xyz = torch.where(mirror.flip(-1), -1.0, 1.0).to(torch.float64)   # columns are (x, y, z)
    theta[:, :, :3] = theta[:, :, :3] * flip_xyz[:, None, :] / scale[:, None, None]
    theta[:, :, 3] = theta[:, :, 3] / scale[:, None]
    return AugmentParams(theta=theta.to(torch.float32), angles_deg=angles, scale=scale, mirror=mirror,
                         brightness=_ranged(u[:, 9], u[:, 10] < spec.p_brightness, *spec.brightness),
                         contrast=_ranged(u[:, 11], u[:, 12] < spec.p_contrast, *spec.contrast),
                         gamma=_ranged(u[:, 13], u[:, 14] < spec.p_gamma, *spec.gamma))


def _intensity_one(x: torch.Tensor, b: float, c: float, g: float) -> torch.Tensor:
    """One sample (C, D, H, W), float32: brightness, contrast, gamma as :func:`apply_intensity` says."""
    x = x * b if b != 1 else x
    if c != 1:
        mean, lo, hi = x.mean(), x.amin(), x.amax()
        x = ((x - mean) * c + mean).clamp(lo, hi)
    if g != 1:
        mean, std, lo, hi = x.mean(), x.std(), x.amin(), x.amax()
        span = (hi - lo).clamp_min(1e-7)
        out = ((x - lo) / span).clamp(0, 1).pow(g) * span + lo
        x = (out - out.mean()) / out.std().clamp_min(1e-7) * std + mean
    return x


def apply_intensity(image: torch.Tensor, params: AugmentParams, *, inplace: bool = False) -> torch.Tensor:
    """Brightness (multiply), contrast (scale about the sample's mean, clipped to its former range) and gamma
    (on the sample's range mapped to [0, 1], then its mean and std restored), per sample of (B, C, D, H, W).
    Only the samples with a transform drawn are touched (most are not: p 0.15, 0.15, 0.3). ``inplace`` writes
    them into ``image`` and returns it (see :func:`apply_augment`)."""
    factors = torch.stack([params.brightness, params.contrast, params.gamma], dim=1).tolist()
    if all(f == [1.0, 1.0, 1.0] for f in factors):
        return image
    out = image if inplace else image.clone()
    for i, (b, c, g) in enumerate(factors):
        if (b, c, g) != (1.0, 1.0, 1.0):
            out[i] = _intensity_one(image[i].to(torch.float32), b, c, g).to(image.dtype)
    return out


def _flip_only(theta: torch.Tensor) -> torch.Tensor:
    """(B,) True where a sample's matrix is a pure mirroring (diagonal of ±1, no offset): a flip does it exactly,
    without resampling."""
    a, t = theta[:, :, :3], theta[:, :, 3]
    diag = torch.diagonal(a, dim1=-2, dim2=-1)
    return (a - torch.diag_embed(diag)).abs().amax((1, 2)).eq(0) & diag.abs().eq(1).all(1) & t.abs().amax(1).eq(0)


def apply_augment(image: torch.Tensor, label: torch.Tensor, params: AugmentParams, *,
                  pad_image: float = 0.0, inplace: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Resample image and label once with ``params.theta``, then the intensity transforms. Shapes and dtypes as
    :func:`model.data.augment.apply_rigid`. Only the samples with a rotation or scaling are resampled (36 % with
    the defaults); a sample that is only mirrored is flipped (the same values: sampling at voxel centres),
    one with nothing drawn is left as it is.

    ``inplace`` writes the result into ``image`` and ``label`` and returns them, the same values. In a
    DataLoader worker the stream's batch tensors live in shared memory (``model.data.patches``): augmented in
    place they reach the main process without being copied; new tensors would be copied into shared memory
    first (50 MB a batch of two 128³ patches with int64 labels; 2 workers 17.0 -> 23.4 patches/s,
    benchmarks/loader_peers.py)."""
    flip = _flip_only(params.theta)
    if not inplace:
        image, label = image.clone(), label.clone()
    for i in torch.nonzero(flip).flatten().tolist():
        axes = [k for k in range(3) if bool(params.mirror[i, k])]
        if axes:
            image[i] = image[i].flip([1 + k for k in axes])
            label[i] = label[i].flip(axes)
    warp = torch.nonzero(~flip).flatten()
    if len(warp):
        image[warp], label[warp] = apply_rigid(image[warp], label[warp], params.theta[warp], pad_image=pad_image)
    return apply_intensity(image, params, inplace=True), label
