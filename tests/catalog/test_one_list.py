"""One list of image file endings (catalog/files.py) for the MSD, LiTS, VISCERAL and nnU-Net sources and for
predict, and one list of Blosc codec names (pipeline/blosc_codecs.py) for PrepConfig and med3d-prep's options."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from catalog.files import IMAGE_ENDINGS, image_stem


@pytest.mark.parametrize("name, stem", [("ct_001.nii.gz", "ct_001"), ("a.b.nii", "a.b"), ("x.nrrd", "x"),
                                        ("x.mha", "x"), ("x.mhd", "x"), ("x.raw", None), ("notes.txt", None),
                                        ("x.NII.GZ", None), (".nii.gz", "")])
def test_image_stem(name, stem):
    assert image_stem(name) == stem


def test_every_reader_of_raw_scans_takes_the_one_list():
    from model.evaluation import predict
    from pipeline.sources import lits, msd, nnunet, visceral

    assert nnunet.FILE_ENDINGS is IMAGE_ENDINGS and predict.SCAN_ENDINGS is IMAGE_ENDINGS
    for ending in IMAGE_ENDINGS:  # each source strips every ending the same way
        assert msd._case_id(f"/d/imagesTr/la_003{ending}") == "la_003"
        assert lits.case_name(f"Batch1/volume-3{ending}") == "volume-3"
        assert visceral._stem(Path(f"10000100_1_CT_wb{ending}")) == "10000100_1_CT_wb"
        assert predict.mask_name(f"/x/ct_7{ending}") == "ct_7_mask.nii.gz"
        assert predict.mask_name(f"/x/case_7_0000{ending}") == "case_7.nii.gz"
    assert visceral._stem(Path("._10000100_1_CT_wb.nii.gz")) is None  # a macOS resource fork
    assert msd._case_id("readme.txt") == "readme.txt" and lits.case_name("volume-3") == "volume-3"


def test_codec_names_are_one_list_for_the_config_and_the_cli():
    from pipeline.blosc_codecs import CODECS, IMAGE_CODECS
    from pipeline.cli import build_lits
    from pipeline.config import PrepConfig

    options = {p.name: p for p in build_lits.params}
    assert tuple(options["codec"].type.choices) == CODECS
    assert tuple(options["image_codec"].type.choices) == IMAGE_CODECS == ("raw", *CODECS)
    for codec in CODECS:
        assert PrepConfig(codec=codec, image_codec=codec).codec == codec
    with pytest.raises(ValueError, match="codec must be one of"):
        PrepConfig(codec="raw")
    res = CliRunner().invoke(build_lits, [".", "out", "--codec", "snappy"])
    assert res.exit_code == 2 and "'snappy' is not one of" in res.output
