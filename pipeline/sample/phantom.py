"""Pure helpers for synthetic raw volumes: organ masks and CT/MR intensities (orientation and files:
:mod:`pipeline.sample.phantom_files`).

A phantom is built on a canonical grid whose array axes are (z, y, x) with x towards the patient's left,
y towards posterior and z towards superior (LPS, the frame ITK reports). In-plane positions are normalized
to [-1, 1] across the field of view; along z the grid covers an anatomical coordinate t (t = 0 near the
liver dome, lungs at t 0.15 to 0.95, kidneys near -0.3, pelvis below -0.55, head above 1.0). Structures are
painted as tissue ids into a uint8 canvas (later paints win), so labels derived from the canvas are disjoint
and images are a look-up of the canvas: this keeps even 512 x 512 x 120 volumes to well under a second.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import IntEnum
from typing import Iterable, Mapping, Sequence

import numpy as np

Region = tuple[tuple[slice, slice, slice], np.ndarray]
IDENTITY = (1, 0, 0, 0, 1, 0, 0, 0, 1)
RAS = (-1, 0, 0, 0, -1, 0, 0, 0, 1)  # ITK direction of a volume stored in RAS index order
SAGITTAL = (0, 0, 1, 1, 0, 0, 0, -1, 0)  # i -> posterior, j -> inferior, k -> left


class T(IntEnum):
    """Tissue ids painted into a phantom canvas."""

    AIR = 0
    FAT = 1
    SOFT = 2
    BONE = 3
    MARROW = 4
    LUNG_R = 5
    LUNG_L = 6
    LIVER = 7
    SPLEEN = 8
    KIDNEY = 9
    AORTA = 10
    PANCREAS = 11
    LIVER_TUMOUR = 12
    PANCREAS_TUMOUR = 13
    VESSEL = 14
    HEART = 15
    BLOOD = 16
    ATRIUM = 17
    GAS = 18
    CSF = 19
    BRAIN = 20
    GM = 21
    WM = 22
    EDEMA = 23
    NECROSIS = 24
    ENHANCING = 25
    HIPPO_ANT = 26
    HIPPO_POST = 27
    BLADDER = 28
    PZ = 29
    TZ = 30


#: CT attenuation per tissue in HU: (native, portal-venous contrast).
CT_HU: dict[T, tuple[int, int]] = {
    T.AIR: (-1000, -1000), T.FAT: (-100, -100), T.SOFT: (50, 60), T.BONE: (1000, 1000),
    T.MARROW: (450, 460), T.LUNG_R: (-850, -850), T.LUNG_L: (-850, -850), T.LIVER: (60, 110),
    T.SPLEEN: (50, 120), T.KIDNEY: (35, 170), T.AORTA: (45, 230), T.PANCREAS: (40, 100),
    T.LIVER_TUMOUR: (30, 55), T.PANCREAS_TUMOUR: (35, 60), T.VESSEL: (50, 190), T.HEART: (45, 200),
    T.BLOOD: (45, 200), T.ATRIUM: (45, 200), T.GAS: (-900, -900), T.CSF: (10, 10), T.BRAIN: (35, 40),
}


@dataclass(frozen=True)
class Grid:
    """Canonical phantom grid. shape is (z, y, x) in voxels; t_range the anatomical span of the z axis."""

    shape: tuple[int, int, int]
    t_range: tuple[float, float] = (-1.0, 1.0)

    def _lohi(self, axis: int) -> tuple[float, float]:
        return self.t_range if axis == 0 else (-1.0, 1.0)

    def coords(self, axis: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Normalized coordinates of voxel centres along array axis (0 z/t, 1 y, 2 x), float32."""
        lo, hi = self._lohi(axis)
        n = self.shape[axis]
        k = np.arange(start, n if stop is None else stop, dtype=np.float32)
        return (lo + (hi - lo) * (k + 0.5) / n).astype(np.float32)

    def span(self, axis: int, lo: float, hi: float) -> slice:
        """Index slice of voxels whose centres may lie in the coordinate interval [lo, hi]."""
        a, b = self._lohi(axis)
        n = self.shape[axis]
        i0 = math.floor((lo - a) / (b - a) * n - 0.5)
        i1 = math.ceil((hi - a) / (b - a) * n - 0.5) + 1
        return slice(min(max(i0, 0), n), min(max(i1, 0), n))

    def box(self, center: Sequence[float], half: Sequence[float]) -> tuple[tuple[slice, ...], list]:
        """Slices (z, y, x) of a box given centre and half-widths in (x, y, t) order, with open local grids."""
        sl = tuple(self.span(a, center[2 - a] - half[2 - a], center[2 - a] + half[2 - a]) for a in range(3))
        local = [self.coords(a, s.start, s.stop).reshape([-1 if i == a else 1 for i in range(3)])
                 for a, s in enumerate(sl)]
        return sl, local  # local[a] is the z, y or x coordinate grid


def ellipsoid(grid: Grid, center: Sequence[float], radii: Sequence[float], *, wobble: float = 0.0,
              rng: np.random.Generator | None = None) -> Region:
    """Smooth blob: an ellipsoid (centre, radii in (x, y, t) normalized units) with a low-order wavy surface."""
    center, radii = [float(v) for v in center], [float(v) for v in radii]  # python floats keep float32 math
    sl, (gz, gy, gx) = grid.box(center, [r * (1 + wobble) for r in radii])
    dx, dy, dz = (gx - center[0]) / radii[0], (gy - center[1]) / radii[1], (gz - center[2]) / radii[2]
    rho2 = dx * dx + dy * dy + dz * dz
    if wobble > 0.0 and rng is not None:
        rho = np.sqrt(rho2) + 1e-6
        amp = np.zeros_like(rho2)
        for _ in range(3):
            k = rng.normal(size=3) * 2.5
            amp = amp + np.cos((k[0] * dx + k[1] * dy + k[2] * dz) / rho + rng.uniform(0, 2 * np.pi)) / 3
        return sl, rho2 < (1.0 + wobble * amp) ** 2
    return sl, rho2 < 1.0


def prism(grid: Grid, center_xy: Sequence[float], radii_xy: Sequence[float], t_span: Sequence[float]) -> Region:
    """Elliptic cylinder along z (spine, aorta, vessels of the limbs) between t_span[0] and t_span[1]."""
    tc, th = (t_span[0] + t_span[1]) / 2, (t_span[1] - t_span[0]) / 2
    sl, (gz, gy, gx) = grid.box((*center_xy, tc), (*radii_xy, th))
    inside = ((gx - center_xy[0]) / radii_xy[0]) ** 2 + ((gy - center_xy[1]) / radii_xy[1]) ** 2 < 1.0
    return sl, inside & (gz >= t_span[0]) & (gz <= t_span[1])


def tube(grid: Grid, p0: Sequence[float], p1: Sequence[float], radius: float) -> Region:
    """Cylinder of given radius around the segment p0-p1 (points in (x, y, t) normalized units)."""
    radius = float(radius)
    p0, p1 = np.asarray(p0, np.float32), np.asarray(p1, np.float32)
    sl, (gz, gy, gx) = grid.box((p0 + p1) / 2, np.abs(p1 - p0) / 2 + radius)
    d = p1 - p0
    rel = (gx - p0[0], gy - p0[1], gz - p0[2])
    s = np.clip((rel[0] * d[0] + rel[1] * d[1] + rel[2] * d[2]) / max(float(d @ d), 1e-9), 0.0, 1.0)
    dist2 = sum((rel[i] - s * d[i]) ** 2 for i in range(3))
    return sl, dist2 < radius * radius


def paint(canvas: np.ndarray, region: Region, tissue: int, where: Iterable[int] | None = None) -> None:
    """Set region voxels of the canvas to tissue, optionally only where the canvas holds one of `where`."""
    sl, mask = region
    sub = canvas[sl]
    if sub.size == 0:
        return
    mask = np.broadcast_to(mask, sub.shape)
    if where is not None:
        mask = mask & np.isin(sub, list(where))
    sub[mask] = tissue


def jitter(rng: np.random.Generator, center: Sequence[float], radii: Sequence[float],
           shift: float = 0.03, scale: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Per-case anatomical variation: shifted centre and scaled radii."""
    return (np.asarray(center) + rng.uniform(-shift, shift, 3),
            np.asarray(radii) * rng.uniform(1 - scale, 1 + scale, 3))


def body_section(t: float) -> tuple[tuple[float, float, float, float], ...]:
    """Body outline at anatomical height t: ellipses (cx, cy, rx, ry): head, trunk, or the two thighs."""
    if t > 1.02:
        return ((0.0, 0.0, 0.3, 0.36),)
    if t < -0.97:
        return ((-0.36, 0.0, 0.26, 0.3), (0.36, 0.0, 0.26, 0.3))
    return ((0.0, 0.05, 0.8, 0.6),)


def torso(grid: Grid, rng: np.random.Generator, *, liver_tumour: bool = False,
          pancreas_tumour: bool = False, vessels: bool = True) -> np.ndarray:
    """Paint a head-to-thigh human phantom on the grid; returns the (z, y, x) uint8 tissue canvas.

    Only what falls inside the grid's t_range appears. Tumours are painted strictly inside their organ.
    """
    canvas = np.zeros(grid.shape, np.uint8)
    gy, gx = grid.coords(1)[:, None], grid.coords(2)[None, :]
    size = rng.uniform(0.93, 1.05)
    cache: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
    for z, t in enumerate(grid.coords(0)):
        key = body_section(float(t))
        if key not in cache:
            outer = np.zeros(gy.shape[:1] + gx.shape[1:], bool)
            inner = outer.copy()
            for cx, cy, rx, ry in key:
                e = ((gx - cx) / (rx * size)) ** 2 + ((gy - cy) / (ry * size)) ** 2
                outer |= e < 1.0
                inner |= e < 0.86 ** 2
            cache[key] = (outer, inner)
        outer, inner = cache[key]
        canvas[z][outer] = T.FAT
        canvas[z][inner] = T.SOFT
    head = ellipsoid(grid, (0, 0, 1.3), (0.28 * size, 0.34 * size, 0.3))
    paint(canvas, head, T.BONE, where=[T.SOFT])
    paint(canvas, ellipsoid(grid, (0, 0, 1.3), (0.25 * size, 0.31 * size, 0.27)), T.BRAIN)
    for side in (-1, 1):
        paint(canvas, prism(grid, (0.36 * side, 0.0), (0.07, 0.07), (-9, -0.97)), T.BONE)
        paint(canvas, prism(grid, (0.36 * side, 0.0), (0.045, 0.045), (-9, -0.97)), T.MARROW)
        paint(canvas, prism(grid, (0.5 * side, 0.12), (0.12, 0.22), (-0.95, -0.6)), T.BONE, where=[T.SOFT])
    rib_t = grid.coords(0)
    ring_y, ring_x = grid.coords(1)[:, None] - 0.05, grid.coords(2)[None, :]
    e = (ring_x / (0.8 * size)) ** 2 + (ring_y / (0.6 * size)) ** 2
    rib2d = (e > 0.74 ** 2) & (e < 0.81 ** 2) & (np.cos(9 * np.arctan2(ring_y, ring_x)) > 0.2)
    for z in np.flatnonzero((rib_t > 0.0) & (rib_t < 0.95) & (np.cos(rib_t * 45) > -0.2)):
        canvas[z][rib2d & (canvas[z] == T.SOFT)] = T.BONE
    for side, tissue in ((-1, T.LUNG_R), (1, T.LUNG_L)):
        c, r = jitter(rng, (0.36 * side, 0.02, 0.58), (0.26, 0.38, 0.42))
        paint(canvas, ellipsoid(grid, c, r, wobble=0.05, rng=rng), tissue, where=[T.SOFT])
    c, r = jitter(rng, (0.1, -0.12, 0.42), (0.24, 0.22, 0.2))
    paint(canvas, ellipsoid(grid, c, r), T.HEART, where=[T.SOFT, T.LUNG_L, T.LUNG_R])
    paint(canvas, ellipsoid(grid, c + (0, -0.04, 0), r * 0.6), T.BLOOD, where=[T.HEART])
    liver_c, liver_r = jitter(rng, (-0.3, -0.02, 0.05), (0.36, 0.34, 0.3))
    paint(canvas, ellipsoid(grid, liver_c, liver_r, wobble=0.08, rng=rng), T.LIVER,
          where=[T.SOFT, T.LUNG_R, T.HEART])
    c, r = jitter(rng, (0.44, 0.2, 0.08), (0.14, 0.17, 0.15))
    paint(canvas, ellipsoid(grid, c, r, wobble=0.06, rng=rng), T.SPLEEN, where=[T.SOFT, T.LUNG_L])
    c, r = jitter(rng, (0.22, -0.25, 0.12), (0.12, 0.09, 0.08))
    paint(canvas, ellipsoid(grid, c, r), T.GAS, where=[T.SOFT])
    for side in (-1, 1):
        c, r = jitter(rng, (0.3 * side, 0.3, -0.3), (0.1, 0.13, 0.16))
        paint(canvas, ellipsoid(grid, c, r), T.KIDNEY, where=[T.SOFT])
    panc_c, panc_r = jitter(rng, (0.08, 0.06, -0.1), (0.32, 0.07, 0.09))
    paint(canvas, ellipsoid(grid, panc_c, panc_r, wobble=0.05, rng=rng), T.PANCREAS, where=[T.SOFT])
    paint(canvas, prism(grid, (0.06, 0.22), (0.05, 0.05), (-0.6, 0.75)), T.AORTA)
    paint(canvas, prism(grid, (0.0, 0.38), (0.1, 0.09), (-0.97, 1.02)), T.BONE)
    paint(canvas, prism(grid, (0.0, 0.38), (0.075, 0.065), (-0.97, 1.02)), T.MARROW)
    paint(canvas, prism(grid, (0.0, 0.52), (0.035, 0.035), (-0.97, 1.1)), T.CSF)
    voxel = 2.0 / min(grid.shape[1:])
    if vessels:
        hilum = liver_c + (0.3 * liver_r[0], 0.1 * liver_r[1], -0.15 * liver_r[2])
        for _ in range(4):
            end = liver_c + rng.uniform(-0.6, 0.6, 3) * liver_r
            paint(canvas, tube(grid, hilum, end, max(0.035, 1.1 * voxel)), T.VESSEL, where=[T.LIVER])
    for wanted, organ, (oc, orad), tissue in ((liver_tumour, T.LIVER, (liver_c, liver_r), T.LIVER_TUMOUR),
                                              (pancreas_tumour, T.PANCREAS, (panc_c, panc_r),
                                               T.PANCREAS_TUMOUR)):
        if wanted:
            for _ in range(20):  # redraw until the lesion really lies inside its organ on this grid
                c = oc + rng.uniform(-0.35, 0.35, 3) * orad * (1, 0.3, 0.5)
                rad = max(rng.uniform(0.25, 0.4) * float(orad.min()), 1.5 * voxel)
                region = ellipsoid(grid, c, (rad, rad, rad * 1.2))
                sub = canvas[region[0]]
                if np.count_nonzero(region[1] & (sub == organ)) >= 6:
                    paint(canvas, region, tissue, where=[organ])
                    break
    return canvas


#: Standard deviation (HU) of the realistic scanner noise per tissue at dose factor 1 (``ct_image(realistic=True)``):
#: about 20 HU in soft tissue and organs, as an abdominal CT at routine dose; more in fat, lung, bone and in the
#: air around the body, as in real scans (photon-starved paths, streaks). Tissues not listed get SOFT's.
CT_NOISE_SD: dict[T, float] = {T.AIR: 35.0, T.FAT: 25.0, T.LUNG_R: 30.0, T.LUNG_L: 30.0, T.GAS: 30.0,
                               T.BONE: 30.0, T.MARROW: 25.0, T.SOFT: 20.0}


def ct_image(canvas: np.ndarray, rng: np.random.Generator, *, contrast: bool = True,
             noise_hu: int = 13, realistic: bool = False) -> np.ndarray:
    """CT in HU (int16): tissue look-up, per-case offsets, smooth shading and scanner noise, clamped >= -1024.

    The default noise is cheap and mild (sd ``noise_hu`` in steps of 2 HU), enough for the miniature samples.
    ``realistic=True`` (the full-size bench cases) draws white Gaussian noise whose sd depends on the tissue
    (:data:`CT_NOISE_SD`, scaled by a per-case dose factor 0.8-1.15: soft tissue 16-23 HU, air up to 40 HU), so
    that the stored chunks compress like a real scan's, not like a smooth phantom's.
    """
    lut = np.zeros(256, np.int16)
    for tissue, hu in CT_HU.items():
        lut[tissue] = hu[1 if contrast else 0] + (0 if tissue in (T.AIR,) else int(rng.integers(-6, 7)))
    lut[T.BONE] += int(rng.integers(-150, 150))
    hu = lut[canvas]
    for axis, n in enumerate(canvas.shape):
        shade = np.round(6 * np.cos(np.linspace(0, rng.uniform(2, 6), n) + rng.uniform(0, 6.3))).astype(np.int16)
        hu += shade.reshape([-1 if i == axis else 1 for i in range(3)])
    if realistic:
        sd = np.full(256, CT_NOISE_SD[T.SOFT], np.float32)
        for tissue, value in CT_NOISE_SD.items():
            sd[tissue] = value
        sd *= np.float32(rng.uniform(0.8, 1.15))
        for z in range(canvas.shape[0]):  # slice by slice: no full-volume float32 temporaries
            noise = rng.standard_normal(canvas.shape[1:], dtype=np.float32) * sd[canvas[z]]
            hu[z] += np.rint(noise).astype(np.int16)
    else:
        raw = np.frombuffer(rng.bytes(canvas.size), np.uint8).reshape(canvas.shape)
        step = max(1, round(noise_hu / 6.5))  # sum of two uniform nibbles: sd 6.5, close to Gaussian
        noise = ((raw >> 4).astype(np.int16) + (raw & 15) - 15) * np.int16(step)
        hu += noise
    np.maximum(hu, -1024, out=hu)
    return hu


def add_metal(hu: np.ndarray, rng: np.random.Generator, n: int = 6) -> int:
    """Place a short line of n metal voxels (about 3000 HU, a surgical clip) inside the body; returns n."""
    nz, ny, nx = hu.shape
    z = int(rng.integers(nz // 4, max(nz // 4 + 1, 3 * nz // 4)))
    y = int(ny / 2 + rng.uniform(-0.2, 0.2) * ny / 2)
    x = int(nx / 2 + rng.uniform(-0.35, 0.35) * nx / 2)
    n = min(n, nx - x)
    hu[z, y, x:x + n] = rng.integers(2800, 3100, n).astype(np.int16)
    return n


def circular_fov(image: np.ndarray, pad_value: float) -> np.ndarray:
    """Fill voxels outside the in-plane inscribed circle (the scanner's reconstruction FOV) with pad_value."""
    ny, nx = image.shape[-2:]
    y = ((np.arange(ny) + 0.5) * 2 / ny - 1)[:, None]
    x = ((np.arange(nx) + 0.5) * 2 / nx - 1)[None, :]
    image[..., (x * x + y * y) > 1.0] = pad_value
    return image


def bias_field(shape: Sequence[int], rng: np.random.Generator, strength: float = 0.2) -> np.ndarray:
    """Smooth multiplicative MR bias field (z, y, x), float32, about 1 +- strength."""
    g = [np.linspace(-1, 1, n, dtype=np.float32).reshape([-1 if i == a else 1 for i in range(3)])
         for a, n in enumerate(shape)]
    a = rng.uniform(-1, 1, 6).astype(np.float32) * strength
    return np.exp(a[0] * g[0] + a[1] * g[1] + a[2] * g[2] + a[3] * g[1] * g[2] + a[4] * g[2] ** 2
                  + a[5] * g[1] ** 2).astype(np.float32)


def mr_image(canvas: np.ndarray, lut: Mapping[int, float], rng: np.random.Generator, *, scale: float,
             default: float = 0.3, noise: float = 0.02, bias: np.ndarray | None = None) -> np.ndarray:
    """MR magnitude image in arbitrary positive units (float32): tissue look-up x scale x bias, Rician-like noise."""
    table = np.full(256, default, np.float32)
    table[T.AIR] = 0.0
    for tissue, value in lut.items():
        table[tissue] = value
    table *= rng.uniform(0.92, 1.08, 256).astype(np.float32)
    img = table[canvas]
    if bias is not None:
        img *= bias
    img += rng.standard_normal(canvas.shape, dtype=np.float32) * noise
    return np.abs(img) * np.float32(scale)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Rescale a non-negative image to 0..255 (as some MSD MR files are stored)."""
    top = float(np.percentile(image, 99.9)) or 1.0
    return np.clip(np.round(image * (230.0 / top)), 0, 255).astype(np.uint8)


def case_rng(seed: int, *keys: int) -> np.random.Generator:
    """Independent deterministic stream per (seed, source, case...): subsets of a sample write the same bytes."""
    return np.random.default_rng([seed, *keys])
