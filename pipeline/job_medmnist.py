"""``med3d-prep build-medmnist``: a checked MedMNIST 3D file (:mod:`pipeline.sources.medmnist`) written as a store
with its label table; the store layout, the fast case writer and the already-built check live here, the reading and
the refusals of a file in the source module."""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from catalog.store_format import FOREGROUND, IMAGE, CaseAttrs, local_path, meta_key, meta_path

from .sources.medmnist import (FLAGS, LABELS_FILE, PERCENTILES, SPACING_FLAG, SPLITS, MedmnistData, MedmnistError,
                               normalize_volume, read_medmnist)

__all__ = ["MedmnistResult", "build_medmnist"]


@dataclass
class MedmnistResult:
    """What :func:`build_medmnist` did; :meth:`summary` is what the command prints."""

    store: str
    source: str
    flag: str
    shape: tuple[int, int, int]
    counts: dict[str, int]
    class_counts: dict[str, list[int]]
    classes: tuple[str, ...]
    classes_from: str
    elapsed_s: float = 0.0
    already_built: bool = False
    constant: int = 0
    """Volumes holding one value only (stored as zeros)."""
    duplicates: list[list[str]] = field(default_factory=list)
    """Groups of cases holding identical volumes (in any splits; MedMNIST's splits are kept as they are)."""

    def summary(self) -> str:
        shape = "×".join(map(str, self.shape))
        what = "already built from" if self.already_built else "built from"
        lines = [f"store {self.store}: {self.flag} ({shape}) {what} {self.source}: "
                 f"{sum(self.counts.values())} volumes in {self.elapsed_s:.1f} s"]
        named = ", ".join(name if name == str(i) else f"{i} {name}" for i, name in enumerate(self.classes))
        lines.append(f"  {len(self.classes)} classes: {named} ({self.classes_from})")
        for split in SPLITS:
            per_class = ", ".join(f"{i}: {n}" for i, n in enumerate(self.class_counts[split]))
            lines.append(f"  {split}: {self.counts[split]} volumes ({per_class})")
        if self.constant:
            lines.append(f"  {self.constant} constant volume(s) stored as zeros")
        if self.duplicates:
            lines.append(f"  {len(self.duplicates)} group(s) of identical volumes, e.g. "
                         + " = ".join(self.duplicates[0]))
        lines.append("  spacing unknown (MedMNIST records none): 1 mm recorded, catalog spacing_flag "
                     f"{SPACING_FLAG}; image: each volume z-scored, float32")
        lines.append(f"  train: med3d-train finetune classify {self.store} --labels "
                     f"{os.path.join(self.store, LABELS_FILE)} --shape {','.join(map(str, self.shape))} --out RUN")
        if self.already_built:
            lines.append(f"  (nothing written; delete {self.store} to build it again)")
        return "\n".join(lines)


def _result(store: str, data: MedmnistData, t0: float, **kw: Any) -> MedmnistResult:
    return MedmnistResult(store=store, source=data.path, flag=data.flag, shape=data.shape, counts=data.counts,
                          class_counts={s: data.class_counts(s) for s in SPLITS}, classes=data.classes,
                          classes_from=data.classes_from, elapsed_s=time.perf_counter() - t0, **kw)


def build_medmnist(path: str | os.PathLike[str], store: str | os.PathLike[str], *, flag: str | None = None,
                   image_codec: str = "lz4hc", log: Callable[[str], None] = print) -> MedmnistResult:
    """Build the MedMNIST 3D file ``path`` into a new local ``store`` with ``STORE/labels.csv`` (module docstring).

    ``flag`` overrides the set read from the file name; ``image_codec`` is the image chunks' Blosc codec (``raw``
    or one of ``pipeline.blosc_codecs.IMAGE_CODECS``; lz4hc by default: the volumes are read whole, once per run,
    and VesselMNIST3D's masks take ~1/38 of the raw bytes). Raises :class:`MedmnistError` before anything is written.
    """
    t0 = time.perf_counter()
    store = local_path(os.fspath(store))  # a file:// URL is the folder it names
    if "://" in store:
        raise MedmnistError(f"{store}: build-medmnist writes a local folder; build it locally, then copy it")
    if os.path.exists(store) and not os.path.isdir(store):
        raise MedmnistError(f"{store}: a file, not a folder; give a new or empty folder for the store")
    occupied = os.path.isdir(store) and any(os.scandir(store))
    data = read_medmnist(path, flag)
    if occupied:
        _check_same_source(store, data)
        return _result(store, data, t0, already_built=True)
    log(f"{data.path}: {data.flag} {'×'.join(map(str, data.shape))}, "
        + ", ".join(f"{s} {n}" for s, n in data.counts.items()) + f"; {len(data.classes)} classes")
    parent = Path(store).absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    # A hidden sibling renamed to STORE when complete (os.mkdir: the usual permissions, not mkdtemp's 0700).
    tmp = str(parent / f".{Path(store).name}.building-{os.getpid()}-{secrets.token_hex(4)}")
    os.mkdir(tmp)
    try:
        constant, duplicates = _write_store(tmp, data, image_codec, log)
        if os.path.isdir(store):
            os.rmdir(store)  # empty (checked above)
        os.rename(tmp, store)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _result(store, data, t0, constant=constant, duplicates=duplicates)


def _check_same_source(store: str, data: MedmnistData) -> None:
    """Return when the non-empty ``store`` is a complete build of the same file (same sha256); else refuse."""
    from catalog import load_catalog
    from catalog.store_format import node_meta

    held = sorted(e.name for e in os.scandir(store))
    source: dict[str, Any] = {}
    for name in held:  # the domain folder of a build-medmnist store records its file in its plan
        found: Any = node_meta(store, name)
        for key in ("attributes", "plan", "medmnist"):
            found = found.get(key) if isinstance(found, dict) else None
        if isinstance(found, dict) and found:
            source = found
            break
    if source.get("sha256") != data.sha256 or source.get("flag") != data.flag:
        built = f"the {source.get('flag')} store built from {source.get('file')}" if source else \
            f"a folder holding {', '.join(held[:4])}{' ...' if len(held) > 4 else ''}"
        raise MedmnistError(f"{store}: not empty ({built}); build-medmnist writes a new store: give a new or empty "
                            f"folder, or delete {store} to build {data.path} there")
    try:
        cat = load_catalog(store)
    except (FileNotFoundError, ValueError) as exc:
        raise MedmnistError(f"{store}: was built from {data.path} but is damaged ({exc}); delete it and build "
                            "again") from None
    ok = int((cat["status"] == "ok").sum())
    if ok != sum(data.counts.values()) or not os.path.isfile(os.path.join(store, LABELS_FILE)):
        raise MedmnistError(f"{store}: was built from {data.path} but holds {ok} of its {sum(data.counts.values())} "
                            f"volumes or lacks {LABELS_FILE}; delete it and build again")


def _write_store(folder: str, data: MedmnistData, image_codec: str, log: Callable[[str], None]
                 ) -> tuple[int, list[list[str]]]:
    """Write every case, the domain plan, the catalog and ``labels.csv`` into the new store ``folder``. Returns
    (constant volumes, groups of identical volumes)."""
    import pandas as pd

    from catalog.splits import duplicate_scans

    from .config import DomainSpec, PrepConfig
    from .job import write_catalog
    from .store import freeze_plan, open_root, write_case

    kind = FLAGS[data.flag]
    cfg = PrepConfig(dtype="float32", chunks=data.shape, image_codec=image_codec)  # one chunk per volume
    spec = DomainSpec(name=data.flag, source_dataset=Path(data.path).name, modality=kind.modality,
                      channel_names=(kind.modality,), labels=dict(enumerate(data.classes)))
    rule = "z-score with the volume's own mean and std (uint8 units, no clip: percentiles 0/100), float32"
    phash = cfg.params_hash(source="medmnist", flag=data.flag, intensity=rule, target_spacing=[1.0, 1.0, 1.0])
    source = {"path": data.path, "size": data.size_bytes, "mtime_ns": os.stat(data.path).st_mtime_ns,
              "sha256": data.sha256}
    root = open_root(folder)
    freeze_plan(root, data.flag, {
        "target_spacing": [1.0, 1.0, 1.0], "rule": "unknown spacing: 1 mm recorded (MedMNIST records none)",
        "spacing_known": False, "n_cases": sum(data.counts.values()), "source_dataset": spec.source_dataset,
        "modality": kind.modality, "channel_names": list(spec.channel_names),
        "labels": {str(k): v for k, v in spec.labels.items()},
        "medmnist": {"flag": data.flag, "shape": list(data.shape), "file": data.path, "sha256": data.sha256,
                     "bytes": data.size_bytes, "counts": data.counts, "classes": list(data.classes),
                     "classes_from": data.classes_from, "intensity_rule": rule},
    })
    rows: list[dict[str, Any]] = []
    writer: _CaseWriter | None = None
    constant = 0
    for split in SPLITS:
        t = time.perf_counter()
        for i, volume in enumerate(data.images[split]):
            image, stats = normalize_volume(volume)
            constant += stats.std == 0
            row, attrs = _records(data, split, i, volume, stats, spec, phash, rule)
            marker = {"params_hash": phash, "sources": [{**source, "entry": f"{split}_images[{i}]"}]}
            if writer is None:
                write_case(root, row["store_path"], image[None], None, np.zeros((0, 4), np.int32), attrs, cfg,
                           marker=marker, row=row)
                writer = _CaseWriter.like(root, row["store_path"])
            else:
                writer.write(row["store_path"], image[None], attrs, marker, row)
            rows.append(row)
        log(f"  {split}: {data.counts[split]} volumes written ({time.perf_counter() - t:.1f} s)")
    cat = write_catalog(folder, rows, {data.flag: spec}, {data.flag: (1.0, 1.0, 1.0)}, cfg)
    table = pd.DataFrame([{"case_id": data.case_id(s, i), "label": int(lab), "split": s}
                          for s in SPLITS for i, lab in enumerate(data.labels[s])])
    table.to_csv(os.path.join(folder, LABELS_FILE), index=False)
    return int(constant), duplicate_scans(cat)


def _records(data: MedmnistData, split: str, i: int, volume: np.ndarray, stats, spec, phash: str, rule: str
             ) -> tuple[dict[str, Any], CaseAttrs]:
    """The catalog row and the case attributes of volume ``i`` of ``split`` (the fields of ``pipeline.convert``'s)."""
    from .store import jsonable

    case_id, scan_id = data.case_id(split, i), data.scan_id(split, i)
    shape, unit = list(data.shape), [1.0, 1.0, 1.0]
    row = {
        "domain": data.flag, "case_id": case_id, "scan_id": scan_id, "patient_id": scan_id, "split": split,
        "source_dataset": spec.source_dataset, "modality": spec.modality, "source_modality": "",
        "n_channels": 1, "channel_names": list(spec.channel_names),
        "source_image": f"{data.path}:{split}_images[{i}]", "source_label": "",
        # the volume's own bytes: a scan's identity (catalog.splits.image_hash), so identical volumes are found
        "source_sha256": hashlib.sha256(volume.tobytes()).hexdigest(),
        "orig_shape": shape, "orig_spacing": unit, "target_spacing": unit, "shape": shape,
        "p005": [stats.p_lo], "p995": [stats.p_hi], "mean": [stats.mean], "std": [stats.std],
        "air_clamped_fraction": [0.0], "has_label": False, "label_values": [], "label_voxels": [],
        "foreground_voxels": 0, "foreground_mm3": 0.0, "spacing_flag": SPACING_FLAG,
        "status": "ok", "error": "", "params_hash": phash, "store_path": f"{data.flag}/{case_id}",
    }
    identity = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    attrs = CaseAttrs(
        domain=data.flag, case_id=case_id, scan_id=scan_id, spacing=tuple(unit), spacing_known=False,
        origin=(0.0, 0.0, 0.0), direction=identity,
        original={"size_xyz": shape[::-1], "spacing_xyz": unit, "origin": [0.0, 0.0, 0.0], "direction": list(identity),
                  "note": f"MedMNIST {split}_images[{i}], axes (D, H, W) taken as (z, y, x); no spacing, "
                          "origin or orientation recorded"},
        sources=[{"path": data.path, "sha256": data.sha256, "entry": f"{split}_images[{i}]"}],
        channel_names=list(spec.channel_names), modality=spec.modality,
        normalization=jsonable({"method": rule, "percentiles": list(PERCENTILES), "ct_window": None, "air_hu": None,
                                "channels": [vars(stats)]}),
        labels={}, params_hash=phash,
        more={"medmnist": {"flag": data.flag, "split": split, "index": i, "label": int(data.labels[split][i])}},
    )
    return row, attrs


@dataclass(frozen=True)
class _CaseWriter:
    """Writes a case as :func:`pipeline.store.write_case` wrote the template case of the same shape, dtype and
    codecs (which the test compares file by file): the template's array metadata files, the image as one chunk
    encoded by the template's codec (:func:`catalog.chunk_write.blosc_of`; none when it holds only zeros, as
    zarr), ``stored_bytes`` and the files' sizes in the marker, and the group's ``zarr.json`` with the marker last."""

    folder: str
    image_meta: bytes
    foreground_meta: bytes
    chunk_key: str
    codec: Any

    @classmethod
    def like(cls, root: Any, store_path: str) -> _CaseWriter:
        from catalog.chunk_write import blosc_of
        from catalog.store_format import local_folder

        image = root[store_path][IMAGE]
        codec, folder = blosc_of(image), local_folder(root)
        assert codec is not None and folder is not None and image.chunks == image.shape, "one Blosc chunk per case"
        case = os.path.join(folder, store_path)
        return cls(folder=folder, image_meta=Path(meta_path(case, IMAGE)).read_bytes(),
                   foreground_meta=Path(meta_path(case, FOREGROUND)).read_bytes(),
                   chunk_key=image.metadata.encode_chunk_key((0,) * image.ndim), codec=codec)

    def write(self, store_path: str, image: np.ndarray, attrs: CaseAttrs, marker: dict[str, Any],
              row: dict[str, Any]) -> None:
        from catalog.ngff import case_ngff
        from catalog.store_format import MARKER, group_meta

        case = os.path.join(self.folder, *store_path.split("/"))
        files = {meta_key(FOREGROUND): self.foreground_meta, meta_key(IMAGE): self.image_meta}
        if image.any():  # zarr writes no chunk that holds only the fill value (0)
            files[f"{IMAGE}/{self.chunk_key}"] = self.codec.encode(np.ascontiguousarray(image, dtype="<f4"))
        for rel, blob in files.items():
            dest = os.path.join(case, *rel.split("/"))
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            with open(dest, "wb") as fh:
                fh.write(blob)
        row["stored_bytes"] = sum(len(b) for rel, b in files.items() if rel.startswith(f"{IMAGE}/"))
        done = {**marker, "row": row, "files": {rel: len(b) for rel, b in sorted(files.items())},
                "written_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        group = group_meta({**attrs.to_attrs(), "ome": case_ngff(attrs), MARKER: done})
        with open(meta_path(case), "w", encoding="utf-8") as fh:
            json.dump(group, fh, indent=2)
