"""The miniature MSD sample: real layout, quirks, intensities, geometry and determinism."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from pipeline.sample import write_msd_sample
from pipeline.sample.msd import TASKS, stored_case

CT_TASKS = [t for t, spec in TASKS.items() if spec.kind == "ct"]
MR_TASKS = [t for t in TASKS if t not in CT_TASKS]


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    out = tmp_path_factory.mktemp("msd")
    return out, write_msd_sample(out, seed=0)


@pytest.fixture(scope="module")
def manifest(sample: tuple[Path, list[Path]]) -> dict:
    return json.loads((sample[0] / "SAMPLE.json").read_text())["msd"]


def _read(path: Path) -> tuple[sitk.Image, np.ndarray]:
    image = sitk.ReadImage(str(path))
    return image, sitk.GetArrayFromImage(image)


def _direction3(image: sitk.Image) -> np.ndarray:
    n = image.GetDimension()
    return np.asarray(image.GetDirection()).reshape(n, n)[:3, :3]


def test_all_eight_tasks_with_dataset_json_whose_entries_exist(sample: tuple[Path, list[Path]]) -> None:
    out, written = sample
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(TASKS)
    assert written[-1] == out / "SAMPLE.json" and all(p.exists() for p in written)
    for folder, task in TASKS.items():
        meta = json.loads((out / folder / "dataset.json").read_text())
        assert {"name", "description", "reference", "licence", "tensorImageSize", "modality", "labels",
                "numTraining", "numTest", "training", "test"} <= set(meta)
        assert meta["modality"] == task.modality and meta["labels"] == task.labels
        assert meta["tensorImageSize"] == ("4D" if len(task.modality) > 1 else "3D")
        assert meta["numTraining"] == len(meta["training"]) == task.n_tiny and 4 <= task.n_tiny <= 6
        assert meta["numTest"] == len(meta["test"]) == 1
        for pair in meta["training"]:
            assert pair["image"].startswith("./imagesTr/") and pair["label"].startswith("./labelsTr/")
            assert (out / folder / pair["image"]).is_file() and (out / folder / pair["label"]).is_file()
        assert (out / folder / meta["test"][0]).is_file()
        real = sorted(p.name for p in (out / folder / "imagesTr").glob("*.nii.gz") if not p.name.startswith("._"))
        assert real == sorted(Path(pair["image"]).name for pair in meta["training"])
    names = json.loads((out / "Task03_Liver" / "dataset.json").read_text())["training"]
    assert [Path(p["image"]).name for p in names] == [f"liver_{i}.nii.gz" for i in range(5)]


def test_macos_junk_files_are_not_images(sample: tuple[Path, list[Path]]) -> None:
    out, _ = sample
    junk = sorted(out.glob("*/*/._*.nii.gz"))
    assert {p.parent.name for p in junk} >= {"imagesTr", "labelsTr"}
    assert out / "Task04_Hippocampus" / "imagesTr" / "._hippocampus_001.nii.gz" in junk
    for p in junk:
        assert p.read_bytes()[:4] == b"\x00\x05\x16\x07" and p.stat().st_size < 100
        with pytest.raises(RuntimeError):
            sitk.ReadImage(str(p))


@pytest.mark.parametrize("folder,channels", [("Task01_BrainTumour", 4), ("Task05_Prostate", 2)])
def test_multimodal_tasks_are_4d_scalar_nifti(sample: tuple[Path, list[Path]], folder: str, channels: int) -> None:
    out, _ = sample
    for image_path in sorted((out / folder).glob("images*/[!.]*.nii.gz")):
        image = sitk.ReadImage(str(image_path))
        assert image.GetDimension() == 4 and image.GetSize()[3] == channels
        assert image.GetNumberOfComponentsPerPixel() == 1 and image.GetPixelID() == sitk.sitkFloat32
        label_path = out / folder / "labelsTr" / image_path.name
        if label_path.exists():
            label = sitk.ReadImage(str(label_path))
            assert label.GetDimension() == 3 and label.GetSize() == image.GetSize()[:3]
            assert np.allclose(label.GetSpacing(), image.GetSpacing()[:3])
            assert np.allclose(label.GetOrigin(), image.GetOrigin()[:3], atol=1e-4)
            assert np.allclose(_direction3(label), _direction3(image), atol=1e-5)


def test_labels_are_the_dataset_ids_and_share_the_image_grid(sample: tuple[Path, list[Path]]) -> None:
    out, _ = sample
    for folder in TASKS:
        meta = json.loads((out / folder / "dataset.json").read_text())
        ids = sorted(int(k) for k in meta["labels"])
        for pair in meta["training"]:
            image = sitk.ReadImage(str(out / folder / pair["image"]))
            label, values = _read(out / folder / pair["label"])
            found, counts = np.unique(values, return_counts=True)
            assert found.tolist() == ids, (folder, pair)  # every structure present in every case
            assert counts.min() >= 5 and np.all(values == np.round(values))
            if image.GetDimension() == 3:
                assert image.GetSize() == label.GetSize() and image.GetSpacing() == label.GetSpacing()
                assert image.GetOrigin() == label.GetOrigin() and image.GetDirection() == label.GetDirection()


def test_storage_dtypes_vary_like_the_real_files(sample: tuple[Path, list[Path]], manifest: dict) -> None:
    out, _ = sample
    seen_images, seen_labels = set(), set()
    for task in manifest["tasks"].values():
        for case in task["cases"]:
            image = sitk.ReadImage(str(out / case["image"]))
            assert np.dtype(sitk.GetArrayFromImage(image).dtype).name == case["dtype"]
            seen_images.add(case["dtype"])
            if "label" in case:
                label = sitk.GetArrayFromImage(sitk.ReadImage(str(out / case["label"])))
                assert label.dtype.name == case["label_dtype"]
                seen_labels.add(case["label_dtype"])
    assert seen_images == {"int16", "uint8", "float32"} and seen_labels == {"uint8", "float32"}


def test_ct_intensities_in_hu_with_metal_and_padding(sample: tuple[Path, list[Path]], manifest: dict) -> None:
    out, _ = sample
    pads = set()
    for folder in CT_TASKS:
        for case in manifest["tasks"][folder]["cases"]:
            _, hu = _read(out / case["image"])
            pad = [int(q[4:]) for q in case["quirks"] if q.startswith("pad:")]
            body = hu[hu >= -1024]
            p995 = np.percentile(hu, 99.5)
            assert hu.max() >= 2800 and hu.max() > p995 + 1000, case["case"]  # a few metal voxels
            assert np.count_nonzero(hu >= 2000) <= 12
            assert 300 < p995 <= 1200  # bone is the top of the ordinary range
            assert body.min() == -1024 and abs(np.median(body[body < -900]) + 1000) < 15  # air
            fat = np.count_nonzero((body > -130) & (body < -70))
            soft = np.count_nonzero((body > 20) & (body < 80))
            assert fat > 0.02 * hu.size and soft > 0.05 * hu.size
            if pad:
                pads.add(pad[0])
                outside = np.count_nonzero(hu == pad[0]) / hu.size
                assert hu.min() == pad[0] and 0.15 < outside < 0.3  # outside the inscribed circle
            else:
                assert hu.min() == -1024
    assert pads == {-2048, -3024}


def test_ct_spacing_is_anisotropic_and_heterogeneous(manifest: dict) -> None:
    for folder in CT_TASKS:
        spacings = np.array([c["spacing"] for c in manifest["tasks"][folder]["cases"]])
        assert np.all((spacings[:, :2] >= 0.6) & (spacings[:, :2] <= 0.9))
        assert np.all((spacings[:, 2] >= 1.0) & (spacings[:, 2] <= 5.0))
        assert len(set(spacings[:, 0])) > 2 and len(set(spacings[:, 2])) > 2
        assert np.all(spacings[:, 0] == spacings[:, 1])


def test_mr_orientations_include_oblique_flipped_and_permuted(sample: tuple[Path, list[Path]],
                                                              manifest: dict) -> None:
    out, _ = sample
    oblique, kinds = [], set()
    for folder in MR_TASKS:
        for case in manifest["tasks"][folder]["cases"]:
            d = _direction3(sitk.ReadImage(str(out / case["image"])))
            assert np.allclose(d @ d.T, np.eye(3), atol=1e-5)
            if not np.allclose(np.abs(d), np.round(np.abs(d)), atol=1e-4):
                angle = np.degrees(np.arccos(np.clip(np.abs(d).max(axis=0).min(), -1, 1)))
                assert 10 <= angle <= 20
                oblique.append(case["case"])
            elif np.allclose(d, np.diag([-1, -1, 1])):
                kinds.add("ras")
            elif not np.allclose(np.abs(d), np.eye(3)):
                kinds.add("permuted")
    assert kinds == {"ras", "permuted"} and {"BRATS_003", "la_004", "prostate_01"} <= set(oblique)
    assert all("ras" in c["quirks"] for c in manifest["tasks"]["Task04_Hippocampus"]["cases"])


def _centroid_mm(label: sitk.Image, value: int) -> np.ndarray:
    idx = np.argwhere(sitk.GetArrayFromImage(label) == value).mean(axis=0)[::-1]
    return np.asarray(label.TransformContinuousIndexToPhysicalPoint(idx.tolist()))


def test_anatomy_survives_every_storage_orientation(sample: tuple[Path, list[Path]], manifest: dict) -> None:
    out, _ = sample
    for case in manifest["tasks"]["Task04_Hippocampus"]["cases"][:-1]:
        label = sitk.ReadImage(str(out / case["label"]), sitk.sitkUInt8)
        assert _centroid_mm(label, 1)[1] < _centroid_mm(label, 2)[1]  # anterior is -y in LPS
    for case in manifest["tasks"]["Task03_Liver"]["cases"][:-1]:
        label = sitk.ReadImage(str(out / case["label"]), sitk.sitkUInt8)
        centre = label.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in label.GetSize()])
        assert _centroid_mm(label, 1)[0] < centre[0]  # the liver lies on the patient's right (-x)
    for case in manifest["tasks"]["Task02_Heart"]["cases"]:  # 3D filters accept every stored orientation
        oriented = sitk.DICOMOrient(sitk.ReadImage(str(out / case["image"])), "LPS")
        d = np.asarray(oriented.GetDirection()).reshape(3, 3)
        assert np.all(np.diag(d) > 0.9)


def test_mr_is_positive_with_multiplicative_bias(sample: tuple[Path, list[Path]], manifest: dict) -> None:
    out, _ = sample
    for folder in MR_TASKS:
        for case in manifest["tasks"][folder]["cases"]:
            _, a = _read(out / case["image"])
            assert a.min() >= 0 and a.max() > 100
    _, brain = _read(out / manifest["tasks"]["Task01_BrainTumour"]["cases"][0]["image"])
    assert brain.shape[0] == 4 and np.mean(brain[0] == 0) > 0.3  # skull-stripped: exact zeros outside


def test_same_seed_same_bytes_and_other_seed_differs(sample: tuple[Path, list[Path]],
                                                     tmp_path: Path) -> None:
    out, written = sample
    again = write_msd_sample(tmp_path / "again", seed=0, tasks=["Task03_Liver", "Task05_Prostate"])
    for path in again[:-1]:
        assert path.read_bytes() == (out / path.relative_to(tmp_path / "again")).read_bytes(), path
    other = write_msd_sample(tmp_path / "other", seed=1, tasks=["Task03_Liver", "Task05_Prostate"])
    for path in other:
        if path.suffix == ".gz" and not path.name.startswith("._"):
            assert path.read_bytes() != (out / path.relative_to(tmp_path / "other")).read_bytes(), path


def test_unknown_task_or_size_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Task06_Lung"):
        write_msd_sample(tmp_path, tasks=["Task06_Lung"])
    with pytest.raises(ValueError, match="size"):
        write_msd_sample(tmp_path, size="huge")


def test_bench_case_is_full_size_ct() -> None:
    data, stored = stored_case("Task03_Liver", 0, 3, "bench")
    assert stored.arrays[0].shape == (120, 512, 512) and stored.arrays[0].dtype == np.int16
    assert 0.7 <= stored.spacing[0] <= 0.8 and stored.spacing[2] == 2.5
    hu = stored.arrays[0]
    assert hu.min() == -3024 and hu.max() > 2800 > np.percentile(hu, 99.5)
    assert np.unique(stored.arrays[1]).tolist() == [0, 1, 2]
    # Realistic scanner noise (what the codec was chosen on): neighbour differences inside the liver, whose
    # tissue value is constant, give the noise sd (the smooth shading adds nothing measurable).
    liver = data.label == 1
    inside = liver[:, :, 1:] & liver[:, :, :-1]
    sd = np.diff(data.channels[0].astype(np.float32), axis=2)[inside].std() / np.sqrt(2)
    assert 15 <= sd <= 25, sd


@pytest.mark.slow
def test_bench_sample_defaults_to_liver_with_equal_shapes(tmp_path: Path, monkeypatch) -> None:
    """The files themselves are not compressed here (9 full-size CTs took 20 s to gzip; the writer is the one every
    other sample test reads back): each array handed to the writer is checked, then the manifest."""
    import pipeline.sample.msd as msd

    handed: dict[str, tuple] = {}

    def record_write(path, stored, dtype, channel=None):
        arrays = stored.arrays if channel is None else (stored.arrays[channel],)
        handed[str(Path(path).relative_to(tmp_path))] = (*(a.shape for a in arrays), np.dtype(dtype).name)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return Path(path)

    monkeypatch.setattr(msd, "write_nifti", record_write)
    write_msd_sample(tmp_path, size="bench")
    tasks = json.loads((tmp_path / "SAMPLE.json").read_text())["msd"]["tasks"]
    assert list(tasks) == ["Task03_Liver"]
    shapes = {tuple(c["shape"]) for c in tasks["Task03_Liver"]["cases"]}
    assert shapes == {(512, 512, 120)} and len(tasks["Task03_Liver"]["cases"]) == 9
    images = {k: v for k, v in handed.items() if "/images" in k}
    labels = {k: v for k, v in handed.items() if "/labelsTr/" in k}
    assert len(images) == 9 and len(labels) == 8 and len(handed) == 17
    assert set(images.values()) == {((120, 512, 512), "int16")}
    cases = tasks["Task03_Liver"]["cases"]
    assert {c["label"]: ((120, 512, 512), c["label_dtype"]) for c in cases if "label" in c} == labels
    assert {"uint8", "float32"} == {c["label_dtype"] for c in cases if "label" in c}  # the float-label quirk too


def test_sample_cli_writes_the_nnunet_layout_of_the_hippocampus_task(tmp_path):
    """`med3d-prep sample OUT --only nnunet`: the MSD hippocampus sample as nnU-Net v2 raw data (the demo's
    dataset for build-nnunet and finetune seg): one _0000 file per training case, labels, imagesTs."""
    from click.testing import CliRunner

    from pipeline.cli import main as prep

    res = CliRunner().invoke(prep, ["sample", str(tmp_path), "--only", "nnunet"])
    assert res.exit_code == 0, res.output
    ds = tmp_path / "nnunet" / "Dataset004_Hippocampus"
    msd = json.loads((tmp_path / "msd" / "Task04_Hippocampus" / "dataset.json").read_text())
    train = sorted(p.name for p in (ds / "imagesTr").iterdir())
    assert len(train) == len(msd["training"]) and all(n.endswith("_0000.nii.gz") for n in train)
    assert sorted(p.name for p in (ds / "labelsTr").iterdir()) == [n.replace("_0000", "") for n in train]
    assert len(list((ds / "imagesTs").iterdir())) == len(msd["test"])
    meta = json.loads((ds / "dataset.json").read_text())
    assert meta["numTraining"] == len(train) and meta["file_ending"] == ".nii.gz"
    assert f"nnunet: {len(train) * 2 + len(msd['test']) + 1} files" in res.output


def test_sample_refuses_to_mix_two_seeds_in_one_folder(tmp_path):
    """A re-run with the same seed and size rewrites the same files; another seed into the same folder is refused
    before anything is written (it used to leave two LIDC studies per patient and MSD files of both seeds)."""
    from click.testing import CliRunner

    from pipeline.cli import main as prep

    res = CliRunner().invoke(prep, ["sample", str(tmp_path), "--only", "lits"])
    assert res.exit_code == 0, res.output
    before = {p: p.read_bytes() for p in (tmp_path / "lits").iterdir()}
    res = CliRunner().invoke(prep, ["sample", str(tmp_path), "--only", "lits"])
    assert res.exit_code == 0, res.output
    assert {p: p.read_bytes() for p in (tmp_path / "lits").iterdir()} == before
    res = CliRunner().invoke(prep, ["sample", str(tmp_path), "--only", "lits", "--seed", "1"])
    assert res.exit_code == 2 and "already holds a sample of seed 0, size tiny" in res.output
    assert {p: p.read_bytes() for p in (tmp_path / "lits").iterdir()} == before
    (tmp_path / "mine" / "lits").mkdir(parents=True)
    (tmp_path / "mine" / "lits" / "notes.txt").write_text("mine")
    res = CliRunner().invoke(prep, ["sample", str(tmp_path / "mine"), "--only", "lits"])
    assert res.exit_code == 2 and "files that are not a sample" in res.output
