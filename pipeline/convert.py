"""One case, raw files → store: read, reorient, statistics, resample, normalize, write, catalog row.

Pure per-volume work: nothing here knows about dask. ``convert_or_fail`` never raises: a bad case becomes a
``failed`` row whose ``error`` names the file and what was wrong.
"""
from __future__ import annotations

import hashlib
import os
from typing import Any

import numpy as np
import SimpleITK as sitk

from catalog.store_format import CaseAttrs
from volume import geometry, integrity
from volume.diagnose import CaseError, unreadable_file
from volume.preprocess import check_headers, normalize_channels

from .config import Case, DomainSpec, PrepConfig
from .labels import compose_label, resample_label, summarize_label
from .store import case_marker, case_seed, jsonable, open_root, write_case

__all__ = ["check_case_headers", "compose_label", "convert_case", "convert_or_fail", "failed_row",
           "is_up_to_date"]


def file_fingerprint(path: str) -> dict[str, Any]:
    st = os.stat(path)
    return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def sha256_file(path: str, block: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            h.update(chunk)
    return h.hexdigest()


def case_sources(case: Case) -> list[str]:
    """Every file a case is built from (images, then the label file or every label mask): hashed, recorded,
    and compared on resume."""
    return [*case.images, *case.label_files]


def check_case_headers(case: Case, max_voxels: int | None = integrity.DEFAULT_MAX_VOXELS) -> None:
    """Header-only checks of every file of a case, before any voxel is read (planning and conversion):
    :func:`volume.preprocess.check_headers` with the case's spacing override. Raises CaseError naming the file."""
    check_headers(case_sources(case), max_voxels, case.spacing_override)


def case_params_hash(case: Case, cfg: PrepConfig, target_spacing_zyx, spec: DomainSpec) -> str:
    extra = {}
    if case.label_parts:  # which value each mask paints (the files themselves are compared as sources)
        extra["label_part_values"] = [int(v) for _, v in case.label_parts]
    return cfg.params_hash(
        target_spacing=list(target_spacing_zyx),
        spacing_override=list(case.spacing_override) if case.spacing_override else None,
        modality=case.effective_modality(spec),
        labels=sorted(spec.labels),
        **extra,
    )


def is_up_to_date(root, case: Case, params_hash: str) -> dict[str, Any] | None:
    """The stored catalog row when the case is complete with the same parameters and unchanged sources.

    Sources are compared by size and mtime, then by sha256 when those changed (a touched but identical file
    does not trigger a rebuild). Paths are compared absolute: a store built before paths were recorded absolute
    holds them as given (``raw/lits/volume-0.nii``), which a re-run from the same folder finds unchanged.
    """
    marker = case_marker(root, case.store_path)
    if not marker or marker.get("params_hash") != params_hash:
        return None
    recorded = {os.path.abspath(f["path"]): f for f in marker.get("sources", [])}
    if set(recorded) != {os.path.abspath(p) for p in case_sources(case)}:  # a file added or dropped (the label)
        return None
    for path in case_sources(case):
        rec = recorded.get(os.path.abspath(path))
        if rec is None or not os.path.exists(path):
            return None
        fp = file_fingerprint(path)
        if (fp["size"], fp["mtime_ns"]) != (rec["size"], rec["mtime_ns"]) and sha256_file(path) != rec["sha256"]:
            return None
    return marker.get("row")


def convert_case(case: Case, spec: DomainSpec, target_spacing_zyx, cfg: PrepConfig, store: str,
                 params_hash: str, storage_options: dict | None = None) -> dict[str, Any]:
    """Convert one case and write it to the store. Returns its catalog row; raises CaseError on bad input."""
    check_case_headers(case, cfg.max_voxels)  # before hashing or reading a voxel
    sources = []
    for path in case_sources(case):
        sources.append({**file_fingerprint(path), "sha256": sha256_file(path)})
    channels, label_img, overlap_voxels = read_case(case, spec)

    ref = channels[0]
    orig = {
        "size_xyz": list(ref.GetSize()), "spacing_xyz": list(ref.GetSpacing()),
        "origin": list(ref.GetOrigin()), "direction": list(ref.GetDirection()),
    }
    if case.spacing_override is not None:
        # The file's own header spacing, so a prediction can be written back with the header it came with.
        orig["header_spacing_xyz"] = list(geometry.read_header(case.images[0]).spacing)
    spacing_xyz = geometry.zyx_to_xyz(target_spacing_zyx)
    modality = case.effective_modality(spec)
    image_out, stats, grid = normalize_channels(channels, spacing_xyz, cfg, modality == "CT", case.images)
    del channels

    label_out, label_values, label_voxels = None, [], []
    fg = np.zeros((0, 4), np.int32)
    if label_img is not None:
        files = ";".join(case.label_files)
        label_out = resample_label(label_img, spec, spacing_xyz, files)
        if label_out.shape != image_out.shape[1:]:
            raise CaseError(f"{files}: resampled label shape {label_out.shape} != image {image_out.shape[1:]}")
        label_values, label_voxels, fg = summarize_label(label_out, spec.num_classes, cfg.foreground_samples,
                                                         seed=case_seed(case.store_path))

    fg_voxels = int(sum(n for v, n in zip(label_values, label_voxels) if v != 0))
    row = {
        "domain": case.domain, "case_id": case.case_id, "scan_id": case.scan_id, "patient_id": case.patient_id,
        "split": case.split_hint or "", "source_dataset": spec.source_dataset, "modality": modality,
        "source_modality": str(case.extra.get("source_modality", "")),
        "n_channels": len(stats), "channel_names": list(spec.channel_names),
        "source_image": ";".join(case.images), "source_label": ";".join(case.label_files),
        "source_sha256": ";".join(s["sha256"] for s in sources),
        "orig_shape": list(reversed(orig["size_xyz"])), "orig_spacing": list(reversed(orig["spacing_xyz"])),
        "target_spacing": list(target_spacing_zyx), "shape": list(image_out.shape[1:]),
        "p005": [s.p_lo for s in stats], "p995": [s.p_hi for s in stats],
        "mean": [s.mean for s in stats], "std": [s.std for s in stats],
        "air_clamped_fraction": [s.air_clamped_fraction for s in stats],
        "has_label": label_out is not None, "label_values": label_values, "label_voxels": label_voxels,
        "foreground_voxels": fg_voxels, "foreground_mm3": fg_voxels * float(np.prod(target_spacing_zyx)),
        "spacing_flag": str(case.extra.get("spacing_flag", "")),
        "status": "ok", "error": "", "params_hash": params_hash, "store_path": case.store_path,
    }
    attrs = CaseAttrs(
        domain=case.domain, case_id=case.case_id, scan_id=case.scan_id, spacing=tuple(target_spacing_zyx),
        origin=tuple(grid.GetOrigin()), direction=tuple(grid.GetDirection()),
        original={**orig, "note": "file geometry before reorientation to LPS (x, y, z order)"},
        sources=sources, channel_names=list(spec.channel_names), modality=modality,
        normalization={
            "method": "clip to percentiles (or CT window), then z-score with the clipped volume's mean/std",
            "percentiles": list(cfg.clip_percentiles), "ct_window": list(cfg.ct_window) if cfg.ct_window else None,
            "air_hu": cfg.air_hu if modality == "CT" else None,
            "channels": [vars(s) for s in stats],
        },
        labels={str(k): v for k, v in spec.labels.items()},
        label_parts=[[path, int(v)] for path, v in case.label_parts],
        label_overlap_voxels=overlap_voxels, params_hash=params_hash, extra=jsonable(case.extra),
    )
    root = open_root(store, storage_options=storage_options)
    write_case(root, case.store_path, image_out, label_out, fg, attrs, cfg,
               marker={"params_hash": params_hash, "sources": sources}, row=row)
    return row


def read_case(case: Case, spec: DomainSpec) -> tuple[list[sitk.Image], sitk.Image | None, int]:
    """Read a case's channels and label (or composed masks) and check they share one grid.
    Returns (channels in file geometry, label or None, voxels where masks of different values overlap)."""
    channels: list[sitk.Image] = []
    for path in case.images:
        try:
            channels.extend(geometry.read_channels(path, case.spacing_override))
        except ValueError as exc:
            raise CaseError(str(exc)) from None
    if len(channels) != len(spec.channel_names):
        raise CaseError(
            f"{case.images[0]}: {len(channels)} channel(s), but {spec.source_dataset} declares "
            f"{len(spec.channel_names)} ({', '.join(spec.channel_names)})"
        )
    ref = channels[0]
    for c, ch in enumerate(channels[1:], start=1):
        if not geometry.same_grid(ref, ch):
            raise CaseError(
                f"{';'.join(case.images)}: channel {c} lies on another grid than channel 0 "
                f"({geometry.grid_mismatch(ref, ch)})"
            )
    if case.label:
        try:
            label_img = geometry.read_single(case.label, case.spacing_override)
        except ValueError as exc:
            raise CaseError(str(exc)) from None
        if not geometry.same_grid(ref, label_img):
            raise CaseError(
                f"{case.label}: label grid differs from image {case.images[0]} "
                f"({geometry.grid_mismatch(ref, label_img)}); fix the header or resample the label"
            )
        return channels, label_img, 0
    if case.label_parts:
        label_img, overlap = compose_label(case, ref)
        return channels, label_img, overlap
    return channels, None, 0


def failed_row(case: Case, spec: DomainSpec | None, params_hash: str, error: str) -> dict[str, Any]:
    return {
        "domain": case.domain, "case_id": case.case_id, "scan_id": case.scan_id, "patient_id": case.patient_id,
        "split": case.split_hint or "", "source_dataset": spec.source_dataset if spec else "",
        "modality": case.effective_modality(spec) if spec else (case.modality or ""),
        "source_modality": str(case.extra.get("source_modality", "")),
        "n_channels": len(spec.channel_names) if spec else 0,
        "channel_names": list(spec.channel_names) if spec else [],
        "source_image": ";".join(case.images), "source_label": ";".join(case.label_files),
        "status": "failed", "error": error, "params_hash": params_hash, "store_path": case.store_path,
        "spacing_flag": str(case.extra.get("spacing_flag", "")),
    }


def convert_or_fail(case: Case, spec: DomainSpec, target_spacing_zyx, cfg: PrepConfig, store: str,
                    params_hash: str, storage_options: dict | None = None) -> dict[str, Any]:
    """``convert_case`` that turns any exception into a failed row naming the case's file."""
    try:
        return convert_case(case, spec, target_spacing_zyx, cfg, store, params_hash, storage_options)
    except CaseError as exc:
        return failed_row(case, spec, params_hash, str(exc))
    except MemoryError:
        return failed_row(case, spec, params_hash, f"{case.images[0]}: out of memory while converting")
    except Exception as exc:  # a damaged file no check foresaw, or a bug: it must not take the other cases down
        return failed_row(case, spec, params_hash, unreadable_file(";".join(case_sources(case)), exc))
