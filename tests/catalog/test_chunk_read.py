"""Direct chunk reads equal zarr-python's own reads: random boxes in and out of bounds, dtypes, odd chunk grids."""
from __future__ import annotations

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec, ZstdCodec

from catalog.chunk_read import ChunkedArrayReader


def make_array(root, name: str, data: np.ndarray, chunks: tuple[int, ...], fill=0, **kw) -> str:
    kw.setdefault("compressors", BloscCodec(cname="zstd", clevel=3, shuffle="shuffle"))
    arr = zarr.open_group(str(root), mode="a", zarr_format=3).create_array(
        name, shape=data.shape, chunks=chunks, dtype=data.dtype, fill_value=fill, **kw)
    arr[...] = data
    return str(root / name)


def expected(path: str, starts, stops, pad) -> np.ndarray:
    """The box read through zarr-python, padded by hand where it leaves the array."""
    arr = zarr.open_array(path, mode="r")
    out = np.full([b - a for a, b in zip(starts, stops)], pad, dtype=arr.dtype)
    lo = [max(a, 0) for a in starts]
    hi = [min(b, n) for b, n in zip(stops, arr.shape)]
    if all(h > l for l, h in zip(lo, hi)):
        src = tuple(slice(l, h) for l, h in zip(lo, hi))
        out[tuple(slice(l - a, h - a) for l, h, a in zip(lo, hi, starts))] = arr[src]
    return out


def random_box(rng, shape, max_size):
    starts = [int(rng.integers(-m // 2, n)) for n, m in zip(shape, max_size)]
    stops = [s + int(rng.integers(1, m + 1)) for s, m in zip(starts, max_size)]
    return starts, stops


@pytest.fixture(scope="module")
def volumes(tmp_path_factory):
    rng = np.random.default_rng(0)
    image = rng.standard_normal((2, 37, 29, 41)).astype(np.float16)
    image[:, :16, :16, :16] = 0  # whole chunks equal to the fill value: zarr writes no file for them
    label = rng.integers(0, 3, (37, 29, 41)).astype(np.uint8)
    label[16:, :, :] = 0
    return image, label, tmp_path_factory.mktemp("zr")


def test_float16_multichannel_random_boxes(volumes) -> None:
    image, _, root = volumes
    path = make_array(root, "image", image, (1, 16, 16, 16))
    reader = ChunkedArrayReader(path)
    assert reader.direct and reader.shape == image.shape and reader.dtype == np.float16
    rng = np.random.default_rng(1)
    for _ in range(60):
        starts, stops = random_box(rng, image.shape[1:], (30, 30, 30))
        c = int(rng.integers(2))
        got = reader.read((c, *starts), (c + 1, *stops), pad=-3.5)
        np.testing.assert_array_equal(got, expected(path, (c, *starts), (c + 1, *stops), -3.5))
    # One channel of a multi-channel image is that channel's values, not its neighbour's.
    np.testing.assert_array_equal(reader.read((1, 0, 0, 0), (2, 37, 29, 41))[0], image[1])
    np.testing.assert_array_equal(reader.read_all(), image)


def test_uint8_label_random_boxes_and_missing_chunks(volumes) -> None:
    _, label, root = volumes
    path = make_array(root, "label", label, (16, 16, 16))
    reader = ChunkedArrayReader(path)
    assert reader.direct
    rng = np.random.default_rng(2)
    for _ in range(60):
        starts, stops = random_box(rng, label.shape, (40, 40, 40))
        np.testing.assert_array_equal(reader.read(starts, stops, pad=0), expected(path, starts, stops, 0))
    # Entirely outside the array: all pad.
    np.testing.assert_array_equal(reader.read((-20, 0, 0), (-4, 5, 5), pad=7), np.full((16, 5, 5), 7, np.uint8))
    np.testing.assert_array_equal(reader.read((40, 30, 50), (41, 31, 51)), np.zeros((1, 1, 1), np.uint8))


def test_nonzero_fill_value_and_chunks_not_dividing_shape(tmp_path) -> None:
    rng = np.random.default_rng(3)
    data = rng.standard_normal((23, 19, 17)).astype(np.float32)
    data[:7] = 2.5  # equals the fill value: chunk files of the first z-row are not written
    path = make_array(tmp_path, "a", data, (7, 5, 6), fill=2.5)
    reader = ChunkedArrayReader(path)
    assert reader.direct and reader.fill_value == np.float32(2.5)
    for _ in range(40):
        starts, stops = random_box(rng, data.shape, (25, 25, 25))
        np.testing.assert_array_equal(reader.read(starts, stops, pad=-1), expected(path, starts, stops, -1))


def test_dot_separator_and_v2_key_encoding(tmp_path) -> None:
    data = np.arange(20 * 21 * 22, dtype=np.int16).reshape(20, 21, 22)
    for name, enc in [("dot", {"name": "default", "separator": "."}), ("v2", {"name": "v2", "separator": "."})]:
        path = make_array(tmp_path, name, data, (8, 8, 8), chunk_key_encoding=enc)
        reader = ChunkedArrayReader(path)
        assert reader.direct, name
        np.testing.assert_array_equal(reader.read((3, -2, 5), (19, 18, 30), pad=-9),
                                      expected(path, (3, -2, 5), (19, 18, 30), -9))


def test_out_buffer_casts_float16_to_float32(volumes) -> None:
    image, _, root = volumes
    reader = ChunkedArrayReader(make_array(root, "image_out", image, (1, 16, 16, 16)))
    out = np.empty((1, 20, 20, 20), np.float32)
    got = reader.read((0, 30, -5, 30), (1, 50, 15, 50), pad=1.0, out=out)
    assert got is out
    np.testing.assert_array_equal(out, reader.read((0, 30, -5, 30), (1, 50, 15, 50), pad=1.0).astype(np.float32))
    with pytest.raises(ValueError, match="out has shape"):
        reader.read((0, 0, 0, 0), (1, 2, 2, 2), out=out)


@pytest.mark.parametrize("kind", ["zstd_codec", "sharded", "uncompressed"])
def test_other_layouts_fall_back_to_zarr(tmp_path, kind: str) -> None:
    rng = np.random.default_rng(4)
    data = rng.standard_normal((18, 20, 22)).astype(np.float16)
    kw = {"zstd_codec": {"compressors": ZstdCodec(level=3)},
          "sharded": {"shards": (16, 16, 16)},
          "uncompressed": {"compressors": None}}[kind]
    path = make_array(tmp_path, kind, data, (8, 8, 8), **kw)
    reader = ChunkedArrayReader(path)
    assert not reader.direct and reader.fallback_reason
    for _ in range(10):
        starts, stops = random_box(rng, data.shape, (20, 20, 20))
        np.testing.assert_array_equal(reader.read(starts, stops, pad=0), expected(path, starts, stops, 0))


def test_bad_boxes_raise(volumes) -> None:
    _, label, root = volumes
    reader = ChunkedArrayReader(make_array(root, "label_bad", label, (16, 16, 16)))
    with pytest.raises(ValueError, match="needs 3 starts"):
        reader.read((0, 0), (1, 1))
    with pytest.raises(ValueError, match="before starts"):
        reader.read((5, 5, 5), (4, 6, 6))
