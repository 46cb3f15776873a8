"""nnU-Net v2 raw datasets (``nnUNet_raw/DatasetNNN_Name``) → Case records.

Layout: ``dataset.json`` with ``channel_names`` ({"0": "CT"}), ``labels`` (name → value, {"background": 0,
"kidney": 1}), ``numTraining`` and ``file_ending`` (``.nii.gz``, ``.nrrd``, ``.mha``, ``.nii``); one file per
channel ``imagesTr/<case>_<XXXX><ending>`` (XXXX the 4-digit channel index), labels ``labelsTr/<case><ending>``,
optional ``imagesTs/`` (unlabelled: split "test"). A dataset.json may list its cases itself under ``dataset``
({case: {"images": [...], "label": ...}}, paths relative to the dataset folder), as nnU-Net v2 allows; an
entry that leaves the folder (an absolute path, ``../``) is refused, as for MSD (one rule:
``naming.file_inside``), so a downloaded dataset.json cannot make a build read files elsewhere.

Decisions:

- **Cases** are the identifiers found in ``imagesTr`` and ``labelsTr`` (union), so a case missing a channel file
  or its label becomes a failed row naming the missing file, instead of silently vanishing. Files that do not
  follow the naming (macOS ``._`` junk, other endings) are ignored and counted in a note. A ``numTraining`` that
  differs from the cases found is reported, not refused (nnU-Net refuses; we build what is there).
- **Channels**: the files of one case must share a grid (checked on conversion, like every image/label pair).
  A channel named ``CT`` (nnU-Net's own trigger for CT normalization) makes the domain CT (air clamp before
  the statistics, as for MSD); every other name is treated as non-CT and z-scored per channel.
- **Labels**: plain values only. Region-based entries (a name mapped to several values, trained by nnU-Net as
  overlapping sigmoid outputs) are refused with the entries named: Med3D trains one softmax class per value. A
  list or tuple with a single value is that plain value. An ``ignore`` label (sparse annotation) is refused too:
  the trainer has no ignore index, so those voxels would be taught as a class.
- **Domain**: the folder name after ``DatasetNNN_`` in lower case (``Dataset220_KiTS2023`` → ``kits2023``),
  overridable. **Scan ids**: ``nnunet:<name>:<case>``, except for datasets converted from an MSD task
  (``nnUNetv2_convert_MSD_dataset`` keeps the task name and the case names: ``Dataset003_Liver/liver_7``),
  whose cases get the MSD scan id (``lits:7``, ``msd:Task04_Hippocampus:hippocampus_001``), so the same scan
  in two stores is recognised (``--exclude``, pretraining over several stores).
"""
from __future__ import annotations

import re
from pathlib import Path

from catalog.files import IMAGE_ENDINGS

from ..config import Case, DomainSpec, unsafe_case_id
from .msd import scan_id_for
from .naming import check_domain_name, file_inside, plain_name, read_json_object

FILE_ENDINGS = IMAGE_ENDINGS
"""The ``file_ending`` values of a dataset.json that we read: the project's one list of image endings."""

# nnU-Net's MSD conversion names a dataset DatasetNNN_<task name> and keeps the MSD case names.
_MSD_ORIGIN: dict[str, tuple[str, str]] = {
    "BrainTumour": ("Task01_BrainTumour", "BRATS_"), "Heart": ("Task02_Heart", "la_"),
    "Liver": ("Task03_Liver", "liver_"), "Hippocampus": ("Task04_Hippocampus", "hippocampus_"),
    "Prostate": ("Task05_Prostate", "prostate_"), "Lung": ("Task06_Lung", "lung_"),
    "Pancreas": ("Task07_Pancreas", "pancreas_"), "HepaticVessel": ("Task08_HepaticVessel", "hepaticvessel_"),
    "Spleen": ("Task09_Spleen", "spleen_"), "Colon": ("Task10_Colon", "colon_"),
}
_DATASET = re.compile(r"^Dataset\d+_(?P<name>.+)$")


def dataset_name(folder: str) -> str:
    """``Dataset220_KiTS2023`` → ``KiTS2023`` (a folder without the prefix keeps its name)."""
    m = _DATASET.match(folder)
    return m["name"] if m else folder


def nnunet_domain_name(folder: str) -> str:
    """Default store domain of a dataset folder: ``Dataset220_KiTS2023`` → ``kits2023``."""
    return check_domain_name(plain_name(dataset_name(folder)), folder)


def nnunet_scan_id(name: str, case_id: str) -> str:
    """Scan identity of a case of dataset ``name`` (the folder name after ``DatasetNNN_``)."""
    origin = _MSD_ORIGIN.get(name)
    if origin and case_id.startswith(origin[1]):
        return scan_id_for(origin[0], case_id)
    return f"nnunet:{name}:{case_id}"


def parse_labels(labels: object, meta_path: Path) -> dict[int, str]:
    """nnU-Net's ``labels`` (name → value) as {value: name}; refuses region-based and ignore labels."""
    if not isinstance(labels, dict) or not labels:
        raise ValueError(f"{meta_path}: 'labels' must map label names to values, e.g. "
                         f"{{\"background\": 0, \"kidney\": 1}}; got {labels!r}")
    out: dict[int, str] = {}
    regions = []
    for name, value in labels.items():
        if isinstance(value, (list, tuple)):
            if len(set(value)) != 1:
                regions.append(f"{name!r}: {list(value)}")
                continue
            value = value[0]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{meta_path}: label {name!r} has value {value!r}; label values are integers >= 0")
        if value in out:
            raise ValueError(f"{meta_path}: labels {out[value]!r} and {name!r} both have value {value}")
        out[value] = str(name)
    if regions:
        raise ValueError(
            f"{meta_path}: region-based labels are not supported ({'; '.join(regions)}): a region is a union of "
            "label values (nnU-Net trains overlapping sigmoid outputs), Med3D trains one class per value. "
            "Give every label a single value (the values in the label files), e.g. {\"background\": 0, "
            "\"kidney\": 1, \"tumor\": 2, \"cyst\": 3}")
    if 0 not in out:
        raise ValueError(f"{meta_path}: no label with value 0; nnU-Net datasets declare \"background\": 0")
    ignore = [v for v, n in out.items() if n.lower() == "ignore"]
    if ignore:
        raise ValueError(f"{meta_path}: an 'ignore' label (value {ignore[0]}) marks unannotated voxels, which "
                         "the Med3D trainer has no way to skip; convert the labels without it")
    return dict(sorted(out.items()))


def _channels(meta: dict, meta_path: Path) -> tuple[str, ...]:
    names = meta.get("channel_names")
    if names is None and "modality" in meta:
        raise ValueError(f"{meta_path}: has 'modality' but no 'channel_names': an MSD or nnU-Net v1 dataset.json; "
                         "build MSD-layout folders with build-msd")
    if not isinstance(names, dict) or not names or sorted(str(k) for k in names) != \
            sorted(str(i) for i in range(len(names))):
        raise ValueError(f"{meta_path}: 'channel_names' must map 0..N-1 to names, e.g. {{\"0\": \"CT\"}}; "
                         f"got {names!r}")
    return tuple(str(names[k]).strip() for k in sorted(names, key=int))


def _listed(folder: Path, ending: str, with_channel: bool) -> tuple[dict[str, set[int]], int]:
    """Identifiers of the files in ``folder`` (with their channel indices), and the count of files ignored."""
    pattern = re.compile(rf"^(?P<case>.+)_(?P<ch>\d{{4}}){re.escape(ending)}$" if with_channel
                         else rf"^(?P<case>.+){re.escape(ending)}$")
    found: dict[str, set[int]] = {}
    ignored = 0
    if not folder.is_dir():
        return found, 0
    for path in sorted(folder.iterdir()):
        m = pattern.match(path.name)
        if path.name.startswith("._") or not path.is_file() or m is None:
            ignored += 1
            continue
        found.setdefault(m["case"], set()).add(int(m["ch"]) if with_channel else 0)
    return found, ignored


def _checked(cid: str, meta_path: Path, where: str) -> str:
    problem = unsafe_case_id(cid)
    if problem:
        raise ValueError(f"{meta_path}: {where}: the case id {cid!r} {problem}; rename its files")
    return cid


def scan_nnunet(dataset_dir: str | Path, domain: str | None = None) -> tuple[DomainSpec, list[Case], list[str]]:
    """Read an nnU-Net v2 raw dataset folder. Returns (domain spec, cases, notes for the user).

    Raises ValueError (naming dataset.json) for a missing or malformed dataset.json, region-based labels, an
    unsupported file ending, or case ids that would escape the store.
    """
    dataset_dir = Path(dataset_dir)
    meta_path = dataset_dir / "dataset.json"
    meta = read_json_object(meta_path, "an nnU-Net v2 dataset folder (DatasetNNN_Name) holds a dataset.json")
    channels = _channels(meta, meta_path)
    labels = parse_labels(meta.get("labels"), meta_path)
    ending = meta.get("file_ending")
    if ending not in FILE_ENDINGS:
        raise ValueError(f"{meta_path}: file_ending {ending!r} is not a 3D format we read; "
                         f"one of {', '.join(FILE_ENDINGS)}")
    name = dataset_name(dataset_dir.name)
    domain = check_domain_name(domain, f"--domain {domain}") if domain else nnunet_domain_name(dataset_dir.name)
    spec = DomainSpec(
        name=domain, source_dataset=dataset_dir.name,
        modality="CT" if any(c.upper() == "CT" for c in channels) else "MR",
        channel_names=channels, labels=labels,
    )
    notes: list[str] = []
    if isinstance(meta.get("dataset"), dict):
        train = _listed_in_json(meta["dataset"], dataset_dir, meta_path, domain, name, len(channels))
    else:
        train = _listed_in_folders(dataset_dir, ending, domain, name, len(channels), notes)
    test_ids, test_ignored = _listed(dataset_dir / "imagesTs", ending, with_channel=True)
    test = [_case(domain, name, _checked(cid, meta_path, "imagesTs"),
                  tuple(str(dataset_dir / "imagesTs" / f"{cid}_{c:04d}{ending}") for c in range(len(channels))),
                  None, "test")
            for cid in sorted(test_ids)]
    clash = sorted({c.case_id for c in train} & {c.case_id for c in test})
    if clash:
        raise ValueError(f"{meta_path}: case ids in both imagesTr and imagesTs: {', '.join(clash[:5])}; "
                         "rename one of them")
    n_declared = meta.get("numTraining")
    if isinstance(n_declared, int) and n_declared != len(train):
        notes.append(f"{meta_path}: numTraining says {n_declared}, found {len(train)} training case(s)")
    if test_ignored:
        notes.append(f"imagesTs: {test_ignored} file(s) ignored (not <case>_XXXX{ending})")
    if (dataset_dir / "labelsTs").is_dir():
        notes.append("labelsTs ignored: imagesTs cases form the unlabelled test split")
    return spec, train + test, notes


def _case(domain: str, name: str, cid: str, images: tuple[str, ...], label: str | None,
          split: str | None = None) -> Case:
    return Case(domain=domain, case_id=cid, scan_id=nnunet_scan_id(name, cid), patient_id=cid, images=images,
                label=label, split_hint=split)


def _listed_in_folders(dataset_dir: Path, ending: str, domain: str, name: str, n_channels: int,
                       notes: list[str]) -> list[Case]:
    meta_path = dataset_dir / "dataset.json"
    images, ignored = _listed(dataset_dir / "imagesTr", ending, with_channel=True)
    labels, ignored_labels = _listed(dataset_dir / "labelsTr", ending, with_channel=False)
    if not images and not labels:
        raise ValueError(f"{dataset_dir}: no imagesTr/<case>_0000{ending} or labelsTr/<case>{ending} file; "
                         f"is this an nnU-Net v2 raw dataset folder with file_ending {ending!r}?")
    extra = sorted(cid for cid, chs in images.items() if max(chs) >= n_channels)
    if extra:
        notes.append(f"imagesTr: channel files beyond the {n_channels} of channel_names ignored "
                     f"({', '.join(extra[:5])}{'...' if len(extra) > 5 else ''})")
    if ignored or ignored_labels:
        notes.append(f"{ignored + ignored_labels} file(s) in imagesTr/labelsTr ignored (macOS ._ files, names not "
                     f"<case>_XXXX{ending} / <case>{ending})")
    cases = []
    for cid in sorted(set(images) | set(labels)):
        _checked(cid, meta_path, "imagesTr/labelsTr")
        files = tuple(str(dataset_dir / "imagesTr" / f"{cid}_{c:04d}{ending}") for c in range(n_channels))
        cases.append(_case(domain, name, cid, files, str(dataset_dir / "labelsTr" / f"{cid}{ending}")))
    return cases


def _listed_in_json(entries: dict, dataset_dir: Path, meta_path: Path, domain: str, name: str,
                    n_channels: int) -> list[Case]:
    cases = []
    for cid, entry in sorted(entries.items()):
        where = f"dataset entry {cid!r}"
        if not isinstance(entry, dict) or not isinstance(entry.get("images"), list) or "label" not in entry:
            raise ValueError(f"{meta_path}: {where}: expected {{\"images\": [...], \"label\": ...}}, got {entry!r}")
        if len(entry["images"]) != n_channels:
            raise ValueError(f"{meta_path}: {where}: {len(entry['images'])} image file(s), channel_names declares "
                             f"{n_channels}")
        images = tuple(file_inside(dataset_dir, p, meta_path, where) for p in entry["images"])
        label = file_inside(dataset_dir, entry["label"], meta_path, where)
        cases.append(_case(domain, name, _checked(str(cid), meta_path, where), images, label))
    if not cases:
        raise ValueError(f"{meta_path}: 'dataset' lists no case")
    return cases
