"""Intensity statistics and normalization: percentile clip + z-score per channel, CT air clamp and windowing.

Statistics come from the source voxels (before resampling, which smooths the tails); they are applied after
resampling. All functions are pure numpy.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Integer volumes whose value range is at most this wide get exact statistics from one histogram pass
# (np.bincount) instead of sorting: a 512×512×120 CT takes ~0.1 s instead of ~1 s, and the result is identical
# to np.percentile's default (linear) method.
_MAX_HIST_RANGE = 1 << 20


@dataclass(frozen=True)
class ChannelStats:
    """Statistics of one channel, in source units (HU for CT)."""

    p_lo: float
    p_hi: float
    mean: float
    """mean of the clipped volume"""
    std: float
    """standard deviation of the clipped volume"""
    air_clamped_fraction: float = 0.0
    """share of voxels below the air threshold that were clamped (CT only)"""


def clamp_air(arr: np.ndarray, air: float) -> float:
    """In place: values below ``air`` (CT padding outside the field of view) become ``air``.
    Returns the clamped fraction."""
    below = arr < air
    n = int(np.count_nonzero(below))
    if n:
        arr[below] = air
    return n / arr.size if arr.size else 0.0


def channel_stats(arr: np.ndarray, percentiles: tuple[float, float], window: tuple[float, float] | None = None,
                  air_clamped_fraction: float = 0.0) -> ChannelStats:
    """Percentiles (``window`` replaces them when given), then mean and std of the volume clipped to them."""
    if arr.size == 0:
        raise ValueError("empty volume")
    if np.issubdtype(arr.dtype, np.integer):
        lo_v, hi_v = int(arr.min()), int(arr.max())
        if hi_v - lo_v < _MAX_HIST_RANGE:
            return _stats_from_histogram(arr, lo_v, hi_v, percentiles, window, air_clamped_fraction)
    flat = arr.reshape(-1)
    if not np.isfinite(flat).all():
        raise ValueError("volume contains NaN or infinite values")
    if window is None:
        p_lo, p_hi = (float(v) for v in np.percentile(flat, percentiles))
    else:
        p_lo, p_hi = window
    clipped = np.clip(flat, p_lo, p_hi, dtype=np.float64)
    return ChannelStats(p_lo, p_hi, float(clipped.mean()), float(clipped.std()), air_clamped_fraction)


# Work on slabs of this many voxels: full-volume temporaries (a 31 M-voxel CT as int64 is 250 MB) cost more in
# page faults than the arithmetic itself.
_SLAB = 1 << 20


def _histogram(arr: np.ndarray, lo_v: int, n_bins: int) -> np.ndarray:
    counts = np.zeros(n_bins, np.int64)
    flat = arr.reshape(-1)
    # int32 holds every value of 8/16-bit data; wider integers (uint32, int64) need int64 before the offset
    work = np.int32 if arr.dtype.itemsize <= 2 else np.int64
    for i in range(0, flat.size, _SLAB):
        part = flat[i:i + _SLAB].astype(work)
        if lo_v:
            part -= lo_v
        counts += np.bincount(part, minlength=n_bins)
    return counts


def _stats_from_histogram(arr, lo_v, hi_v, percentiles, window, air_frac) -> ChannelStats:
    counts = _histogram(arr, lo_v, hi_v - lo_v + 1)
    values = np.arange(lo_v, hi_v + 1, dtype=np.float64)
    n = arr.size
    if window is None:
        cum = np.cumsum(counts)
        p_lo, p_hi = (_order_stat(cum, values, n, q) for q in percentiles)
    else:
        p_lo, p_hi = window
    clipped = np.clip(values, p_lo, p_hi)
    mean = float((counts * clipped).sum() / n)
    var = float((counts * (clipped - mean) ** 2).sum() / n)
    return ChannelStats(float(p_lo), float(p_hi), mean, float(np.sqrt(var)), air_frac)


def _order_stat(cum: np.ndarray, values: np.ndarray, n: int, q: float) -> float:
    """np.percentile's linear method from a cumulative histogram: rank q/100·(n-1), interpolated."""
    rank = q / 100.0 * (n - 1)
    k = int(np.floor(rank))
    frac = rank - k
    v_k = values[np.searchsorted(cum, k + 1)]
    v_k1 = values[np.searchsorted(cum, min(k + 2, n))]
    return float(v_k + (v_k1 - v_k) * frac)


def normalize_into(src: np.ndarray, out: np.ndarray, stats: ChannelStats) -> np.ndarray:
    """Clip + z-score ``src`` (any real dtype, e.g. a read-only SimpleITK view) into ``out`` (float16/32, same
    shape), slab by slab so no full-volume float32 temporary is made. Returns ``out``."""
    if src.shape != out.shape:
        raise ValueError(f"shape mismatch {src.shape} vs {out.shape}")
    s_flat, o_flat = src.reshape(-1), out.reshape(-1)
    for i in range(0, s_flat.size, _SLAB):
        part = s_flat[i:i + _SLAB].astype(np.float32)
        o_flat[i:i + _SLAB] = normalize_(part, stats)
    return out


def normalize_(arr: np.ndarray, stats: ChannelStats) -> np.ndarray:
    """In place on a float32 array: clip to the channel's percentiles, then z-score. Returns ``arr``."""
    np.clip(arr, stats.p_lo, stats.p_hi, out=arr)
    arr -= np.float32(stats.mean)
    # A constant volume (std 0) maps to zeros rather than NaN.
    arr *= np.float32(1.0 / stats.std) if stats.std > 0 else np.float32(0.0)
    return arr


def denormalize(values: np.ndarray, stats: ChannelStats) -> np.ndarray:
    """Map stored values back to source units (HU for CT), up to the clip."""
    return values.astype(np.float64) * stats.std + stats.mean
