"""The store's Blosc settings: the default writes as configured (raw image frames, compressed labels), and whatever
Blosc codec or shuffle wrote a chunk (the frame header carries both), the direct chunk reader reads the same
values as zarr-python; raw frames are read by byte range, without decoding."""
from __future__ import annotations

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec

from catalog.chunk_read import ChunkedArrayReader
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


def _blosc_meta(path) -> dict:
    meta = zarr.open_array(str(path), mode="r").metadata.to_dict()["codecs"][-1]
    assert meta["name"] == "blosc" and meta["configuration"]["shuffle"] == "shuffle"
    return meta["configuration"]


def test_default_store_writes_raw_images_and_compressed_labels(tmp_path) -> None:
    cfg = PrepConfig(chunks=(16, 32, 32))
    assert cfg.image_codec == "raw"
    image, label = _noisy_ct()
    write_case(open_root(str(tmp_path / "store")), "d/case", image, label, np.array([[1, 20, 35, 35]], np.int32),
               {}, cfg, marker={"test": True})
    case = tmp_path / "store/d/case"
    assert _blosc_meta(case / "image")["clevel"] == 0
    assert (_blosc_meta(case / "label")["cname"], _blosc_meta(case / "label")["clevel"]) == (cfg.codec, cfg.clevel)
    frames = [p for p in (case / "image/c").rglob("*") if p.is_file()]
    assert len(frames) == 3 * 3 * 3  # 40×70×70 in 16×32×32 chunks, none all zero
    chunk_bytes = 16 * 32 * 32 * 2
    for frame in frames:  # a Blosc header, then the chunk's float16 bytes as they are ("memcpyed" flag 0x02)
        raw = frame.read_bytes()
        assert len(raw) == 16 + chunk_bytes and raw[2] & 0x02
    label_bytes = sum(p.stat().st_size for p in (case / "label/c").rglob("*") if p.is_file())
    assert label_bytes < label.nbytes / 10
    _check_reads(str(case / "image"), image)
    _check_reads(str(case / "label"), label)


def test_image_codec_compresses_images_when_asked(tmp_path) -> None:
    cfg = PrepConfig(chunks=(16, 32, 32), image_codec="lz4hc")
    image, label = _noisy_ct()
    write_case(open_root(str(tmp_path / "store")), "d/case", image, label, np.zeros((0, 4), np.int32),
               {}, cfg, marker={"test": True})
    assert (_blosc_meta(tmp_path / "store/d/case/image")["cname"], _blosc_meta(tmp_path / "store/d/case/image")
            ["clevel"]) == ("lz4hc", cfg.clevel)
    stored = sum(p.stat().st_size for p in (tmp_path / "store/d/case/image/c").rglob("*") if p.is_file())
    assert stored < 0.8 * image.nbytes  # noise leaves ~half of the float16 bytes; raw would be 1.0 + headers
    _check_reads(str(tmp_path / "store/d/case/image"), image)
    with pytest.raises(ValueError, match="image_codec"):
        PrepConfig(image_codec="gzip")


def test_raw_frames_are_read_by_byte_range_without_decoding(tmp_path, monkeypatch) -> None:
    """A small box reads only the bytes between its first and last voxel in each chunk, and Blosc never runs."""
    import catalog.chunk_read as zr

    image, _ = _noisy_ct()
    write_case(open_root(str(tmp_path / "store")), "d/case", image, None, np.zeros((0, 4), np.int32), {},
               PrepConfig(chunks=(16, 32, 32)), marker={"test": True})
    reader = ChunkedArrayReader(str(tmp_path / "store/d/case/image"))
    assert reader.direct
    monkeypatch.setattr(reader._codec, "decode", lambda *a, **k: pytest.fail("a raw frame was decoded"))
    sizes = []
    real = zr.os.preadv
    monkeypatch.setattr(zr.os, "preadv", lambda fd, bufs, off: sizes.append(sum(len(b) for b in bufs))
                        or real(fd, bufs, off))
    box = reader.read((0, 18, 30, 20), (1, 20, 34, 28))  # 2 planes × 4 rows × 8 columns over 2 chunks in y
    np.testing.assert_array_equal(box, image[:, 18:20, 30:34, 20:28])
    # chunk (1, 0, 0): planes 2-3, rows 30-31, from voxel (2, 30, 20) to (3, 31, 27) of its 16×32×32 voxels;
    # chunk (1, 1, 0): rows 0-1, from (2, 0, 20) to (3, 1, 27); float16, so 2 bytes a voxel
    assert sorted(sizes) == [((3 * 32 + 31) * 32 + 28 - ((2 * 32 + 30) * 32 + 20)) * 2,
                             ((3 * 32 + 1) * 32 + 28 - ((2 * 32 + 0) * 32 + 20)) * 2]
    assert max(sizes) < 16 * 32 * 32 * 2 / 7


def test_a_truncated_raw_chunk_is_an_error_naming_the_file(tmp_path) -> None:
    image, _ = _noisy_ct()
    write_case(open_root(str(tmp_path / "store")), "d/case", image, None, np.zeros((0, 4), np.int32), {},
               PrepConfig(chunks=(16, 32, 32)), marker={"test": True})
    frame = tmp_path / "store/d/case/image/c/0/1/1/1"
    frame.write_bytes(frame.read_bytes()[:5000])
    with pytest.raises(OSError, match=r"c/0/1/1/1: chunk file is truncated \(5,000 bytes; a raw chunk has 32,784\): "
                                      r"the store is damaged; re-run its build .* with --verify"):
        ChunkedArrayReader(str(tmp_path / "store/d/case/image")).read_all()


def test_incompressible_chunks_of_a_compressed_array_are_read_raw(tmp_path) -> None:
    """Blosc stores a chunk it cannot shrink as is (the same "memcpyed" frame as level 0) even in a compressed
    array; the reader recognizes the frame from its header and reads it by byte range, the others it decodes."""
    data = np.random.default_rng(3).integers(0, 256, (20, 33, 40), dtype=np.uint8)
    arr = zarr.open_group(str(tmp_path / "s"), mode="w", zarr_format=3).create_array(
        "noise", shape=data.shape, chunks=(8, 16, 16), dtype=data.dtype, fill_value=0,
        compressors=BloscCodec(cname="lz4", clevel=5, shuffle="noshuffle"))
    arr[...] = data
    flags = [p.read_bytes()[2] for p in (tmp_path / "s/noise/c").rglob("*") if p.is_file()]
    raw = [bool(f & 0x02) for f in flags]  # inner chunks are noise; edge chunks, zero-padded, compress
    assert sum(raw) == 2 * 2 * 2 and len(raw) > sum(raw)
    _check_reads(str(tmp_path / "s/noise"), data)


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
    from catalog.chunk_write import fill_array

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
    """A Blosc array whose fill value is not 0 must not take the direct write: it would leave out the all-zero
    chunk, which would then read back as the fill value."""
    from catalog.chunk_write import fill_array

    data = np.arange(20 * 21 * 22, dtype=np.float32).reshape(20, 21, 22)
    data[:8, :8, :8] = 0  # one whole chunk of zeros
    group = zarr.open_group(str(tmp_path), mode="w", zarr_format=3)
    blosc = BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")
    for name, kw in (("fill", {"fill_value": 3.0, "compressors": blosc}),
                     ("zstd", {"compressors": zarr.codecs.ZstdCodec(level=1)})):
        arr = group.create_array(name, shape=data.shape, chunks=(8, 8, 8), dtype=data.dtype,
                                 **{"fill_value": 0, **kw})
        fill_array(arr, data)
        np.testing.assert_array_equal(zarr.open_array(str(tmp_path / name), mode="r")[...], data)


def test_stores_with_compressed_images_keep_their_hashes() -> None:
    """Images compressed with the label codec are the only layout before ``image_codec`` existed: such configs
    hash as they did then (values computed with that version's PrepConfig, whose default was LZ4HC level 1), so
    re-running such a store with ``--image-codec lz4hc`` skips its cases; raw images are other bytes and another
    hash."""
    assert PrepConfig(image_codec="lz4hc").params_hash() == "5fe964d29422aa3f"
    assert PrepConfig(image_codec="lz4hc").params_hash(target_spacing=(2.5, 0.75, 0.75)) == "374d52ca40856a58"
    assert PrepConfig(image_codec="zstd", codec="zstd", clevel=3).params_hash() == "c49fc815bc430d4c"
    assert PrepConfig().params_hash() != "5fe964d29422aa3f"
    assert PrepConfig(image_codec="zstd").params_hash() != PrepConfig(image_codec="lz4hc").params_hash()
