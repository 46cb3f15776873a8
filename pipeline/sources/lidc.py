"""One LIDC-IDRI CT series → nodule crops in the store, its nodules' table rows and catalog rows.

Pure per-series work (nothing here knows about dask): read the DICOM series (GDCM order, gap check), parse the
reader XML, group the readers' marks into nodules, then for every *selected* nodule (contoured by at least
``min_readers`` readers, as in LUNA16) write one store case:

``lidc/<case_id>`` with ``case_id = <patient>_s<8 hex of sha256(series uid)>_n<nodule index>``::

    image       (1, S, S, S) float16 (S = crop_mm / crop_spacing; 48 by default): an axis-aligned LPS cube
                of crop_mm centred on the nodule centroid, linear resampling, z-scored with the whole series'
                statistics (HU below air_hu clamped first; clip to the series' 0.5/99.5 percentiles; mean and
                std of the clipped series). Voxels outside the scanned volume are -1000 HU (air) before the
                z-score; ``padded``/``fraction_outside`` say how much of the cube that is.
    label       (S, S, S) uint8: the consensus mask (voxels marked by >= half of the readers who marked the
                nodule), nearest-neighbour on the crop grid.
    foreground  sampled label voxels, as for every case.
    attrs       geometry of the crop (spacing, origin, direction, axes) and of the series (``original``), the
                nodule (centroid, diameter, volume, ratings, benign/malignant label, readers), the crop
                (padded, fraction outside, clamped voxels), the statistics, sources, params hash; the
                completion marker is written last (``pipeline.store.write_case``).

A series record ``lidc/_series/<patient>_s<hex>`` is written after all its crops: its marker holds the params
hash, the sources, the series' catalog rows and nodule rows, so an unchanged series is skipped on a re-run
without reading a pixel. Sources: the XML by path, size, mtime and sha256 (a touched but identical file does
not rebuild); the DICOM folder by ``listing_sha256``, a sha256 over the sorted (file name, size, mtime_ns) of
every non-XML file in it (what GDCM reads) — hashing ~100-500 MB of pixels per series on every re-run would
cost more than the check saves, so touching a DICOM file rebuilds its series.

A series that cannot be converted (several series in the folder, a missing slice, an XML that is not an LIDC
read or names another series, unreadable files) becomes one ``failed`` catalog row with case id
``<patient>_s<hex>`` whose error names the folder or file. A series without reader XML is not converted at
all (no nodules, no rows): the job counts and logs it.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import SimpleITK as sitk

from catalog.store_format import MARKER, CaseAttrs
from volume import intensity
from volume.diagnose import unreadable_file

from ..config import Case, DomainSpec, PrepConfig
from ..convert import failed_row, file_fingerprint, sha256_file
from ..store import case_marker, case_seed, jsonable, open_root, sample_foreground, write_case
from .lidc_crop import nodule_crop
from .lidc_nodules import AIR_HU, Nodule, consensus_mask, group_marks, nodules_table, reader_marks
from .lidc_series import LidcSeriesError, LidcSeriesRef, read_ct_series
from .lidc_xml import LidcXmlError, parse_lidc_xml

__all__ = [
    "DOMAIN", "SPEC", "LidcParams", "SeriesResult", "convert_series", "convert_series_or_fail", "crop_case_id",
    "dicom_listing", "estimate_series_memory", "series_failed", "series_key", "series_params_hash",
    "series_up_to_date",
]

DOMAIN = "lidc"
SERIES_GROUP = "_series"
SPEC = DomainSpec(name=DOMAIN, source_dataset="LIDC-IDRI", modality="CT", channel_names=("CT",),
                  labels={1: "nodule"})
PAPER_TEST_FRACTION = 99 / (1050 + 99)  # the paper's 1,050 train / 99 test nodules: ~8.6 % test


@dataclass(frozen=True, kw_only=True)
class LidcParams:
    """How nodules are selected and cropped. All fields but ``test_fraction`` enter the params hash."""

    min_readers: int = 3
    """A nodule gets a crop when at least this many readers contoured it (marked it as >= 3 mm)."""
    crop_mm: float = 48.0
    """Edge of the cubic crop (mm)."""
    crop_spacing: float = 1.0
    """Isotropic voxel size of the crop (mm)."""
    consensus_fraction: float = 0.5
    """Label voxels: marked by at least this share of the readers who marked the nodule."""
    link_mm: float = 5.0
    """Smallest distance (mm) linking marks of different readers into one nodule (``group_marks``)."""
    test_fraction: float = PAPER_TEST_FRACTION
    """Share of patients in the test split (patient-level, seeded hash); does not change stored bytes."""

    def __post_init__(self) -> None:
        if self.min_readers < 1:
            raise ValueError(f"min_readers must be >= 1, got {self.min_readers}")
        if not (self.crop_mm > 0 and self.crop_spacing > 0):
            raise ValueError(f"crop_mm and crop_spacing must be > 0 mm, got {self.crop_mm}, {self.crop_spacing}")
        n = self.crop_mm / self.crop_spacing
        if abs(n - round(n)) > 1e-6 or round(n) < 2:
            raise ValueError(f"crop_mm / crop_spacing must be a whole number of voxels >= 2, got {n:g}")
        if not 0 < self.consensus_fraction <= 1:
            raise ValueError(f"consensus_fraction must be in (0, 1], got {self.consensus_fraction}")
        if not 0 <= self.test_fraction < 1:
            raise ValueError(f"test_fraction must be in [0, 1), got {self.test_fraction}")

    @property
    def size(self) -> int:
        """Voxels along each crop edge."""
        return int(round(self.crop_mm / self.crop_spacing))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class SeriesResult:
    """What one series contributed: catalog rows (one per crop, or one failed row), nodule table rows (all its
    nodules), notes for the log; ``skipped`` when it came unchanged from the store."""

    key: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    nodules: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    skipped: bool = False

    @property
    def failed(self) -> bool:
        return any(r["status"] != "ok" for r in self.rows)


def series_key(ref: LidcSeriesRef) -> str:
    """``<patient>_s<first 8 hex of sha256(series uid)>``: short, stable, unique in practice within a patient."""
    return f"{ref.patient_id}_s{hashlib.sha256(ref.series_uid.encode()).hexdigest()[:8]}"


def crop_case_id(ref: LidcSeriesRef, nodule_index: int) -> str:
    return f"{series_key(ref)}_n{nodule_index}"


def _series_path(ref: LidcSeriesRef) -> str:
    return f"{DOMAIN}/{SERIES_GROUP}/{series_key(ref)}"


def series_params_hash(cfg: PrepConfig, params: LidcParams) -> str:
    """Hash of everything that decides a series' stored bytes (config, selection, crop grid, consensus)."""
    lidc = {k: v for k, v in params.to_dict().items() if k != "test_fraction"}
    return cfg.params_hash(domain=DOMAIN, modality="CT", labels=sorted(SPEC.labels), lidc=lidc)


def dicom_listing(ref: LidcSeriesRef) -> dict[str, Any]:
    """The DICOM folder's fingerprint: folder, file count, bytes, and ``listing_sha256`` over the sorted
    (name, size, mtime_ns) of its non-XML files."""
    h = hashlib.sha256()
    n = total = 0
    for entry in sorted(os.scandir(ref.dicom_dir), key=lambda e: e.name):
        if not entry.is_file() or entry.name.lower().endswith(".xml"):
            continue
        st = entry.stat()
        h.update(f"{entry.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        n, total = n + 1, total + st.st_size
    return {"dicom_dir": str(ref.dicom_dir), "n_files": n, "bytes": total, "listing_sha256": h.hexdigest()}


def _sources(ref: LidcSeriesRef) -> dict[str, Any]:
    xml = {**file_fingerprint(str(ref.xml_path)), "sha256": sha256_file(str(ref.xml_path))} if ref.xml_path else None
    return {"dicom": dicom_listing(ref), "xml": xml}


def estimate_series_memory(ref: LidcSeriesRef) -> int:
    """Peak bytes of converting a series: the volume as read, its clamped copy for the statistics and GDCM's
    buffers (about three times the uncompressed DICOM bytes), plus interpreter and libraries."""
    return int(200 * 2**20 + 3 * dicom_listing(ref)["bytes"])


def series_up_to_date(root, ref: LidcSeriesRef, params_hash: str) -> SeriesResult | None:
    """The stored result of a series when its record is complete with the same parameters, its sources are
    unchanged and every crop it lists is complete; else None (convert it)."""
    marker = case_marker(root, _series_path(ref))
    if not marker or marker.get("params_hash") != params_hash or ref.xml_path is None:
        return None
    rec = marker.get("sources", {})
    dicom = dict(rec.get("dicom") or {})  # paths compared absolute: older stores recorded them as given
    dicom["dicom_dir"] = os.path.abspath(str(dicom.get("dicom_dir", "")))
    if dicom != {**dicom_listing(ref), "dicom_dir": os.path.abspath(ref.dicom_dir)}:
        return None
    xml = rec.get("xml") or {}
    if os.path.abspath(str(xml.get("path", ""))) != os.path.abspath(ref.xml_path) or not ref.xml_path.exists():
        return None
    fp = file_fingerprint(str(ref.xml_path))
    if (fp["size"], fp["mtime_ns"]) != (xml.get("size"), xml.get("mtime_ns")) \
            and sha256_file(str(ref.xml_path)) != xml.get("sha256"):
        return None
    if any(case_marker(root, f"{DOMAIN}/{cid}") is None for cid in marker.get("case_ids", [])):
        return None
    rows = [{**row, "source_image": str(ref.dicom_dir), "source_label": str(ref.xml_path)}
            for row in marker.get("rows", [])]  # absolute, also where an older store recorded them as given
    return SeriesResult(key=series_key(ref), rows=rows, nodules=marker.get("nodules", []),
                        notes=marker.get("notes", []), skipped=True)


def _series_case(ref: LidcSeriesRef) -> Case:
    return Case(domain=DOMAIN, case_id=series_key(ref), scan_id=f"lidc:{ref.series_uid}",
                patient_id=ref.patient_id, images=(str(ref.dicom_dir),),
                label=str(ref.xml_path) if ref.xml_path else None, modality="CT")


def series_failed(ref: LidcSeriesRef, params_hash: str, error: str) -> SeriesResult:
    """The one failed catalog row standing for a series that could not be converted."""
    return SeriesResult(key=series_key(ref), rows=[failed_row(_series_case(ref), SPEC, params_hash, error)])


def convert_series_or_fail(ref: LidcSeriesRef, params: LidcParams, cfg: PrepConfig, store: str,
                           params_hash: str, storage_options: dict | None = None) -> SeriesResult:
    """``convert_series`` that turns any exception into one failed row naming the folder or file."""
    try:
        return convert_series(ref, params, cfg, store, params_hash, storage_options)
    except (LidcSeriesError, LidcXmlError) as exc:  # their messages name the folder / XML file
        return series_failed(ref, params_hash, str(exc))
    except MemoryError:
        return series_failed(ref, params_hash, f"{ref.dicom_dir}: out of memory while converting")
    except Exception as exc:  # a damaged file no check foresaw, or a bug: it must not take the other series down
        return series_failed(ref, params_hash, unreadable_file(str(ref.dicom_dir), exc))


def convert_series(ref: LidcSeriesRef, params: LidcParams, cfg: PrepConfig, store: str, params_hash: str,
                   storage_options: dict | None = None) -> SeriesResult:
    """Convert one series and write its crops and its series record. Raises LidcSeriesError / LidcXmlError
    (naming the folder or file) on bad input; a series without XML returns an empty result."""
    result = SeriesResult(key=series_key(ref))
    if ref.xml_path is None:
        result.notes.append(f"{ref.dicom_dir}: no reader XML: no nodules")
        return result
    sources = _sources(ref)
    try:
        image, index = read_ct_series(ref.dicom_dir, cfg.max_voxels)
    except RuntimeError as exc:  # SimpleITK/GDCM: unreadable file
        raise LidcSeriesError(f"{ref.dicom_dir}: unreadable DICOM series: {str(exc).strip().splitlines()[-1]}")
    read = parse_lidc_xml(ref.xml_path)
    if read.series_uid and read.series_uid != ref.series_uid:
        raise LidcXmlError(f"{ref.xml_path}: annotates series {read.series_uid}, but the DICOM files in "
                           f"{ref.dicom_dir} are series {ref.series_uid}")
    mark_notes: list[str] = []
    marks = reader_marks(read, image, index, mark_notes)
    result.notes += [f"{ref.xml_path}: {note}" for note in mark_notes]
    nodules = group_marks(marks, link_mm=params.link_mm) if marks else []
    table = nodules_table(ref.patient_id, ref.series_uid, nodules, min_readers=params.min_readers)

    root = open_root(store, storage_options=storage_options)
    old = case_marker(root, _series_path(ref)) or {}
    # Drop the old record first: until the new one is written last, the series counts as unfinished.
    record = _empty_group(root, _series_path(ref))
    shape = tuple(int(v) for v in image.GetSize()[::-1])
    stats = None
    for nod, rec in zip(nodules, table.to_dict("records")):
        rec.update(case_id="", split="", fraction_outside=math.nan, note="")
        if rec["selected"]:
            mask = consensus_mask(nod, shape, fraction=params.consensus_fraction)
            if mask is None:
                rec["note"] = "selected, but no consensus voxel lies on the series' slices: no crop"
                result.notes.append(f"{ref.dicom_dir}: nodule {nod.index}: {rec['note']}")
            else:
                if stats is None:
                    stats = _series_stats(image, cfg)
                row, outside = _write_crop(root, ref, nod, rec, mask, image, stats, sources, params, cfg,
                                           params_hash)
                rec.update(case_id=row["case_id"], fraction_outside=outside)
                result.rows.append(row)
        result.nodules.append(jsonable(rec))

    case_ids = [r["case_id"] for r in result.rows]
    for stale in set(old.get("case_ids", [])) - set(case_ids):  # crops of an earlier selection
        try:
            del root[f"{DOMAIN}/{stale}"]
        except KeyError:
            pass
    record.attrs.update({
        "patient_id": ref.patient_id, "study_uid": ref.study_uid, "series_uid": ref.series_uid,
        "dicom_dir": str(ref.dicom_dir), "xml": str(ref.xml_path), "n_slices": len(index),
        "size_xyz": list(image.GetSize()), "spacing_xyz": list(image.GetSpacing()),
        "n_nodules": len(nodules), "params_hash": params_hash, "lidc_params": params.to_dict(),
    })
    record.attrs[MARKER] = {
        "params_hash": params_hash, "sources": sources, "case_ids": case_ids, "rows": result.rows,
        "nodules": result.nodules, "notes": result.notes,
        "written_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    return result


def _empty_group(root, path: str):
    """(Re)create an empty group at ``path`` (its attrs, marker included, are gone)."""
    import zarr

    return zarr.open_group(root.store, path=path, mode="w", zarr_format=3)


def _series_stats(image: sitk.Image, cfg: PrepConfig) -> intensity.ChannelStats:
    """Whole-series statistics: values below ``cfg.air_hu`` clamped, then percentiles (or the CT window) and
    the mean/std of the clipped series (HU)."""
    arr = sitk.GetArrayFromImage(image)
    air = intensity.clamp_air(arr, cfg.air_hu)
    return intensity.channel_stats(arr, cfg.clip_percentiles, cfg.ct_window, air)


def _write_crop(root, ref: LidcSeriesRef, nod: Nodule, rec: dict[str, Any], mask, image: sitk.Image,
                stats: intensity.ChannelStats, sources: dict[str, Any], params: LidcParams, cfg: PrepConfig,
                params_hash: str) -> tuple[dict[str, Any], float]:
    """Crop, normalize and write one nodule case; returns its catalog row and the crop's share outside the
    scanned volume."""
    case_id = crop_case_id(ref, nod.index)
    store_path = f"{DOMAIN}/{case_id}"
    crop, label, info = nodule_crop(image, mask, nod.centroid_mm, params.crop_mm, params.crop_spacing)
    data = intensity.normalize_(crop, stats).astype(cfg.dtype)[None]
    n = params.size
    fg = sample_foreground(label, cfg.foreground_samples, seed=case_seed(store_path))
    fg_voxels = int(np.count_nonzero(label))
    voxel_mm3 = params.crop_spacing ** 3
    src_voxel_mm3 = float(np.prod(image.GetSpacing()))
    sha = f"{sources['dicom']['listing_sha256']};{sources['xml']['sha256']}"
    row = {
        "domain": DOMAIN, "case_id": case_id, "scan_id": f"lidc:{ref.series_uid}", "patient_id": ref.patient_id,
        "split": "", "source_dataset": SPEC.source_dataset, "modality": "CT", "source_modality": "",
        "n_channels": 1, "channel_names": list(SPEC.channel_names),
        "source_image": str(ref.dicom_dir), "source_label": str(ref.xml_path), "source_sha256": sha,
        "orig_shape": [int(v) for v in image.GetSize()[::-1]],
        "orig_spacing": [float(v) for v in image.GetSpacing()[::-1]],
        "target_spacing": [params.crop_spacing] * 3, "shape": [n, n, n],
        "p005": [stats.p_lo], "p995": [stats.p_hi], "mean": [stats.mean], "std": [stats.std],
        "air_clamped_fraction": [stats.air_clamped_fraction],
        "has_label": True, "label_values": [0, 1] if fg_voxels else [0],
        "label_voxels": [n**3 - fg_voxels, fg_voxels] if fg_voxels else [n**3],
        "foreground_voxels": fg_voxels, "foreground_mm3": fg_voxels * voxel_mm3, "spacing_flag": "",
        "status": "ok", "error": "", "params_hash": params_hash, "store_path": store_path,
    }
    nodule = {k: rec[k] for k in ("nodule_index", "centroid_mm", "diameter_mm", "volume_mm3", "malignancy",
                                  "malignancy_median", "label", "n_readers", "n_readers_contoured", "reader_ids",
                                  "reader_nodule_ids")}
    nodule.update(consensus_voxels_source=mask.voxels, consensus_mm3_source=mask.voxels * src_voxel_mm3)
    attrs = CaseAttrs(
        domain=DOMAIN, case_id=case_id, scan_id=row["scan_id"], spacing=(params.crop_spacing,) * 3,
        origin=tuple(info["origin_mm"]),
        original={"size_xyz": list(image.GetSize()), "spacing_xyz": list(image.GetSpacing()),
                  "origin": list(image.GetOrigin()), "direction": list(image.GetDirection()),
                  "note": "the DICOM series as read by GDCM (x, y, z order); z spacing = median slice gap"},
        sources=[sources["dicom"], sources["xml"]], channel_names=list(SPEC.channel_names), modality="CT",
        normalization={
            "method": "HU below air_hu clamped; clip to the whole series' percentiles (or the CT window); "
                      "z-score with the clipped series' mean/std",
            "percentiles": list(cfg.clip_percentiles), "ct_window": list(cfg.ct_window) if cfg.ct_window else None,
            "air_hu": cfg.air_hu, "outside_hu": AIR_HU, "statistics_from": "whole series",
            "channels": [vars(stats)],
        },
        labels={"1": "nodule"}, params_hash=params_hash,
        more={
            "patient_id": ref.patient_id, "study_uid": ref.study_uid, "series_uid": ref.series_uid,
            "label_rule": f"voxels marked by >= {params.consensus_fraction:g} of the readers who marked the "
                          "nodule; nearest neighbour onto the crop grid",
            "nodule": jsonable(nodule), "malignancy_label": rec["label"],
            "padded": bool(info["padded"]), "fraction_outside": float(info["fraction_outside"]),
            "crop": {"size_mm": params.crop_mm, "spacing_mm": params.crop_spacing, "n_clamped": info["n_clamped"]},
            "lidc_params": params.to_dict(),
        },
    )
    cz = dataclasses.replace(cfg, chunks=tuple(min(c, n) for c in cfg.chunks))  # one 48³ chunk, not a 64³ one
    write_case(root, store_path, data, label, fg, attrs, cz,
               marker={"params_hash": params_hash, "sources": attrs.sources}, row=row)
    return row, float(info["fraction_outside"])
