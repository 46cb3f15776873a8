"""The fields of a NIfTI-1 or NIfTI-2 header that the checks read, parsed from its bytes with numpy alone.

nibabel parsed them before; importing it costs ~0.2 s, paid by every build worker before its first header (a
tenth of the bench build's start-up, docs/BENCHMARKS.md, issue 22). The layouts are the standard's (nifti1.h,
nifti2.h); ``tests/pipeline/test_nifti_fields.py`` checks every offset and every datatype against nibabel's own
header classes and compares both parsers on real and crafted files.

:func:`header_fields` returns a numpy record whose fields are named as nibabel names them (``dim``, ``pixdim``,
``vox_offset``, ``qform_code``, ``srow_x``...), so the checks read it as they read nibabel's header.
"""
from __future__ import annotations

import numpy as np

__all__ = ["HeaderFieldError", "data_dtype", "header_fields"]


class HeaderFieldError(ValueError):
    """A header whose datatype code names no voxel type."""


# The fields read: name -> ((NIfTI-1 format, byte offset), (NIfTI-2 format, byte offset)), per nifti1.h and
# nifti2.h; NIfTI-2 widens them to 64 bits and moves them.
_FIELDS: dict[str, tuple[tuple[str, int], tuple[str, int]]] = {
    "datatype": (("i2", 70), ("i2", 12)),
    "dim": (("(8,)i2", 40), ("(8,)i8", 16)),
    "pixdim": (("(8,)f4", 76), ("(8,)f8", 104)),
    "vox_offset": (("f4", 108), ("i8", 168)),
    "scl_slope": (("f4", 112), ("f8", 176)),
    "scl_inter": (("f4", 116), ("f8", 184)),
    "qform_code": (("i2", 252), ("i4", 344)),
    "sform_code": (("i2", 254), ("i4", 348)),
    **{name: (("f4", 256 + 4 * i), ("f8", 352 + 8 * i)) for i, name in
       enumerate(("quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y", "qoffset_z"))},
    **{f"srow_{a}": (("(4,)f4", 280 + 16 * i), ("(4,)f8", 400 + 32 * i)) for i, a in enumerate("xyz")},
}


def _layout(version: int) -> np.dtype:
    """The fields of :data:`_FIELDS` as one numpy record of the header's size (348 or 540 bytes)."""
    formats, offsets = zip(*(versions[version - 1] for versions in _FIELDS.values()))
    return np.dtype({"names": list(_FIELDS), "formats": list(formats), "offsets": list(offsets),
                     "itemsize": 348 if version == 1 else 540})


_LAYOUTS = {1: _layout(1), 2: _layout(2)}

# NIfTI datatype code -> numpy type (byte order added from the header's); RGB and RGBA as nibabel gives them.
_DATATYPES: dict[int, str | list] = {
    2: "u1", 4: "i2", 8: "i4", 16: "f4", 32: "c8", 64: "f8", 256: "i1", 512: "u2", 768: "u4", 1024: "i8",
    1280: "u8", 1536: "f16", 1792: "c16", 2048: "c32",
    128: [("R", "u1"), ("G", "u1"), ("B", "u1")], 2304: [("R", "u1"), ("G", "u1"), ("B", "u1"), ("A", "u1")],
}


def header_fields(head: bytes, version: int, endian: str) -> np.void:
    """The fields of a header (``head``: at least its 348 or 540 bytes) in ``endian`` ("<" or ">") byte order."""
    layout = _LAYOUTS[version].newbyteorder(endian)
    return np.frombuffer(head, dtype=layout, count=1)[0]


def data_dtype(fields: np.void, endian: str) -> np.dtype:
    """The voxels' on-disk dtype, with the header's byte order. Raises HeaderFieldError for an unknown code."""
    code = int(fields["datatype"])
    kind = _DATATYPES.get(code)
    if kind is None:
        raise HeaderFieldError(f"datatype code {code} names no voxel type")
    try:
        dtype = np.dtype(kind)
    except TypeError:  # float128 / complex256 where this platform has no such type
        raise HeaderFieldError(f"datatype code {code} ({kind}) has no numpy type on this platform") from None
    return dtype if isinstance(kind, list) or dtype.itemsize == 1 else dtype.newbyteorder(endian)
