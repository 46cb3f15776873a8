"""``med3d-train export --format safetensors``: the encoder without pickle, its card in the metadata, a README.md
model card that huggingface_hub parses offline; ``--init model.safetensors`` loads every tensor and reads the card;
damaged or crafted files are refused in one line naming them."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from catalog.card import find_card, mismatch_warning, read_card
from model.cli import main
from tests_model_helpers import tiny_pretrain


def invoke(*args, catch: bool = False):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=catch)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A one-step pretraining run exported twice: as safetensors into a folder, and as MedicalNet .pth + .json."""
    root = tmp_path_factory.mktemp("safetensors")
    ckpt = Path(tiny_pretrain(root))
    res = invoke("export", ckpt.parent, root / "hub", "--format", "safetensors", "--license", "cc-by-sa-4.0")
    assert res.exit_code == 0, res.output
    assert "72 tensors, safetensors" in res.output and "README.md" in res.output
    res = invoke("export", ckpt.parent, root / "ref.pth")
    assert res.exit_code == 0, res.output
    return {"ckpt": ckpt, "weights": root / "hub" / "model.safetensors", "readme": root / "hub" / "README.md",
            "pth": root / "ref.pth", "root": root}


def test_tensors_are_the_checkpoints_encoder_and_the_card_is_the_pth_card(exported):
    from safetensors import safe_open
    from safetensors.torch import load_file

    state = load_file(exported["weights"])
    model = torch.load(exported["ckpt"], map_location="cpu", weights_only=True)["model"]
    encoder = {k[len("encoder."):]: v for k, v in model.items() if k.startswith("encoder.")}
    assert sorted(state) == sorted(encoder) and len(state) == 72
    for key, value in encoder.items():
        assert state[key].dtype == value.dtype and torch.equal(state[key], value), key
    with safe_open(exported["weights"], framework="pt") as fh:
        meta = fh.metadata()
    assert meta["format"] == "med3d-encoder" and meta["encoder"] == "resnet10"
    card = json.loads(meta["med3d_card"])
    pth_card = json.loads(exported["pth"].with_suffix(".json").read_text())
    assert card["weights"] == "model.safetensors" and pth_card["weights"] == "ref.pth"
    assert {**card, "weights": None} == {**pth_card, "weights": None}  # the same card, in the file
    # the card is found where OUT.json is found for a .pth: by --init and by --like
    assert find_card(exported["weights"]) == card == read_card(exported["weights"])


def test_model_card_parses_offline_with_huggingface_hub(exported, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from huggingface_hub import ModelCard

    card = ModelCard.load(exported["readme"])
    data = card.data.to_dict()
    assert data["library_name"] == "med3d" and data["license"] == "cc-by-sa-4.0"
    assert {"medical", "3d", "med3d", "mr"} <= set(data["tags"])
    assert data["datasets"] == ["synthetic_alpha"]
    text = card.text
    assert "| alpha | MR | 1 × 1 × 1 | clip to each scan's 0.5/99.5 percentiles; z-score" in text
    assert "--init model.safetensors" in text and "load_file(\"model.safetensors\")" in text
    assert "The card lists the 2 scan id(s)" in text


def test_readme_not_written_by_export_is_never_replaced(exported, tmp_path):
    (tmp_path / "README.md").write_text("# my project\n")
    res = invoke("export", exported["ckpt"].parent, tmp_path / "enc.safetensors", "--format", "safetensors")
    assert res.exit_code == 1 and "refusing to replace" in res.output
    assert (tmp_path / "README.md").read_text() == "# my project\n" and not (tmp_path / "enc.safetensors").exists()
    # ours is rewritten by the next export; a .pth OUT for safetensors is refused
    res = invoke("export", exported["ckpt"].parent, exported["weights"], "--format", "safetensors")
    assert res.exit_code == 0, res.output
    res = invoke("export", exported["ckpt"].parent, tmp_path / "w.pth", "--format", "safetensors")
    assert res.exit_code == 2 and "FILE.safetensors" in res.output
    # --no-card: the weights alone; --init then knows nothing of the scans they saw, as with a bare .pth
    from model.training.finetune_init import init_record

    res = invoke("export", exported["ckpt"].parent, tmp_path / "bare", "--format", "safetensors", "--no-card")
    assert res.exit_code == 0 and sorted(p.name for p in (tmp_path / "bare").iterdir()) == ["model.safetensors"]
    assert find_card(tmp_path / "bare" / "model.safetensors") is None
    assert init_record(str(tmp_path / "bare" / "model.safetensors"))["kind"] == "state_dict"


def test_finetune_init_safetensors_loads_every_tensor_and_reads_the_card(exported, tiny_store, tmp_path):
    from model.nets.resnet import create_encoder
    from model.nets.weights import load_encoder_weights
    from model.training.finetune_init import init_record

    run = tmp_path / "ft"
    res = invoke("finetune", "seg", tiny_store, "--out", run, "--domain", "alpha", "--init", exported["weights"],
                 "--steps", "1", "--batch", "1", "--patch", "16", "--workers", "0", "--device", "cpu",
                 "--val-every", "0", "--ckpt-every", "0", "--no-progress")
    assert res.exit_code == 0, res.output
    report = json.loads((run / "init_report.json").read_text())
    assert report["loaded"] == 72 and report["dropped"] == [] and report["source"] == str(exported["weights"])
    assert json.loads((run / "finetune.json").read_text())["init_kind"] == "med3d"
    card = find_card(exported["weights"])
    record = init_record(str(exported["weights"]))
    assert record["kind"] == "med3d" and record["encoder"] == "resnet10"
    assert record["scan_ids"] == sorted(card["scan_ids"]) and len(record["scan_ids"]) == 2
    # pretrain --init goes through the same loader: strict, every tensor
    enc = create_encoder("resnet10")
    rep = load_encoder_weights(enc, exported["weights"])
    assert rep.loaded == len(enc.state_dict()) == 72
    # the card warning names the safetensors file as the --like source
    recipe = {**card["domains"]["alpha"], "domain": "alpha", "target_spacing": [2.0, 1.0, 1.0]}
    warning = mismatch_warning(exported["weights"], "other_store", recipe)
    assert "target spacing 2 x 1 x 1 mm" in warning and f"--like {exported['weights']}" in warning


def _layout(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8: 8 + n]), raw[8 + n:]


def _write(path: Path, header: dict, data: bytes) -> Path:
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return path


def _tampered(src: Path, folder: Path) -> dict[str, tuple[Path, str]]:
    header, data = _layout(src)
    name = "conv1.weight"
    out = {"short": (folder / "short.safetensors", "fewer than the 8"),
           "beyond": (folder / "beyond.safetensors", "the header claims"),
           "json": (folder / "json.safetensors", "the header is not JSON"),
           "dtype": (folder / "dtype.safetensors", "unknown dtype 'Q7'"),
           "shape": (folder / "shape.safetensors", "needs"),
           "truncated": (folder / "truncated.safetensors", "the file is truncated")}
    out["short"][0].write_bytes(b"\x01\x02")
    out["beyond"][0].write_bytes(struct.pack("<Q", 2 ** 62) + b"{}")
    out["json"][0].write_bytes(struct.pack("<Q", 5) + b"{nope" + data)
    _write(out["dtype"][0], {**header, name: {**header[name], "dtype": "Q7"}}, data)
    _write(out["shape"][0], {**header, name: {**header[name], "shape": [64, 1, 7, 7, 8]}}, data)
    _write(out["truncated"][0], header, data[: len(data) // 2])
    return out


def test_tampered_files_are_refused_in_one_line(exported, tiny_store, tmp_path):
    from model.weight_files import WeightsFileError
    from model.nets.resnet import create_encoder
    from model.nets.weights import load_encoder_weights

    for key, (path, why) in _tampered(exported["weights"], tmp_path).items():
        with pytest.raises(WeightsFileError, match=why) as info:
            load_encoder_weights(create_encoder("resnet10"), path)
        assert str(path) in str(info.value) and "\n" not in str(info.value), key
        res = invoke("finetune", "seg", tiny_store, "--out", tmp_path / f"ft_{key}", "--domain", "alpha", "--init",
                     path, "--steps", "1", "--workers", "0", "--device", "cpu", "--no-progress")
        lines = res.output.strip().splitlines()
        assert res.exit_code == 1 and len(lines) == 1 and str(path) in lines[0] and why in lines[0], (key, res.output)
        assert not (tmp_path / f"ft_{key}").exists()
    # pretrain --init: the same one-line error (after pretrain's own "training ..." line)
    path, why = _tampered(exported["weights"], tmp_path)["dtype"]
    res = invoke("pretrain", tiny_store, "--out", tmp_path / "pre", "--init", path, "--steps", "1", "--batch", "1",
                 "--patch", "16", "--workers", "0", "--device", "cpu", "--no-progress")
    errors = [line for line in res.output.strip().splitlines() if not line.startswith("training ")]
    assert res.exit_code == 1 and len(errors) == 1 and errors[0].startswith(f"Error: {path}") and why in errors[0], \
        res.output
    # --like reads the card from the header too: a damaged one is a card error naming the file
    from catalog.card import CardError

    with pytest.raises(CardError, match="beyond.safetensors: not a usable safetensors file"):
        read_card(tmp_path / "beyond.safetensors")
