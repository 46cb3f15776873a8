"""The header parser without nibabel (volume.nifti_fields) reads what nibabel reads, and the build's header path
no longer imports nibabel (its import was ~0.2 s of every build worker's start)."""
from __future__ import annotations

import contextlib
import io
import struct
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from volume.integrity import IntegrityError, read_nifti_info
from volume.nifti_fields import HeaderFieldError, _LAYOUTS, data_dtype, header_fields

REAL = Path(__file__).resolve().parents[1] / "data" / "real"
FIELDS = ["datatype", "dim", "pixdim", "vox_offset", "scl_slope", "scl_inter", "qform_code", "sform_code",
          "quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y", "qoffset_z", "srow_x", "srow_y", "srow_z"]


@pytest.mark.parametrize("version,cls", [(1, nib.Nifti1Header), (2, nib.Nifti2Header)])
def test_every_field_lies_where_nibabel_puts_it(version, cls):
    ours, theirs = _LAYOUTS[version], cls.template_dtype
    assert ours.itemsize == theirs.itemsize == (348 if version == 1 else 540)
    for name in FIELDS:
        (o_type, o_off), (t_type, t_off) = ours.fields[name][:2], theirs.fields[name][:2]
        assert o_off == t_off, name
        assert o_type.itemsize == t_type.itemsize, name


@pytest.mark.parametrize("endian", ["<", ">"])
def test_every_voxel_type_nibabel_knows_is_the_same_dtype(endian):
    seen = 0
    for code in nib.nifti1.data_type_codes.value_set():
        block = bytearray(nib.Nifti1Header(endianness=endian).binaryblock)
        struct.pack_into(endian + "h", block, 70, code)
        want = nib.Nifti1Header.from_fileobj(io.BytesIO(bytes(block)), check=False).get_data_dtype()
        if want.itemsize == 0:  # none, binary, "all", and types nibabel does not support: refused by ours
            with pytest.raises(HeaderFieldError) if code in (0, 1, 255) else contextlib.nullcontext():
                data_dtype(header_fields(bytes(block), 1, endian), endian)
            continue
        assert data_dtype(header_fields(bytes(block), 1, endian), endian) == want, code
        seen += 1
    assert seen == 14  # u1 i1 u2 i2 u4 i4 u8 i8 f4 f8 c8 c16 RGB RGBA


def _real_files() -> list[Path]:
    return sorted(REAL.glob("ct/*.nii.gz")) + sorted(REAL.glob("msd/Task04_Hippocampus/*Tr/*.nii.gz"))


def _file_header(path: Path):
    """nibabel's header parsed from the file's own bytes (``nib.load`` moves the scaling out of its header)."""
    import gzip

    opener = gzip.open if path.read_bytes()[:2] == b"\x1f\x8b" else open
    with opener(path, "rb") as fh:
        head = fh.read(540)
    version = 2 if struct.unpack("<i", head[:4])[0] == 540 or struct.unpack(">i", head[:4])[0] == 540 else 1
    cls = nib.Nifti2Header if version == 2 else nib.Nifti1Header
    return cls.from_fileobj(io.BytesIO(head), check=False), head, version


def _same_as_nibabel(path: Path) -> None:
    info = read_nifti_info(str(path))
    hdr, head, version = _file_header(path)
    assert info.version == version
    assert info.dims == tuple(int(d) for d in hdr["dim"][1:hdr["dim"][0] + 1])
    assert info.dtype == hdr.get_data_dtype()
    assert info.pixdim == tuple(float(v) for v in hdr["pixdim"][1:4])
    assert info.scl_slope == pytest.approx(float(hdr["scl_slope"]), nan_ok=True)
    assert info.scl_inter == pytest.approx(float(hdr["scl_inter"]), nan_ok=True)
    ours = header_fields(head[:348 if version == 1 else 540], version, hdr.endianness)
    for name in FIELDS:
        assert np.array_equal(np.asarray(ours[name]), np.asarray(hdr[name]), equal_nan=True), (path, name)


def test_real_scans_read_the_same_as_with_nibabel():
    files = _real_files()
    assert len(files) >= 13  # the CT, its 4 masks, 4 hippocampus images and labels
    for path in files:
        _same_as_nibabel(path)


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("endian", ["<", ">"])
def test_written_headers_of_both_versions_and_byte_orders(tmp_path, version, endian):
    rng = np.random.default_rng(version)
    data = rng.integers(-1000, 1000, (5, 6, 7), dtype=np.int16)
    affine = np.array([[-0.7, 0.1, 0, 12.5], [0.05, 0.8, 0, -3], [0, 0, 2.5, 40], [0, 0, 0, 1]])
    cls = nib.Nifti1Image if version == 1 else nib.Nifti2Image
    img = cls(data, affine, header=cls.header_class(endianness=endian))
    img.header.set_slope_inter(2.0, -5.0)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=2)
    path = tmp_path / f"v{version}{'le' if endian == '<' else 'be'}.nii"
    nib.save(img, str(path))
    assert nib.load(str(path)).header.endianness == endian
    _same_as_nibabel(path)
    assert read_nifti_info(str(path)).dims == (5, 6, 7)


def test_an_unknown_datatype_is_refused_naming_the_file(tmp_path):
    img = nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4))
    path = tmp_path / "odd.nii"
    nib.save(img, str(path))
    raw = bytearray(path.read_bytes())
    struct.pack_into("<h", raw, 70, 3)
    path.write_bytes(bytes(raw))
    with pytest.raises(IntegrityError, match=r"odd\.nii: cannot read the image: unusable NIfTI header \(datatype "
                                             r"code 3 names no voxel type\)"):
        read_nifti_info(str(path))


def test_the_build_reads_headers_and_voxels_without_importing_nibabel():
    code = (
        "import sys\n"
        "from pipeline.job import read_case_header\n"
        "from pipeline.convert import read_case\n"
        "from pipeline.sources.msd import scan_msd\n"
        f"found, _ = scan_msd({str(REAL / 'msd')!r})\n"
        "spec, cases = found[0]\n"
        "assert read_case_header(cases[0]).size_zyx\n"
        "channels, label, _ = read_case(cases[0], spec)\n"
        "assert channels and label is not None\n"
        "print('nibabel' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "False", out.stderr
