"""Inputs damaged the way real downloads are never become ``ok`` rows (issue 8).

A corpus of bad inputs made from the real files (MSD hippocampus, LIDC-IDRI-0001) and the sample writers, built
with one build per source: every damaged case becomes a ``failed`` row (or the build is refused before any work)
whose message names the file and the problem, the good cases of the same build complete ``ok``, nothing is
written outside the store folder, and the CLI exits with its documented status (3: failed cases, 2: usage).
"""
from __future__ import annotations

import gzip
import io
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from click.testing import CliRunner

from catalog import load_catalog, load_domains
from pipeline.cli import main
from pipeline.cli_options import EXIT_FAILED_CASES
from pipeline.sample.lits import write_lits_sample
from pipeline.sample.visceral import write_visceral_sample
from pipeline.sources.lidc_series import find_lidc_series
from volume import integrity

GOOD = ("hippocampus_001", "hippocampus_003")  # uint8 and float32 images


def _cli(*args) -> object:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def _files(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def _written_outside(before: dict, after: dict, store: Path) -> list[str]:
    """Files created or changed by a build anywhere but in its store folder."""
    return sorted(p for p, st in after.items() if before.get(p) != st and not p.startswith(str(store) + "/"))


def _header_and_raw(path: Path) -> tuple[nib.Nifti1Header, bytes]:
    raw = gzip.decompress(path.read_bytes())
    return nib.Nifti1Header.from_fileobj(io.BytesIO(raw[:348]), check=False), raw


def _with_header(path: Path, edit) -> bytes:
    """A real .nii.gz with its header edited by ``edit(header)``; voxels unchanged."""
    hdr, raw = _header_and_raw(path)
    edit(hdr)
    return gzip.compress(hdr.binaryblock + raw[348:])


def _with_voxels(path: Path, edit) -> bytes:
    """A real float32 .nii.gz with its voxels edited in place by ``edit(flat float32 array)``."""
    hdr, raw = _header_and_raw(path)
    off = int(hdr["vox_offset"])
    vox = np.frombuffer(raw[off:], hdr.get_data_dtype()).copy()
    edit(vox)
    return gzip.compress(raw[:off] + vox.tobytes())


def _set(key: str, index: int, value):
    def edit(hdr):
        arr = hdr[key].copy()
        arr[index] = value
        hdr[key] = arr
    return edit


def _dims(*dims: int):
    def edit(hdr):
        dim = np.ones(8, np.int16)
        dim[0] = len(dims)
        dim[1:len(dims) + 1] = dims
        hdr["dim"] = dim
    return edit


def _shear(hdr):
    hdr["qform_code"], hdr["sform_code"] = 0, 1
    hdr["srow_x"] = [1.0, 0.5, 0.0, 0.0]


def _flip_middle(data: bytes) -> bytes:
    b = bytearray(data)
    mid = len(b) // 2
    b[mid:mid + 32] = bytes(x ^ 0xFF for x in b[mid:mid + 32])
    return bytes(b)


def _two_channel_label(path: Path) -> bytes:
    lab = sitk.ReadImage(str(path))
    out = path.with_name("tmp_two_channel.nii.gz")
    sitk.WriteImage(sitk.JoinSeries([lab, lab]), str(out))
    data = out.read_bytes()
    out.unlink()
    return data


def _mha(arr: np.ndarray, tmp: Path, direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)) -> bytes:
    img = sitk.GetImageFromArray(arr)
    img.SetDirection(direction)
    try:
        sitk.WriteImage(img, str(tmp))
        return tmp.read_bytes()
    finally:
        tmp.unlink(missing_ok=True)


# kind -> (where the damage is: "image" or "label", message phrase, refused from headers before any voxel read)
MSD_KINDS: dict[str, tuple[str, str, bool]] = {
    "truncated_image": ("image", "truncated gzip stream (ends after 2,000 of ~", True),
    "truncated_label": ("label", "truncated gzip stream (ends after", True),
    "zero_spacing": ("image", "header spacing (pixdim) is not a voxel size (0 along x mm): fix the file's header",
                     True),
    "nan_spacing": ("image", "header spacing (pixdim) is not a voxel size (nan along y mm)", True),
    "negative_spacing": ("image", "header spacing (pixdim) is not a voxel size (-1 along z mm)", True),
    "nan_voxels": ("image", "10 NaN voxel(s) of 61,880", False),
    "inf_voxels": ("image", "7 infinite voxel(s) of 61,880", False),
    "constant_image": ("image", "constant image (all 61,880 voxels are 5)", False),
    "huge_header": ("image", "announces 64,000,000,000 voxels (4000 × 4000 × 4000), more than --max-voxels "
                             "2,000,000,000", True),
    "not_nifti": ("image", "cannot read the image: a file that is not NIfTI", True),
    "gzip_not_nifti": ("image", "cannot read the image: a gzip file that is not NIfTI", True),
    "empty_file": ("image", "empty file (0 bytes)", True),
    "two_d": ("image", "expected a 3D or 4D image, the header says 2D", True),
    "five_d": ("image", "expected a 3D or 4D image, the header says 5D", True),
    "sheared_direction": ("image", "only supports orthonormal direction cosines", True),
    # bytes flipped mid-stream (CRC-32 mismatch or invalid deflate data): ITK's header read stumbles over this
    # small file already, and the error says why
    "corrupt_gzip": ("image", "corrupt gzip stream after", True),
    "truncated_nii": ("image", "truncated file (148,723 of the 247,872 bytes its header announces)", True),
    "mha_shear": ("image", "direction cosines are not orthonormal", True),
    "mha_nan": ("image", "3 NaN voxel(s) of 8,000", False),
    "label_grid": ("label", "label grid differs from image", False),
    "label_values": ("label", "label values [7] are not in Task04_Hippocampus's labels [0, 1, 2]", False),
    "label_two_channels": ("label", "a label must have one channel, this file has 2", False),
    "label_nan": ("label", "1 NaN voxel(s)", False),
    "missing_image": ("image", "file not found", True),
    "missing_label": ("label", "file not found", True),
}


def _write_msd_corpus(real_task: Path, task: Path) -> dict[str, tuple[Path, Path]]:
    """The real task's two good cases plus one damaged case per MSD kind; returns kind -> (image, label)."""
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (task / sub).mkdir(parents=True)
    meta = json.loads((real_task / "dataset.json").read_text())
    meta["training"] = [e for e in meta["training"] if Path(e["image"]).name.split(".")[0] in GOOD]
    for name in GOOD:
        for sub in ("imagesTr", "labelsTr"):
            shutil.copy(real_task / sub / f"{name}.nii.gz", task / sub)
    img4, lab4 = real_task / "imagesTr" / "hippocampus_004.nii.gz", real_task / "labelsTr" / "hippocampus_004.nii.gz"
    img3 = real_task / "imagesTr" / "hippocampus_003.nii.gz"  # float32, 34 × 52 × 35 = 61,880 voxels
    raw3 = gzip.decompress(img3.read_bytes())
    rng = np.random.default_rng(0)
    cube = rng.normal(100, 10, (20, 20, 20)).astype(np.float32)
    cube_nan = cube.copy()
    cube_nan[1, 2, 3] = cube_nan[4, 5, 6] = cube_nan[7, 8, 9] = np.nan
    images: dict[str, bytes | None] = {
        "truncated_image": img4.read_bytes()[:2000],
        "zero_spacing": _with_header(img3, _set("pixdim", 1, 0.0)),
        "nan_spacing": _with_header(img3, _set("pixdim", 2, np.nan)),
        "negative_spacing": _with_header(img3, _set("pixdim", 3, -1.0)),
        "nan_voxels": _with_voxels(img3, lambda v: v.__setitem__(slice(100, 110), np.nan)),
        "inf_voxels": _with_voxels(img3, lambda v: v.__setitem__(slice(500, 507), np.inf)),
        "constant_image": _with_voxels(img3, lambda v: v.__setitem__(slice(None), 5.0)),
        "huge_header": _with_header(img3, _dims(4000, 4000, 4000)),
        "not_nifti": b"<html><body><h1>404 Not Found</h1></body></html>\n",
        "gzip_not_nifti": gzip.compress(b"Access denied. Please log in to download this file.\n" * 20),
        "empty_file": b"",
        "two_d": _with_header(img3, _dims(34, 52)),
        "five_d": _with_header(img3, _dims(34, 52, 35, 2, 2)),
        "sheared_direction": _with_header(img3, _shear),
        "corrupt_gzip": _flip_middle(img3.read_bytes()),
        "truncated_nii": raw3[:int(len(raw3) * 0.6)],
        "mha_shear": _mha(cube, task / "tmp.mha", direction=(1, 0.5, 0, 0, 1, 0, 0, 0, 1)),
        "mha_nan": _mha(cube_nan, task / "tmp.mha"),
        "missing_image": None,
    }
    ext = {"truncated_nii": ".nii", "mha_shear": ".mha", "mha_nan": ".mha"}
    labels: dict[str, bytes | None] = {
        "truncated_label": lab4.read_bytes()[:len(lab4.read_bytes()) // 2],
        "label_grid": (real_task / "labelsTr" / "hippocampus_006.nii.gz").read_bytes(),
        "label_two_channels": _two_channel_label(lab4),
        "missing_label": None,
    }
    lab_arr = sitk.GetArrayFromImage(sitk.ReadImage(str(lab4)))
    lab7 = lab_arr.copy()
    lab7[0, 0, 0] = 7
    lab_nan = lab_arr.astype(np.float32)
    lab_nan[1, 1, 1] = np.nan
    cube_label = np.zeros((20, 20, 20), np.uint8)
    cube_label[5:10, 5:10, 5:10] = 1
    corpus = {}
    for kind in MSD_KINDS:
        name = f"bad_{kind}"
        image = task / "imagesTr" / f"{name}{ext.get(kind, '.nii.gz')}"
        label = task / "labelsTr" / f"{name}.nii.gz"
        if kind in images:
            if images[kind] is not None:
                image.write_bytes(images[kind])
        else:
            shutil.copy(img4, image)
        if kind in labels:
            if labels[kind] is not None:
                label.write_bytes(labels[kind])
        elif kind in ("label_values", "label_nan"):
            out = sitk.GetImageFromArray(lab7 if kind == "label_values" else lab_nan)
            out.CopyInformation(sitk.ReadImage(str(lab4)))
            sitk.WriteImage(out, str(label))
        elif kind.startswith("mha"):
            sitk.WriteImage(sitk.GetImageFromArray(cube_label), str(label))
        elif kind in images and kind not in ("missing_image", "truncated_image"):
            shutil.copy(real_task / "labelsTr" / "hippocampus_003.nii.gz", label)
        else:
            shutil.copy(lab4, label)
        meta["training"].append({"image": f"./imagesTr/{image.name}", "label": f"./labelsTr/{label.name}"})
        corpus[kind] = (image, label)
    (task / "dataset.json").write_text(json.dumps(meta, indent=1))
    return corpus


@pytest.fixture(scope="module")
def msd_build(real_dir, tmp_path_factory):
    """One build-3dseg8 over the real task's two good cases and every damaged MSD kind."""
    root = tmp_path_factory.mktemp("bad_msd")
    corpus = _write_msd_corpus(real_dir / "msd" / "Task04_Hippocampus", root / "msd" / "Task04_Hippocampus")
    store = root / "store"
    before = _files(root)
    res = _cli("build-3dseg8", root / "msd", store, "--workers", "0", "--no-progress")
    return {"res": res, "store": store, "corpus": corpus, "outside": _written_outside(before, _files(root), store),
            "catalog": load_catalog(str(store)).set_index("case_id")}


def test_msd_build_exits_3_and_good_cases_complete(msd_build):
    res, cat = msd_build["res"], msd_build["catalog"]
    assert res.exit_code == EXIT_FAILED_CASES == 3, res.output
    assert sorted(cat.index[cat.status == "ok"]) == list(GOOD)
    assert (cat.loc[list(GOOD), "error"] == "").all()
    assert len(cat) == len(GOOD) + len(MSD_KINDS) and (cat.status != "ok").sum() == len(MSD_KINDS)
    assert f"{len(MSD_KINDS)} case(s) failed" in res.output
    assert msd_build["outside"] == []
    # the damaged headers took no part in the plan: the good cases' 1 mm
    (dom,) = load_domains(str(msd_build["store"])).itertuples()
    assert list(dom.target_spacing) == [1.0, 1.0, 1.0] and (dom.n_volumes, dom.n_failed) == (2, len(MSD_KINDS))
    stored = sorted(p.name for p in (msd_build["store"] / "hippocampus").iterdir() if p.is_dir())
    assert stored == list(GOOD)  # a failed case leaves nothing in the store


@pytest.mark.parametrize("kind", list(MSD_KINDS))
def test_msd_bad_input_is_a_failed_row_naming_file_and_problem(msd_build, kind):
    where, phrase, at_header = MSD_KINDS[kind]
    row = msd_build["catalog"].loc[f"bad_{kind}"]
    image, label = msd_build["corpus"][kind]
    path = image if where == "image" else label
    assert row.status == "failed"
    assert row.error.startswith(f"{path}: "), row.error
    assert phrase in row.error, row.error
    # header-time refusals happen while planning (no params hash yet): no voxel of the case was read
    assert (row.params_hash == "") == at_header, row.error
    assert f"FAILED hippocampus/bad_{kind}: {row.error}" in msd_build["res"].output


def test_max_voxels_option_refuses_from_the_header(real_dir, tmp_path):
    store = tmp_path / "store"
    res = _cli("build-3dseg8", real_dir / "msd", store, "--workers", "0", "--no-progress", "--max-voxels", "5e4")
    assert res.exit_code == 3, res.output
    cat = load_catalog(str(store)).set_index("case_id")
    # hippocampus_003 is 34 × 52 × 35 = 61,880 voxels; 001 is 35 × 51 × 35 = 62,475
    assert (cat.status == "failed").all() and (cat.params_hash == "").all()
    assert "announces 61,880 voxels (34 × 52 × 35), more than --max-voxels 50,000" in cat.loc["hippocampus_003",
                                                                                             "error"]
    res = _cli("build-3dseg8", real_dir / "msd", tmp_path / "s2", "--max-voxels", "lots")
    assert res.exit_code == 2 and "is not a voxel count" in res.output and not (tmp_path / "s2").exists()
    for value in ("inf", "1e400", "nan"):
        res = _cli("build-3dseg8", real_dir / "msd", tmp_path / "s3", "--max-voxels", value)
        assert res.exit_code == 2 and "positive whole number of voxels" in res.output, (value, res.output)
    assert not (tmp_path / "s3").exists()


def _task_copy(real_dir: Path, root: Path) -> Path:
    task = root / "msd" / "Task04_Hippocampus"
    shutil.copytree(real_dir / "msd" / "Task04_Hippocampus", task)
    return task


def _edit_meta(task: Path, edit) -> None:
    meta = json.loads((task / "dataset.json").read_text())
    edit(meta)
    (task / "dataset.json").write_text(json.dumps(meta))


# dataset.json problems refuse the whole build before any work: a usage error (exit 2) naming dataset.json
REFUSED = {
    "dataset_json_missing": (lambda t: (t / "dataset.json").unlink(), "missing; an MSD task folder needs its"),
    "dataset_json_malformed": (lambda t: (t / "dataset.json").write_text('{"training": [}'), "not valid JSON"),
    "dataset_json_outside": (
        lambda t: _edit_meta(t, lambda m: m["training"].append(
            {"image": "./imagesTr/../../../elsewhere/x.nii.gz", "label": "./labelsTr/hippocampus_001.nii.gz"})),
        "training entry 4: './imagesTr/../../../elsewhere/x.nii.gz' points outside the task folder"),
    "case_id_escape": (
        lambda t: _edit_meta(t, lambda m: m["training"].append(
            {"image": "./imagesTr/...nii.gz", "label": "./labelsTr/hippocampus_001.nii.gz"})),
        "the case id '..' taken from its file name is '..', which would escape the store folder"),
    "dataset_json_duplicate": (lambda t: _edit_meta(t, lambda m: m["training"].append(m["training"][0])),
                               "listed more than once: hippocampus_001"),
    "dataset_json_entry_without_image": (
        lambda t: _edit_meta(t, lambda m: m["training"].append({"label": "./labelsTr/hippocampus_001.nii.gz"})),
        "training entry 4: expected {\"image\": ..., \"label\": ...}"),
}


@pytest.mark.parametrize("kind", list(REFUSED))
def test_bad_dataset_json_is_refused_before_any_work(real_dir, tmp_path, kind):
    damage, phrase = REFUSED[kind]
    task = _task_copy(real_dir, tmp_path)
    damage(task)
    before = _files(tmp_path)
    res = _cli("build-3dseg8", tmp_path / "msd", tmp_path / "store", "--workers", "0", "--no-progress")
    assert res.exit_code == 2, res.output
    assert f"{task / 'dataset.json'}: " in res.output and phrase in res.output, res.output
    assert not (tmp_path / "store").exists() and _files(tmp_path) == before


@pytest.fixture(scope="module")
def visceral_build(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_visceral")
    raw = root / "visceral"
    write_visceral_sample(raw, seed=0)
    seg = raw / "Segmentations"
    grid_mask = seg / "10000021_1_CT_wb_1302_2.nii.gz"
    mask = sitk.ReadImage(str(grid_mask))
    mask.SetSpacing(tuple(s * 1.5 for s in mask.GetSpacing()))
    sitk.WriteImage(mask, str(grid_mask))
    cut_mask = seg / "10000022_1_CT_wb_1326_4.nii.gz"
    cut_mask.write_bytes(cut_mask.read_bytes()[:len(cut_mask.read_bytes()) // 2])
    store = root / "store"
    before = _files(root)
    res = _cli("build-visceral", raw, store, "--workers", "0", "--no-progress")
    return {"res": res, "catalog": load_catalog(str(store)).set_index("case_id"), "grid_mask": grid_mask,
            "cut_mask": cut_mask, "outside": _written_outside(before, _files(root), store)}


@pytest.mark.parametrize("kind,case,phrase", [
    ("mask_on_another_grid", "10000021_1_CT_wb", "mask grid differs from image"),
    ("truncated_mask", "10000022_1_CT_wb", "truncated gzip stream"),
])
def test_visceral_bad_mask_fails_alone(visceral_build, kind, case, phrase):
    res, cat = visceral_build["res"], visceral_build["catalog"]
    assert res.exit_code == 3, res.output
    row = cat.loc[case]
    mask = visceral_build["grid_mask" if kind == "mask_on_another_grid" else "cut_mask"]
    assert row.status == "failed" and row.error.startswith(f"{mask}: ") and phrase in row.error, row.error
    assert sorted(cat.index[cat.status == "failed"]) == ["10000021_1_CT_wb", "10000022_1_CT_wb"]
    assert (cat.status == "ok").sum() == len(cat) - 2 >= 10
    assert visceral_build["outside"] == []


@pytest.fixture(scope="module")
def lits_build(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_lits")
    raw = root / "lits"
    write_lits_sample(raw, seed=0)
    cut = raw / "volume-1.nii"
    cut.write_bytes(cut.read_bytes()[:len(cut.read_bytes()) * 2 // 3])
    zero = raw / "volume-3.nii"
    img = nib.load(str(zero))
    hdr = img.header.copy()
    pixdim = hdr["pixdim"].copy()
    pixdim[1:4] = 0.0
    hdr["pixdim"] = pixdim
    data = zero.read_bytes()
    zero.write_bytes(hdr.binaryblock + data[348:])
    (raw / "segmentation-4.nii").unlink()
    store = root / "store"
    before = _files(root)
    res = _cli("build-lits", raw, store, "--workers", "0", "--no-progress")
    return {"res": res, "raw": raw, "catalog": load_catalog(str(store)).set_index("case_id"),
            "outside": _written_outside(before, _files(root), store)}


def test_lits_truncated_volume_and_missing_segmentation_fail(lits_build):
    res, cat, raw = lits_build["res"], lits_build["catalog"], lits_build["raw"]
    assert res.exit_code == 3, res.output
    assert cat.loc["volume-1", "status"] == "failed"
    assert cat.loc["volume-1", "error"].startswith(f"{raw / 'volume-1.nii'}: truncated file (")
    assert "bytes its header announces): re-download the file" in cat.loc["volume-1", "error"]
    assert cat.loc["volume-4", "status"] == "failed"
    assert cat.loc["volume-4", "error"] == f"{raw / 'segmentation-4.nii'}: file not found"
    assert sorted(cat.index[cat.status == "ok"]) == ["test-volume-0", "test-volume-1", "volume-0", "volume-2",
                                                     "volume-3"]
    assert lits_build["outside"] == []


def test_lits_zero_spacing_is_flagged_with_the_training_mean(lits_build):
    """build-lits is where the user asked for it: a header without usable spacing gets the training mean,
    flagged; the zero spacing is seen in the header itself (ITK alone would read it as 1 mm)."""
    cat = lits_build["catalog"]
    row = cat.loc["volume-3"]
    assert row.status == "ok" and row.spacing_flag == "no_spacing:train_mean"
    assert "volume-3: header spacing (0.0, 0.0, 0.0) unusable; using the training mean" in lits_build["res"].output
    assert row.orig_spacing != [1.0, 1.0, 1.0] and all(s > 0 for s in row.orig_spacing)


@pytest.fixture(scope="module")
def lidc_build(real_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_lidc") / "lidc"
    (ref,) = find_lidc_series(real_dir / "lidc")
    rel = ref.dicom_dir.relative_to(real_dir / "lidc" / "LIDC-IDRI-0001")
    series = {}
    for n, name in enumerate(("good", "two_series", "missing_slice", "corrupt_dicom", "xml_entities"), 1):
        series[name] = root / f"LIDC-IDRI-{n:04d}" / rel
        shutil.copytree(ref.dicom_dir, series[name])
    other = sitk.Image(8, 8, 1, sitk.sitkInt16)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(3):
        for key, value in {"0008|0060": "CT", "0020|000e": "1.2.826.0.1.3680043.2.9999.7",
                           "0008|0018": f"1.2.826.0.1.3680043.2.9999.7.{k}", "0020|0032": f"0\\0\\{2.5 * k}",
                           "0020|0037": "1\\0\\0\\0\\1\\0"}.items():
            other.SetMetaData(key, value)
        writer.SetFileName(str(series["two_series"] / f"other-{k}.dcm"))
        writer.Execute(other)
    (series["missing_slice"] / "-115.000000.dcm").unlink()
    cut = series["corrupt_dicom"] / "-110.000000.dcm"
    cut.write_bytes(cut.read_bytes()[:-1000])
    (series["xml_entities"] / "69.xml").write_text(
        '<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">]>'
        "<LidcReadMessage>&b;</LidcReadMessage>")
    store = root.parent / "store"
    before = _files(root.parent)
    res = _cli("build-lidc", root, store, "--workers", "0", "--no-progress")
    return {"res": res, "series": series, "catalog": load_catalog(str(store)).set_index("patient_id"),
            "outside": _written_outside(before, _files(root.parent), store)}


@pytest.mark.parametrize("kind,patient,named,phrase", [
    ("two_series", "LIDC-IDRI-0002", "", "holds 2 DICOM series"),
    ("missing_slice", "LIDC-IDRI-0003", "", "missing slice between z=-117.50 and z=-112.50"),
    ("corrupt_dicom", "LIDC-IDRI-0004", "", "1 unreadable DICOM file(s): "),
    ("xml_entities", "LIDC-IDRI-0005", "/69.xml", "DOCTYPE/ENTITY declarations are not allowed"),
])
def test_lidc_bad_series_fails_alone(lidc_build, kind, patient, named, phrase):
    res, cat = lidc_build["res"], lidc_build["catalog"]
    assert res.exit_code == 3, res.output
    row = cat.loc[patient]
    assert row.status == "failed" and row.error.startswith(f"{lidc_build['series'][kind]}{named}: "), row.error
    assert phrase in row.error, row.error
    if kind == "corrupt_dicom":
        assert row.error.endswith("-110.000000.dcm")
    assert cat.loc["LIDC-IDRI-0001", "status"] == "ok" and (cat.status == "failed").sum() == 4
    assert lidc_build["outside"] == []


def test_integrity_error_messages_for_a_truncated_real_file(real_dir, tmp_path):
    """The pure checks on their own: the message a user sees for an interrupted download of a real case."""
    src = real_dir / "msd" / "Task04_Hippocampus" / "imagesTr" / "hippocampus_004.nii.gz"
    cut = tmp_path / "hippocampus_004.nii.gz"
    cut.write_bytes(src.read_bytes()[:2000])
    with pytest.raises(integrity.IntegrityError) as exc:
        integrity.check_file(cut)
    msg = str(exc.value)
    assert msg.startswith(f"{cut}: truncated gzip stream (ends after 2,000 of ~") and "re-download the file" in msg
    # the complete file passes, and its voxels equal SimpleITK's read
    info = integrity.check_file(src)
    vox = integrity.read_nifti_voxels(info)
    assert np.array_equal(vox.T, sitk.GetArrayFromImage(sitk.ReadImage(str(src))))
    assert integrity.verify_gzip(src) == info.expected_bytes


def test_a_vector_nifti_is_no_5d_image(tmp_path):
    """NIfTI stores a vector image as (x, y, z, 1, components): its components are channels, as the reader
    splits them, not a fifth dimension to refuse; a real fifth axis (five_d above) still is one."""
    from volume.geometry import read_channels

    rng = np.random.default_rng(0)
    path = tmp_path / "vector.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(rng.normal(size=(8, 9, 10, 2)).astype(np.float32), isVector=True),
                    str(path))
    info = integrity.check_file(str(path))
    assert info is not None and info.dims == (10, 9, 8, 1, 2) and info.ndim == 4
    assert [c.GetSize() for c in read_channels(str(path))] == [(10, 9, 8), (10, 9, 8)]
