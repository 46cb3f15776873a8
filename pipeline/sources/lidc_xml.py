"""Parse LIDC-IDRI reader XML (``LidcReadMessage``) into plain dataclasses.

One XML per CT series holds up to four ``readingSession``s (one per radiologist). Each session lists
``unblindedReadNodule``s (a reader's nodule: ``noduleID``, ``characteristics`` with ``malignancy`` 1-5, and one
``roi`` per slice: ``imageZposition``, ``imageSOP_UID``, ``inclusion``, ``edgeMap`` x/y pixel points) and
``nonNodule``s (a single ``locus`` point). Nodules < 3 mm carry no characteristics and a one-point roi.

The parser is the stdlib expat driving an ``xml.etree.ElementTree.TreeBuilder``. Any DOCTYPE or ENTITY
declaration is refused outright: LIDC files never carry one, and refusing them closes entity-expansion
("billion laughs") and external-entity attacks regardless of the expat version. Namespaces are stripped to
local names, so files with the usual ``http://www.nih.gov`` default namespace and files without one parse alike.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from xml.parsers import expat

import numpy as np

__all__ = [
    "LidcXmlError",
    "Roi",
    "ReaderNodule",
    "NonNodule",
    "ReadingSession",
    "LidcRead",
    "parse_lidc_xml",
    "parse_lidc_xml_bytes",
]

ROOT_TAG = "LidcReadMessage"


class LidcXmlError(ValueError):
    """An XML file is unsafe, malformed, or not an LIDC ``LidcReadMessage``."""


@dataclass(frozen=True)
class Roi:
    """One reader's contour on one slice.

    ``z_mm`` is the slice's ImagePositionPatient z (mm); ``points`` is an (N, 2) int array of (x, y) pixel
    coordinates (column, row) of the boundary pixels, in drawing order. ``inclusion=False`` marks a hole.
    """

    z_mm: float
    sop_uid: str
    inclusion: bool
    points: np.ndarray = field(repr=False)


@dataclass(frozen=True)
class ReaderNodule:
    """One reader's mark of one nodule. ``malignancy`` is 1-5, or None for nodules < 3 mm (not rated)."""

    nodule_id: str
    malignancy: int | None
    characteristics: dict[str, int]
    rois: list[Roi]

    @property
    def is_small(self) -> bool:
        """True for a < 3 mm mark: every roi is a single point (LIDC's centre-of-mass marker)."""
        return bool(self.rois) and all(len(r.points) <= 1 for r in self.rois)


@dataclass(frozen=True)
class NonNodule:
    """A lesion >= 3 mm the reader judged not to be a nodule: one point (x, y pixels) on one slice."""

    nonnodule_id: str
    z_mm: float
    sop_uid: str
    x: int
    y: int


@dataclass(frozen=True)
class ReadingSession:
    """One radiologist's read. ``reader_id`` is ``servicingRadiologistID``, or ``reader<i>`` if absent."""

    reader_id: str
    nodules: list[ReaderNodule]
    non_nodules: list[NonNodule]


@dataclass(frozen=True)
class LidcRead:
    """All reading sessions of one series' XML, with the header's series and study UIDs (None if absent)."""

    path: str
    series_uid: str | None
    study_uid: str | None
    sessions: list[ReadingSession]


def parse_lidc_xml(path: str | Path) -> LidcRead:
    """Read and parse one LIDC XML file. Raises LidcXmlError (a ValueError) naming the file."""
    path = Path(path)
    return parse_lidc_xml_bytes(path.read_bytes(), name=str(path))


def parse_lidc_xml_bytes(data: bytes, name: str = "<bytes>") -> LidcRead:
    """Parse LIDC XML from bytes; ``name`` is used in error messages."""
    root = _safe_parse(data, name)
    if root.tag != ROOT_TAG:
        raise LidcXmlError(
            f"{name}: not an LIDC CT read: root element is <{root.tag}>, expected <{ROOT_TAG}> "
            "(chest X-ray reads use <IdriReadMessage> and are not supported)"
        )
    header = root.find("ResponseHeader")
    series_uid = _text(header, "SeriesInstanceUid") if header is not None else None
    study_uid = _text(header, "StudyInstanceUID") if header is not None else None
    sessions = [_session(s, i, name) for i, s in enumerate(root.findall("readingSession"))]
    return LidcRead(path=name, series_uid=series_uid, study_uid=study_uid, sessions=sessions)


def _safe_parse(data: bytes, name: str) -> ET.Element:
    """Parse with expat, refusing any DTD; element tags are reduced to local names (namespace dropped)."""

    def refuse(*_args: object) -> None:
        raise LidcXmlError(
            f"{name}: DOCTYPE/ENTITY declarations are not allowed in LIDC XML (refused to guard against "
            "entity expansion)"
        )

    builder = ET.TreeBuilder()
    parser = expat.ParserCreate(namespace_separator="}")
    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse
    parser.UnparsedEntityDeclHandler = refuse
    parser.ExternalEntityRefHandler = refuse
    parser.buffer_text = True
    parser.StartElementHandler = lambda tag, attrs: builder.start(_local(tag), attrs)
    parser.EndElementHandler = lambda tag: builder.end(_local(tag))
    parser.CharacterDataHandler = builder.data
    try:
        parser.Parse(data, True)
    except expat.ExpatError as exc:
        raise LidcXmlError(f"{name}: not well-formed XML: {exc}") from exc
    return builder.close()


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _text(elem: ET.Element | None, tag: str) -> str | None:
    if elem is None:
        return None
    child = elem.find(tag)
    if child is None or child.text is None or not child.text.strip():
        return None
    return child.text.strip()


def _number(elem: ET.Element, tag: str, name: str, kind: type = float) -> float | int:
    text = _text(elem, tag)
    if text is None:
        raise LidcXmlError(f"{name}: <{elem.tag}> lacks <{tag}>")
    try:
        value = float(text)
    except ValueError as exc:
        raise LidcXmlError(f"{name}: <{tag}> is not a number: {text!r}") from exc
    if not math.isfinite(value):  # a NaN position would travel into centroids and the nodules table
        raise LidcXmlError(f"{name}: <{tag}> is not a finite number: {text!r}; fix or remove that reading")
    return int(value) if kind is int else kind(value)


def _session(elem: ET.Element, index: int, name: str) -> ReadingSession:
    reader_id = _text(elem, "servicingRadiologistID") or f"reader{index}"
    nodules = [_nodule(n, name) for n in elem.findall("unblindedReadNodule")]
    non_nodules = [_non_nodule(n, name) for n in elem.findall("nonNodule")]
    return ReadingSession(reader_id=reader_id, nodules=nodules, non_nodules=non_nodules)


def _nodule(elem: ET.Element, name: str) -> ReaderNodule:
    characteristics: dict[str, int] = {}
    chars = elem.find("characteristics")
    if chars is not None:
        for c in chars:
            if c.text is not None and c.text.strip():
                try:
                    characteristics[c.tag] = int(float(c.text))
                except ValueError as exc:
                    raise LidcXmlError(f"{name}: characteristic <{c.tag}> is not a number: {c.text!r}") from exc
    malignancy = characteristics.get("malignancy")
    if malignancy is not None and not 1 <= malignancy <= 5:
        raise LidcXmlError(f"{name}: malignancy {malignancy} outside 1-5")
    rois = [_roi(r, name) for r in elem.findall("roi")]
    return ReaderNodule(
        nodule_id=_text(elem, "noduleID") or "", malignancy=malignancy, characteristics=characteristics, rois=rois
    )


def _roi(elem: ET.Element, name: str) -> Roi:
    points = [
        (_number(e, "xCoord", name, int), _number(e, "yCoord", name, int)) for e in elem.findall("edgeMap")
    ]
    inclusion = (_text(elem, "inclusion") or "TRUE").upper() != "FALSE"
    return Roi(
        z_mm=float(_number(elem, "imageZposition", name)),
        sop_uid=_text(elem, "imageSOP_UID") or "",
        inclusion=inclusion,
        points=np.asarray(points, dtype=np.int64).reshape(-1, 2),
    )


def _non_nodule(elem: ET.Element, name: str) -> NonNodule:
    locus = elem.find("locus")
    if locus is None:
        raise LidcXmlError(f"{name}: <nonNodule> lacks <locus>")
    return NonNodule(
        nonnodule_id=_text(elem, "nonNoduleID") or "",
        z_mm=float(_number(elem, "imageZposition", name)),
        sop_uid=_text(elem, "imageSOP_UID") or "",
        x=int(_number(locus, "xCoord", name, int)),
        y=int(_number(locus, "yCoord", name, int)),
    )
