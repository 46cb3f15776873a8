"""``med3d-train export`` writes OUT.json beside OUT.pth: the card of a pretraining and of a fine-tuning run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from catalog import load_catalog, load_domains
from catalog.card import CARD_FORMAT, CARD_VERSION, find_card
from model.cli import main

FAST = ["--depth", "10", "--batch", "1", "--patch", "24", "--device", "cpu", "--workers", "0", "--no-progress"]


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def pretrained(tiny_store: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 2-step pretraining run on tiny_store and its export (weights and card)."""
    run = tmp_path_factory.mktemp("card") / "run"
    res = invoke("pretrain", tiny_store, "--out", run, *FAST, "--steps", "2", "--val-every", "0")
    assert res.exit_code == 0, res.output
    out = run.parent / "resnet_10_tiny.pth"
    res = invoke("export", run, out)
    assert res.exit_code == 0, res.output
    assert "wrote its card to" in res.output and "alpha 1x1x1 mm" in res.output
    return run, out


def test_pretraining_card_holds_architecture_spacing_intensity_and_counts(pretrained, tiny_store):
    run, out = pretrained
    card = json.loads(out.with_suffix(".json").read_text())
    assert find_card(out) == card
    assert (card["format"], card["format_version"], card["kind"], card["weights"], card["step"]) == \
        (CARD_FORMAT, CARD_VERSION, "pretrain", "resnet_10_tiny.pth", 2)
    assert card["axes"] == ["z", "y", "x"] and card["orientation"] == "LPS" and card["spacing_unit"] == "mm"
    arch = card["architecture"]
    assert (arch["encoder"], arch["depth"], arch["shortcut"], arch["block"], arch["in_chans"]) == \
        ("resnet10", 10, "B", "BasicBlock", 1)
    # The dilated ResNet of the paper: strides 2, 2, 1, 1, 2, 1 per stage; layers 3 and 4 dilated 2 and 4.
    assert [(s["module"], s["stride"], s["dilation"]) for s in arch["stages"]] == [
        ("conv1", 2, 1), ("maxpool", 2, 1), ("layer1", 1, 1), ("layer2", 2, 1), ("layer3", 1, 2), ("layer4", 1, 4)]
    assert [s.get("blocks") for s in arch["stages"]][2:] == [1, 1, 1, 1]
    assert arch["stages"][-1]["output_stride"] == 8

    assert sorted(card["domains"]) == ["alpha", "beta"]
    ckpt = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)
    cat = load_catalog(tiny_store)
    for name, dom in card["domains"].items():
        rows = cat[cat["domain"] == name]
        assert dom["target_spacing"] == [1.0, 1.0, 1.0]  # the synthetic scans are 1 mm and the plan kept it
        assert (dom["modality"], dom["percentiles"], dom["ct_window"], dom["dtype"]) == \
            ("MR", [0.5, 99.5], None, "float16")
        assert dom["intensity_rule"].startswith("clip to each scan's 0.5/99.5 percentiles; z-score")
        assert dom["cases"]["ok"] == len(rows) == 6
        assert dom["cases"]["train"] == int((rows["split"] == "train").sum())
        assert dom["cases"]["val"] == int((rows["split"] == "val").sum())
        assert dom["cases"]["train"] + dom["cases"]["val"] == 6
        assert dom["cases"]["trained_on"] == len(ckpt["index"]["cases"][name]) == dom["cases"]["train"]
        assert dom["store"] == tiny_store
    labels = load_domains(tiny_store).set_index("domain").loc["beta", "labels"]
    assert card["domains"]["beta"]["labels"] == list(labels) == ["background", "bright", "dark"]
    assert card["config"] == ckpt["config"] and card["config"]["steps"] == 2
    assert card["metrics"] == json.loads(json.dumps(ckpt["metrics"]))
    assert card["med3d_version"]


def test_finetuning_card_records_its_store_preprocessing(pretrained, tiny_store, tmp_path):
    """A fine-tuning checkpoint (the keys ``finetune`` saves: task, stage, preprocessing, scan_ids) exports with the
    recipe it recorded, even where the store has since been rebuilt differently."""
    from volume.preprocess import recipe_from_store

    run, _ = pretrained
    ckpt = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)
    recipe = recipe_from_store(tiny_store, "alpha/alpha_00")
    recipe["target_spacing"] = [2.0, 1.5, 1.5]  # as if the store had been rebuilt since: the record wins
    ckpt.update(task="seg", stage="main", preprocessing=recipe, scan_ids=["alpha:0", "alpha:1", "alpha:2"],
                config={**ckpt["config"], "store": tiny_store, "task": "seg"}, metrics={"val": {"metric": 0.5}})
    ft = tmp_path / "ft"
    ft.mkdir()
    torch.save(ckpt, ft / "checkpoint.pt")
    weights = tmp_path / "ft.pth"
    res = invoke("export", ft, weights)
    assert res.exit_code == 0, res.output
    card = find_card(weights)
    assert (card["kind"], card["task"], card["stage"], card["step"]) == ("finetune", "seg", "main", 2)
    assert list(card["domains"]) == ["alpha"]
    dom = card["domains"]["alpha"]
    assert dom["target_spacing"] == [2.0, 1.5, 1.5] and dom["percentiles"] == [0.5, 99.5]
    assert dom["cases"]["trained_on"] == 3 and dom["cases"]["ok"] == 6
    assert card["metrics"] == {"val": {"metric": 0.5}} and card["config"]["task"] == "seg"


def test_no_card_flag_and_unreadable_store(pretrained, tmp_path):
    run, _ = pretrained
    res = invoke("export", run, tmp_path / "bare.pth", "--no-card")
    assert res.exit_code == 0 and not (tmp_path / "bare.json").exists()
    # A run whose store is gone: the card cannot be known, nothing is written, --no-card is suggested.
    ckpt = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)
    ckpt["config"]["store"] = [str(tmp_path / "gone")]
    moved = tmp_path / "moved"
    moved.mkdir()
    torch.save(ckpt, moved / "checkpoint.pt")
    res = CliRunner().invoke(main, ["export", str(moved), str(tmp_path / "w.pth")])
    assert res.exit_code == 1 and "--no-card" in res.output and "gone" in res.output
    assert not (tmp_path / "w.pth").exists() and not (tmp_path / "w.json").exists()


def test_finetune_init_warns_when_the_store_was_preprocessed_differently(pretrained, tiny_store):
    """The hook finetune() calls before writing anything: silent on the pretraining store's own recipe, a
    warning naming the spacing and the --like fix on another, a FinetuneError for a damaged card."""
    from catalog.card import case_recipe
    from model.task_api import FinetuneError
    from model.training.finetune_init import check_init_card as _check_init_card

    _, out = pretrained
    record = {"path": str(out)}
    first = load_catalog(tiny_store)["store_path"].iloc[0]
    recipe = case_recipe(tiny_store, first)
    said: list[str] = []
    _check_init_card(record, tiny_store, recipe, said.append)
    assert said == []
    _check_init_card(record, tiny_store, {**recipe, "target_spacing": [2.5, 0.8, 0.8]}, said.append)
    assert len(said) == 1 and "preprocessed differently" in said[0] and "2.5" in said[0]
    assert f"--like {out.with_suffix('.json')}" in said[0]
    _check_init_card({"path": None}, tiny_store, {**recipe, "target_spacing": [9, 9, 9]}, said.append)
    assert len(said) == 1  # scratch: no card to compare
    bad = out.parent / "damaged.pth"
    bad.write_bytes(out.read_bytes())
    bad.with_suffix(".json").write_text("{not json")
    with pytest.raises(FinetuneError, match="damaged.json"):
        _check_init_card({"path": str(bad)}, tiny_store, recipe, said.append)


def test_exported_weights_with_their_card_count_as_ours_and_carry_their_scans(pretrained, tiny_store, tmp_path):
    """finetune --init OUT.pth (our export, its card beside it): init_kind med3d (compare's "Med3D (ours)"
    column), and the scans the card lists are checked against the split the task is measured on."""
    from model.api import finetune
    from model.task_api import FinetuneError
    from model.training.finetune_init import init_record

    run, out = pretrained
    ckpt = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)
    card = find_card(out)
    assert card["scan_ids"] == sorted(ckpt["scan_ids"]) and card["scan_ids"]
    record = init_record(str(out))
    assert (record["kind"], record["encoder"], record["scan_ids"]) == ("med3d", "resnet10", card["scan_ids"])
    bare = tmp_path / "bare.pth"
    bare.write_bytes(out.read_bytes())  # the same weights without a card: MedicalNet's format, scans unknown
    assert (init_record(str(bare))["kind"], init_record(str(bare))["scan_ids"]) == ("medicalnet", None)
    # tiny_store's train scans, which the pretraining saw, measured as if they were the held-out split
    with pytest.raises(FinetuneError, match="was trained on .* scan"):
        finetune("seg", tiny_store, str(tmp_path / "leak"), domain="alpha", init=str(out), measure_split="train",
                 steps=1, batch=1, patch=(24, 24, 24), workers=0, device="cpu", progress=False, log=lambda s: None)
    assert not (tmp_path / "leak").exists()  # the refused run left no folder to block the corrected re-run
