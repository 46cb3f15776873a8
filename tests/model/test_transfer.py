"""The transfer recipes on the sample stores: every task from scratch, from our checkpoint and from a
MedicalNet-format file; strict refusal of a wrong depth; exact resume; refusal of an init that saw the
evaluation scans; the CLI from finetune to compare."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from model.evaluation.metrics import read_metrics
from model.nets.aspp import DenseASPP3D
from model.nets.resnet import create_encoder
from model.nets.weights import WeightsMismatchError, export_medicalnet
from model.training.checkpoint import load_checkpoint
from model.api import finetune
from model.task_api import FinetuneError

KEYS_JSON = Path(__file__).resolve().parents[1] / "data" / "medicalnet_checkpoint_keys.json"
TINY = {"steps": 2, "batch": 2, "patch": (16, 24, 24), "coarse_shape": (16, 24, 24), "workers": 0, "device": "cpu",
        "ckpt_every": 0, "val_every": 0, "log_every": 1, "decoder_widths": (16, 16, 16), "aspp_rates": (1, 2)}


def _build(kind: str, raw: Path, store: Path) -> str:
    from pipeline.cli import main

    res = CliRunner().invoke(main, [f"build-{kind}", str(raw), str(store), "--workers", "0", "--no-progress"])
    assert res.exit_code == 0, res.output
    return str(store)


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> dict[str, str]:
    from pipeline.sample import write_all

    root = tmp_path_factory.mktemp("transfer")
    out = {}
    for task, source in (("liver", "lits"), ("lung", "visceral"), ("nodule", "lidc")):
        write_all(root / "raw", only=source)
        out[task] = _build(source, root / "raw" / source, root / f"{source}_store")
    return out


@pytest.fixture(scope="module")
def medicalnet_file(tmp_path_factory) -> str:
    """A ResNet-10 file in MedicalNet's exact format: the released key names and shapes (from the JSON shipped
    with the tests), random values, 'module.' prefix, a conv_seg head as the released files have."""
    spec = json.loads(KEYS_JSON.read_text())["resnet_10"]["keys"]
    gen = torch.Generator().manual_seed(3)
    state = {}
    for key, shape in spec.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(7)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=gen) + 0.5
        else:
            state[key] = torch.randn(shape, generator=gen) * 0.05
    state["module.conv_seg.0.weight"] = torch.randn(32, 512, 3, 3, 3, generator=gen)
    path = tmp_path_factory.mktemp("mednet") / "resnet_10.pth"
    torch.save({"state_dict": state}, path)
    return str(path)


@pytest.fixture(scope="module")
def our_checkpoint(tmp_path_factory) -> str:
    """A pretraining run of ours (ResNet-10 on a synthetic store, 1 step)."""
    from tests_model_helpers import tiny_pretrain

    return tiny_pretrain(tmp_path_factory.mktemp("pre"))


def test_dense_aspp_shapes_and_every_layer_learns():
    torch.manual_seed(0)
    head = DenseASPP3D(32, 3, rates=(1, 2, 3), width=16, inter=8, growth=4)
    feats = torch.randn(2, 32, 4, 5, 6, requires_grad=True)
    out = head(feats, (32, 40, 48))
    assert out.shape == (2, 3, 32, 40, 48)
    out.square().mean().backward()
    # each dense layer's dilated conv gets a gradient: all of them feed the classifier
    assert all(layer[1][2].weight.grad.abs().sum() > 0 for layer in head.layers)
    assert [layer[1][2].dilation for layer in head.layers] == [(1, 1, 1), (2, 2, 2), (3, 3, 3)]
    # input of layer i = width + i * growth channels (dense connectivity)
    assert [layer[0][2].in_channels for layer in head.layers] == [16, 20, 24]


@pytest.mark.parametrize("task", ["liver", "lung", "nodule"])
@pytest.mark.parametrize("init", ["scratch", "ours", "medicalnet"])
def test_each_recipe_trains_from_every_init(task, init, stores, medicalnet_file, our_checkpoint, tmp_path):
    source = {"scratch": "scratch", "ours": our_checkpoint, "medicalnet": medicalnet_file}[init]
    logs: list[str] = []
    # A tiny learning rate: after the steps the encoder still holds the init's weights (to 1e-6), so the test
    # can tell which weights were loaded.
    results = finetune(task, stores[task], str(tmp_path / "run"), init=source, lr=1e-9, progress=False,
                       log=logs.append, **TINY)
    assert [r.step for r in results] == [2] * (2 if task == "liver" else 1)
    run = json.loads((tmp_path / "run" / "finetune.json").read_text())
    assert run["task"] == task and run["encoder"] == "resnet10"
    assert run["init_kind"] == {"scratch": "scratch", "ours": "med3d", "medicalnet": "medicalnet"}[init]
    assert run["preprocessing"]["target_spacing"] and run["metric"] == ("accuracy" if task == "nodule" else "dice")
    for r in results:
        ckpt = load_checkpoint(r.checkpoint)
        losses = [row["loss"] for row in read_metrics(r.run_dir, "train")]
        assert len(losses) == 2 and all(np.isfinite(losses))
        conv1 = ckpt["model"]["encoder.conv1.weight"]
        if init == "scratch":
            assert ckpt["init_report"] is None
            continue
        assert ckpt["init_report"]["loaded"] == len(create_encoder("resnet10").state_dict())
        if init == "medicalnet":
            ref = torch.load(medicalnet_file, weights_only=True)["state_dict"]["module.conv1.weight"]
            assert ckpt["init_report"]["stripped_prefix"] == "module."
            assert "conv_seg.0.weight" in ckpt["init_report"]["dropped"]
        else:
            ref = load_checkpoint(our_checkpoint)["model"]["encoder.conv1.weight"]
        torch.testing.assert_close(conv1, ref, atol=1e-6, rtol=0)
    if init == "medicalnet" and task != "nodule":
        assert any("does not record which scans" in line for line in logs)


def test_wrong_depth_is_refused_naming_keys(stores, medicalnet_file, tmp_path):
    with pytest.raises(WeightsMismatchError) as err:
        finetune("lung", stores["lung"], str(tmp_path / "r18"), init=medicalnet_file, encoder="resnet18",
                 progress=False, log=lambda s: None, **TINY)
    msg = str(err.value)
    assert "does not fit encoder resnet18" in msg and "unexpected in the file" in msg
    assert "layer2.0.downsample.0.weight" in msg and "likely cause" in msg
    # a ResNet-10 built with shortcut A (as 18/34 are) is refused the same way
    enc = create_encoder("resnet18")
    path = export_medicalnet(enc, tmp_path / "resnet_18.pth")
    with pytest.raises(WeightsMismatchError, match="missing from the file"):
        finetune("lung", stores["lung"], str(tmp_path / "r10"), init=str(path), encoder="resnet10",
                 progress=False, log=lambda s: None, **TINY)


@pytest.mark.parametrize("task", ["lung", "liver"])
def test_finetune_resumes_exactly(task, stores, tmp_path):
    kw = {**TINY, "steps": 4, "ckpt_every": 2}
    whole = finetune(task, stores[task], str(tmp_path / "whole"), stage="fine" if task == "liver" else "both",
                     progress=False, log=lambda s: None, **kw)[-1]
    first = finetune(task, stores[task], str(tmp_path / "split"), stage="fine" if task == "liver" else "both",
                     stop_after=2, progress=False, log=lambda s: None, **kw)[-1]
    assert first.step == 2
    with pytest.raises(FinetuneError, match="pass --resume"):
        finetune(task, stores[task], str(tmp_path / "split"), stage="fine" if task == "liver" else "both",
                 progress=False, log=lambda s: None, **kw)
    resumed = finetune(task, stores[task], str(tmp_path / "split"), stage="fine" if task == "liver" else "both",
                       resume=True, progress=False, log=lambda s: None, **kw)[-1]
    assert resumed.step == 4
    a = [r["loss"] for r in read_metrics(whole.run_dir, "train")]
    b = [r["loss"] for r in read_metrics(resumed.run_dir, "train")]
    assert [r["step"] for r in read_metrics(resumed.run_dir, "train")] == [1, 2, 3, 4]
    assert a == b
    sa, sb = whole.net.state_dict(), resumed.net.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_init_that_saw_the_evaluation_scans_is_refused(stores, tmp_path):
    """MSD Task03_Liver holds the LiTS training volumes under other names (liver_N = volume-N = lits:N): a
    pretraining on it that did not exclude the LiTS val scans must not initialise the liver transfer."""
    from pipeline.cli import main as prep
    from pipeline.sample import write_all
    from model.training.config import TrainConfig
    from model.training.pretrain import pretrain

    write_all(tmp_path / "raw", only="msd")
    msd = str(tmp_path / "msd_store")
    res = CliRunner().invoke(prep, ["build-3dseg8", str(tmp_path / "raw" / "msd"), msd, "--tasks", "Task03_Liver",
                                    "--workers", "0", "--no-progress"])
    assert res.exit_code == 0, res.output
    lits = stores["liver"]
    base = {"store": msd, "encoder": "resnet10", "steps": 1, "batch": 1, "patch": (16, 16, 16), "workers": 0,
            "device": "cpu", "val_every": 0, "ckpt_every": 0}
    pretrain(TrainConfig(out=str(tmp_path / "leaky"), **base), progress=False, log=lambda s: None)
    from catalog import load_catalog, scan_ids

    val = sorted(scan_ids(load_catalog(lits), "val"))
    seen = set(load_checkpoint(tmp_path / "leaky" / "checkpoint.pt")["scan_ids"])
    assert val and set(val) <= seen  # the MSD copy of the LiTS val scans was trained on
    with pytest.raises(FinetuneError, match=rf"trained on {len(val)} scan\(s\) of the val split.*{val[0]}.*--exclude"):
        finetune("liver", lits, str(tmp_path / "ft"), init=str(tmp_path / "leaky"), progress=False,
                 log=lambda s: None, **TINY)
    pretrain(TrainConfig(out=str(tmp_path / "clean"), exclude=(f"{lits}:val",), **base), progress=False,
             log=lambda s: None)
    results = finetune("liver", lits, str(tmp_path / "ft2"), init=str(tmp_path / "clean"), stage="coarse",
                       progress=False, log=lambda s: None, **TINY)
    assert results[0].step == 2


@pytest.mark.slow  # over 5 s on 2 cores
def test_cli_finetune_evaluate_predict_compare(stores, tmp_path):
    from model.cli import main

    runner = CliRunner()
    run = str(tmp_path / "lung")
    args = ["--steps", "2", "--patch", "16,24,24", "--workers", "0", "--device", "cpu", "--val-every", "1",
            "--no-progress"]
    res = runner.invoke(main, ["finetune", "lung", stores["lung"], "--out", run, *args])
    assert res.exit_code == 0, res.output
    assert "init scratch, lr 0.01" in res.output  # the paper's from-scratch rate
    res = runner.invoke(main, ["evaluate", run, stores["lung"], "--no-progress"])
    assert res.exit_code == 0, res.output
    summary = json.loads((Path(run) / "eval" / "test" / "summary.json").read_text())
    assert summary["split"] == "test" and summary["labelled_cases"] == 4 and 0 <= summary["metric"] <= 1
    assert set(summary["dice_per_modality"]) == {"CT", "CTce", "MRT1", "MRT1cefs"}
    import pandas as pd

    cases = pd.read_csv(Path(run) / "eval" / "test" / "cases.csv")
    assert list(cases.columns[:2]) == ["case_id", "source_image"]
    assert {"dice", "voe", "rvd", "assd_mm", "msd_mm"} <= set(cases.columns) and len(cases) == 4
    scan = cases["source_image"].iloc[0]
    res = runner.invoke(main, ["predict", run, scan, "--out", str(tmp_path / "pred"), "--modality", "CT"])
    assert res.exit_code == 0, res.output
    assert len(list((tmp_path / "pred").glob("*_mask.nii.gz"))) == 1
    res = runner.invoke(main, ["predict", run, scan, "--out", str(tmp_path / "pred2")])
    assert res.exit_code != 0 and "--modality CT or MR" in res.output
    res = runner.invoke(main, ["compare", run, "--out", str(tmp_path / "cmp")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "cmp" / "compare.md").is_file() and "lung" in res.output
    res = runner.invoke(main, ["evaluate", str(tmp_path), stores["lung"]])
    assert res.exit_code != 0 and "not a fine-tuning run" in res.output


def test_store_of_the_wrong_kind_is_refused_before_anything_is_written(stores, tmp_path):
    """Issue 15 item 8: nodule on a VISCERAL store and lung on a LiTS store refuse without leaving finetune.json;
    evaluate of a lung run on a LiTS store refuses instead of giving NaN."""
    from model.api import evaluate
    from model.task_api import TaskStoreError

    for task, store in (("nodule", stores["lung"]), ("lung", stores["liver"]), ("liver", stores["nodule"])):
        with pytest.raises(TaskStoreError, match="build-lidc|build-visceral|build-lits"):
            finetune(task, store, str(tmp_path / task), progress=False, log=lambda s: None, **TINY)
        assert not (tmp_path / task).exists()
    run = tmp_path / "lung_run"
    finetune("lung", stores["lung"], str(run), progress=False, log=lambda s: None, **{**TINY, "steps": 1})
    with pytest.raises(TaskStoreError, match="VISCERAL store"):
        evaluate(run, stores["liver"], progress=False, log=lambda s: None)
    assert not (run / "eval").exists()


def _ddp_finetune_worker(rank: int, world: int, port: int, cfg_dict: dict, out: str) -> None:
    import os

    os.environ.update({"WORLD_SIZE": str(world), "RANK": str(rank), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    from model.tasks.base import get_task
    from model.training.finetune import finetune_stage

    task = get_task(cfg_dict["task"])
    result = finetune_stage(task, task.config_type.from_dict(cfg_dict), progress=False, log=lambda s: None)
    torch.save({k: v.clone() for k, v in result.net.state_dict().items()}, Path(out) / f"rank{rank}.pt")


@pytest.mark.slow
def test_finetune_ddp_on_cpu_two_processes(stores, tmp_path):
    import socket

    import torch.multiprocessing as mp

    from model.tasks.base import get_task

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    lung = {k: v for k, v in TINY.items() if k not in ("coarse_shape", "aspp_rates")}  # liver's options
    cfg = get_task("lung").config(store=stores["lung"], out=str(tmp_path / "run"),
                                  **{**lung, "steps": 3, "val_every": 3, "batch": 1})
    mp.spawn(_ddp_finetune_worker, args=(2, port, cfg.to_dict(), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for k in r0:
        if "running_" in k or k.endswith("num_batches_tracked"):
            continue  # BN statistics are per rank
        torch.testing.assert_close(r0[k], r1[k], rtol=0, atol=0, msg=k)  # averaged gradients: replicas agree
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert ckpt["step"] == 3 and ckpt["world_size"] == 2
    assert [r["step"] for r in read_metrics(tmp_path / "run", "train")] == [1, 2, 3]
    # measured on test (lung), validated on val: the test scans are read by evaluate only
    assert [r["split"] for r in read_metrics(tmp_path / "run", "val")] == ["val"]


@pytest.mark.slow
def test_finetune_killed_with_sigkill_resumes_to_the_uninterrupted_result(stores, tmp_path):
    """A real kill (SIGKILL, as the OOM killer or a preempted node does) between checkpoints: `--resume` repeats
    the steps after the last checkpoint and ends with the losses and weights of the uninterrupted run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    args = ["finetune", "lung", stores["lung"], "--steps", "6", "--ckpt-every", "2", "--patch", "16,24,24",
            "--workers", "0", "--device", "cpu", "--val-every", "0", "--no-progress"]
    cmd = [sys.executable, "-m", "model.cli"]
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([*cmd, *args, "--out", str(tmp_path / "whole")], cwd=root, env=env, check=True,
                   capture_output=True, timeout=600)
    run = tmp_path / "killed"
    proc = subprocess.Popen([*cmd, *args, "--out", str(run)], cwd=root, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        steps = [r["step"] for r in read_metrics(run, "train")] if (run / "metrics.jsonl").is_file() else []
        if steps and max(steps) >= 3:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    killed_at = load_checkpoint(run / "checkpoint.pt")["step"]
    assert 2 <= killed_at < 6
    # the resume runs like the other two (a fresh process, one thread), so float reductions match bit for bit
    subprocess.run([*cmd, *args, "--out", str(run), "--resume"], cwd=root, env=env, check=True,
                   capture_output=True, timeout=600)
    a = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "whole", "train")}
    rows = read_metrics(run, "train")
    assert [r["step"] for r in rows] == list(range(1, 7))  # every step once, after the repeat
    assert {r["step"]: r["loss"] for r in rows} == a
    wa = load_checkpoint(tmp_path / "whole" / "checkpoint.pt")["model"]
    wb = load_checkpoint(run / "checkpoint.pt")["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
