"""nnU-Net v2 raw datasets made from MSD task folders (the samples or real ones), as nnU-Net's own
``nnUNetv2_convert_MSD_dataset`` makes them: ``DatasetNNN_<task name>`` with a v2 dataset.json, one file per
channel ``imagesTr/<case>_XXXX<ending>`` (a 4D MSD image is split into its channels), ``labelsTr/<case><ending>``,
``imagesTs/<case>_XXXX<ending>``; case names kept.

The voxels are those of the MSD files: 3D ``.nii.gz`` files are copied byte for byte, others written with
SimpleITK (same values, pixel type and geometry), so a store built from the result equals the one built from
the MSD folder. Used by the tests and as an example of the layout.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import SimpleITK as sitk

from volume.geometry import read_channels

from ..sources.msd import _case_id as _stem  # the file name less its ending
from ..sources.nnunet import FILE_ENDINGS as _ENDINGS


def _write_channels(src: Path, dst_stem: Path, ending: str, suffix: bool) -> list[Path]:
    """``src``'s channels as ``<dst_stem>_XXXX<ending>`` (or ``<dst_stem><ending>`` for a label)."""
    channels = read_channels(str(src))
    if not suffix and len(channels) != 1:
        raise ValueError(f"{src}: a label must have one channel, this file has {len(channels)}")
    out = []
    for c, ch in enumerate(channels):
        path = Path(f"{dst_stem}_{c:04d}{ending}" if suffix else f"{dst_stem}{ending}")
        if len(channels) == 1 and ending == ".nii.gz" and src.name.endswith(".nii.gz"):
            shutil.copyfile(src, path)
        else:
            sitk.WriteImage(ch, str(path), useCompression=ending != ".nii")
        out.append(path)
    return out


def msd_to_nnunet(task_dir: str | Path, out_root: str | Path, *, dataset_id: int | None = None,
                  file_ending: str = ".nii.gz") -> Path:
    """Write ``task_dir`` (``TaskNN_Name`` in MSD layout) as ``out_root/DatasetNNN_Name`` in nnU-Net v2 raw
    layout and return that folder. ``dataset_id`` defaults to the MSD task number."""
    task_dir = Path(task_dir)
    if file_ending not in _ENDINGS:
        raise ValueError(f"file_ending must be one of {_ENDINGS}, got {file_ending!r}")
    meta = json.loads((task_dir / "dataset.json").read_text())
    number, _, name = task_dir.name.removeprefix("Task").partition("_")
    out = Path(out_root) / f"Dataset{int(dataset_id if dataset_id is not None else number):03d}_{name}"
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for entry in meta["training"]:
        image = task_dir / entry["image"].removeprefix("./")
        case = _stem(entry["image"])
        _write_channels(image, out / "imagesTr" / case, file_ending, suffix=True)
        _write_channels(task_dir / entry["label"].removeprefix("./"), out / "labelsTr" / case, file_ending,
                        suffix=False)
    for entry in meta.get("test", []):
        rel = entry["image"] if isinstance(entry, dict) else entry
        _write_channels(task_dir / rel.removeprefix("./"), out / "imagesTs" / _stem(rel), file_ending,
                        suffix=True)
    dataset = {
        "channel_names": {str(k): v for k, v in meta["modality"].items()},
        "labels": {v: int(k) for k, v in sorted(meta["labels"].items(), key=lambda kv: int(kv[0]))},
        "numTraining": len(meta["training"]),
        "file_ending": file_ending,
        "name": name,
        "description": f"{meta.get('description', '')} (converted from {task_dir.name})",
    }
    (out / "dataset.json").write_text(json.dumps(dataset, indent=4) + "\n")
    return out
