"""One case, raw files → store: read, reorient, statistics, resample, normalize, write, catalog row.

Pure per-volume work: nothing here knows about dask. ``convert_or_fail`` never raises: a bad case becomes a
``failed`` row whose ``error`` names the file and what was wrong.
"""
from __future__ import annotations

import hashlib
import os
import traceback
from typing import Any

import numpy as np
import SimpleITK as sitk

from . import geometry, intensity
from .config import Case, DomainSpec, PrepConfig
from .store import case_marker, open_root, sample_foreground, write_case


class CaseError(ValueError):
    """A problem with one case's input files; the message names the file."""


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
    does not trigger a rebuild).
    """
    marker = case_marker(root, case.store_path)
    if not marker or marker.get("params_hash") != params_hash:
        return None
    recorded = {f["path"]: f for f in marker.get("sources", [])}
    for path in case_sources(case):
        rec = recorded.get(str(path))
        if rec is None or not os.path.exists(path):
            return None
        fp = file_fingerprint(path)
        if (fp["size"], fp["mtime_ns"]) != (rec["size"], rec["mtime_ns"]) and sha256_file(path) != rec["sha256"]:
            return None
    return marker.get("row")


def convert_case(case: Case, spec: DomainSpec, target_spacing_zyx, cfg: PrepConfig, store: str,
                 params_hash: str, storage_options: dict | None = None) -> dict[str, Any]:
    """Convert one case and write it to the store. Returns its catalog row; raises CaseError on bad input."""
    sources = []
    for path in case_sources(case):
        if not os.path.exists(path):
            raise CaseError(f"{path}: file not found")
        sources.append({**file_fingerprint(path), "sha256": sha256_file(path)})

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
    label_img = None
    overlap_voxels = 0
    if case.label:
        try:
            (label_img,) = geometry.read_channels(case.label, case.spacing_override)
        except ValueError as exc:
            raise CaseError(str(exc)) from None
        if not geometry.same_grid(ref, label_img):
            raise CaseError(
                f"{case.label}: label grid differs from image {case.images[0]} "
                f"({geometry.grid_mismatch(ref, label_img)}); fix the header or resample the label"
            )
    elif case.label_parts:
        label_img, overlap_voxels = compose_label(case, ref)

    orig = {
        "size_xyz": list(ref.GetSize()), "spacing_xyz": list(ref.GetSpacing()),
        "origin": list(ref.GetOrigin()), "direction": list(ref.GetDirection()),
    }
    if case.spacing_override is not None:
        # The file's own header spacing, so a prediction can be written back with the header it came with.
        orig["header_spacing_xyz"] = list(geometry.read_header(case.images[0]).spacing)
    channels = [geometry.reorient(ch) for ch in channels]
    canon = channels[0]
    spacing_xyz = geometry.zyx_to_xyz(target_spacing_zyx)
    modality = case.effective_modality(spec)
    is_ct = modality == "CT"

    stats: list[intensity.ChannelStats] = []
    out_shape = None
    image_out = None
    for c, ch in enumerate(channels):
        air_frac = 0.0
        if is_ct:
            view = sitk.GetArrayViewFromImage(ch)
            if view.min() < cfg.air_hu:
                air_frac = float(np.count_nonzero(view < cfg.air_hu)) / view.size
                ch = sitk.Clamp(ch, ch.GetPixelID(), lowerBound=cfg.air_hu)
        view = sitk.GetArrayViewFromImage(ch)
        try:
            st = intensity.channel_stats(view, cfg.clip_percentiles, cfg.ct_window if is_ct else None, air_frac)
        except ValueError as exc:
            raise CaseError(f"{case.images[min(c, len(case.images) - 1)]}: channel {c}: {exc}") from None
        stats.append(st)
        res = geometry.resample(ch, spacing_xyz, cfg.image_interpolation, pixel_type=sitk.sitkFloat32)
        arr = sitk.GetArrayFromImage(res) if res is not ch else sitk.GetArrayFromImage(ch).astype(np.float32)
        if image_out is None:
            out_shape = arr.shape
            image_out = np.empty((len(channels), *out_shape), dtype=cfg.dtype)
            out_img = res
        image_out[c] = intensity.normalize_(arr, st)

    label_out = None
    label_values: list[int] = []
    label_voxels: list[int] = []
    fg = np.zeros((0, 4), np.int32)
    if label_img is not None:
        label_img = geometry.reorient(label_img)
        lab_arr = sitk.GetArrayViewFromImage(label_img)
        if not np.issubdtype(lab_arr.dtype, np.integer):
            if not np.all(np.isfinite(lab_arr)) or not np.all(lab_arr == np.round(lab_arr)):
                raise CaseError(f"{case.label}: label holds non-integer values")
        values = np.unique(lab_arr).astype(np.int64)
        unknown = sorted(set(values.tolist()) - set(spec.labels) - {0})
        if unknown:
            raise CaseError(
                f"{';'.join(case.label_files)}: label values {unknown} are not in {spec.source_dataset}'s labels "
                f"{sorted(spec.labels)}"
            )
        ltype = sitk.sitkUInt8 if spec.num_classes <= 255 else sitk.sitkInt16
        label_img = sitk.Cast(label_img, ltype) if label_img.GetPixelID() != ltype else label_img
        lab_res = geometry.resample(label_img, spacing_xyz, "nearest")
        label_out = sitk.GetArrayFromImage(lab_res)
        if label_out.shape != out_shape:
            raise CaseError(f"{case.label}: resampled label shape {label_out.shape} != image {out_shape}")
        counts = np.bincount(label_out.reshape(-1).astype(np.int64), minlength=spec.num_classes)
        label_values = [int(v) for v in np.flatnonzero(counts)]
        label_voxels = [int(counts[v]) for v in label_values]
        fg = sample_foreground(label_out, cfg.foreground_samples, seed=_seed(case))

    voxel_mm3 = float(np.prod(target_spacing_zyx))
    row = {
        "domain": case.domain, "case_id": case.case_id, "scan_id": case.scan_id, "patient_id": case.patient_id,
        "split": case.split_hint or "", "source_dataset": spec.source_dataset, "modality": modality,
        "source_modality": str(case.extra.get("source_modality", "")),
        "n_channels": len(channels), "channel_names": list(spec.channel_names),
        "source_image": ";".join(case.images), "source_label": ";".join(case.label_files),
        "source_sha256": ";".join(s["sha256"] for s in sources),
        "orig_shape": list(reversed(orig["size_xyz"])), "orig_spacing": list(reversed(orig["spacing_xyz"])),
        "target_spacing": list(target_spacing_zyx), "shape": list(out_shape),
        "p005": [s.p_lo for s in stats], "p995": [s.p_hi for s in stats],
        "mean": [s.mean for s in stats], "std": [s.std for s in stats],
        "air_clamped_fraction": [s.air_clamped_fraction for s in stats],
        "has_label": label_out is not None, "label_values": label_values, "label_voxels": label_voxels,
        "foreground_voxels": int(sum(n for v, n in zip(label_values, label_voxels) if v != 0)),
        "foreground_mm3": float(sum(n for v, n in zip(label_values, label_voxels) if v != 0) * voxel_mm3),
        "spacing_flag": str(case.extra.get("spacing_flag", "")),
        "status": "ok", "error": "", "params_hash": params_hash, "store_path": case.store_path,
    }
    attrs = {
        "domain": case.domain, "case_id": case.case_id, "scan_id": case.scan_id,
        "spacing": list(target_spacing_zyx),
        "origin": list(out_img.GetOrigin()), "direction": list(out_img.GetDirection()),
        "axes": ["z", "y", "x"],
        "original": {**orig, "note": "file geometry before reorientation to LPS (x, y, z order)"},
        "sources": sources, "channel_names": list(spec.channel_names), "modality": modality,
        "normalization": {
            "method": "clip to percentiles (or CT window), then z-score with the clipped volume's mean/std",
            "percentiles": list(cfg.clip_percentiles), "ct_window": list(cfg.ct_window) if cfg.ct_window else None,
            "air_hu": cfg.air_hu if is_ct else None,
            "channels": [vars(s) for s in stats],
        },
        "labels": {str(k): v for k, v in spec.labels.items()},
        "label_parts": [[path, int(v)] for path, v in case.label_parts],
        "label_overlap_voxels": overlap_voxels,
        "params_hash": params_hash,
        "extra": _jsonable_extra(case.extra),
    }
    root = open_root(store, storage_options=storage_options)
    stored = write_case(
        root, case.store_path, image_out, label_out, fg, attrs, cfg,
        marker={"params_hash": params_hash, "sources": sources, "row": None},
    )
    row["stored_bytes"] = stored
    # The marker carries the finished row so a re-run can skip the case without recomputing anything.
    grp = root[case.store_path]
    marker = dict(grp.attrs["med3d_complete"])
    marker["row"] = row
    grp.attrs["med3d_complete"] = marker
    return row


def compose_label(case: Case, ref: sitk.Image) -> tuple[sitk.Image, int]:
    """One uint8 label on ``ref``'s grid from ``case.label_parts``: voxels > 0 of each mask take its value, in
    the order given (a later mask wins where masks overlap). Returns (label, count of voxels claimed by masks
    of different values).

    Raises CaseError naming the mask when it cannot be read or lies on another grid than the image.
    """
    out = np.zeros(sitk.GetArrayViewFromImage(ref).shape, np.uint8)
    overlap = 0
    for path, value in case.label_parts:
        if not 0 < int(value) <= 255:
            raise CaseError(f"{path}: label value {value} outside 1..255")
        try:
            (mask,) = geometry.read_channels(path, case.spacing_override)
        except ValueError as exc:
            raise CaseError(str(exc)) from None
        if not geometry.same_grid(ref, mask):
            raise CaseError(
                f"{path}: mask grid differs from image {case.images[0]} ({geometry.grid_mismatch(ref, mask)}); "
                "fix the header or resample the mask"
            )
        on = sitk.GetArrayViewFromImage(mask) > 0
        overlap += int(np.count_nonzero(on & (out != 0) & (out != value)))
        out[on] = value
    img = sitk.GetImageFromArray(out)
    img.CopyInformation(ref)
    return img, overlap


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
    except Exception as exc:  # an unexpected bug must not take the other cases down
        tb = traceback.format_exception_only(type(exc), exc)[-1].strip()
        return failed_row(case, spec, params_hash, f"{case.images[0]}: unexpected error: {tb}")


def _seed(case: Case) -> int:
    return int.from_bytes(hashlib.sha256(case.store_path.encode()).digest()[:4], "little")


def _jsonable_extra(extra: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in extra.items():
        if isinstance(v, (str, int, float, bool)) or v is None:
            out[k] = v
        elif isinstance(v, (list, tuple)):
            out[k] = [x if isinstance(x, (str, int, float, bool)) else str(x) for x in v]
        else:
            out[k] = str(v)
    return out
