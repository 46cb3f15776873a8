"""The store's Blosc settings: the default writes as configured, and whatever Blosc codec or shuffle wrote a
chunk (the frame header carries both), the direct chunk reader reads the same values as zarr-python."""
from __future__ import annotations

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec

from model.data.zarr_read import ChunkedArrayReader
from pipeline.config import PrepConfig
from pipeline.store import open_root, write_case


def _noisy_ct(shape=(40, 70, 70), seed=0) -> tuple[np.ndarray, np.ndarray]:
    """z-scored float16 'CT' with white noise (what the codec was chosen on) and a uint8 label."""
    rng = np.random.default_rng(seed)
    z, y, x = np.ogrid[:shape[0], :shape[1], :shape[2]]
    body = ((y - shape[1] / 2) / 30) ** 2 + ((x - shape[2] / 2) / 28) ** 2 < 1
    hu = np.where(body, 40.0, -1000.0) + rng.normal(0, 20, shape)
    image = ((hu - hu.mean()) / hu.std()).astype(np.float16)[None]
    label = np.broadcast_to(body & (z > 10) & (z < 30), shape).astype(np.uint8)
    return image, label


def _check_reads(path: str, data: np.ndarray) -> None:
    reader = ChunkedArrayReader(path)
    assert reader.direct, reader.fallback_reason
    np.testing.assert_array_equal(reader.read_all(), data)
    np.testing.assert_array_equal(zarr.open_array(path, mode="r")[...], data)
    starts = (0,) * (data.ndim - 3) + (5, -7, 20)  # a box past two borders
    stops = (1,) * (data.ndim - 3) + (37, 50, 75)
    want = np.full([b - a for a, b in zip(starts, stops)], 7, data.dtype)
    lo, hi = [max(a, 0) for a in starts], [min(b, n) for b, n in zip(stops, data.shape)]
    inside = tuple(slice(l, h) for l, h in zip(lo, hi))
    want[tuple(slice(l - a, h - a) for l, h, a in zip(lo, hi, starts))] = data[inside]
    np.testing.assert_array_equal(reader.read(starts, stops, pad=7), want)


def test_default_store_codec_is_written_and_read_back(tmp_path) -> None:
    cfg = PrepConfig(chunks=(16, 32, 32))
    image, label = _noisy_ct()
    write_case(open_root(str(tmp_path / "store")), "d/case", image, label, np.array([[1, 20, 35, 35]], np.int32),
               {}, cfg, marker={"test": True})
    meta = zarr.open_array(str(tmp_path / "store/d/case/image"), mode="r").metadata.to_dict()["codecs"][-1]
    assert meta["name"] == "blosc" and meta["configuration"]["shuffle"] == "shuffle"
    assert (meta["configuration"]["cname"], meta["configuration"]["clevel"]) == (cfg.codec, cfg.clevel)
    _check_reads(str(tmp_path / "store/d/case/image"), image)
    _check_reads(str(tmp_path / "store/d/case/label"), label)


@pytest.mark.parametrize("cname,clevel,shuffle", [("lz4", 5, "bitshuffle"), ("lz4hc", 1, "shuffle"),
                                                  ("zstd", 3, "bitshuffle"), ("blosclz", 5, "noshuffle")])
def test_any_blosc_shuffle_reads_identically_through_the_direct_reader(tmp_path, cname, clevel, shuffle) -> None:
    image, label = _noisy_ct(seed=1)
    group = zarr.open_group(str(tmp_path / "s"), mode="w", zarr_format=3)
    for name, data, chunks in (("image", image, (1, 16, 32, 32)), ("label", label, (16, 32, 32))):
        arr = group.create_array(name, shape=data.shape, chunks=chunks, dtype=data.dtype, fill_value=0,
                                 compressors=BloscCodec(cname=cname, clevel=clevel, shuffle=shuffle))
        arr[...] = data
        _check_reads(str(tmp_path / "s" / name), data)
