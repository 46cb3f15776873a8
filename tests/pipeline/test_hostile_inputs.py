"""Crafted inputs never steer a write or abort a whole build (issue 15, "Hostile input").

One damaged field of one case becomes a failed catalog row naming the file (or a one-line usage error naming
dataset.json when the dataset description itself is unusable), every other case completes, and each message
says what a user can do. Built from the real MSD hippocampus and LIDC-IDRI-0001 files, one build per source.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from catalog import load_catalog, load_nodules
from pipeline import job
from pipeline.cli_options import EXIT_FAILED_CASES
from pipeline.config import Case, DomainSpec, PrepConfig
from pipeline.sources.lidc_series import find_lidc_series
from test_bad_inputs import _cli, _files, _set, _with_header, _written_outside

GOOD = ("hippocampus_001", "hippocampus_003")
TASK = "Task04_Hippocampus"


def _symlink_loop(src: Path, dst: Path) -> None:
    os.symlink(dst.name + ".other", dst)
    os.symlink(dst.name, dst.parent / (dst.name + ".other"))


def _header(**fields):
    """An image maker: the real file with header fields set (``pixdim=(1, 300.0)`` sets pixdim[1])."""
    def edit(hdr):
        for key, value in fields.items():
            if isinstance(value, tuple):
                _set(key, *value)(hdr)
            else:
                hdr[key] = value
    return lambda src, dst: dst.write_bytes(_with_header(src, edit))


def _label_with(value: int, dtype=np.int16):
    """A label maker: the real label as ``dtype`` with one voxel set to ``value``."""
    def make(src: Path, dst: Path) -> None:
        img = sitk.ReadImage(str(src))
        arr = sitk.GetArrayFromImage(img).astype(dtype)
        arr[0, 0, 0] = value
        out = sitk.GetImageFromArray(arr)
        out.CopyInformation(img)
        sitk.WriteImage(out, str(dst))
    return make


def _copy(src: Path, dst: Path) -> None:
    shutil.copy(src, dst)


# kind -> (image maker, label maker, the file the error names: "image" | "label", phrase). A maker gets the real
# float32 hippocampus_003 image (or its label) and the path to write.
KINDS: dict[str, tuple] = {
    "vox_offset_inf": (_header(vox_offset=np.inf), _copy, "image",
                       "the header's vox_offset inf (where the voxels start) is not a byte offset"),
    "vox_offset_nan": (_header(vox_offset=np.nan), _copy, "image",
                       "the header's vox_offset nan (where the voxels start) is not a byte offset"),
    "symlink_loop": (_symlink_loop, _copy, "image", "a symbolic link that loops"),
    "negative_label": (_copy, _label_with(-1), "label", "negative label value(s) [-1]: label values are class"),
    "spacing_300mm": (_header(pixdim=(1, 300.0)), _copy, "image",
                      "header spacing (pixdim) (300 along x mm) is outside 0.01-50 mm"),
    "spacing_1e-6mm": (_header(pixdim=(3, 1e-6)), _copy, "image",
                       "header spacing (pixdim) (1e-06 along z mm) is outside 0.01-50 mm"),
    # 40 mm is a voxel size, but resampled to the plan's 1 mm the 34 × 52 × 35 volume (61,880 voxels) becomes
    # 1360 × 52 × 35 = 2,475,200: more than the build's --max-voxels 2e6, refused before the grid is allocated
    "resampled_too_large": (_header(pixdim=(1, 40.0)), _copy, "image",
                            "the volume would hold 2,475,200 voxels, more than --max-voxels 2,000,000"),
}
KINDS.update({
    "one_slice": (lambda s, d: _nib_copy(s, d, lambda a: a[:, :, :1]),
                  lambda s, d: _nib_copy(s, d, lambda a: a[:, :, :1]), "image",
                  "a single slice (34 × 52 × 1 voxels), not a 3D volume"),
    "nan_quaternion": (_header(quatern_b=np.nan, qform_code=1, sform_code=0), _copy, "image",
                       "the header's qform (orientation) has non-finite quatern_b: a damaged header"),
    "complex64": (lambda s, d: _nib_copy(s, d, lambda a: a.astype(np.complex64)), _copy, "image",
                  "complex-valued voxels (complex64): Med3D reads real-valued images"),
    "dev_zero": (lambda s, d: os.symlink("/dev/zero", d), _copy, "/dev/zero",
                 "a character device (like /dev/zero), not a file"),
    "fifo": (lambda s, d: os.mkfifo(d), _copy, "image", "a named pipe (FIFO), not a file"),
})
MAX_VOXELS = "2e6"


def _nib_copy(src: Path, dst: Path, edit, cls=None) -> None:
    """``src`` re-saved by nibabel with its voxels edited (as another NIfTI class when ``cls`` is given)."""
    img = nib.load(src)
    data = edit(np.asarray(img.dataobj))
    if cls is None:
        hdr = img.header.copy()
        hdr.set_data_dtype(data.dtype)
        nib.save(nib.Nifti1Image(data, img.affine, hdr), dst)
    else:
        nib.save(cls(data, img.affine), dst)
NEGATIVE_DECLARED = {"-1": "outside"}  # dataset.json declares -1, so only the negative-value rule refuses it


@pytest.fixture(scope="module")
def msd_build(real_dir, tmp_path_factory):
    """One build-3dseg8 over two good real cases and one case per hostile kind."""
    real = real_dir / "msd" / TASK
    root = tmp_path_factory.mktemp("hostile_msd")
    task = root / "msd" / TASK
    for sub in ("imagesTr", "labelsTr"):
        (task / sub).mkdir(parents=True)
    meta = json.loads((real / "dataset.json").read_text())
    meta["labels"].update(NEGATIVE_DECLARED)
    meta["training"] = [e for e in meta["training"] if Path(e["image"]).name.split(".")[0] in GOOD]
    for name in GOOD:
        for sub in ("imagesTr", "labelsTr"):
            shutil.copy(real / sub / f"{name}.nii.gz", task / sub)
    src, lab = real / "imagesTr" / "hippocampus_003.nii.gz", real / "labelsTr" / "hippocampus_003.nii.gz"
    corpus = {}
    for kind, (make_image, make_label, named, _) in KINDS.items():
        image, label = task / "imagesTr" / f"bad_{kind}.nii.gz", task / "labelsTr" / f"bad_{kind}.nii.gz"
        make_image(src, image)
        make_label(lab, label)
        meta["training"].append({"image": f"./imagesTr/{image.name}", "label": f"./labelsTr/{label.name}"})
        corpus[kind] = image if named == "image" else label if named == "label" else Path(named)
    for sub, path in (("imagesTr", src), ("labelsTr", lab)):  # a valid NIfTI-2 copy of hippocampus_003
        _nib_copy(path, task / sub / "nifti2.nii.gz", lambda a: a, cls=nib.Nifti2Image)
    meta["training"].append({"image": "./imagesTr/nifti2.nii.gz", "label": "./labelsTr/nifti2.nii.gz"})
    (task / "dataset.json").write_text(json.dumps(meta, indent=1))
    store = root / "store"
    before = _files(root)
    res = _cli("build-3dseg8", root / "msd", store, "--workers", "0", "--no-progress", "--max-voxels", MAX_VOXELS)
    return {"res": res, "store": store, "corpus": corpus, "outside": _written_outside(before, _files(root), store),
            "catalog": load_catalog(str(store)).set_index("case_id")}


def test_every_other_case_completes(msd_build):
    res, cat = msd_build["res"], msd_build["catalog"]
    assert res.exit_code == EXIT_FAILED_CASES, res.output
    assert sorted(cat.index[cat.status == "ok"]) == [*GOOD, "nifti2"]
    # the failed rows (fewer columns) come first: the good rows keep every column of theirs
    assert cat.loc[list(GOOD), "has_label"].all() and cat.loc["hippocampus_003", "label_values"] == [0, 1, 2]
    assert (cat.status == "failed").sum() == len(KINDS)
    assert msd_build["outside"] == []
    assert "Traceback" not in res.output and "unexpected error" not in res.output


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_damaged_field_is_a_failed_row_naming_the_file(msd_build, kind):
    row = msd_build["catalog"].loc[f"bad_{kind}"]
    assert row.status == "failed"
    assert row.error.startswith(f"{msd_build['corpus'][kind]}: "), row.error
    assert KINDS[kind][3] in row.error, row.error
    assert "\n" not in row.error


def test_a_valid_nifti2_file_is_read_as_its_nifti1_original(msd_build):
    import zarr

    store = str(msd_build["store"])
    a = zarr.open_group(store, path="hippocampus/hippocampus_003", mode="r")
    b = zarr.open_group(store, path="hippocampus/nifti2", mode="r")
    assert a["image"].shape == b["image"].shape == (1, 35, 52, 34)
    np.testing.assert_array_equal(a["image"][...], b["image"][...])
    np.testing.assert_array_equal(a["label"][...], b["label"][...])
    for key in ("spacing", "origin", "direction"):
        assert a.attrs[key] == b.attrs[key], key


def test_an_unforeseen_header_error_is_a_failed_row_saying_what_to_do(real_dir, monkeypatch):
    """Any exception of a header read (here the OverflowError an unchecked header field used to raise) becomes
    the case's error, naming the file and what to do, instead of ending the build."""
    def overflow(path):
        raise OverflowError("cannot convert float infinity to integer")

    image = str(real_dir / "msd" / TASK / "imagesTr" / "hippocampus_001.nii.gz")
    monkeypatch.setattr(job.geometry, "read_header", overflow)
    case = Case(domain="hippocampus", case_id="c", scan_id="s", patient_id="p", images=(image,))
    hdr = job.read_case_header(case)
    assert hdr.error.startswith(f"{image}: cannot read the file (OverflowError: cannot convert float infinity")
    assert "re-export or re-download it" in hdr.error


def _task_with(real_dir: Path, root: Path, text: str) -> Path:
    task = root / "msd" / TASK
    shutil.copytree(real_dir / "msd" / TASK, task)
    (task / "dataset.json").write_text(text)
    return task


@pytest.mark.parametrize("text,phrase", [
    ('{"modality": {"0": "MRI"}, "labels": {"0": "background"}, "training": [], "test": []}',
     "lists no case ('training' and 'test' are empty)"),
    ("[" * 200_000 + "]" * 200_000, "JSON nested too deeply"),
])
def test_an_unusable_dataset_json_is_a_one_line_usage_error(real_dir, tmp_path, text, phrase):
    task = _task_with(real_dir, tmp_path, text)
    res = _cli("build-3dseg8", tmp_path / "msd", tmp_path / "store", "--workers", "0", "--no-progress")
    assert res.exit_code == 2, res.output
    (line,) = [ln for ln in res.output.splitlines() if ln.startswith("Error: ")]
    assert line.startswith(f"Error: {task / 'dataset.json'}: ") and phrase in line, res.output
    assert not (tmp_path / "store").exists()


def test_a_domain_without_cases_builds_an_empty_catalog(tmp_path):
    spec = DomainSpec(name="empty", source_dataset="none", modality="MR", channel_names=("MR",),
                      labels={0: "background"})
    result = job.build([(spec, [])], str(tmp_path / "store"), PrepConfig(), workers=0, progress=False,
                       log=lambda msg: None)
    assert result.ok and len(result.catalog) == 0 and len(load_catalog(str(tmp_path / "store"))) == 0


def _lidc_pair(real_dir: Path, root: Path) -> tuple[Path, Path]:
    """Two copies of the real LIDC-IDRI-0001 series as two patients; returns the second copy's XML."""
    (ref,) = find_lidc_series(real_dir / "lidc")
    rel = ref.dicom_dir.relative_to(real_dir / "lidc" / "LIDC-IDRI-0001")
    for n in (1, 2):
        shutil.copytree(ref.dicom_dir, root / "lidc" / f"LIDC-IDRI-000{n}" / rel)
    return root / "lidc" / "LIDC-IDRI-0002" / rel / ref.xml_path.name


def test_lidc_nan_z_position_fails_its_series_only_on_every_run(real_dir, tmp_path):
    xml = _lidc_pair(real_dir, tmp_path)
    xml.write_text(re.sub(r"<imageZposition>[^<]*</imageZposition>", "<imageZposition>nan</imageZposition>",
                          xml.read_text()))
    for _ in range(2):  # the re-run skips the good series and must still write the nodules table
        res = _cli("build-lidc", tmp_path / "lidc", tmp_path / "store", "--workers", "0", "--no-progress")
        assert res.exit_code == EXIT_FAILED_CASES, res.output
        cat = load_catalog(str(tmp_path / "store")).set_index("patient_id")
        bad = cat.loc["LIDC-IDRI-0002"]
        assert bad.status == "failed" and bad.error.startswith(f"{xml}: <imageZposition> is not a finite number")
        assert (cat.loc[["LIDC-IDRI-0001"], "status"] == "ok").all()
        nodules = load_nodules(str(tmp_path / "store"))
        assert set(nodules["patient_id"]) == {"LIDC-IDRI-0001"} and len(nodules) == 4


@pytest.fixture(scope="module")
def nnunet_dataset(real_dir, tmp_path_factory) -> Path:
    from pipeline.sample.nnunet import msd_to_nnunet

    return msd_to_nnunet(real_dir / "msd" / TASK, tmp_path_factory.mktemp("hostile_nnunet") / "nnUNet_raw")


@pytest.mark.parametrize("where", ["images", "label"])
@pytest.mark.parametrize("path", ["/etc/passwd", "../../../../../etc/passwd", "./imagesTr/../../x.nii.gz"])
def test_nnunet_dataset_entries_outside_the_folder_are_refused_as_msd_refuses_them(nnunet_dataset, tmp_path,
                                                                                    where, path):
    dataset = tmp_path / nnunet_dataset.name
    shutil.copytree(nnunet_dataset, dataset)
    meta = json.loads((dataset / "dataset.json").read_text())
    entry = {"images": ["imagesTr/hippocampus_001_0000.nii.gz"], "label": "labelsTr/hippocampus_001.nii.gz"}
    entry[where] = [path] if where == "images" else path
    meta["dataset"] = {"h1": entry}
    (dataset / "dataset.json").write_text(json.dumps(meta))
    res = _cli("build-nnunet", dataset, tmp_path / "store", "--workers", "0", "--no-progress")
    assert res.exit_code == 2, res.output
    assert (f"Error: {dataset / 'dataset.json'}: dataset entry 'h1': {path!r} points outside the dataset folder "
            f"{dataset}; dataset.json paths must stay inside it") in res.output, res.output
    assert not (tmp_path / "store").exists()


def test_lidc_contour_point_outside_the_image_leaves_out_that_mark_only(real_dir, tmp_path):
    """A contour point at 5000,5000 measured a 4.6 m nodule and stored it (40000,40000 asked for ~25 GB): the
    mark is left out with a note, the nodule keeps its other readers and its true size."""
    xml = _lidc_pair(real_dir, tmp_path)
    text = re.sub(r"<xCoord>\d+</xCoord>", "<xCoord>5000</xCoord>", xml.read_text(), count=1)
    xml.write_text(re.sub(r"<yCoord>\d+</yCoord>", "<yCoord>5000</yCoord>", text, count=1))
    res = _cli("build-lidc", tmp_path / "lidc", tmp_path / "store", "--workers", "0", "--no-progress")
    assert res.exit_code == 0, res.output
    assert re.search(rf"note: {re.escape(str(xml))}: reader \d+ nodule '[^']+': contour point \(5000, 5000\) lies "
                     r"outside the 512 × 512 image: that mark is left out", res.output), res.output
    nod = load_nodules(str(tmp_path / "store")).set_index(["patient_id", "nodule_index"])
    good, bad = nod.loc["LIDC-IDRI-0001"], nod.loc["LIDC-IDRI-0002"]
    assert len(good) == len(bad) == 4
    assert bad["diameter_mm"].max() < 50 and np.allclose(bad["diameter_mm"], good["diameter_mm"], equal_nan=True)
    assert bad["n_readers"].sum() == good["n_readers"].sum() - 1


def test_one_scan_under_two_names_lands_in_one_split(real_dir, tmp_path):
    """hippocampus_004 (the val patient of seed 0) copied as renamed_00, whose own hash would put it in train."""
    task = tmp_path / "msd" / TASK
    shutil.copytree(real_dir / "msd" / TASK, task)
    for sub in ("imagesTr", "labelsTr"):
        shutil.copy(task / sub / "hippocampus_004.nii.gz", task / sub / "renamed_00.nii.gz")
    meta = json.loads((task / "dataset.json").read_text())
    meta["training"].append({"image": "./imagesTr/renamed_00.nii.gz", "label": "./labelsTr/renamed_00.nii.gz"})
    (task / "dataset.json").write_text(json.dumps(meta))
    res = _cli("build-3dseg8", tmp_path / "msd", tmp_path / "store", "--workers", "0", "--no-progress")
    assert res.exit_code == 0, res.output
    split = load_catalog(str(tmp_path / "store")).set_index("case_id")["split"]
    assert split["hippocampus_004"] == split["renamed_00"] == "val"
    assert (split.drop(["hippocampus_004", "renamed_00"]) == "train").all()
    assert ("1 scan(s) stored under more than one name (identical image files), each kept in one split: "
            "hippocampus/hippocampus_004 = hippocampus/renamed_00") in res.output, res.output


def _marker(store: Path, case: str) -> dict:
    return json.loads((store / "hippocampus" / case / "zarr.json").read_text())["attributes"]["med3d_complete"]


def test_a_truncated_chunk_is_named_by_the_reader_and_healed_by_verify(real_dir, tmp_path):
    from catalog.chunk_read import ChunkedArrayReader

    store = tmp_path / "store"
    args = ["build-3dseg8", real_dir / "msd", store, "--workers", "0", "--no-progress", "--chunks", "16"]
    assert _cli(*args).exit_code == 0
    case = store / "hippocampus" / "hippocampus_001"
    chunk = case / "image" / "c" / "0" / "0" / "1" / "1"
    files = _marker(store, "hippocampus_001")["files"]
    assert files["image/c/0/0/1/1"] == chunk.stat().st_size == 16 ** 3 * 2 + 16  # raw float16 + Blosc header
    before = ChunkedArrayReader(case / "image").read_all()
    chunk.write_bytes(chunk.read_bytes()[:5000])

    with pytest.raises(OSError) as err:
        ChunkedArrayReader(case / "image").read_all()
    assert str(err.value) == (f"{chunk}: chunk file is truncated (5,000 bytes; a raw chunk has 8,208): the store "
                              "is damaged; re-run its build (med3d-prep build-...) with --verify to rebuild the "
                              "damaged cases")

    res = _cli(*args)  # a plain re-run trusts the marker
    assert "0 converted, 4 skipped" in res.output and chunk.stat().st_size == 5000
    res = _cli(*args, "--verify")
    assert res.exit_code == 0, res.output
    assert "1 converted, 3 skipped" in res.output, res.output
    assert ("verify: 3 stored case(s) intact, 1 damaged and converted again\n  DAMAGED hippocampus/hippocampus_001: "
            "hippocampus/hippocampus_001/image/c/0/0/1/1 has 5,000 bytes, the marker records 8,208") in res.output
    np.testing.assert_array_equal(ChunkedArrayReader(case / "image").read_all(), before)


def test_verify_checks_every_frame_where_the_marker_records_no_sizes(real_dir, tmp_path):
    """A store written before markers recorded file sizes: --verify checks each chunk's Blosc frame against its
    file and decodes it (zarr-python reads a raw frame cut short
    without a word, its missing bytes as whatever lies in memory)."""
    import zarr

    from pipeline.store import open_root
    from pipeline.verify import case_damage

    store = tmp_path / "store"
    assert _cli("build-3dseg8", real_dir / "msd", store, "--workers", "0", "--no-progress").exit_code == 0
    meta_path = store / "hippocampus" / "hippocampus_003" / "zarr.json"
    meta = json.loads(meta_path.read_text())
    del meta["attributes"]["med3d_complete"]["files"]
    meta_path.write_text(json.dumps(meta))
    root = open_root(str(store), mode="r")
    assert case_damage(root, "hippocampus/hippocampus_003") is None
    chunk = store / "hippocampus" / "hippocampus_003" / "image" / "c" / "0" / "0" / "0" / "0"
    size = chunk.stat().st_size
    chunk.write_bytes(chunk.read_bytes()[:-100])
    zarr.open_array(str(chunk.parents[4]), mode="r")[...]  # zarr-python reads it without an error
    assert case_damage(root, "hippocampus/hippocampus_003") == \
        f"hippocampus/hippocampus_003/image/c/0/0/0/0: {size - 100:,} bytes, its Blosc header says {size:,}"


@pytest.mark.parametrize("damage,phrase", [
    (lambda p: p.write_bytes(p.read_bytes()[:200]), "not a readable parquet table"),
    (lambda p: pd.read_parquet(p).assign(case_id="../../x").to_parquet(p, index=False),
     "case_id '../../x' contains a path separator"),
])
def test_info_on_a_damaged_catalog_is_one_line(msd_build, tmp_path, damage, phrase):
    store = tmp_path / "store"
    shutil.copytree(msd_build["store"], store)
    damage(store / "catalog.parquet")
    res = _cli("info", store)
    assert res.exit_code == 2, res.output
    assert f"Error: {store / 'catalog.parquet'}: " in res.output and phrase in res.output, res.output
    assert "Traceback" not in res.output


def test_a_case_id_named_like_the_store_metadata_is_refused(real_dir, tmp_path):
    task = tmp_path / "msd" / TASK
    shutil.copytree(real_dir / "msd" / TASK, task)
    shutil.copy(task / "imagesTr" / "hippocampus_001.nii.gz", task / "imagesTr" / "zarr.json.nii.gz")
    meta = json.loads((task / "dataset.json").read_text())
    meta["training"].append({"image": "./imagesTr/zarr.json.nii.gz", "label": "./labelsTr/hippocampus_001.nii.gz"})
    (task / "dataset.json").write_text(json.dumps(meta))
    res = _cli("build-3dseg8", tmp_path / "msd", tmp_path / "store", "--workers", "0", "--no-progress")
    assert res.exit_code == 2, res.output
    assert ("training entry 4: the case id 'zarr.json' taken from its file name is a name the store uses for its "
            "own files") in res.output, res.output


def test_lidc_verify_converts_the_series_of_a_damaged_crop_again(real_dir, tmp_path):
    _lidc_pair(real_dir, tmp_path)
    args = ["build-lidc", tmp_path / "lidc", tmp_path / "store", "--workers", "0", "--no-progress"]
    assert _cli(*args).exit_code == 0
    (crop,) = (tmp_path / "store" / "lidc").glob("LIDC-IDRI-0002_*")
    chunk = next(p for p in sorted((crop / "image").rglob("*")) if p.is_file() and p.name != "zarr.json")
    size = chunk.stat().st_size
    chunk.write_bytes(chunk.read_bytes()[:100])
    res = _cli(*args, "--verify")
    assert res.exit_code == 0, res.output
    rel = chunk.relative_to(tmp_path / "store").as_posix()
    assert f"DAMAGED lidc/{crop.name}: {rel} has 100 bytes, the marker records {size:,} (its series converted " \
           "again)" in res.output, res.output
    assert "1 converted, 1 skipped" in res.output and chunk.stat().st_size == size
