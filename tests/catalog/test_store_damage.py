"""Crafted stores met by the readers (issue 23, item 6): a chunk file that is a link to ``/dev/zero``, to a huge
sparse file or out of the store, a named pipe, a sparse chunk of a terabyte, array metadata claiming 10¹² voxels
or a chunk as large, a ``zarr.json`` linked to ``/dev/zero``. Each is refused with one
:class:`catalog.chunk_read.DamagedStoreError` line naming the file, before anything large is allocated or read:
every read runs in a subprocess under a 3 GiB address-space limit and a timeout, so a regression fails the test
instead of eating the machine (or blocking on a pipe). A link that stays inside the store is still read."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import zarr
from zarr.codecs import ZstdCodec

from catalog.case_arrays import case_array
from catalog.chunk_read import ChunkedArrayReader, DamagedStoreError
from pipeline.config import PrepConfig
from pipeline.store import open_root, write_case
from pipeline.verify import case_damage

ROOT = Path(__file__).resolve().parents[2]
TERABYTE = 1 << 40
SHAPE = (20, 24, 28)  # (Z, Y, X) in 16³ chunks: 2 × 2 × 2 chunk files per array


def _guarded(code: str, limit: int = 3 << 30, timeout: int = 120) -> str:
    """Run ``code`` in a fresh interpreter under an address-space limit; its stdout (it prints what happened)."""
    prog = ("import resource\n"
            f"resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))\n" + textwrap.dedent(code))
    res = subprocess.run([sys.executable, "-c", prog], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout.strip()


def _read_code(path: Path, name: str, shape=SHAPE) -> str:
    """A program that reads a case's array through the catalog-checked reader and prints the refusal, if any."""
    return f"""
        from catalog.case_arrays import case_array
        from catalog.chunk_read import DamagedStoreError
        try:
            arr = case_array({str(path.parent.parent.parent)!r}, {path.parent.parent.name + '/' + path.parent.name!r},
                             {name!r}, shape={tuple(shape)!r}, n_channels=1).read_all()
        except DamagedStoreError as exc:
            print("REFUSED", exc)
        else:
            print("READ", arr.shape, float(abs(arr.astype('float64')).sum()))
        """


@pytest.fixture
def store(tmp_path) -> Path:
    """A one-case store as the pipeline writes it: raw float16 image chunks, compressed uint8 label chunks."""
    rng = np.random.default_rng(0)
    image = rng.normal(0, 1, (1, *SHAPE)).astype(np.float16)
    label = (rng.random(SHAPE) > 0.5).astype(np.uint8)
    fg = np.argwhere(label)[:50]
    write_case(open_root(str(tmp_path / "store")), "d/case", image, label,
               np.concatenate([np.ones((len(fg), 1), int), fg], axis=1).astype(np.int32), {},
               PrepConfig(chunks=(16, 16, 16)), marker={"test": True})
    return tmp_path / "store"


def _chunk(store: Path, name: str) -> Path:
    return store / "d/case" / name / "c" / ("0/1/1/1" if name == "image" else "1/1/1")


def _one_line(out: str, *names: object) -> str:
    assert out.startswith("REFUSED ") and "\n" not in out, out
    for name in names:
        assert str(name) in out, (name, out)
    assert "--verify" in out
    return out


@pytest.mark.parametrize("name", ["image", "label"])
def test_a_chunk_linked_to_dev_zero_is_refused(store, name):
    chunk = _chunk(store, name)
    chunk.unlink()
    chunk.symlink_to("/dev/zero")
    line = _one_line(_guarded(_read_code(store / "d/case" / name, name)), chunk)
    assert "a symbolic link that leaves the store (to /dev/zero)" in line


def test_a_chunk_linked_to_a_huge_sparse_file_outside_the_store_is_refused(store, tmp_path):
    sparse = tmp_path / "elsewhere.bin"
    with open(sparse, "wb") as fh:
        fh.truncate(TERABYTE)
    chunk = _chunk(store, "image")
    chunk.unlink()
    chunk.symlink_to(sparse)
    line = _one_line(_guarded(_read_code(store / "d/case/image", "image")), chunk)
    assert f"leaves the store (to {sparse})" in line


@pytest.mark.parametrize("name, rule", [("image", "a raw chunk has 8,208"),
                                        ("label", "a Blosc frame of this chunk has at most 4,112")])
def test_a_terabyte_sparse_chunk_inside_the_store_is_refused_by_its_size(store, name, rule):
    chunk = _chunk(store, name)
    with open(chunk, "r+b") as fh:
        fh.truncate(TERABYTE)
    line = _one_line(_guarded(_read_code(store / "d/case" / name, name)), chunk)
    assert f"chunk file has {TERABYTE:,} bytes; {rule}" in line


def test_a_raw_chunk_longer_than_its_bytes_is_damaged(store):
    chunk = _chunk(store, "image")
    chunk.write_bytes(chunk.read_bytes() + b"\0")
    with pytest.raises(DamagedStoreError, match=r"chunk file has 8,209 bytes; a raw chunk has 8,208"):
        case_array(str(store), "d/case", "image", shape=SHAPE, n_channels=1).read_all()


def test_a_named_pipe_in_place_of_a_chunk_is_refused_without_waiting(store):
    chunk = _chunk(store, "image")
    chunk.unlink()
    os.mkfifo(chunk)
    line = _one_line(_guarded(_read_code(store / "d/case/image", "image"), timeout=60), chunk)
    assert "not a regular file" in line


def test_a_link_that_stays_inside_the_store_is_read(store):
    before = case_array(str(store), "d/case", "image", shape=SHAPE, n_channels=1).read_all()
    chunk = _chunk(store, "image")
    copy = store / "d" / "kept_chunk"
    copy.write_bytes(chunk.read_bytes())
    chunk.unlink()
    chunk.symlink_to(os.path.relpath(copy, chunk.parent))
    np.testing.assert_array_equal(case_array(str(store), "d/case", "image", shape=SHAPE, n_channels=1).read_all(),
                                  before)


def test_a_chunk_folder_linked_out_of_the_store_is_refused(store, tmp_path):
    folder = store / "d/case/image/c/0/1/1"
    outside = tmp_path / "outside"
    folder.rename(outside)
    folder.symlink_to(outside)
    with pytest.raises(DamagedStoreError, match="a symbolic link that leaves the store"):
        case_array(str(store), "d/case", "image", shape=SHAPE, n_channels=1).read_all()


@pytest.mark.parametrize("field, value, says", [
    ("shape", [1, 10_000, 10_000, 10_000], "shape [1, 10000, 10000, 10000] differs from the catalog row of d/case's "
                                           "[1, 20, 24, 28]"),
    ("chunk", [1, 10_000, 10_000, 10_000], "chunk shape [1, 10000, 10000, 10000] does not fit"),
])
def test_array_metadata_must_agree_with_the_catalog_before_any_allocation(store, field, value, says):
    """A zarr.json claiming 10¹² voxels (1.8 TiB as float16) was believed over the catalog."""
    meta_path = store / "d/case/image/zarr.json"
    meta = json.loads(meta_path.read_text())
    if field == "shape":
        meta["shape"] = value
    else:
        meta["chunk_grid"]["configuration"]["chunk_shape"] = value
    meta_path.write_text(json.dumps(meta))
    line = _one_line(_guarded(_read_code(store / "d/case/image", "image")), meta_path)
    assert says in line


def test_a_foreground_table_longer_than_the_volume_is_refused(store):
    meta_path = store / "d/case/foreground/zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["shape"] = [10 ** 12, 4]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(DamagedStoreError, match=r"shape \[1000000000000, 4\] exceeds the \[13440, 4\]"):
        case_array(str(store), "d/case", "foreground", shape=SHAPE, n_channels=1)


def test_a_zarr_json_linked_to_dev_zero_is_refused(store):
    meta_path = store / "d/case/image/zarr.json"
    meta_path.unlink()
    meta_path.symlink_to("/dev/zero")
    line = _one_line(_guarded(_read_code(store / "d/case/image", "image")), meta_path)
    assert "a symbolic link that leaves the store (to /dev/zero), in place of the array's metadata" in line


def test_arrays_read_through_zarr_python_pass_the_same_file_checks(tmp_path):
    """An array of another codec chain (zstd, no Blosc) is read by zarr-python, which reads whole files: its files
    are checked first."""
    data = np.arange(20 * 24 * 28, dtype=np.float32).reshape(SHAPE)
    arr = zarr.open_group(str(tmp_path / "s"), mode="w", zarr_format=3).create_array(
        "a", shape=SHAPE, chunks=(16, 16, 16), dtype=data.dtype, fill_value=0, compressors=ZstdCodec(level=1))
    arr[...] = data
    reader = ChunkedArrayReader(tmp_path / "s/a", expect_shape=SHAPE)
    assert not reader.direct
    np.testing.assert_array_equal(reader.read_all(), data)
    chunk = tmp_path / "s/a/c/1/1/1"
    with open(chunk, "r+b") as fh:
        fh.truncate(TERABYTE)
    with pytest.raises(DamagedStoreError, match=rf"{chunk}: chunk file has {TERABYTE:,} bytes, more than any codec"):
        ChunkedArrayReader(tmp_path / "s/a", expect_shape=SHAPE)
    chunk.unlink()
    chunk.symlink_to("/dev/zero")
    with pytest.raises(DamagedStoreError, match="leaves the store"):
        ChunkedArrayReader(tmp_path / "s/a", expect_shape=SHAPE)


def test_verify_calls_a_chunk_linked_out_of_the_store_damaged_whatever_its_size(store, tmp_path):
    """--verify compared sizes through the link: a link to a copy outside the store looked intact."""
    root = open_root(str(store), mode="r")
    assert case_damage(root, "d/case") is None
    chunk = _chunk(store, "image")
    outside = tmp_path / "copy"
    outside.write_bytes(chunk.read_bytes())
    chunk.unlink()
    chunk.symlink_to(outside)
    assert case_damage(root, "d/case") == (f"d/case/image/c/0/1/1/1 is a symbolic link that leaves the store "
                                           f"(to {outside})")


def test_the_report_names_a_case_with_a_chunk_linked_to_dev_zero_instead_of_reading_it(real_dir, tmp_path):
    """``med3d-prep report`` read montage planes through zarr-python, which read the link until memory ran out."""
    from pipeline.job import build
    from pipeline.sources.msd import scan_msd

    found, _ = scan_msd(real_dir / "msd")
    store = tmp_path / "store"
    assert build(found, str(store), PrepConfig(chunks=(16, 16, 16)), workers=0, progress=False,
                 log=lambda s: None).failed == []
    for case in (store / "hippocampus").iterdir():
        for chunk in [p for p in (case / "image" / "c").rglob("*") if p.is_file()]:
            chunk.unlink()
            chunk.symlink_to("/dev/zero")
    out = _guarded(f"""
        from pipeline.report import build_report
        build_report({str(store)!r}, {str(tmp_path / 'report')!r}, montage_cases=4)
        print("WROTE")
        """)
    assert out == "WROTE"
    page = (tmp_path / "report" / "index.html").read_text()
    assert page.count("a symbolic link that leaves the store (to /dev/zero)") == 4, page[-3000:]


def test_a_catalog_linked_to_dev_zero_is_one_line(tmp_path):
    from catalog import load_catalog

    (tmp_path / "catalog.parquet").symlink_to("/dev/zero")
    with pytest.raises(ValueError, match=r"catalog.parquet: not a regular file \(a device such as /dev/zero"):
        load_catalog(str(tmp_path))
