"""Values a weights card (or a run's recipe) may hold (issue 23, item 8): the voxel sizes a scan header may have,
numbers of the right type that are finite, the dtype and interpolation a build knows, and JSON that parses. A
damaged or crafted card is one line naming the file and the field (a :class:`CardError`), never a traceback and
never a build of one-voxel cases."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from catalog.card import CardError, intensity_rule, make_card, read_card, recipe_problem
from catalog.values import MAX_SPACING_MM, MIN_SPACING_MM, JsonFileError, parse_json
from volume import value_checks

RECIPE = {"target_spacing": [0.8, 0.9, 1.1], "modality": "MR", "percentiles": [1.0, 99.0], "ct_window": None,
          "air_hu": -1024.0, "dtype": "float16", "image_interpolation": "linear"}


def card_text(**changes) -> str:
    dom = {**RECIPE, **changes}
    dom["intensity_rule"] = "clip"
    card = make_card(kind="pretrain", architecture={"encoder": "resnet10"}, domains={"hippocampus": dom},
                     config={}, metrics={}, step=5, weights="w.pth", checkpoint="run/checkpoint.pt")
    return json.dumps(card)


def test_cards_and_headers_share_one_range_of_voxel_sizes():
    ranges = (value_checks.MIN_SPACING_MM, value_checks.MAX_SPACING_MM), (MIN_SPACING_MM, MAX_SPACING_MM)
    assert ranges[0] == ranges[1] == (0.01, 50.0)


@pytest.mark.parametrize("changes, why", [
    ({"target_spacing": [1e9, 1.0, 1.0]}, r"target_spacing \[1000000000\.0, 1\.0, 1\.0\] .*0\.01-50 mm"),
    ({"target_spacing": [5e-324, 1.0, 1.0]}, r"target_spacing .*0\.01-50 mm"),
    ({"target_spacing": [0.005, 1.0, 1.0]}, "target_spacing"),
    ({"target_spacing": [True, 1.0, 1.0]}, "target_spacing"),
    ({"target_spacing": "1,1,1"}, "target_spacing"),
    ({"dtype": ["float16"]}, r"dtype \['float16'\] is not one of float16, float32"),
    ({"dtype": "int8"}, "dtype 'int8'"),
    ({"image_interpolation": 3}, "image_interpolation 3 is not one of linear, bspline"),
    ({"modality": ["MR"]}, r"modality \['MR'\] is not a modality name \(CT, MR, CT/MR\.\.\.\)"),
    ({"modality": ""}, "modality '' is not a modality name"),
    ({"percentiles": [False, 99.0]}, "percentiles"),
    ({"air_hu": True}, "air_hu True is not a finite HU value"),
    ({"ct_window": [-200.0, float("inf")]}, "ct_window"),
])
def test_a_recipe_value_no_build_can_use_is_refused_naming_file_and_field(tmp_path, changes, why):
    path = tmp_path / "w.json"
    path.write_text(card_text(**changes))
    with pytest.raises(CardError, match=why) as err:
        read_card(path)
    assert str(err.value).startswith(f"{path}: domain 'hippocampus': ") and "\n" not in str(err.value)


def test_the_recipe_check_is_the_one_run_recipes_use():
    assert recipe_problem(RECIPE) is None
    assert "target_spacing" in recipe_problem({**RECIPE, "target_spacing": [60.0, 1.0, 1.0]})
    assert recipe_problem({k: v for k, v in RECIPE.items() if k != "dtype"}) == "lacks dtype"


@pytest.mark.parametrize("text, why", [
    ('{"format": "med3d-card", "format_version": ' + "9" * 100_000 + "}", "more than 4300 digits"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ('{"format": "med3d-card", "format_version": "1"}', "card format version '1'"),
    ('{"format": "med3d-card", "format_version": true}', "card format version True"),
])
def test_json_no_card_can_be_is_one_line(tmp_path, text, why):
    path = tmp_path / "w.json"
    path.write_text(text)
    with pytest.raises(CardError, match=why) as err:
        read_card(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: ") and "\n" not in msg and len(msg) < 400


def test_parse_json_names_where_the_text_came_from():
    with pytest.raises(JsonFileError, match=r"^cfg\.json: not a readable JSON \(a number of more than 4300 digits"):
        parse_json("[" + "1" * 5000 + "]", "cfg.json")
    assert parse_json('{"a": [1, 2.5]}', "x") == {"a": [1, 2.5]}


def test_build_like_a_card_of_one_voxel_spacing_is_refused_before_any_build(real_dir, tmp_path):
    """A card asking for 1e9 mm voxels once built "ok" cases of one voxel (labels gone); 5e-324 mm was an
    OverflowError traceback. Both are one line naming the card and the field, exit 2, no store."""
    from pipeline.cli import main

    task = real_dir / "msd" / "Task04_Hippocampus"
    for spacing in (1e9, 5e-324):
        card = tmp_path / "card.json"
        card.write_text(card_text(target_spacing=[spacing, 1.0, 1.0]))
        res = CliRunner().invoke(main, ["build-msd", str(task), str(tmp_path / "store"), "--like", str(card),
                                        "--workers", "0", "--no-progress"])
        assert res.exit_code == 2, res.output
        assert f"{card}: domain 'hippocampus': target_spacing" in res.output and "Traceback" not in res.output
        assert not (tmp_path / "store").exists()
    card.write_text(card_text(dtype=["float16"]))
    res = CliRunner().invoke(main, ["build-msd", str(task), str(tmp_path / "store"), "--like", str(card),
                                    "--workers", "0", "--no-progress"])
    assert res.exit_code == 2 and f"{card}: domain 'hippocampus': dtype" in res.output, res.output
    assert not (tmp_path / "store").exists()


def test_like_settings_refuses_a_card_dict_that_was_not_read_with_read_card():
    from pipeline.like import like_settings

    card = json.loads(card_text(target_spacing=[1e9, 1.0, 1.0]))
    with pytest.raises(CardError, match=r"^c\.json: domain 'hippocampus': target_spacing"):
        like_settings(card, {"hippocampus": "MR"}, where="c.json")
    assert intensity_rule(RECIPE)  # the good recipe stays usable
