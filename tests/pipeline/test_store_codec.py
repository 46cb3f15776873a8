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


def _files(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("cname,clevel,shuffle", [("lz4hc", 1, "shuffle"), ("lz4", 5, "bitshuffle"),
                                                  ("zstd", 3, "noshuffle")])
def test_direct_chunk_writes_are_the_bytes_zarr_writes(tmp_path, cname, clevel, shuffle) -> None:
    """write_case writes chunk files itself (zarr's async write costs ~2 ms a chunk): the same files, byte for
    byte, as zarr-python's own write, including padded edge chunks and the chunks it leaves out (all fill)."""
    from pipeline.store import fill_array

    image, label = _noisy_ct(seed=2)
    image[:, :16] = 0
    image[0, 20, 5, 5] = -0.0  # equal to the fill value, not all-zero bits
    for name, data, chunks in (("image", image, (1, 16, 32, 32)), ("label", label, (16, 32, 32))):
        written = {}
        for how in ("zarr", "direct"):
            group = zarr.open_group(str(tmp_path / how), mode="a", zarr_format=3)
            arr = group.create_array(name, shape=data.shape, chunks=chunks, dtype=data.dtype, fill_value=0,
                                     compressors=BloscCodec(cname=cname, clevel=clevel, shuffle=shuffle))
            if how == "zarr":
                arr[...] = data
            else:
                fill_array(arr, data)
            written[how] = _files(tmp_path / how / name)
            np.testing.assert_array_equal(zarr.open_array(str(tmp_path / how / name), mode="r")[...], data)
        assert written["direct"] == written["zarr"]
        assert any(k.startswith("c/") for k in written["zarr"])
        n_chunks = int(np.prod([-(-n // c) for n, c in zip(data.shape, chunks)]))
        assert len(written["zarr"]) - 1 < n_chunks  # chunks of zeros are not written


def test_other_fill_values_and_codecs_go_through_zarr(tmp_path) -> None:
    from pipeline.store import fill_array

    data = np.arange(20 * 21 * 22, dtype=np.float32).reshape(20, 21, 22)
    group = zarr.open_group(str(tmp_path), mode="w", zarr_format=3)
    for name, kw in (("fill", {"fill_value": 3.0}), ("zstd", {"compressors": zarr.codecs.ZstdCodec(level=1)})):
        arr = group.create_array(name, shape=data.shape, chunks=(8, 8, 8), dtype=data.dtype,
                                 **{"fill_value": 0, **kw})
        fill_array(arr, data)
        np.testing.assert_array_equal(zarr.open_array(str(tmp_path / name), mode="r")[...], data)
