"""ITK's reading of a NIfTI header, for NIfTI-2 files too.

SimpleITK's NIfTI reader takes NIfTI-1 only: a valid NIfTI-2 file (540-byte header, 64-bit dims, as
``nibabel.Nifti2Image`` and some converters write) fails with "Unable to determine ImageIO reader". Its header
says what a NIfTI-1 header says (NIfTI-2 widens the fields), so nibabel translates it into a NIfTI-1 header,
and ITK reads that header-only file from a temporary folder: the geometry (spacing, origin, direction from
qform/sform) comes out exactly as ITK would read it from a NIfTI-1 file. The voxels are read by
``integrity.read_nifti_voxels``, which knows both versions.
"""
from __future__ import annotations

import io
import os
import tempfile

import SimpleITK as sitk

from . import integrity
from .diagnose import one_line

__all__ = ["header_reader"]

_NIFTI1_MAX_DIM = 32767  # dim[] is int16 in NIfTI-1


def header_reader(path: str) -> sitk.ImageFileReader:
    """An ``ImageFileReader`` whose ``ReadImageInformation`` has run on ``path`` (for a NIfTI-2 file: on its
    header translated to NIfTI-1). Raises ValueError naming the file when ITK cannot read the header."""
    path = str(path)
    info = integrity.read_nifti_info(path) if integrity.is_nifti(path) else None
    reader = sitk.ImageFileReader()
    if info is None or info.version == 1:
        reader.SetFileName(path)
        try:
            reader.ReadImageInformation()
        except RuntimeError as exc:
            if info is not None:  # say what is wrong with a damaged file, not only that ITK failed
                integrity.diagnose_nifti(path)
            raise ValueError(f"{path}: cannot read the image header ({one_line(exc)})") from None
        return reader
    return _nifti2_reader(info)


def _nifti2_reader(info: integrity.NiftiInfo) -> sitk.ImageFileReader:
    import nibabel as nib

    if max(info.dims) > _NIFTI1_MAX_DIM:
        raise ValueError(f"{info.path}: a NIfTI-2 file with {max(info.dims):,} voxels along an axis, more than "
                         f"NIfTI-1 (which ITK reads) can describe ({_NIFTI1_MAX_DIM:,}): split the volume")
    head, _ = integrity._open_stream_head(info.path, 540)
    try:
        hdr2 = nib.Nifti2Header.from_fileobj(io.BytesIO(head), check=False)
        hdr1 = nib.Nifti1Header.from_header(hdr2)
    except Exception as exc:  # nibabel raises several types for fields it cannot translate
        raise ValueError(f"{info.path}: cannot translate the NIfTI-2 header to NIfTI-1 ({one_line(exc)}): "
                         "convert the file to NIfTI-1") from None
    hdr1["vox_offset"] = 352
    with tempfile.TemporaryDirectory(prefix="med3d-nifti2-") as tmp:
        one = os.path.join(tmp, "header.nii")
        with open(one, "wb") as fh:
            fh.write(hdr1.binaryblock + b"\0" * 4)
        reader = sitk.ImageFileReader()
        reader.SetFileName(one)
        try:
            reader.ReadImageInformation()
        except RuntimeError as exc:
            raise ValueError(f"{info.path}: cannot read the NIfTI-2 header ({one_line(exc)}): convert the file "
                             "to NIfTI-1") from None
    return reader

