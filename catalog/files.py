"""Which file names are images: one list of endings for every reader of raw scans (the MSD, LiTS, VISCERAL and
nnU-Net sources of the build, and ``med3d-train predict``), below both halves so that each can import it.
"""
from __future__ import annotations

__all__ = ["IMAGE_ENDINGS", "image_stem"]

IMAGE_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
"""3D image files the project reads (with SimpleITK; NIfTI also header-checked first): NIfTI, compressed or not,
NRRD, MetaImage in one file (``.mha``) or as a header beside its ``.raw`` (``.mhd``). Compared case-sensitively,
as nnU-Net's ``file_ending`` and the datasets' own names are."""


def image_stem(name: str) -> str | None:
    """A file name without its image ending: ``ct_001.nii.gz`` -> ``ct_001``; None when the name has none of
    :data:`IMAGE_ENDINGS` (``notes.txt``, ``ct.raw``)."""
    for ending in IMAGE_ENDINGS:
        if name.endswith(ending):
            return name[: -len(ending)]
    return None
