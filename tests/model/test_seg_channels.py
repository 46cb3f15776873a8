"""``finetune seg --channels all`` on a two-channel nnU-Net dataset made from the real MSD hippocampus scans
(channel 0000: the scan; 0001: its inverted intensities plus noise): the stream reads both stored channels, the
first convolution is initialised from a one-channel encoder (repeated, divided by 2), and evaluate and predict
feed both channels (predict from the CASE_0000/CASE_0001 files, refusing a case without its second file or with a
channel file on another grid)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import torch

from model.training.checkpoint import load_checkpoint
from model.api import finetune

from test_transfer import our_checkpoint  # noqa: F401  (module fixture: a one-channel pretraining run)

TINY = {"steps": 2, "batch": 2, "patch": (16, 16, 16), "workers": 0, "device": "cpu", "ckpt_every": 0,
        "val_every": 0, "log_every": 1, "decoder_widths": (8, 8, 8)}


@pytest.fixture(scope="module")
def two_channel(real_dir, tmp_path_factory) -> dict:
    """Dataset104_Hippo2ch (3 labelled cases in imagesTr, 1 in imagesTs, two channel files each), built."""
    from pipeline.config import PrepConfig
    from pipeline.job import build
    from pipeline.sources.nnunet import scan_nnunet

    src = real_dir / "msd" / "Task04_Hippocampus"
    root = tmp_path_factory.mktemp("two_channel")
    ds = root / "Dataset104_Hippo2ch"
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (ds / sub).mkdir(parents=True)
    cases = sorted(p.name[: -len(".nii.gz")] for p in (src / "imagesTr").glob("*.nii.gz"))
    rng = np.random.default_rng(0)
    for i, case in enumerate(cases):
        img = sitk.ReadImage(str(src / "imagesTr" / f"{case}.nii.gz"))
        arr = sitk.GetArrayFromImage(img).astype(np.float32)
        second = sitk.GetImageFromArray(arr.max() - arr + rng.normal(0, 5, arr.shape).astype(np.float32))
        second.CopyInformation(img)
        dest = "imagesTs" if i == len(cases) - 1 else "imagesTr"
        sitk.WriteImage(img, str(ds / dest / f"{case}_0000.nii.gz"))
        sitk.WriteImage(second, str(ds / dest / f"{case}_0001.nii.gz"))
        if dest == "imagesTr":
            shutil.copy(src / "labelsTr" / f"{case}.nii.gz", ds / "labelsTr" / f"{case}.nii.gz")
    (ds / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "MRI", "1": "inverted"}, "labels": {"background": 0, "Anterior": 1, "Posterior": 2},
        "numTraining": len(cases) - 1, "file_ending": ".nii.gz"}))
    spec, found, _ = scan_nnunet(ds)
    store = str(root / "store")
    result = build([(spec, found)], store, PrepConfig(chunks=(16, 16, 16)), workers=0, progress=False,
                   log=lambda s: None)
    assert result.failed == []
    return {"store": store, "root": root, "dataset": ds, "test_case": cases[-1]}


@pytest.fixture(scope="module")
def run_all(two_channel, our_checkpoint) -> Path:  # noqa: F811
    run = two_channel["root"] / "run_all"
    # lr 1e-9: after two steps the encoder still holds the init's weights, so the test sees how conv1 was made
    finetune("seg", two_channel["store"], str(run), init=our_checkpoint, channels="all", lr=1e-9, progress=False,
             log=lambda s: None, **TINY)
    return run


def test_the_stream_reads_every_stored_channel(two_channel):
    from catalog.chunk_read import ChunkedArrayReader
    from catalog.store_format import store_join
    from model.data.patches import PatchConfig, PretrainStream, sample_patch_spec
    from model.data.store_index import StoreIndex
    from model.data.task_streams import task_data

    data = task_data(two_channel["store"], "train")
    index = StoreIndex(store=data.store, split="train", cases={data.domain: data.cases}, num_classes={data.domain: 3})
    cfg = PatchConfig(patch=(16, 16, 16), batch=2, seed=5, channel="all")
    batch = PretrainStream(data.store, index, cfg).batch(3)
    assert batch["image"].shape == (2, 2, 16, 16, 16)
    first = PretrainStream(data.store, index, PatchConfig(patch=(16, 16, 16), batch=2, seed=5)).batch(3)
    torch.testing.assert_close(batch["image"][:, :1], first["image"])  # same draws: "all" takes no extra one
    for item in range(2):
        spec = sample_patch_spec(5, 3, 0, item, data.cases, index.foreground, cfg)
        case = data.cases[spec.case]
        stop = [s + 16 for s in spec.start]
        img = ChunkedArrayReader(store_join(data.store, case.store_path, "image"))
        want = img.read((1, *spec.start), (2, *stop), pad=0.0)[0].astype(np.float32)
        np.testing.assert_array_equal(batch["image"][item, 1].numpy(), want)
        assert not np.allclose(want, batch["image"][item, 0].numpy())


def test_first_conv_takes_both_channels_from_a_one_channel_encoder(run_all, our_checkpoint):  # noqa: F811
    spec = json.loads((run_all / "finetune.json").read_text())
    assert spec["channels"] == "all" and spec["domain"] == "hippo2ch"
    ckpt = load_checkpoint(run_all / "checkpoint.pt")
    assert ckpt["in_chans"] == 2 and ckpt["config"]["channels"] == "all"
    ref = load_checkpoint(our_checkpoint)["model"]["encoder.conv1.weight"]  # (64, 1, 7, 7, 7)
    conv1 = ckpt["model"]["encoder.conv1.weight"]
    assert conv1.shape == (64, 2, 7, 7, 7)
    torch.testing.assert_close(conv1[:, :1], ref / 2, atol=1e-6, rtol=0)
    torch.testing.assert_close(conv1[:, 1:], ref / 2, atol=1e-6, rtol=0)
    assert "repeated 1 input channels to 2" in " ".join(map(str, ckpt["init_report"].values()))


def test_export_keeps_both_input_channels(run_all, tmp_path):
    from click.testing import CliRunner

    from catalog.card import find_card
    from model.cli import main
    from model.nets.resnet import create_encoder
    from model.nets.weights import load_encoder_weights

    out = tmp_path / "enc.pth"
    res = CliRunner().invoke(main, ["export", str(run_all), str(out)])
    assert res.exit_code == 0, res.output
    assert "summed" not in res.output  # conv1 taken as it is, not folded to one channel
    sd = torch.load(out, weights_only=True)["state_dict"]
    conv1 = load_checkpoint(run_all / "checkpoint.pt")["model"]["encoder.conv1.weight"]
    torch.testing.assert_close(sd["module.conv1.weight"], conv1, rtol=0, atol=0)
    assert find_card(out)["architecture"]["in_chans"] == 2
    enc = create_encoder("resnet10", in_chans=2)
    assert load_encoder_weights(enc, out).loaded == 72


def test_the_segmenter_reads_the_second_channel(run_all):
    from model.evaluation.inference import PatchSegmenter
    from model.run_folder import load_stage

    from model.tasks.seg import SegConfig

    net, cfg = load_stage(run_all, "main", config_type=SegConfig)
    seg = PatchSegmenter(net, cfg.patch, 3)
    assert seg.in_chans == 2
    x = np.random.default_rng(1).normal(size=(2, 20, 24, 20)).astype(np.float32)
    changed = x.copy()
    changed[1] += 3.0
    assert not torch.allclose(seg.probs(x), seg.probs(changed))
    with pytest.raises(ValueError, match="reads 2 channel"):
        seg(x[0])


def test_evaluate_and_predict_feed_both_channels(run_all, two_channel, tmp_path):
    from model.api import evaluate
    from model.api import predict

    summary = evaluate(run_all, two_channel["store"], split="val", progress=False, log=lambda s: None)
    table = pd.read_csv(run_all / "eval" / "val" / "cases.csv")
    assert summary["cases"] == 1 and list(table.columns[:4]) == ["case_id", "dice_Anterior", "hd95_mm_Anterior",
                                                                  "assd_mm_Anterior"]
    case = two_channel["test_case"]
    images = two_channel["dataset"] / "imagesTs"
    lines: list[str] = []
    [mask] = predict(run_all, [images], tmp_path / "pred", log=lines.append)
    ref = sitk.ReadImage(str(images / f"{case}_0000.nii.gz"))
    out = sitk.ReadImage(str(mask))
    assert mask.name == f"{case}.nii.gz" and out.GetSize() == ref.GetSize()
    assert np.allclose(out.GetSpacing(), ref.GetSpacing()) and np.allclose(out.GetOrigin(), ref.GetOrigin())

    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(images / f"{case}_0000.nii.gz", alone)
    with pytest.raises(ValueError, match=r"_0000\.nii\.gz: 1 channel\(s\); the network takes 2"):
        predict(run_all, [alone], tmp_path / "pred_alone", log=lines.append)

    moved = tmp_path / "moved"
    shutil.copytree(images, moved)
    second = sitk.ReadImage(str(moved / f"{case}_0001.nii.gz"))
    second.SetOrigin(tuple(o + 5.0 for o in second.GetOrigin()))
    sitk.WriteImage(second, str(moved / f"{case}_0001.nii.gz"))
    with pytest.raises(ValueError, match=r"_0001\.nii\.gz: its grid .* differs from .*_0000\.nii\.gz"):
        predict(run_all, [moved], tmp_path / "pred_moved", log=lines.append)


def test_a_first_channel_run_reads_channel_0000_only(two_channel, tmp_path):
    run = tmp_path / "run_first"
    finetune("seg", two_channel["store"], str(run), progress=False, log=lambda s: None, **TINY)
    assert load_checkpoint(run / "checkpoint.pt")["in_chans"] == 1
    from model.api import predict

    [mask] = predict(run, [two_channel["dataset"] / "imagesTs"], tmp_path / "pred", log=lambda s: None)
    assert mask.is_file()


@pytest.mark.parametrize("task", ["liver", "lung", "nodule"])
def test_channels_all_is_for_seg_and_classify_only(task, tmp_path):
    from click.testing import CliRunner

    from model.cli import main
    from model.tasks.base import get_task

    assert "channels" not in {f.name for f in dataclasses.fields(get_task(task).config_type)}
    res = CliRunner().invoke(main, ["finetune", task, "store", "--out", str(tmp_path / "r"), "--channels", "all"])
    assert res.exit_code == 2 and f"finetune {task} reads one channel" in res.output, res.output


def test_classify_with_every_channel(two_channel, our_checkpoint, tmp_path):  # noqa: F811
    """classify --channels all: the cached inputs hold both channels, the network takes two, evaluate and
    predict (from the two channel files) give probabilities."""
    from model.data.classify_stream import cached_input
    from model.data.task_streams import task_data
    from model.evaluation.classify_eval import predict_classes
    from model.api import evaluate

    data = task_data(two_channel["store"], "train")
    table = tmp_path / "labels.csv"
    cases = sorted(c.store_path.split("/")[1] for c in task_data(two_channel["store"], "val").cases + data.cases)
    table.write_text("case_id,label,split\n" + "".join(
        f"{c},{'AD' if i % 2 else 'CN'},{'test' if i == len(cases) - 1 else 'train'}\n" for i, c in enumerate(cases)))
    run = tmp_path / "cls"
    finetune("classify", two_channel["store"], str(run), labels=str(table), shape=(16, 16, 16), channels="all",
             init=our_checkpoint, progress=False, log=lambda s: None, **{k: v for k, v in TINY.items() if k != "patch"})
    ckpt = load_checkpoint(run / "checkpoint.pt")
    assert ckpt["in_chans"] == 2 and ckpt["model"]["encoder.conv1.weight"].shape[1] == 2
    assert json.loads((run / "finetune.json").read_text())["channels"] == "all"
    cache = run / "cache" / "train"
    manifest = json.loads((cache / "manifest.json").read_text())
    assert manifest["channels"] == "all" and len(manifest["cases"]) == len(cases) - 1
    arrays = [cached_input(cache, c) for c in data.cases if c.store_path in manifest["cases"]]
    assert arrays and all(a.shape == (2, 16, 16, 16) for a in arrays)
    assert not np.allclose(arrays[0][0], arrays[0][1])
    summary = evaluate(run, two_channel["store"], progress=False, log=lambda s: None)
    assert summary["split"] == "test" and sum(summary["class_counts"].values()) == 1
    from model.run_folder import load_stage
    from model.tasks.classify import ClassifyConfig

    path = predict_classes(run, json.loads((run / "finetune.json").read_text()),
                           [two_channel["dataset"] / "imagesTs"], tmp_path / "probs", log=lambda s: None,
                           network=lambda: load_stage(run, "main", config_type=ClassifyConfig))
    rows = pd.read_csv(path)
    assert list(rows["case_id"]) == [two_channel["test_case"]]
    assert np.isclose(rows[["prob_AD", "prob_CN"]].sum(axis=1).iloc[0], 1.0)
