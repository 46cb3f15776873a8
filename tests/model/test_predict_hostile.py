"""``med3d-train predict`` on hostile inputs: a header claiming 32767³ voxels, a NIfTI ``vox_offset`` of inf, a
300 mm pixdim, a gzip bomb over ``--max-voxels``, each in a file of a few bytes to a few kB. Each is refused by
the build's header checks before a voxel is read (no voxel read, no allocation, well under a second), with one
line naming the file; the good scans given with them are still predicted, and the exit status is non-zero."""

from __future__ import annotations

import gzip
import math
import struct
import time
import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from click.testing import CliRunner

from model.api import predict
from model.evaluation.predict import ScansSkippedError

HIPPO = "msd/Task04_Hippocampus/imagesTr/hippocampus_001.nii.gz"


@pytest.fixture(scope="module")
def run(real_dir, tmp_path_factory) -> Path:
    """A one-step seg run on the four real hippocampus cases (about 2 s): its preprocessing is what predict
    replays, its network what the CLI loads."""
    from model.api import finetune
    from pipeline.config import PrepConfig
    from pipeline.job import build
    from pipeline.sources.msd import scan_msd

    root = tmp_path_factory.mktemp("hostile")
    found, _ = scan_msd(real_dir / "msd")
    store = str(root / "store")
    assert build(found, store, PrepConfig(chunks=(16, 16, 16)), workers=0, progress=False,
                 log=lambda s: None).failed == []
    finetune("seg", store, str(root / "run"), steps=1, batch=1, patch=(16, 16, 16), workers=0, device="cpu",
             ckpt_every=0, val_every=0, decoder_widths=(8, 8, 8), progress=False, log=lambda s: None)
    return root / "run"


def _nifti1_header(dims: tuple[int, int, int], dtype=np.float32, pixdim=(1.0, 1.0, 1.0)) -> bytes:
    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(dtype)
    hdr.set_data_shape(dims)
    hdr.set_zooms(pixdim)
    hdr.set_qform(np.diag([*pixdim, 1.0]), code=1)
    hdr["vox_offset"] = 352
    hdr["magic"] = b"n+1"
    return hdr.binaryblock + b"\0\0\0\0"  # the 4-byte extension flag: no extension


def huge_header(path: Path) -> Path:
    """A .nii whose header claims 32767³ float32 voxels (128 TiB) but holds 1 kB of data."""
    path.write_bytes(_nifti1_header((32767, 32767, 32767)) + bytes(1024))
    return path


def inf_offset(path: Path) -> Path:
    """A complete 8³ .nii whose header's vox_offset (float32 at byte 108) is inf."""
    raw = bytearray(_nifti1_header((8, 8, 8)) + np.ones(512, np.float32).tobytes())
    raw[108:112] = struct.pack("<f", math.inf)
    path.write_bytes(bytes(raw))
    return path


def coarse_pixdim(path: Path) -> Path:
    """A valid 8³ scan with 300 mm voxels (2.4 m across)."""
    img = sitk.GetImageFromArray(np.random.default_rng(0).normal(size=(8, 8, 8)).astype(np.float32))
    img.SetSpacing((300.0, 300.0, 300.0))
    sitk.WriteImage(img, str(path))
    return path


BOMB_VOXELS = 256 ** 3


def gzip_bomb(path: Path) -> Path:
    """A valid .nii.gz of 256³ uint8 zeros: 16.8 MB of voxels in about 20 kB, over ``--max-voxels 1e6``."""
    with gzip.open(path, "wb", compresslevel=9) as fh:
        fh.write(_nifti1_header((256, 256, 256), np.uint8))
        zeros = bytes(1 << 20)
        for _ in range(BOMB_VOXELS >> 20):
            fh.write(zeros)
    return path


HOSTILE = {  # maker, file name, --max-voxels, what the message must say
    "32767^3 header": (huge_header, "huge.nii", None, "more than --max-voxels 2,000,000,000"),
    "vox_offset inf": (inf_offset, "offset.nii", None, "vox_offset inf"),
    "300 mm pixdim": (coarse_pixdim, "coarse.nii.gz", None, "300 along x"),
    "gzip bomb": (gzip_bomb, "bomb.nii.gz", 1_000_000, "more than --max-voxels 1,000,000"),
}


def _no_voxel_read(monkeypatch) -> list[str]:
    """Make any voxel read of the predict path (preprocess_scan) record its file, so a test can assert none."""
    import volume.preprocess

    reads: list[str] = []
    real = volume.preprocess.preprocess_scan

    def spy(path, *args, **kwargs):
        reads.append(Path(path).name)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(volume.preprocess, "preprocess_scan", spy)
    return reads


def _zeros(image: np.ndarray) -> np.ndarray:
    return (image > image.mean()).astype(np.uint8)


@pytest.mark.parametrize("name", list(HOSTILE))
def test_each_hostile_header_is_refused_before_any_voxel_is_read(name, run, tmp_path, monkeypatch):
    make, filename, max_voxels, says = HOSTILE[name]
    bad = make(tmp_path / filename)
    assert bad.stat().st_size < 64_000
    reads = _no_voxel_read(monkeypatch)
    lines: list[str] = []
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(ScansSkippedError) as err:
            predict(run, [bad], tmp_path / "out", segmenter=_zeros, max_voxels=max_voxels, log=lines.append)
        seconds = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert reads == [] and not (tmp_path / "out").exists()  # no voxel read, nothing written
    assert seconds < 2.0 and peak < 4 << 20, (seconds, peak)  # reading any of them allocates >= 16 MB
    assert len(lines) == 1 and lines[0].startswith(f"skipped: {bad}: ") and says in lines[0], lines
    assert "\n" not in lines[0]
    assert err.value.written == [] and [p for p, _ in err.value.skipped] == [bad]
    assert "1 of 1 case(s) skipped" in str(err.value)


def test_a_good_scan_next_to_bad_ones_is_still_predicted(run, real_dir, tmp_path, monkeypatch):
    folder = tmp_path / "in"
    folder.mkdir()
    for make, filename, _, _ in HOSTILE.values():
        make(folder / filename)
    good = folder / "good.nii.gz"
    good.write_bytes((real_dir / HIPPO).read_bytes())
    reads = _no_voxel_read(monkeypatch)
    lines: list[str] = []
    with pytest.raises(ScansSkippedError) as err:
        predict(run, [folder], tmp_path / "out", segmenter=_zeros, max_voxels=1_000_000, log=lines.append)
    assert reads == ["good.nii.gz"]
    assert err.value.written == [(tmp_path / "out" / "good_mask.nii.gz").resolve()]
    assert sorted(p.name for p, _ in err.value.skipped) == sorted(f for _, f, _, _ in HOSTILE.values())
    assert "4 of 5 case(s) skipped" in str(err.value) and "1 mask(s) written" in str(err.value)
    mask = sitk.ReadImage(str(tmp_path / "out" / "good_mask.nii.gz"))
    assert mask.GetSize() == sitk.ReadImage(str(good)).GetSize()
    assert 0 < sitk.GetArrayFromImage(mask).sum() < math.prod(mask.GetSize())
    assert sum(line.startswith("skipped: ") for line in lines) == 4


def test_a_bad_channel_file_skips_its_nnunet_case(run, real_dir, tmp_path, monkeypatch):
    ts = tmp_path / "imagesTs"
    ts.mkdir()
    for case in ("a", "b"):
        (ts / f"{case}_0000.nii.gz").write_bytes((real_dir / HIPPO).read_bytes())
    inf_offset(ts / "b_0001.nii")  # the network reads _0000, but the case's other channel is damaged
    reads = _no_voxel_read(monkeypatch)
    lines: list[str] = []
    with pytest.raises(ScansSkippedError) as err:
        predict(run, [ts], tmp_path / "out", segmenter=_zeros, log=lines.append)
    assert reads == ["a_0000.nii.gz"] and [p.name for p in err.value.written] == ["a.nii.gz"]
    assert [line for line in lines if line.startswith("skipped: ")] == [
        line for line in lines if str(ts / "b_0001.nii") in line and "vox_offset" in line]
    assert len(err.value.skipped) == 1


def test_cli_skips_the_bad_file_predicts_the_good_one_and_exits_non_zero(run, real_dir, tmp_path):
    from model.cli import main

    bad = gzip_bomb(tmp_path / "bomb.nii.gz")
    good = real_dir / HIPPO
    res = CliRunner().invoke(main, ["predict", str(run), str(bad), str(good), "--out", str(tmp_path / "pred"),
                                    "--max-voxels", "1e6"])
    assert res.exit_code == 1, res.output
    assert (tmp_path / "pred" / "hippocampus_001_mask.nii.gz").is_file()
    assert not (tmp_path / "pred" / "bomb_mask.nii.gz").exists()
    skipped = [line for line in res.output.splitlines() if line.startswith("skipped: ")]
    assert len(skipped) == 1 and str(bad) in skipped[0] and "raise --max-voxels" in skipped[0]
    assert "Error: 1 of 2 case(s) skipped" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(main, ["predict", str(run), str(good), "--out", str(tmp_path / "p2"),
                                    "--max-voxels", "lots"])
    assert res.exit_code == 2 and "positive whole number" in res.output


def test_a_scan_whose_spacing_cannot_be_trusted_is_skipped_not_fatal(run, real_dir, tmp_path, monkeypatch):
    """A CT run given a scan with the 1 x 1 x 1 mm identity affine (LiTS 28-47) next to a good one: the header
    check skips that scan with the --spacing hint before any voxel is read; the good one is predicted."""
    import json
    import shutil

    ct_run = tmp_path / "ct_run"
    shutil.copytree(run, ct_run)
    spec = json.loads((ct_run / "finetune.json").read_text())
    spec["preprocessing"]["modality"] = "CT"
    (ct_run / "finetune.json").write_text(json.dumps(spec))
    folder = tmp_path / "in"
    folder.mkdir()
    img = sitk.ReadImage(str(real_dir / HIPPO))
    img.SetDirection((1, 0, 0, 0, 1, 0, 0, 0, 1))
    sitk.WriteImage(img, str(folder / "a_no_spacing.nii.gz"))  # sorted first: it used to end the whole call
    img.SetSpacing((0.9, 0.9, 1.1))
    sitk.WriteImage(img, str(folder / "b_good.nii.gz"))
    reads = _no_voxel_read(monkeypatch)
    lines: list[str] = []
    with pytest.raises(ScansSkippedError) as err:
        predict(ct_run, [folder], tmp_path / "out", segmenter=_zeros, log=lines.append)
    assert reads == ["b_good.nii.gz"]
    assert [p.name for p in err.value.written] == ["b_good_mask.nii.gz"]
    [(skipped, why)] = err.value.skipped
    assert skipped.name == "a_no_spacing.nii.gz" and "cannot be trusted" in why and "--spacing" in why
    assert "1 of 2 case(s) skipped" in str(err.value)
