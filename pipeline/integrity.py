"""Integrity checks on raw input files: damaged downloads must fail, never be stored as good data.

SimpleITK reads damaged NIfTI files without a word: a ``.nii.gz`` cut short by an interrupted download reads as
a volume padded with zeros, NaN and infinite voxels read as 0, a header spacing (pixdim) of 0 reads as 1 mm,
and a header announcing 4000³ voxels makes it try to allocate them. The functions here catch each of those and
raise :class:`IntegrityError` (a ``ValueError``) whose message names the file, the problem and the fix.

Two kinds of check:

- **Header checks** (:func:`check_file`): the NIfTI header (parsed with nibabel) against the file: 3D or 4D,
  at most ``max_voxels`` voxels, a usable spacing, and enough bytes for ``vox_offset + voxels × bytes``: the file
  size of a ``.nii``, the gzip trailer's length field (ISIZE) of a ``.nii.gz``. These read a few hundred bytes and
  run where headers are read for planning, so a damaged case is refused before any voxel is read.
- **Voxel read** (:func:`read_nifti_voxels`): the voxels of a NIfTI file, decompressed once by zlib, which checks
  every gzip member's CRC-32 and length, and counted for NaN/Inf (float data). ``geometry.read_channels`` builds
  its SimpleITK images from these voxels instead of letting ITK decompress the file a second time, so the
  complete check costs about what ITK's own read would (docs/DECISIONS.md, ``benchmarks/checks.py``).

Everything here is pure: paths and arrays in, values or errors out; nothing knows about dask, zarr or cases.
"""
from __future__ import annotations

import io
import math
import os
import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .diagnose import not_a_file

__all__ = [
    "DEFAULT_MAX_VOXELS", "IntegrityError", "NiftiInfo", "check_contrast", "check_direction", "check_extent",
    "check_file", "check_pixel_type",
    "check_finite", "check_resampled_voxels", "check_spacing", "check_voxel_count", "count_nonfinite", "diagnose_nifti", "is_nifti",
    "read_nifti_info",
    "read_nifti_voxels", "verify_gzip", "verify_nifti_file",
]

DEFAULT_MAX_VOXELS = 2_000_000_000
"""Largest volume (voxels × channels) read by default: 5× a 512×512×1500 CT (393 M voxels), 56× the largest MSD
image (BrainTumour, 240×240×155×4); a header announcing 4000³ (64 G) voxels is refused before any read."""

_GZIP_MAGIC = b"\x1f\x8b"
_READ_BLOCK = 1 << 20
_OUT_BLOCK = 4 << 20
# Deflate cannot compress better than ~1032:1; a gzip file announcing more data than that can hold is damaged.
_MAX_DEFLATE_RATIO = 1032


class IntegrityError(ValueError):
    """An input file is damaged or its header is unusable; the message names the file and the fix."""


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
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        out, pending = b"", b""
        while len(out) < n and not d.eof:
            if not pending:
                pending = fh.read(1 << 12)
                if not pending:
                    break
            try:  # bounded output: 4 KiB of a label's zeros inflate to megabytes
                out += d.decompress(pending, n - len(out))
                pending = d.unconsumed_tail
            except zlib.error as exc:
                raise _unreadable(path, f"corrupt gzip stream at its start ({exc}): re-download the file") from None
        return out[:n], True


def read_nifti_info(path: str | os.PathLike) -> NiftiInfo:
    """Parse a NIfTI-1/2 header (nibabel) without reading voxels.

    Raises IntegrityError for an empty file, a file that is not NIfTI (no magic), or a header whose dims or
    datatype make no sense.
    """
    import nibabel as nib

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
    header_cls = nib.Nifti2Header if version == 2 else nib.Nifti1Header
    try:
        hdr = header_cls.from_fileobj(io.BytesIO(head[:hsize]), check=False)
        dtype = hdr.get_data_dtype()
    except Exception as exc:  # nibabel raises several types for unknown datatype codes
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


def check_extent(path: str, size_xyz: Sequence[int]) -> None:
    """Refuse a "volume" with one voxel along an axis (a single slice saved as 3D): nothing 3D to learn from,
    and a 3D patch or resampling of it is meaningless."""
    if len(size_xyz) >= 3 and min(size_xyz[:3]) < 2:
        raise IntegrityError(f"{path}: a single slice ({' × '.join(str(int(n)) for n in size_xyz[:3])} voxels), not a "
                             "3D volume: build from volumes with at least 2 voxels along each axis")


def check_pixel_type(path: str, dtype: np.dtype) -> None:
    """Refuse complex-valued voxels (MR raw data): Med3D normalizes real intensities."""
    if np.dtype(dtype).kind == "c":
        raise IntegrityError(f"{path}: complex-valued voxels ({np.dtype(dtype).name}): Med3D reads real-valued "
                             "images; store the magnitude (abs) of the image instead")


def check_voxel_count(path: str, n_voxels: int, max_voxels: int | None, what: str = "") -> None:
    """Refuse a volume larger than ``max_voxels`` (voxels × channels) before anything tries to allocate it."""
    if max_voxels is not None and n_voxels > max_voxels:
        raise IntegrityError(
            f"{path}: the header announces {n_voxels:,} voxels{what}, more than --max-voxels {max_voxels:,}: "
            "a damaged header, or raise --max-voxels if the volume is real")


MIN_SPACING_MM = 0.01
MAX_SPACING_MM = 50.0
"""Voxel sizes a scan can have: 10 µm (micro-CT) to 5 cm (the thickest slices of a scout). Outside, the header is
damaged: 300 mm makes a 1×1×1 volume that lost its labels, 1e-6 mm a resampled grid of petabytes."""


def check_spacing(path: str, spacing_xyz: Sequence[float], source: str = "header spacing") -> None:
    """Refuse zero, negative or NaN voxel sizes (x, y, z mm), which ITK would silently read as 1 mm, and sizes
    outside :data:`MIN_SPACING_MM`..:data:`MAX_SPACING_MM`."""
    bad = [(axis, s) for axis, s in zip("xyz", spacing_xyz) if not (math.isfinite(s) and s > 0)]
    if bad:
        where = ", ".join(f"{s:g} along {axis}" for axis, s in bad)
        raise IntegrityError(
            f"{path}: {source} is not a voxel size ({where} mm): fix the file's header (pixdim); "
            "build-lits also takes --spacing-override CSV")
    odd = [(axis, s) for axis, s in zip("xyz", spacing_xyz) if not MIN_SPACING_MM <= s <= MAX_SPACING_MM]
    if odd:
        where = ", ".join(f"{s:g} along {axis}" for axis, s in odd)
        raise IntegrityError(
            f"{path}: {source} ({where} mm) is outside {MIN_SPACING_MM:g}-{MAX_SPACING_MM:g} mm, no scan's voxel "
            "size: a damaged header; fix the file's header (pixdim)")


def check_resampled_voxels(path: str, size_zyx: Sequence[int], spacing_zyx: Sequence[float],
                           target_zyx: Sequence[float], n_channels: int, max_voxels: int | None) -> int:
    """Refuse a case whose volume on the target grid (voxels × channels after resampling from ``spacing_zyx``
    to ``target_zyx`` mm) exceeds ``max_voxels``, before that grid is allocated. Returns the voxel count."""
    n = math.prod(max(1, round(k * s / t)) for k, s, t in zip(size_zyx, spacing_zyx, target_zyx)) * n_channels
    if max_voxels is not None and n > max_voxels:
        raise IntegrityError(
            f"{path}: resampled from {tuple(round(v, 6) for v in spacing_zyx)} to the target spacing "
            f"{tuple(round(v, 6) for v in target_zyx)} mm (z, y, x), the volume would hold {n:,} voxels, more than "
            f"--max-voxels {max_voxels:,}: a damaged header, or raise --max-voxels if the volume is real")
    return n


def check_direction(path: str, direction: Sequence[float], tol: float = 1e-3) -> None:
    """Refuse a direction matrix (3×3 row-major) that is not orthonormal (sheared or scaled axes)."""
    d = np.asarray(direction, dtype=float).reshape(3, 3)
    if not np.all(np.isfinite(d)) or not np.allclose(d.T @ d, np.eye(3), atol=tol):
        raise IntegrityError(f"{path}: direction cosines are not orthonormal ({np.round(d, 4).tolist()}): "
                             "a sheared or damaged orientation; fix the header")


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
            d = zlib.decompressobj(16 + zlib.MAX_WBITS)
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
                except zlib.error as exc:
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


def count_nonfinite(arr: np.ndarray) -> tuple[int, int]:
    """(NaN count, ±Inf count) of a float array; (0, 0) for integers. One float sum settles the usual case."""
    if arr.dtype.kind not in "fc":
        return 0, 0
    flat = np.ravel(arr, order="K")  # a view of a C- or Fortran-ordered volume, never a transposing copy
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(np.sum(flat, dtype=np.float64 if arr.dtype.itemsize > 4 else np.float32)):
            return 0, 0
    nan = inf = 0
    for i in range(0, flat.size, _READ_BLOCK):
        part = flat[i:i + _READ_BLOCK]
        nan += int(np.count_nonzero(np.isnan(part)))
        inf += int(np.count_nonzero(np.isinf(part)))
    return nan, inf


def check_finite(path: str, arr: np.ndarray) -> None:
    """Refuse a volume holding NaN or infinite voxels, with their counts."""
    nan, inf = count_nonfinite(arr)
    if nan or inf:
        parts = [f"{n:,} {what}" for n, what in ((nan, "NaN"), (inf, "infinite")) if n]
        raise IntegrityError(f"{path}: {' and '.join(parts)} voxel(s) of {arr.size:,} (SimpleITK would read them "
                             "as 0): fix or re-export the file")


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


def check_contrast(path: str, arr: np.ndarray, p_lo: float, p_hi: float, std: float) -> None:
    """Refuse a channel that would be stored as all zeros: constant (every voxel equal), or no spread left
    after clipping to its percentiles / window (``std`` of the clipped volume 0)."""
    if std > 0:
        return
    lo, hi = arr.min(), arr.max()
    if lo == hi:
        raise IntegrityError(f"{path}: constant image (all {arr.size:,} voxels are {lo:g}): nothing to learn "
                             "from; re-export the file")
    raise IntegrityError(f"{path}: no contrast after clipping to [{p_lo:g}, {p_hi:g}] (values {lo:g}..{hi:g}, "
                         "std 0): check the file")
