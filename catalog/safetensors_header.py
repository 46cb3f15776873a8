"""The header of a ``.safetensors`` weights file, read and checked without torch and without reading a tensor.

Exported encoders (``med3d-train export --format safetensors``) carry their card in the file's metadata, so the
card is found where ``OUT.json`` is found for a ``.pth`` (:func:`catalog.card.find_card`): by the pipeline's
``--like`` (torch-free) as well as by ``finetune --init``. The layout (the format's public description): 8 bytes,
the little-endian length N of a JSON header; N bytes of JSON, ``{"__metadata__": {str: str}, name: {"dtype":
"F32", "shape": [..], "data_offsets": [begin, end]}, ...}``; then the tensors' bytes, offsets counted from the
end of the header.

A file given to us may be damaged or crafted: the length is checked against the file's size before anything is
read past it (a header claiming 2**63 bytes must not be allocated), and each entry's dtype, shape and byte range
against each other and against the file, so that :func:`read_header` answers every such file with one
:class:`SafetensorsHeaderError` naming it, before the safetensors library is asked to map it.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CARD_KEY", "DTYPE_BYTES", "FORMAT_KEY", "MAX_HEADER_BYTES", "SafetensorsHeaderError", "TensorEntry",
           "WeightsHeader", "embedded_card", "has_embedded_card", "read_header"]

CARD_KEY = "med3d_card"
"""Metadata key of the card (the JSON of :func:`catalog.card.make_card`, as one string: metadata values are
strings)."""
FORMAT_KEY = "format"
"""Metadata key naming what the file holds: ``med3d-encoder`` for our exports."""

DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
               "BOOL": 1}
"""The dtypes an encoder's state dict holds (floats; int64 batch-norm counters) and their sizes in bytes; any
other dtype in a weights file given to ``--init`` is refused by name."""

MAX_HEADER_BYTES = 100_000_000
"""The safetensors library's own limit on the JSON header; a longer one is refused before it is read."""


class SafetensorsHeaderError(ValueError):
    """A ``.safetensors`` file whose header cannot be trusted; the one-line message names the file and the fault."""


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of the header: dtype name (``F32``), shape, and its byte range after the header."""

    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass(frozen=True)
class WeightsHeader:
    """A checked header: ``metadata`` (str -> str) and ``tensors`` (name -> :class:`TensorEntry`)."""

    path: Path
    metadata: dict[str, str]
    tensors: dict[str, TensorEntry]


def _int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _entry(name: str, raw: object, data_bytes: int, fail) -> TensorEntry:
    if not isinstance(raw, dict):
        fail(f"tensor {name!r} is not described by an object")
    dtype, shape, offsets = raw.get("dtype"), raw.get("shape"), raw.get("data_offsets")
    if dtype not in DTYPE_BYTES:
        fail(f"tensor {name!r} has the unknown dtype {dtype!r} (known: {', '.join(DTYPE_BYTES)})")
    if not isinstance(shape, list) or not all(_int(s) for s in shape):
        fail(f"tensor {name!r} has the shape {shape!r}, not a list of sizes")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_int(o) for o in offsets)
            and offsets[0] <= offsets[1]):
        fail(f"tensor {name!r} has the byte range {offsets!r}, not [begin, end]")
    begin, end = offsets
    if end > data_bytes:
        fail(f"tensor {name!r} ends at byte {end} of the data, which holds {data_bytes}: the file is truncated")
    want = math.prod(shape) * DTYPE_BYTES[dtype]
    if end - begin != want:
        fail(f"tensor {name!r} of shape {tuple(shape)} {dtype} needs {want} bytes, its byte range holds "
             f"{end - begin}")
    return TensorEntry(dtype, tuple(shape), begin, end)


def read_header(path: str | os.PathLike[str]) -> WeightsHeader:
    """The checked header of the safetensors file ``path``: reads 8 bytes and the JSON header only.

    Raises :class:`SafetensorsHeaderError` (one line, naming the file) for a file too short, a header length
    beyond the file, a header that is not a JSON object, metadata that is not strings, an unknown dtype, a shape
    that does not fill its byte range, a byte range beyond the file, or tensors whose ranges overlap or leave
    gaps; FileNotFoundError when there is no such file."""
    path = Path(path)

    def fail(why: str):
        raise SafetensorsHeaderError(f"{path}: not a usable safetensors file: {why}")

    size = path.stat().st_size
    if size < 8:
        fail(f"{size} bytes, fewer than the 8 of the header length")
    with open(path, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        if n > size - 8:
            fail(f"the header claims {n} bytes, the file holds {size - 8} after the length")
        if n > MAX_HEADER_BYTES:
            fail(f"the header claims {n} bytes, more than the {MAX_HEADER_BYTES} allowed")
        raw = fh.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # not UTF-8, not JSON, a 5000-digit number, deep nesting
        fail(f"the header is not JSON ({type(exc).__name__}: {str(exc)[:80]})")
    if not isinstance(header, dict):
        fail(f"the header is a JSON {type(header).__name__}, not an object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                 for k, v in metadata.items()):
        fail("its __metadata__ is not an object of strings")
    data_bytes = size - 8 - n
    tensors = {str(name): _entry(str(name), desc, data_bytes, fail) for name, desc in header.items()}
    # The library refuses ranges that do not tile the data exactly; saying so here keeps the message one line.
    at = 0
    for name, entry in sorted(tensors.items(), key=lambda kv: (kv[1].begin, kv[1].end)):
        if entry.begin != at:
            fail(f"tensor {name!r} starts at byte {entry.begin} of the data, the previous one ends at {at}")
        at = entry.end
    if at != data_bytes:
        fail(f"the tensors fill {at} bytes of data, the file holds {data_bytes}")
    return WeightsHeader(path, dict(metadata), tensors)


def has_embedded_card(path: str | os.PathLike[str]) -> bool:
    """Whether the safetensors file ``path`` carries a card in its metadata; a damaged header counts as one, so
    that reading the card (:func:`embedded_card`) reports the damage rather than "no card"."""
    try:
        return CARD_KEY in read_header(path).metadata
    except SafetensorsHeaderError:
        return True


def embedded_card(path: str | os.PathLike[str]) -> object:
    """The card in the metadata of the safetensors file ``path``, parsed (checked by :func:`catalog.card.read_card`,
    which calls this). Raises ValueError naming the file: a damaged header, no card, a card that is not JSON."""
    meta = read_header(path).metadata
    if CARD_KEY not in meta:
        raise ValueError(f"{path}: a safetensors file without a Med3D card in its metadata (no {CARD_KEY!r} key)")
    try:
        return json.loads(meta[CARD_KEY])
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"{path}: its {CARD_KEY} metadata is not JSON ({type(exc).__name__}: "
                         f"{str(exc)[:80]})") from None
