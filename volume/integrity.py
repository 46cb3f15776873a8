"""Integrity checks on raw input files: damaged downloads must fail, never be stored as good data.

SimpleITK reads damaged NIfTI files without a word: a ``.nii.gz`` cut short by an interrupted download reads as
a volume padded with zeros, NaN and infinite voxels read as 0, a header spacing (pixdim) of 0 reads as 1 mm,
and a header announcing 4000³ voxels makes it try to allocate them. The functions here catch each of those and
raise :class:`IntegrityError` (a ``ValueError``) whose message names the file, the problem and the fix.

Two kinds of check:

- **Header checks** (:func:`check_file`): the NIfTI header (its fields parsed by :mod:`volume.nifti_fields`) against the file: 3D or 4D,
  at most ``max_voxels`` voxels, a usable spacing, and enough bytes for ``vox_offset + voxels × bytes``: the file
  size of a ``.nii``, the gzip trailer's length field (ISIZE) of a ``.nii.gz``. These read a few hundred bytes and
  run where headers are read for planning, so a damaged case is refused before any voxel is read.
- **Voxel read** (:func:`read_nifti_voxels`): the voxels of a NIfTI file, decompressed once (by the fastest deflate
  installed, :mod:`volume.inflate`), which checks every gzip member's CRC-32 and length, and counted for NaN/Inf
  (float data). ``geometry.read_channels`` builds its SimpleITK images from these voxels instead of letting ITK
  decompress the file a second time, so the complete check costs about what ITK's own read would (docs/DECISIONS.md,
  ``benchmarks/checks.py``).

The rules on values (voxel counts and sizes, directions, extents, pixel types, finite voxels, contrast) live in
``value_checks`` and are re-exported here. Everything here is pure: paths and arrays in, values or errors out;
nothing knows about dask, zarr or cases.
"""
from __future__ import annotations

import math
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .diagnose import not_a_file
from .inflate import deflate_module
from .nifti_fields import HeaderFieldError, data_dtype, header_fields
from .value_checks import (
    DEFAULT_MAX_VOXELS, IntegrityError, check_contrast, check_direction, check_extent, check_finite,
    check_pixel_type, check_resampled_voxels, check_spacing, check_voxel_count, count_nonfinite,
)

__all__ = [  # the value rules of value_checks are re-exported: integrity.check_* is the one place to call them
    "DEFAULT_MAX_VOXELS", "IntegrityError", "NiftiInfo", "check_contrast", "check_direction", "check_extent",
    "check_file", "check_finite", "check_pixel_type", "check_resampled_voxels", "check_spacing",
    "check_voxel_count", "count_nonfinite", "diagnose_nifti", "is_nifti", "read_nifti_info", "read_nifti_voxels",
    "verify_gzip", "verify_nifti_file",
]

_GZIP_MAGIC = b"\x1f\x8b"
_READ_BLOCK = 1 << 20
_OUT_BLOCK = 4 << 20
# Deflate cannot compress better than ~1032:1; a gzip file announcing more data than that can hold is damaged.
_MAX_DEFLATE_RATIO = 1032


def is_nifti(path: str | os.PathLike) -> bool:
    """Whether a path names a single-file NIfTI (``.nii`` or ``.nii.gz``)."""
    name = os.fspath(path).lower()
    return name.endswith(".nii") or name.endswith(".nii.gz")


@dataclass(frozen=True)
class NiftiInfo:
    """What a NIfTI header says about the data block, and how the file is stored."""

    path: str
    gzipped: bool
    """By content (gzip magic), not by name: a ``.nii.gz`` that is plain NIfTI reads fine with ITK too."""
    file_bytes: int
    version: int
    """1 or 2 (NIfTI-1: 348-byte header, NIfTI-2: 540)."""
    dims: tuple[int, ...]
    """dim[1..dim[0]], file axis order (x, y, z, t, ...)."""
    dtype: np.dtype
    """On-disk dtype, with its byte order."""
    vox_offset: int
    pixdim: tuple[float, float, float]
    """Spatial voxel size (mm) as written, pixdim[1..3]: may be 0, negative or NaN in a damaged header."""
    scl_slope: float
    scl_inter: float
    gzip_isize: int | None = None
    """The gzip trailer's length field (uncompressed bytes mod 2³², of the last member only)."""

    @property
    def n_voxels(self) -> int:
        return math.prod(self.dims)

    @property
    def ndim(self) -> int:
        """Dimensions without trailing singleton axes beyond the third (ITK reads (x, y, z, 1) as 3D); a vector
        image, (x, y, z, 1, components) as NIfTI writes it, counts as 4D: its components are channels."""
        n = len(self.dims)
        while n > 3 and self.dims[n - 1] == 1:
            n -= 1
        if n == 5 and self.dims[3] == 1:
            return 4
        return n

    @property
    def data_bytes(self) -> int:
        return self.n_voxels * self.dtype.itemsize

    @property
    def expected_bytes(self) -> int:
        """Uncompressed bytes a complete file holds at least: header, extensions and the voxel data."""
        return self.vox_offset + self.data_bytes

    @property
    def scaled(self) -> bool:
        """Whether readers rescale the stored values (scl_slope not 0/NaN/1, or an intercept): ITK then returns
        floats, so only ITK's own read gives ITK's values."""
        slope, inter = self.scl_slope, self.scl_inter
        if not math.isfinite(slope) or slope == 0:
            return False  # the standard: no scaling
        return slope != 1 or (math.isfinite(inter) and inter != 0)


def _unreadable(path: str, why: str) -> IntegrityError:
    return IntegrityError(f"{path}: cannot read the image: {why}")


def _open_stream_head(path: str, n: int) -> tuple[bytes, bool]:
    """The first ``n`` uncompressed bytes of a file and whether it is gzip-compressed."""
    with open(path, "rb") as fh:
        start = fh.read(2)
        if start != _GZIP_MAGIC:
            return start + fh.read(n - len(start)), False
        fh.seek(0)
        d = deflate_module().decompressobj(16 + 15)
        out, pending = b"", b""
        while len(out) < n and not d.eof:
            if not pending:
                pending = fh.read(1 << 12)
                if not pending:
                    break
            try:  # bounded output: 4 KiB of a label's zeros inflate to megabytes
                out += d.decompress(pending, n - len(out))
                pending = d.unconsumed_tail
            except deflate_module().error as exc:
                raise _unreadable(path, f"corrupt gzip stream at its start ({exc}): re-download the file") from None
        return out[:n], True


def read_nifti_info(path: str | os.PathLike) -> NiftiInfo:
    """Parse a NIfTI-1/2 header (:mod:`volume.nifti_fields`) without reading voxels.

    Raises IntegrityError for an empty file, a file that is not NIfTI (no magic), or a header whose dims or
    datatype make no sense.
    """
    path = os.fspath(path)
    size = os.path.getsize(path)
    if size == 0:
        raise IntegrityError(f"{path}: empty file (0 bytes): re-download the file")
    head, gz = _open_stream_head(path, 544)
    if len(head) >= 4 and struct.unpack("<i", head[:4])[0] in (348, 540):
        endian = "<"
    elif len(head) >= 4 and struct.unpack(">i", head[:4])[0] in (348, 540):
        endian = ">"
    else:
        what = "a gzip file" if gz else "a file"
        raise _unreadable(path, f"{what} that is not NIfTI (no NIfTI header in its first {len(head)} bytes): "
                                "re-download the file or check its format")
    version = 2 if struct.unpack(endian + "i", head[:4])[0] == 540 else 1
    hsize = 540 if version == 2 else 348
    if len(head) < hsize:
        raise _unreadable(path, f"truncated NIfTI header ({len(head)} of {hsize} bytes): re-download the file")
    magic = head[4:8] if version == 2 else head[344:348]
    if not magic.startswith(b"n+"):
        raise _unreadable(path, f"not a single-file NIfTI (magic {magic!r}; a .hdr/.img pair or ANALYZE file): "
                                "convert it to .nii.gz")
    hdr = header_fields(head[:hsize], version, endian)
    try:
        dtype = data_dtype(hdr, endian)
    except HeaderFieldError as exc:
        raise _unreadable(path, f"unusable NIfTI header ({exc})") from None
    dim = [int(v) for v in hdr["dim"]]
    if not 1 <= dim[0] <= 7 or any(d < 1 for d in dim[1:dim[0] + 1]):
        raise _unreadable(path, f"invalid NIfTI dims {dim[:max(1, min(dim[0], 7)) + 1]}: re-download the file")
    pixdim = [float(v) for v in hdr["pixdim"]]
    _check_orientation(path, hdr)
    vox_offset = float(hdr["vox_offset"])
    if not (math.isfinite(vox_offset) and 0 <= vox_offset <= size * _MAX_DEFLATE_RATIO + hsize + 4):
        raise _unreadable(path, f"the header's vox_offset {vox_offset:g} (where the voxels start) is not a byte "
                                f"offset inside the {size:,}-byte file: a damaged header; re-download the file")
    isize = None
    if gz and size >= 18:
        with open(path, "rb") as fh:
            fh.seek(-4, os.SEEK_END)
            isize = struct.unpack("<I", fh.read(4))[0]
    return NiftiInfo(
        path=path, gzipped=gz, file_bytes=size, version=version, dims=tuple(dim[1:dim[0] + 1]), dtype=dtype,
        vox_offset=max(int(vox_offset), hsize + 4), pixdim=tuple(pixdim[1:4]),
        scl_slope=float(hdr["scl_slope"]), scl_inter=float(hdr["scl_inter"]), gzip_isize=isize,
    )


def _check_orientation(path: str, hdr) -> None:
    """Refuse a qform or sform in use (code > 0) with a NaN or infinite field: ITK then falls back to another
    orientation without a word, and the volume would be stored turned or moved."""
    for form, fields in (("qform", ("quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y", "qoffset_z")),
                         ("sform", ("srow_x", "srow_y", "srow_z"))):
        if int(hdr[f"{form}_code"]) <= 0:
            continue
        bad = [f for f in fields if not np.all(np.isfinite(np.asarray(hdr[f], dtype=float)))]
        if bad:
            raise _unreadable(path, f"the header's {form} (orientation) has non-finite {', '.join(bad)}: a damaged "
                                    f"header; fix its {form} or re-download the file")


def check_file(path: str | os.PathLike, *, max_voxels: int | None = DEFAULT_MAX_VOXELS,
               check_header_spacing: bool = True) -> NiftiInfo | None:
    """Header checks of one input file, before any voxel is read. Returns the NIfTI info (None for other
    formats, which only ``check_spacing``/``check_direction`` on their ITK header cover).

    NIfTI: 3D or 4D; at most ``max_voxels``; spatial pixdim usable (unless ``check_header_spacing`` is False, for
    a case whose spacing is overridden); the data block present: a ``.nii`` at least ``vox_offset + voxels ×
    bytes`` long, a ``.nii.gz`` whose trailer's ISIZE matches that length. A trailer that does not match (a
    truncated file, or a legal multi-member gzip) is settled by decompressing the file (:func:`verify_gzip`).
    """
    path = os.fspath(path)
    problem = not_a_file(path)
    if problem:
        raise IntegrityError(f"{path}: {problem}")
    if not is_nifti(path):
        if os.path.getsize(path) == 0:
            raise IntegrityError(f"{path}: empty file (0 bytes): re-download the file")
        return None
    info = read_nifti_info(path)
    if info.ndim < 3 or info.ndim > 4:
        raise IntegrityError(f"{path}: expected a 3D or 4D image, the header says {info.ndim}D "
                             f"(dims {list(info.dims)})")
    check_voxel_count(path, info.n_voxels, max_voxels,
                      f" ({' × '.join(str(d) for d in info.dims)})")
    check_extent(path, info.dims)
    check_pixel_type(path, info.dtype)
    if check_header_spacing:
        check_spacing(path, info.pixdim, "header spacing (pixdim)")
    need = info.expected_bytes
    if not info.gzipped:
        if info.file_bytes < need:
            raise IntegrityError(
                f"{path}: truncated file ({info.file_bytes:,} of the {need:,} bytes its header announces): "
                "re-download the file")
        return info
    if need > _MAX_DEFLATE_RATIO * info.file_bytes + (1 << 20):
        raise IntegrityError(
            f"{path}: the header announces {need:,} bytes of data, more than a {info.file_bytes:,}-byte gzip file "
            "can hold: a damaged header or a truncated file; re-download the file")
    if info.gzip_isize != need % (1 << 32):
        verify_gzip(path, expected=need)
    return info


def _truncated(path: str, file_bytes: int, got: int, expected: int | None) -> IntegrityError:
    if expected and got:
        est = int(file_bytes * expected / got)
        detail = f"ends after {file_bytes:,} of ~{max(est, file_bytes):,} bytes; {got:,} of {expected:,} " \
                 "uncompressed bytes"
    else:
        detail = f"ends after {file_bytes:,} bytes, before the end of the compressed data"
    return IntegrityError(f"{path}: truncated gzip stream ({detail}): re-download the file")


def _inflate(path: str, sink: Callable[[bytes], None] | None, expected: int | None) -> int:
    """Decompress every gzip member of ``path`` in blocks, handing each output block to ``sink``; zlib checks
    each member's CRC-32 and length against its trailer. Returns the uncompressed byte count. Bytes after the
    last member that do not start another member are ignored (as gzip and ITK do)."""
    size = os.path.getsize(path)
    total = 0
    with open(path, "rb", buffering=0) as fh:
        pending = fh.read(_READ_BLOCK)
        while True:
            if pending[:2] != _GZIP_MAGIC:
                if total == 0:
                    raise IntegrityError(f"{path}: not a gzip file")
                return total  # trailing bytes after the last member
            d = deflate_module().decompressobj(16 + 15)
            while not d.eof:
                if not pending:
                    pending = fh.read(_READ_BLOCK)
                try:
                    if pending:
                        out = d.decompress(pending, _OUT_BLOCK)
                    else:  # the file ended: drain what zlib holds, then the stream must be complete
                        out = d.flush()
                        if not d.eof:
                            if out and sink is not None:
                                sink(out)
                            raise _truncated(path, size, total + len(out), expected)
                except deflate_module().error as exc:
                    raise IntegrityError(f"{path}: corrupt gzip stream after {total:,} uncompressed bytes ({exc}): "
                                         "re-download the file") from None
                pending = d.unconsumed_tail
                if out:
                    if sink is not None:
                        sink(out)
                    total += len(out)
            pending = d.unused_data
            if len(pending) < 2:
                pending += fh.read(_READ_BLOCK)
            if not pending:
                return total


def verify_gzip(path: str | os.PathLike, expected: int | None = None) -> int:
    """Decompress a whole gzip file (CRC-32 and length of every member checked by zlib) without keeping the
    data. Raises IntegrityError when the stream is truncated or corrupt, or holds fewer than ``expected``
    uncompressed bytes. Returns the uncompressed byte count."""
    path = os.fspath(path)
    total = _inflate(path, None, expected)
    if expected is not None and total < expected:
        raise IntegrityError(
            f"{path}: complete gzip stream, but it holds {total:,} bytes where the NIfTI header announces "
            f"{expected:,}: the file was cut before compression or its header is wrong; re-download the file")
    return total


def read_nifti_voxels(info: NiftiInfo) -> np.ndarray:
    """The data block of a NIfTI file as a Fortran-ordered array of ``info.dims`` (x fastest), native byte
    order, raw stored values (no scaling). A ``.nii.gz`` is decompressed once, every member's CRC-32 and length
    checked. Raises IntegrityError naming the file when it is truncated or corrupt."""
    path, need = info.path, info.expected_bytes
    if not info.gzipped:
        if info.file_bytes < need:
            raise IntegrityError(f"{path}: truncated file ({info.file_bytes:,} of the {need:,} bytes its header "
                                 "announces): re-download the file")
        raw = np.fromfile(path, dtype=np.uint8, count=info.data_bytes, offset=info.vox_offset)
    else:
        raw = np.empty(info.data_bytes, dtype=np.uint8)
        pos = 0  # position in the uncompressed stream

        def sink(block: bytes) -> None:
            nonlocal pos
            lo, hi = max(pos, info.vox_offset), min(pos + len(block), need)
            if lo < hi:
                raw[lo - info.vox_offset:hi - info.vox_offset] = np.frombuffer(block, np.uint8, hi - lo, lo - pos)
            pos += len(block)

        total = _inflate(path, sink, need)
        if total < need:
            raise IntegrityError(
                f"{path}: complete gzip stream, but it holds {total:,} bytes where the NIfTI header announces "
                f"{need:,}: the file was cut before compression or its header is wrong; re-download the file")
    arr = raw.view(info.dtype)
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return arr.reshape(info.dims, order="F")


def verify_nifti_file(info: NiftiInfo) -> None:
    """The complete check for a NIfTI file whose voxels ITK reads itself (scaled data, vector or unusual pixel
    types): a separate decompression pass (CRC-32, length) and, for float data, a NaN/Inf count by nibabel,
    which keeps NaN where ITK reads 0."""
    if info.gzipped:
        verify_gzip(info.path, info.expected_bytes)
    if info.dtype.kind == "f":
        import nibabel as nib

        check_finite(info.path, np.asanyarray(nib.load(info.path).dataobj))


def diagnose_nifti(path: str) -> None:
    """For a NIfTI file another reader failed on: raise the IntegrityError that says what is damaged (header,
    truncation, a corrupt gzip stream), or return when these checks find nothing."""
    try:
        info = read_nifti_info(path)
    except OSError:
        return
    if info.gzipped:
        verify_gzip(path, info.expected_bytes)
    elif info.file_bytes < info.expected_bytes:
        raise IntegrityError(f"{path}: truncated file ({info.file_bytes:,} of the {info.expected_bytes:,} bytes "
                             "its header announces): re-download the file")
