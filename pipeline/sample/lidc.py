"""A miniature LIDC-IDRI in the real on-disk layout, for tests and laptop runs.

``LIDC-IDRI-000N/<study uid>/<series uid>/`` holds one CT DICOM file per slice (int16 stored values with
RescaleIntercept -1024, -2048 HU padding outside a circular field of view, file names in shuffled order so that
sorting by name is wrong) and one ``LidcReadMessage`` XML with four reading sessions:

- LIDC-IDRI-0001: a malignant nodule contoured by all four readers (ratings 5, 4, 5, 4; reader 0 also draws an
  ``inclusion=FALSE`` hole around its cavity), a benign nodule contoured by three readers (2, 1, 2), a < 3 mm
  nodule marked as one point by two readers, and one nonNodule.
- LIDC-IDRI-0002: a nodule rated 3 and 4 by two readers that extends past the last slice, so some rois lie on
  slices absent from the folder.
- LIDC-IDRI-0003: a series without XML (tolerated by the readers of the real data).

Every nodule gets a different noduleID from each reader, as in the real files. Everything is drawn from ``seed``.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

__all__ = ["write_lidc_sample", "SIZES"]

NS = "http://www.nih.gov"
SIZES: dict[str, tuple[int, int, int]] = {"tiny": (64, 64, 24), "small": (128, 128, 48), "bench": (512, 512, 120)}  # (x, y, z) voxels
SLICE_MM = 2.5
READER_IDS = ("540461523", "1428348137", "-750896469", "2103845659")
_OTHER_CHARACTERISTICS = (("subtlety", 5), ("internalStructure", 1), ("calcification", 6), ("sphericity", 4),
                          ("margin", 4), ("lobulation", 2), ("spiculation", 2), ("texture", 5))


@dataclass(frozen=True)
class _Lesion:
    """A spherical nodule: centre as fractions of the in-plane FOV and a slice index; radius in mm."""

    fx: float
    fy: float
    slice_k: float
    radius_mm: float
    ratings: dict[int, int | None]  # reader index -> malignancy (None: a < 3 mm point mark)
    cavity_mm: float = 0.0  # radius of an air cavity drawn by reader 0 as an inclusion=FALSE hole


def _patients(nz: int) -> list[dict]:
    return [
        {"pixel_mm": 0.75, "lesions": [
            _Lesion(0.36, 0.40, nz * 0.45, 6.5, {0: 5, 1: 4, 2: 5, 3: 4}, cavity_mm=2.0),
            _Lesion(0.70, 0.66, nz * 0.70, 4.0, {0: 2, 1: 1, 2: 2}),
            _Lesion(0.30, 0.72, nz * 0.20, 1.0, {1: None, 3: None}),
        ], "non_nodule": (2, 0.68, 0.30, int(nz * 0.15))},
        {"pixel_mm": 0.70, "lesions": [_Lesion(0.50, 0.42, nz - 1.2, 5.0, {0: 3, 2: 4})], "non_nodule": None},
        {"pixel_mm": 0.80, "lesions": [], "non_nodule": None, "no_xml": True},
    ]


def _uid(rng: np.random.Generator) -> str:
    """A random UUID-derived DICOM UID (root 2.25)."""
    return "2.25." + str(int.from_bytes(rng.bytes(15), "big"))


def write_lidc_sample(out: str | Path, *, seed: int = 0, size: str = "tiny") -> list[Path]:
    """Write the miniature LIDC-IDRI under ``out``; returns the series folders, one per patient, in order.

    ``size`` is "tiny" (64x64x24 voxels), "small" (128x128x48) or "bench" (512x512x120, a real CT series's size);
    slices are 2.5 mm apart.
    """
    if size not in SIZES:
        raise ValueError(f"unknown sample size {size!r}; choose one of {sorted(SIZES)}")
    rng = np.random.default_rng(seed)
    nx, ny, nz = SIZES[size]
    series_dirs = []
    for p, spec in enumerate(_patients(nz), start=1):
        patient_id = f"LIDC-IDRI-{p:04d}"
        study_uid, series_uid = _uid(rng), _uid(rng)
        folder = Path(out) / patient_id / study_uid / series_uid
        folder.mkdir(parents=True, exist_ok=True)
        px = spec["pixel_mm"]
        origin = (-nx * px / 2 + float(rng.uniform(-5, 5)), -ny * px / 2 + float(rng.uniform(-5, 5)),
                  -200.0 + SLICE_MM * p)
        lesions = [_jitter(les, rng) for les in spec["lesions"]]
        hu = _volume((nx, ny, nz), px, lesions, rng)
        sop_uids = [_uid(rng) for _ in range(nz)]
        _write_dicom(folder, hu, origin, px, patient_id, study_uid, series_uid, sop_uids, rng)
        if not spec.get("no_xml"):
            xml = _read_message(lesions, spec["non_nodule"], origin, px, (nx, ny, nz), study_uid, series_uid,
                                sop_uids, rng)
            (folder / f"{60 + p}.xml").write_bytes(xml)
        series_dirs.append(folder)
    return series_dirs


def _jitter(les: _Lesion, rng: np.random.Generator) -> _Lesion:
    d = rng.uniform(-0.03, 0.03, 2)
    return _Lesion(les.fx + d[0], les.fy + d[1], les.slice_k, les.radius_mm, les.ratings, les.cavity_mm)


def _center_mm(les: _Lesion, shape: tuple[int, int, int], px: float) -> np.ndarray:
    """Lesion centre in index-space millimetres relative to the origin: (x, y, z)."""
    return np.array([les.fx * shape[0] * px, les.fy * shape[1] * px, les.slice_k * SLICE_MM])


def _volume(shape: tuple[int, int, int], px: float, lesions: list[_Lesion], rng: np.random.Generator) -> np.ndarray:
    """HU volume (z, y, x) int16: body, lung, spherical nodules, noise, -2048 padding outside a circular FOV."""
    nx, ny, nz = shape
    z, y, x = np.meshgrid(np.arange(nz) * SLICE_MM, np.arange(ny) * px, np.arange(nx) * px, indexing="ij")
    cx, cy = nx * px / 2, ny * px / 2
    r2 = ((x - cx) / (0.49 * nx * px)) ** 2 + ((y - cy) / (0.49 * ny * px)) ** 2
    hu = np.full(x.shape, -1000.0)
    hu[((x - cx) / (0.46 * nx * px)) ** 2 + ((y - cy) / (0.40 * ny * px)) ** 2 <= 1] = 40.0
    hu[((x - cx) / (0.40 * nx * px)) ** 2 + ((y - cy) / (0.34 * ny * px)) ** 2 <= 1] = -850.0
    for les in lesions:
        c = _center_mm(les, shape, px)
        d2 = (x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2
        hu[d2 <= les.radius_mm**2] = 30.0
        if les.cavity_mm:
            hu[d2 <= les.cavity_mm**2] = -950.0
    hu += rng.normal(0.0, 15.0, hu.shape)
    hu[r2 > 1] = -2048.0
    return np.clip(np.rint(hu), -2048, 3071).astype(np.int16)


def _write_dicom(folder: Path, hu: np.ndarray, origin: tuple[float, float, float], px: float, patient_id: str,
                 study_uid: str, series_uid: str, sop_uids: list[str], rng: np.random.Generator) -> None:
    """One file per slice. GDCM stores (HU - intercept) / slope, so the files hold HU + 1024."""
    nz = hu.shape[0]
    names = rng.permutation(nz)
    while np.all(np.diff(names) > 0) or np.all(np.diff(names) < 0):  # sorting by name must be wrong
        names = rng.permutation(nz)
    frame_uid = _uid(rng)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(nz):
        image = sitk.GetImageFromArray(hu[k : k + 1])
        z = origin[2] + k * SLICE_MM
        image.SetOrigin((origin[0], origin[1], z))
        image.SetSpacing((px, px, SLICE_MM))
        tags = {
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2", "0008|0018": sop_uids[k], "0008|0060": "CT",
            "0008|0020": "20000101", "0008|0030": "000000",  # fixed: ITK would stamp the current time
            "0010|0020": patient_id, "0020|000d": study_uid, "0020|000e": series_uid, "0020|0052": frame_uid,
            "0020|0013": str(nz - k), "0020|0032": f"{origin[0]:.6f}\\{origin[1]:.6f}\\{z:.6f}",
            "0020|0037": "1\\0\\0\\0\\1\\0", "0020|1041": f"{z:.6f}", "0018|0050": f"{SLICE_MM:.6f}",
            "0018|0088": f"{SLICE_MM:g}",  # as ITK writes it; ITK adds it itself once a series was read
            "0028|0030": f"{px:.6f}\\{px:.6f}", "0028|1052": "-1024", "0028|1053": "1", "0028|1054": "HU",
        }
        for key, value in tags.items():
            image.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"1-{names[k] + 1:03d}.dcm"))
        writer.Execute(image)


def _sub(parent: ET.Element, tag: str, text: object = None) -> ET.Element:
    elem = ET.SubElement(parent, tag)
    if text is not None:
        elem.text = str(text)
    return elem


def _ring(cx: float, cy: float, r: float) -> list[tuple[int, int]]:
    """Closed ring of integer (x, y) pixels at radius ``r`` px, first point repeated at the end as in LIDC."""
    t = np.linspace(0, 2 * np.pi, max(8, int(np.ceil(4 * np.pi * r))), endpoint=False)
    pts = np.rint(np.c_[cx + r * np.cos(t), cy + r * np.sin(t)]).astype(int)
    keep = np.r_[True, np.any(pts[1:] != pts[:-1], axis=1)]
    ring = [tuple(map(int, p)) for p in pts[keep]]
    return ring + [ring[0]]


def _roi(parent: ET.Element, z: float, sop: str, points: list[tuple[int, int]], inclusion: bool = True) -> None:
    roi = _sub(parent, "roi")
    _sub(roi, "imageZposition", f"{z:.6f}")
    _sub(roi, "imageSOP_UID", sop)
    _sub(roi, "inclusion", "TRUE" if inclusion else "FALSE")
    for x, y in points:
        edge = _sub(roi, "edgeMap")
        _sub(edge, "xCoord", x)
        _sub(edge, "yCoord", y)


def _nodule_id(reader: int, n: int) -> str:
    """Reader-specific id styles, as in the real files (the same nodule never shares an id across readers)."""
    return (f"Nodule {n + 1:03d}", f"IL057_{127360 + n}", f"MI014_{12118 + n}", str(n))[reader]


def _read_message(lesions: list[_Lesion], non_nodule: tuple | None, origin: tuple[float, float, float],
                  px: float, shape: tuple[int, int, int], study_uid: str, series_uid: str, sop_uids: list[str],
                  rng: np.random.Generator) -> bytes:
    """The LidcReadMessage XML bytes: four sessions, contours with per-reader jitter of centre and radius."""
    root = ET.Element("LidcReadMessage", {"uid": _uid(rng), "xmlns": NS})  # default namespace, as in LIDC
    header = _sub(root, "ResponseHeader")
    for tag, text in (("Version", "1.8.1"), ("TaskDescription", "Second unblinded read"),
                      ("SeriesInstanceUid", series_uid), ("StudyInstanceUID", study_uid)):
        _sub(header, tag, text)
    nx, ny, nz = shape
    for reader, reader_id in enumerate(READER_IDS):
        session = _sub(root, "readingSession")
        _sub(session, "annotationVersion", "3.12")
        _sub(session, "servicingRadiologistID", reader_id)
        order = rng.permutation(len(lesions))
        for n, li in enumerate(order):
            les = lesions[li]
            if reader not in les.ratings:
                continue
            nodule = _sub(session, "unblindedReadNodule")
            _sub(nodule, "noduleID", _nodule_id(reader, n))
            cx, cy = les.fx * nx, les.fy * ny  # pixel coordinates of the centre
            if les.ratings[reader] is None:  # < 3 mm: one point, no characteristics
                k = int(round(les.slice_k))
                _roi(nodule, origin[2] + k * SLICE_MM, sop_uids[k], [(int(round(cx)), int(round(cy)))])
                continue
            chars = _sub(nodule, "characteristics")
            for name, value in _OTHER_CHARACTERISTICS + (("malignancy", les.ratings[reader]),):
                _sub(chars, name, value)
            jx, jy = rng.normal(0, 0.4, 2)
            radius = les.radius_mm * (1 + rng.uniform(-0.06, 0.06))  # this reader's radius, mm
            reach = radius / SLICE_MM
            for k in range(int(np.floor(les.slice_k - reach)), int(np.ceil(les.slice_k + reach)) + 1):
                dz = (k - les.slice_k) * SLICE_MM
                if abs(dz) >= radius:
                    continue
                rho = np.sqrt(radius**2 - dz**2) / px
                sop = sop_uids[k] if 0 <= k < nz else _uid(rng)  # slices past the series: unknown SOP
                _roi(nodule, origin[2] + k * SLICE_MM, sop, _ring(cx + jx, cy + jy, rho + 0.5))
                if reader == 0 and les.cavity_mm and abs(dz) < SLICE_MM / 2:
                    _roi(nodule, origin[2] + k * SLICE_MM, sop, _ring(cx, cy, les.cavity_mm / px - 0.5), False)
    if non_nodule is not None:
        reader, fx, fy, k = non_nodule
        elem = _sub(root.findall("readingSession")[reader], "nonNodule")
        _sub(elem, "nonNoduleID", f"MI014_{12200 + k}")
        _sub(elem, "imageZposition", f"{origin[2] + k * SLICE_MM:.6f}")
        _sub(elem, "imageSOP_UID", sop_uids[k])
        locus = _sub(elem, "locus")
        _sub(locus, "xCoord", int(fx * nx))
        _sub(locus, "yCoord", int(fy * ny))
    ET.indent(root)
    return ET.tostring(root, encoding="UTF-8", xml_declaration=True)
