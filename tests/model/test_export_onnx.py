"""``med3d-train export RUN --format onnx|torchscript`` of fine-tuned seg and classify runs on the real MSD
hippocampus scans (tests/data/real), and ``predict --engine onnx``: onnxruntime agrees with torch within 1e-4 on
a real scan's patch, the preprocessing card travels in the file, the masks and class probabilities are the torch
engine's; liver's two-stage runs and files of another run are refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import torch
import zarr
from click.testing import CliRunner

from model.cli import main
from model.api import finetune
from model.tasks.classify import ClassifyConfig
from model.tasks.seg import SegConfig

SEG = {"steps": 2, "batch": 2, "patch": (32, 32, 32), "workers": 0, "device": "cpu", "ckpt_every": 0,
       "val_every": 0, "log_every": 1, "decoder_widths": (8, 8, 8)}
CLASSIFY = {"steps": 2, "batch": 2, "shape": (16, 16, 16), "workers": 0, "device": "cpu", "ckpt_every": 0,
            "val_every": 0, "log_every": 1, "lr": 1e-4}


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def runs(real_dir, tmp_path_factory) -> dict:
    """The four real hippocampus cases built into a store, a seg run and a classify run trained on it (2 steps)."""
    from pipeline.config import PrepConfig
    from pipeline.job import build
    from pipeline.sources.msd import scan_msd

    root = tmp_path_factory.mktemp("onnx")
    found, _ = scan_msd(real_dir / "msd")
    store = str(root / "store")
    assert build(found, store, PrepConfig(chunks=(16, 16, 16)), workers=0, progress=False,
                 log=lambda s: None).failed == []
    finetune("seg", store, str(root / "seg"), progress=False, log=lambda s: None, **SEG)
    table = root / "classes.csv"
    pd.DataFrame({"case": ["hippocampus_001", "hippocampus_003", "hippocampus_004", "hippocampus_006"],
                  "class": ["small", "large", "small", "large"]}).to_csv(table, index=False)
    finetune("classify", store, str(root / "classify"), labels=str(table), progress=False, log=lambda s: None,
             **CLASSIFY)
    return {"root": root, "store": store, "seg": root / "seg", "classify": root / "classify",
            "images": real_dir / "msd" / "Task04_Hippocampus" / "imagesTr"}


def _stored_image(store: str) -> np.ndarray:
    """The first stored case's image (z, y, x) float32: a real preprocessed scan."""
    from catalog import load_catalog

    path = sorted(load_catalog(store)["store_path"])[0]
    return zarr.open_group(store, path=path, mode="r")["image"][0].astype(np.float32)


def _onnx_meta(path: Path) -> dict:
    import onnx

    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert props["format"] == "med3d-network"
    return json.loads(props["med3d"])


def _session(path: Path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def exported(runs):
    """``seg.onnx`` and ``classify.onnx`` written once per process (the engine tests use them too, on whichever
    xdist worker runs them), with what ``export`` printed."""
    out = {}
    for name in ("seg", "classify"):
        path = runs["root"] / f"{name}.onnx"
        res = invoke("export", runs[name], path, "--format", "onnx")
        assert res.exit_code == 0, res.output
        out[name] = (path, res.output)
    return out


def test_seg_onnx_matches_torch_on_a_real_patch_and_carries_the_card(runs, exported):
    from model.run_folder import load_stage, read_run

    out, output = exported["seg"]
    assert "spatial sizes in multiples of 8" in output
    meta, spec = _onnx_meta(out), read_run(runs["seg"])
    assert (meta["task"], meta["classes"], meta["preprocessing"]) == ("seg", spec["classes"], spec["preprocessing"])
    assert meta["classes"] == ["background", "Anterior", "Posterior"]
    assert meta["input"]["spatial"] == "multiple" and meta["input"]["spatial_multiple"] == 8
    assert meta["inference"]["patch"] == [32, 32, 32] and meta["config"]["patch"] == [32, 32, 32]

    net, _ = load_stage(runs["seg"], "main", config_type=SegConfig)
    image = _stored_image(runs["store"])
    session = _session(out)
    # the run's patch, and a larger one (dynamic axes, multiples of 8), cut from the real scan
    for size in ((32, 32, 32), (24, 40, 16)):
        patch = np.zeros((1, 1, *size), np.float32)
        cut = image[: size[0], : size[1], : size[2]]
        patch[0, 0, : cut.shape[0], : cut.shape[1], : cut.shape[2]] = cut
        with torch.no_grad():
            want = net(torch.from_numpy(patch)).numpy()
        got = session.run(["logits"], {"image": patch})[0]
        assert got.shape == want.shape == (1, 3, *size)
        assert np.abs(got - want).max() < 1e-4


def test_seg_torchscript_carries_the_card_and_matches_torch(runs):
    from model.run_folder import load_stage

    out = runs["root"] / "seg_ts.pt"
    res = invoke("export", runs["seg"], out, "--format", "torchscript")
    assert res.exit_code == 0, res.output
    extra = {"med3d.json": ""}
    scripted = torch.jit.load(str(out), _extra_files=extra)
    meta = json.loads(extra["med3d.json"])
    assert meta["exported_as"] == "torchscript" and meta["task"] == "seg" and meta["input"]["spatial"] == "multiple"
    net, _ = load_stage(runs["seg"], "main", config_type=SegConfig)
    x = torch.from_numpy(_stored_image(runs["store"])[:16, :16, :16].copy())[None, None]
    with torch.no_grad():
        assert torch.allclose(scripted(x), net(x), atol=1e-5)


def test_classify_onnx_matches_torch_on_a_real_scan(runs, exported):
    from model.data.classify_stream import classify_input
    from model.run_folder import load_stage

    out, _ = exported["classify"]
    meta = _onnx_meta(out)
    assert meta["task"] == "classify" and meta["classes"] == ["large", "small"]
    assert meta["output"]["layout"] == ["N", "classes"] and meta["inference"]["shape"] == [16, 16, 16]
    net, cfg = load_stage(runs["classify"], "main", config_type=ClassifyConfig)
    x = classify_input(_stored_image(runs["store"])[None], None, cfg.shape)[None].astype(np.float32)
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    got = _session(out).run(["logits"], {"image": x})[0]
    assert got.shape == want.shape == (1, 2) and np.abs(got - want).max() < 1e-4


def test_predict_engine_onnx_gives_the_torch_masks(runs, exported, tmp_path):
    res = invoke("predict", runs["seg"], runs["images"], "--out", tmp_path / "torch")
    assert res.exit_code == 0, res.output
    res = invoke("predict", runs["seg"], runs["images"], "--out", tmp_path / "onnx", "--engine", "onnx")
    assert res.exit_code == 0, res.output
    res = invoke("predict", runs["seg"], runs["images"], "--out", tmp_path / "file", "--engine", "onnx",
                 "--onnx", runs["root"] / "seg.onnx")
    assert res.exit_code == 0, res.output
    masks = sorted(p.name for p in (tmp_path / "torch").iterdir())
    assert len(masks) == 4
    for name in masks:
        want = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "torch" / name)))
        for engine in ("onnx", "file"):
            got = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / engine / name)))
            assert np.array_equal(got, want), (engine, name)


def test_predict_engine_onnx_classify_gives_the_torch_probabilities(runs, tmp_path):
    for engine in ("torch", "onnx"):
        res = invoke("predict", runs["classify"], runs["images"], "--out", tmp_path / engine, "--engine", engine)
        assert res.exit_code == 0, res.output
    want, got = (pd.read_csv(tmp_path / e / "predictions.csv") for e in ("torch", "onnx"))
    assert list(got["pred"]) == list(want["pred"]) and len(got) == 4
    cols = [c for c in want.columns if c.startswith("prob_")]
    assert np.abs(got[cols].to_numpy() - want[cols].to_numpy()).max() < 1e-5


def test_refusals_are_one_line(runs, exported, tmp_path):
    # liver's two stages
    liver = tmp_path / "liver"
    liver.mkdir()
    spec = json.loads((runs["seg"] / "finetune.json").read_text())
    (liver / "finetune.json").write_text(json.dumps({**spec, "task": "liver", "stages": ["coarse", "fine"]}))
    res = CliRunner().invoke(main, ["export", str(liver), str(tmp_path / "l.onnx"), "--format", "onnx"])
    lines = res.output.strip().splitlines()
    assert res.exit_code == 1 and len(lines) == 1 and "2 stages" in lines[0] and "one network" in lines[0]
    # a pretraining run (no finetune.json)
    other = tmp_path / "pre"
    other.mkdir()
    res = CliRunner().invoke(main, ["export", str(other), str(tmp_path / "p.onnx"), "--format", "torchscript"])
    assert res.exit_code == 1 and "not a fine-tuning run" in res.output and "--format safetensors" in res.output
    # an ONNX file of another run given to predict
    res = CliRunner().invoke(main, ["predict", str(runs["seg"]), str(runs["images"]), "--out", str(tmp_path / "x"),
                                    "--engine", "onnx", "--onnx", str(runs["root"] / "classify.onnx")])
    lines = res.output.strip().splitlines()
    assert res.exit_code == 1 and len(lines) == 1 and "exported from another run" in lines[0]
    assert not (tmp_path / "x").exists()
    # an ONNX file that is no model
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not onnx")
    res = CliRunner().invoke(main, ["predict", str(runs["seg"]), str(runs["images"]), "--out", str(tmp_path / "y"),
                                    "--engine", "onnx", "--onnx", str(junk)])
    assert res.exit_code == 1 and len(res.output.strip().splitlines()) == 1 and "junk.onnx" in res.output


def test_fixed_size_when_the_exporter_or_the_trace_cannot_vary_it(runs, tmp_path, monkeypatch):
    """Dynamic spatial axes are kept only where the exported network agrees with torch: an exporter that refuses
    them, or a trace that froze a size (a runner right at the patch only), gives a file fixed at the run's patch,
    and the metadata says why."""
    from model.export import onnx_export
    from model.run_folder import load_stage

    net, _ = load_stage(runs["seg"], "main", config_type=SegConfig)

    def only_at_patch(a: np.ndarray) -> np.ndarray:
        if a.shape[2:] != (32, 32, 32):
            raise RuntimeError("frozen")
        with torch.no_grad():
            return net(torch.from_numpy(a)).numpy()

    spatial, multiple, note = onnx_export._probe(only_at_patch, net, (32, 32, 32))
    assert (spatial, multiple) == ("fixed", None) and "frozen in the trace" in note

    real = onnx_export._export_onnx_file

    def refuse_dynamic(net, x, path, spatial):
        if spatial:
            raise RuntimeError("dynamic axes not supported here")
        real(net, x, path, spatial)

    monkeypatch.setattr(onnx_export, "_export_onnx_file", refuse_dynamic)
    done = onnx_export.export_network(runs["seg"], tmp_path / "fixed.onnx", "onnx", log=lambda s: None)
    inp = done.metadata["input"]
    assert (inp["spatial"], inp["size"]) == ("fixed", [32, 32, 32]) and "refused dynamic spatial axes" in inp["note"]
    assert "spatial size 32x32x32 only" in done.summary()
    assert [d for d in _session(tmp_path / "fixed.onnx").get_inputs()[0].shape[2:]] == [32, 32, 32]
