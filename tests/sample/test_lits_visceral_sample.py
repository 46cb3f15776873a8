"""The miniature LiTS and VISCERAL Anatomy samples: layouts, header quirks, masks and determinism."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from pipeline.sample import write_lits_sample, write_msd_sample, write_visceral_sample

NAME = re.compile(r"^(\d{8})_(\d+)_(CT|CTce|MRT1|MRT1cefs)_(wb|ThAb|ab)$")


@pytest.fixture(scope="module")
def lits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("lits")
    write_lits_sample(out, seed=0)
    return out


@pytest.fixture(scope="module")
def visceral(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("visceral")
    write_visceral_sample(out, seed=0)
    return out


def _grid(image: sitk.Image) -> tuple:
    return image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection()


def test_lits_flat_layout_of_uncompressed_nifti(lits: Path) -> None:
    names = sorted(p.name for p in lits.iterdir())
    expected = [f"{kind}-{i}.nii" for kind in ("segmentation", "volume") for i in range(5)]
    assert names == sorted(["SAMPLE.json", *expected, "test-volume-0.nii", "test-volume-1.nii"])
    for p in lits.glob("*.nii"):
        head = p.read_bytes()[:4]
        assert int.from_bytes(head, "little") == 348  # a bare NIfTI-1 header, not gzip
    for i in range(5):
        volume = sitk.ReadImage(str(lits / f"volume-{i}.nii"))
        seg = sitk.ReadImage(str(lits / f"segmentation-{i}.nii"))
        assert volume.GetPixelID() == sitk.sitkInt16 and _grid(volume) == _grid(seg)
        values, counts = np.unique(sitk.GetArrayFromImage(seg), return_counts=True)
        assert values.tolist() == [0, 1, 2] and counts.min() >= 5
        hu = sitk.GetArrayFromImage(volume)
        assert hu.max() > 2800 and hu.min() in (-1024, -2048, -3024)


def test_lits_volume_without_usable_spacing(lits: Path) -> None:
    record = json.loads((lits / "SAMPLE.json").read_text())["lits"]
    assert record["no_spacing"] == ["volume-2"]
    bad = sitk.ReadImage(str(lits / "volume-2.nii"))
    assert bad.GetSpacing() == (1.0, 1.0, 1.0) and bad.GetDirection() == (1, 0, 0, 0, 1, 0, 0, 0, 1)
    assert bad.GetOrigin() == (0.0, 0.0, 0.0)
    true = record["true_spacing"]["volume-2"]
    assert true[0] < 1.0 and true[2] >= 1.0 and true[2] != true[0]  # really anisotropic
    for i in (0, 1, 3, 4):
        spacing = sitk.ReadImage(str(lits / f"volume-{i}.nii")).GetSpacing()
        assert spacing != (1.0, 1.0, 1.0) and spacing[2] > spacing[0]


def test_lits_volume_n_is_msd_liver_n(lits: Path, tmp_path: Path) -> None:
    write_msd_sample(tmp_path, seed=0, tasks=["Task03_Liver"])
    for i in range(5):
        msd = sitk.ReadImage(str(tmp_path / "Task03_Liver" / "imagesTr" / f"liver_{i}.nii.gz"))
        lit = sitk.ReadImage(str(lits / f"volume-{i}.nii"))
        assert np.array_equal(sitk.GetArrayFromImage(msd), sitk.GetArrayFromImage(lit))
        assert (msd.GetSpacing() == lit.GetSpacing()) == (i != 2)
    msd_test = sitk.ReadImage(str(tmp_path / "Task03_Liver" / "imagesTs" / "liver_132.nii.gz"))
    assert np.array_equal(sitk.GetArrayFromImage(msd_test),
                          sitk.GetArrayFromImage(sitk.ReadImage(str(lits / "test-volume-0.nii"))))


def test_visceral_volumes_cover_all_modalities(visceral: Path) -> None:
    volumes = sorted(p.name[: -len(".nii.gz")] for p in (visceral / "Volumes").glob("*.nii.gz"))
    assert 12 <= len(volumes) <= 16 and all(NAME.match(v) for v in volumes)
    per_modality: dict[str, int] = {}
    for v in volumes:
        modality, region = NAME.match(v).group(3, 4)
        assert region == {"CT": "wb", "CTce": "ThAb", "MRT1": "wb", "MRT1cefs": "ab"}[modality]
        per_modality[modality] = per_modality.get(modality, 0) + 1
    assert set(per_modality) == {"CT", "CTce", "MRT1", "MRT1cefs"} and min(per_modality.values()) >= 3
    patients = [NAME.match(v).group(1) for v in volumes]
    assert len(set(patients)) < len(patients)  # one patient has two volumes: splits must be by patient


def test_visceral_masks_lie_on_their_volume_grid(visceral: Path) -> None:
    volumes = {p.name[: -len(".nii.gz")]: sitk.ReadImage(str(p)) for p in (visceral / "Volumes").glob("*.nii.gz")}
    masks = sorted((visceral / "Segmentations").glob("*.nii.gz"))
    assert masks
    radlex = set()
    for path in masks:
        m = re.match(r"^(.+)_(\d+)_(\d+)\.nii\.gz$", path.name)
        assert m and m.group(1) in volumes, path.name
        radlex.add(int(m.group(2)))
        mask = sitk.ReadImage(str(path))
        assert _grid(mask) == _grid(volumes[m.group(1)]), path.name
        values = np.unique(sitk.GetArrayFromImage(mask))
        assert values.tolist() == [0, 1]
    assert {1302, 1326, 58, 86, 480} <= radlex
    ct = sitk.GetArrayFromImage(volumes["10000100_1_CTce_ThAb"])
    lung = sitk.GetArrayFromImage(sitk.ReadImage(str(visceral / "Segmentations/10000100_1_CTce_ThAb_1302_3.nii.gz")))
    assert -900 < np.median(ct[lung > 0]) < -800  # a right-lung mask covers lung parenchyma
    liver = sitk.GetArrayFromImage(sitk.ReadImage(str(visceral / "Segmentations/10000100_1_CTce_ThAb_58_3.nii.gz")))
    assert 60 < np.median(ct[liver > 0]) < 200


def test_visceral_annotation_quirks(visceral: Path) -> None:
    record = json.loads((visceral / "SAMPLE.json").read_text())["visceral"]
    seg = visceral / "Segmentations"
    assert record["unannotated_lungs"] == ["10000106_1_CTce_ThAb"]
    assert not list(seg.glob("10000106_1_CTce_ThAb_1302_*")) and not list(seg.glob("10000106_1_CTce_ThAb_1326_*"))
    assert list(seg.glob("10000106_1_CTce_ThAb_58_*"))  # annotated otherwise: a missing lung mask is unknown
    unannotated = sitk.GetArrayFromImage(sitk.ReadImage(str(visceral / "Volumes/10000106_1_CTce_ThAb.nii.gz")))
    assert np.count_nonzero(unannotated < -700) > 0.02 * unannotated.size  # lungs are visible nonetheless
    a = sitk.GetArrayFromImage(sitk.ReadImage(str(seg / "10000104_1_CTce_ThAb_1302_1.nii.gz"))).astype(bool)
    b = sitk.GetArrayFromImage(sitk.ReadImage(str(seg / "10000104_1_CTce_ThAb_1302_5.nii.gz"))).astype(bool)
    dice = 2 * np.count_nonzero(a & b) / (a.sum() + b.sum())
    assert 0.6 < dice < 1.0
    fcsv = sorted(seg.glob("*.fcsv"))
    assert {p.name.split("_")[-2] for p in fcsv} == {"landmarks", "lesions"}
    for p in fcsv:
        text = p.read_text()
        assert text.startswith("# Markups fiducial file") and "vtkMRMLMarkupsFiducialNode_0" in text
    padded = sitk.GetArrayFromImage(sitk.ReadImage(str(visceral / "Volumes/10000021_1_CT_wb.nii.gz")))
    assert padded.min() == -2048
    ras = sitk.ReadImage(str(visceral / "Volumes/10000131_1_MRT1_wb.nii.gz"))
    assert ras.GetDirection() == (-1, 0, 0, 0, -1, 0, 0, 0, 1)
    mr = sitk.GetArrayFromImage(ras)
    assert mr.min() >= 0 and mr.max() > 500


def test_writers_are_deterministic_and_share_a_manifest(tmp_path: Path, lits: Path, visceral: Path) -> None:
    write_lits_sample(tmp_path, seed=0)
    write_visceral_sample(tmp_path, seed=0)
    for p in [*lits.glob("*.nii"), *visceral.rglob("*.nii.gz"), *visceral.rglob("*.fcsv")]:
        root = lits if p.is_relative_to(lits) else visceral
        assert (tmp_path / p.relative_to(root)).read_bytes() == p.read_bytes(), p.name
    manifest = json.loads((tmp_path / "SAMPLE.json").read_text())
    assert set(manifest) == {"lits", "visceral"} and manifest["lits"]["seed"] == 0
    other = tmp_path / "other"
    write_visceral_sample(other, seed=3)
    assert (other / "Volumes/10000020_1_CT_wb.nii.gz").read_bytes() != \
        (visceral / "Volumes/10000020_1_CT_wb.nii.gz").read_bytes()
