"""Percentile clip + z-score statistics: the histogram path equals numpy exactly."""
from __future__ import annotations

import numpy as np
import pytest

from volume.intensity import ChannelStats, channel_stats, clamp_air, denormalize, normalize_


@pytest.mark.parametrize("n", [7, 1000, 12345])
@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.int32])
def test_histogram_statistics_equal_numpy(n, dtype):
    rng = np.random.default_rng(n)
    info = np.iinfo(dtype)
    arr = rng.integers(max(info.min, -3000), min(info.max, 3000), size=n).astype(dtype)
    st = channel_stats(arr, (0.5, 99.5))
    lo, hi = np.percentile(arr, [0.5, 99.5])
    assert st.p_lo == pytest.approx(lo, abs=1e-9) and st.p_hi == pytest.approx(hi, abs=1e-9)
    clipped = np.clip(arr.astype(np.float64), lo, hi)
    assert st.mean == pytest.approx(clipped.mean(), rel=1e-12)
    assert st.std == pytest.approx(clipped.std(), rel=1e-9)


def test_float_path_and_window():
    rng = np.random.default_rng(1)
    arr = rng.normal(50, 20, size=(10, 11, 12)).astype(np.float32)
    st = channel_stats(arr, (0.5, 99.5))
    assert st.p_lo == pytest.approx(np.percentile(arr, 0.5))
    win = channel_stats(arr.astype(np.int16), (0.5, 99.5), window=(-200, 250))
    assert (win.p_lo, win.p_hi) == (-200, 250)


def test_nan_is_refused():
    arr = np.ones((3, 3, 3), np.float32)
    arr[1, 1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        channel_stats(arr, (0.5, 99.5))


def test_air_clamp_makes_the_low_percentile_meaningful():
    """A fifth of the voxels at -2048 padding would make the 0.5 percentile the padding value."""
    rng = np.random.default_rng(2)
    body = rng.integers(-1000, 400, size=8000).astype(np.int16)
    arr = np.concatenate([body, np.full(2000, -2048, np.int16)])
    assert channel_stats(arr, (0.5, 99.5)).p_lo == -2048
    frac = clamp_air(arr, -1024)
    assert frac == pytest.approx(0.2)
    assert channel_stats(arr, (0.5, 99.5)).p_lo == -1024


def test_normalize_and_back():
    st = ChannelStats(p_lo=-100.0, p_hi=300.0, mean=50.0, std=25.0)
    arr = np.array([-500.0, 0.0, 50.0, 1000.0], np.float32)
    out = normalize_(arr.copy(), st)
    assert out.tolist() == pytest.approx([-6.0, -2.0, 0.0, 10.0])
    assert denormalize(out, st).tolist() == pytest.approx([-100.0, 0.0, 50.0, 300.0])
    const = normalize_(np.full(4, 3.0, np.float32), ChannelStats(3.0, 3.0, 3.0, 0.0))
    assert np.all(const == 0)


def test_slab_helpers_equal_whole_array_numpy():
    from volume import intensity

    rng = np.random.default_rng(3)
    src = rng.integers(-1100, 3000, size=(2_100_000,)).astype(np.int16)
    st = ChannelStats(p_lo=-1000.0, p_hi=2000.0, mean=100.0, std=400.0)
    out = intensity.normalize_into(src, np.empty(src.shape, np.float16), st)
    ref = ((np.clip(src.astype(np.float64), -1000, 2000) - 100) / 400).astype(np.float16)
    assert np.allclose(out.astype(np.float32), ref.astype(np.float32), atol=2e-3)


def test_summarize_label_counts_and_samples_foreground():
    from pipeline.labels import summarize_label

    lab = np.zeros((30, 40, 50), np.uint8)
    lab[5:10, 5:25, 5:25] = 1
    lab[20:22, 10:12, 10:40] = 3
    values, voxels, fg = summarize_label(lab, 4, per_class=100, seed=0)
    assert values == [0, 1, 3] and voxels == [60000 - 2000 - 120, 2000, 120]
    assert fg.shape == (200, 4) and sorted(set(fg[:, 0])) == [1, 3]
    assert np.all(lab[fg[:, 1], fg[:, 2], fg[:, 3]] == fg[:, 0])  # every sampled voxel has its class
    again = summarize_label(lab, 4, per_class=100, seed=0)[2]
    assert np.array_equal(fg, again)


def test_wide_integer_volumes_get_exact_statistics():
    rng = np.random.default_rng(5)
    arr = (rng.integers(0, 1000, size=5000) + 3_000_000_000).astype(np.uint32)  # beyond int32
    st = channel_stats(arr, (0.5, 99.5))
    assert st.p_lo == pytest.approx(np.percentile(arr, 0.5)) and st.p_hi == pytest.approx(np.percentile(arr, 99.5))
