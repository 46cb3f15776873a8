"""The faster inflate (python-isal, zlib-ng) reads the same voxels as the standard zlib, and refuses the same
damage: the store a build writes does not depend on which one is installed."""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from volume.inflate import deflate_module
from volume.integrity import IntegrityError, read_nifti_info, read_nifti_voxels, verify_gzip

REAL = Path(__file__).resolve().parents[1] / "data" / "real"
SCANS = [REAL / "msd" / "Task04_Hippocampus" / "imagesTr" / "hippocampus_001.nii.gz",
         REAL / "ct" / "example_ct_sm.nii.gz"]
INSTALLED = [n for n, m in (("zlib", "zlib"), ("isal", "isal"), ("zlib-ng", "zlib_ng"))
             if importlib.util.find_spec(m) is not None]


@pytest.mark.parametrize("scan", SCANS, ids=lambda p: p.name)
def test_every_installed_inflate_reads_the_same_voxels(scan, monkeypatch):
    arrays = {}
    for name in INSTALLED:
        monkeypatch.setenv("MED3D_INFLATE", name)
        arrays[name] = read_nifti_voxels(read_nifti_info(str(scan)))
    ref = arrays["zlib"]
    assert ref.size > 10_000 and ref.std() > 0
    for name, arr in arrays.items():
        assert arr.dtype == ref.dtype and arr.shape == ref.shape and np.array_equal(arr, ref), name


def test_the_default_is_the_fastest_installed(monkeypatch):
    monkeypatch.delenv("MED3D_INFLATE", raising=False)
    fastest = next(n for n in ("isal", "zlib-ng", "zlib") if n in INSTALLED)
    assert deflate_module().__name__ == {"isal": "isal.isal_zlib", "zlib-ng": "zlib_ng.zlib_ng", "zlib": "zlib"}[fastest]
    with pytest.raises(ValueError, match="choose one of"):
        deflate_module("brotli")


@pytest.mark.parametrize("name", INSTALLED)
def test_a_damaged_member_is_refused_by_each(name, tmp_path, monkeypatch):
    monkeypatch.setenv("MED3D_INFLATE", name)
    body = bytearray(gzip.compress(np.arange(50_000, dtype=np.int16).tobytes()))
    body[-6] ^= 0xFF  # the CRC-32 of the trailer
    bad = tmp_path / "bad.gz"
    bad.write_bytes(bytes(body))
    with pytest.raises(IntegrityError, match="bad.gz: corrupt gzip stream"):
        verify_gzip(str(bad), 100_000)
    cut = tmp_path / "cut.gz"
    cut.write_bytes(bytes(body[: len(body) // 2]))
    with pytest.raises(IntegrityError, match="cut.gz"):
        verify_gzip(str(cut), 100_000)
