"""The weights card: reading and finding it, and the comparison ``finetune --init`` warns with (pure functions)."""
from __future__ import annotations

import json

import pytest

from catalog.card import (CardError, card_mismatches, card_path, find_card, intensity_rule, make_card,
                          mismatch_warning, read_card, write_card)


def recipe(**changes):
    base = {"domain": "hippocampus", "target_spacing": [0.8, 0.9, 1.1], "modality": "MR", "percentiles": [1.0, 99.0],
            "ct_window": None, "air_hu": -1024.0, "dtype": "float16", "image_interpolation": "linear"}
    return {**base, **changes}


def card(**domains):
    doms = {}
    for name, r in domains.items():
        r = {k: v for k, v in r.items() if k != "domain"}
        doms[name] = {**r, "intensity_rule": intensity_rule(r), "cases": {"ok": 4}}
    return make_card(kind="pretrain", architecture={"encoder": "resnet10"}, domains=doms, config={}, metrics={},
                     step=5, weights="w.pth", checkpoint="run/checkpoint.pt")


LIVER = recipe(domain="liver", modality="CT", target_spacing=[2.5, 0.8, 0.8], ct_window=[-200.0, 250.0])


def test_same_preprocessing_has_no_mismatch_and_float_noise_or_dtype_do_not_count():
    c = card(hippocampus=recipe(), liver=LIVER)
    assert card_mismatches(c, recipe()) == []
    assert card_mismatches(c, recipe(target_spacing=[0.8002, 0.9, 1.1], dtype="float32")) == []
    assert card_mismatches(c, LIVER) == []
    # MR scans are not air-clamped: a different air_hu in an MR recipe is no difference
    assert card_mismatches(c, recipe(air_hu=-1000.0)) == []


def test_each_difference_is_named_with_both_values():
    c = card(hippocampus=recipe(), liver=LIVER)
    lines = card_mismatches(c, recipe(domain="prostate", target_spacing=[1.0, 1.0, 1.0], percentiles=[0.5, 99.5]))
    assert lines == [
        "target spacing 1 x 1 x 1 mm (z, y, x) vs 0.8 x 0.9 x 1.1 mm (z, y, x) (store domain prostate vs card "
        "domain hippocampus)",
        "clip percentiles 0.5/99.5 vs 1/99 (store domain prostate vs card domain hippocampus)"]
    ct = card_mismatches(c, {**LIVER, "domain": "kits", "ct_window": None, "air_hu": -1000.0})
    assert ct == ["CT window none (percentile clip) vs [-200, 250] HU (store domain kits vs card domain liver)",
                  "air clamp -1000 HU vs -1024 HU (store domain kits vs card domain liver)"]


def test_compared_with_the_closest_domain_of_the_modality():
    prostate = recipe(domain="prostate", target_spacing=[1.0, 1.0, 1.0], percentiles=[0.5, 99.5])
    c = card(hippocampus=recipe(), prostate=prostate, liver=LIVER)
    assert card_mismatches(c, {**prostate, "domain": "new"}) == []
    # against hippocampus one difference (spacing), against prostate two (spacing, percentiles)
    only = card_mismatches(c, recipe(domain="new", target_spacing=[3.0, 1.0, 1.0]))
    assert len(only) == 1 and "vs 0.8 x 0.9 x 1.1 mm" in only[0] and "card domain hippocampus" in only[0]


def test_a_modality_the_card_lacks_is_one_line():
    lines = card_mismatches(card(hippocampus=recipe()), LIVER)
    assert lines == ["liver is CT, but the weights saw no CT data (card domains: hippocampus (MR))"]


def test_mismatch_warning_finds_the_card_beside_the_weights(tmp_path):
    weights = tmp_path / "resnet_10.pth"
    assert mismatch_warning(weights, "data/store", recipe()) is None  # no card: nothing to say
    write_card(card(hippocampus=recipe()), card_path(weights))
    assert mismatch_warning(weights, "data/store", recipe()) is None
    text = mismatch_warning(weights, "data/store", recipe(percentiles=[0.5, 99.5]))
    assert text.startswith("warning: data/store was preprocessed differently from the data the --init weights saw "
                           f"(card {tmp_path / 'resnet_10.json'}):")
    assert "clip percentiles 0.5/99.5 vs 1/99" in text and f"--like {tmp_path / 'resnet_10.json'}" in text


def test_find_and_read_card_refuse_damaged_or_foreign_files(tmp_path):
    weights = tmp_path / "w.pth"
    assert find_card(weights) is None
    path = card_path(weights)
    assert path.name == "w.json"
    c = card(hippocampus=recipe())
    write_card(c, path)
    assert find_card(weights) == json.loads(json.dumps(c))
    for text, why in [("{", "not a readable JSON card"), ('{"format": "other"}', "not a Med3D weights card"),
                      (json.dumps({**c, "format_version": 99}), "card format version 99"),
                      (json.dumps({**c, "domains": {"x": {"modality": "MR"}}}), "domain 'x' lacks target_spacing")]:
        path.write_text(text)
        with pytest.raises(CardError, match=why) as err:
            find_card(weights)
        assert str(path) in str(err.value)
    with pytest.raises(CardError, match="no such card"):
        read_card(tmp_path / "missing.json")


def test_intensity_rule_says_what_the_pipeline_does():
    assert intensity_rule(recipe()) == ("clip to each scan's 1/99 percentiles; z-score with the clipped scan's mean "
                                        "and standard deviation (per scan, per channel); stored as float16")
    assert intensity_rule(LIVER).startswith("CT: values below -1024 HU clamped to it; clip to the CT window "
                                            "[-200, 250] HU; z-score")


@pytest.mark.parametrize("changes, why", [
    ({"target_spacing": [float("nan"), 1.0, 1.0]}, "target_spacing .* not three positive finite mm values"),
    ({"target_spacing": [0.0, 1.0, 1.0]}, "target_spacing"),
    ({"target_spacing": [1.0, 1.0]}, "target_spacing"),
    ({"percentiles": [99.0, 1.0]}, "percentiles .* not lo < hi"),
    ({"percentiles": [1.0, float("inf")]}, "percentiles"),
    ({"ct_window": [250.0, -200.0]}, "ct_window .* not lo < hi"),
    ({"air_hu": "cold"}, "air_hu 'cold' is not a finite HU value"),
])
def test_a_card_with_values_no_build_can_use_is_refused_naming_the_file(tmp_path, changes, why):
    """A card's recipe becomes a build's settings: a NaN spacing made every case fail with "cannot convert float
    NaN to integer"; now the card is refused before anything is built."""
    path = tmp_path / "w.json"
    write_card(card(hippocampus=recipe(**changes)), path)
    with pytest.raises(CardError, match=why) as err:
        read_card(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_a_card_domain_that_is_no_safe_name_is_refused(tmp_path):
    path = tmp_path / "w.json"
    write_card(card(**{"../evil": recipe()}), path)
    with pytest.raises(CardError, match=r"domain '\.\./evil'"):
        read_card(path)


def test_the_store_domain_of_the_same_name_is_compared_and_the_fix_names_it(tmp_path):
    """A LiTS store (domain liver) against a card with four CT domains: compared with the card's liver, not the
    alphabetically first equally close one, and the --like fix says --like-domain liver (--like alone refuses a
    card with several domains of the modality)."""
    kits = {**LIVER, "domain": "kits", "target_spacing": [3.0, 0.8, 0.8]}
    c = card(hepatic_vessel={**LIVER, "target_spacing": [1.5, 0.8, 0.8]}, kits=kits, liver=LIVER,
             spleen={**LIVER, "target_spacing": [1.5, 0.8, 0.8]})
    store = {**LIVER, "target_spacing": [1.5, 0.8, 0.8]}  # as close to hepatic_vessel and spleen (0) as to liver (1)
    assert card_mismatches(c, store) == [
        "target spacing 1.5 x 0.8 x 0.8 mm (z, y, x) vs 2.5 x 0.8 x 0.8 mm (z, y, x) (store domain liver vs card "
        "domain liver)"]
    weights = tmp_path / "w.pth"
    write_card(c, card_path(weights))
    assert f"--like {card_path(weights)} --like-domain liver`" in mismatch_warning(weights, "lits_store", store)
    other = {**LIVER, "domain": "pancreas", "target_spacing": [2.0, 0.8, 0.8], "air_hu": -1000.0}
    assert "--like-domain hepatic_vessel`" in mismatch_warning(weights, "p_store", other)  # closest, by name
    one = tmp_path / "one.pth"
    write_card(card(liver=LIVER), card_path(one))
    assert mismatch_warning(one, "s", store).endswith(f"--like {card_path(one)}` to match")


def test_a_card_whose_scan_ids_are_not_a_list_of_ids_is_damaged(tmp_path):
    weights = tmp_path / "w.pth"
    for bad in (5, "abc", [1, 2], {"a": 1}):
        write_card({**card(hippocampus=recipe()), "scan_ids": bad}, card_path(weights))
        with pytest.raises(CardError, match=r"w\.json: scan_ids is not a list of scan ids"):
            find_card(weights)
