"""A store URL with credentials in it (issue 23, item 5): build, finetune, evaluate, pretrain and study on
``memory://KEY:SECRET@bucket/...`` (fsspec's in-process file system, as an ``s3://`` URL would be opened) print
no ``SECRET``, when they work and when they fail, and write it into no file: config.json, finetune.json,
checkpoints, study.json, the study's logs and tables all say ``memory://***@bucket/...``. A resumed run
whose configuration held the URL still resumes."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import fsspec
import pytest
from click.testing import CliRunner

SMALL = ["--workers", "0", "--device", "cpu", "--patch", "16", "--decoder", "unet", "--ckpt-every", "0",
         "--val-every", "0", "--batch", "1"]
TINY = dict(patch=(16, 16, 16), decoder="unet", decoder_widths=(8, 8, 8), batch=1, workers=0, device="cpu",
            ckpt_every=0, val_every=0, progress=False, log=lambda s: None)


def _no_secret(res, *folders: Path) -> str:
    text = res.output + res.stderr
    assert "SECRET" not in text, text
    for folder in folders:
        for path in folder.rglob("*"):
            if path.is_file():
                assert b"SECRET" not in path.read_bytes(), path
    return text


@pytest.fixture(scope="module")
def store(real_dir, tmp_path_factory):
    """The real hippocampus cases in a memory:// store whose URL holds credentials. A build into memory:// is
    refused (it would not outlive the process) without printing the secret; the store is built in a folder and
    copied into the in-process memory filesystem, which the commands below (run in this process) then read."""
    from pipeline.cli import main as prep

    bucket = f"bucket{uuid.uuid4().hex[:8]}"
    url = f"memory://KEY:SECRET@{bucket}/store"
    args = [str(real_dir / "msd"), "--workers", "0", "--no-progress", "--tasks", "Task04_Hippocampus"]
    refused = CliRunner().invoke(prep, ["build-3dseg8", args[0], url, *args[1:]])
    assert refused.exit_code == 2 and f"memory://***@{bucket}/store" in _no_secret(refused)
    local = tmp_path_factory.mktemp("credentials") / "store"
    res = CliRunner().invoke(prep, ["build-3dseg8", args[0], str(local), *args[1:]])
    assert res.exit_code == 0, res.output
    fs = fsspec.filesystem("memory")
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        fs.pipe(f"KEY:SECRET@{bucket}/store/{path.relative_to(local).as_posix()}", path.read_bytes())
    yield url
    fs.rm(f"KEY:SECRET@{bucket}", recursive=True)


def _train(*args: str):
    from model.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


def test_finetune_and_evaluate_write_and_say_no_secret(store, tmp_path):
    from model.api import finetune

    run = tmp_path / "run"
    finetune("seg", store, str(run), steps=2, stop_after=1, **TINY)
    res = _train("finetune", "seg", store, "--out", run, "--resume", "--no-progress")
    assert res.exit_code == 0, res.output
    assert "resuming" in _no_secret(res, tmp_path)
    assert json.loads((run / "finetune.json").read_text())["store"].startswith("memory://***@")
    assert json.loads((run / "config.json").read_text())["store"].startswith("memory://***@")
    res = _train("evaluate", run, store, "--split", "val")
    assert res.exit_code == 0, res.output
    _no_secret(res, tmp_path)


@pytest.mark.parametrize("command", [
    ["finetune", "seg", "{missing}", "--out", "{tmp}/run", "--no-progress", *SMALL],
    ["evaluate", "{tmp}/run", "{missing}"],
    ["pretrain", "{missing}", "--out", "{tmp}/pre", "--workers", "0", "--device", "cpu", "--no-progress"],
])
def test_a_failing_command_says_no_secret(store, tmp_path, command):
    if command[0] == "evaluate":  # a run to measure, on a store that is not there
        from model.api import finetune

        finetune("seg", store, str(tmp_path / "run"), steps=1, **TINY)
    missing = store.replace("/store", "/missing")
    res = _train(*(c.format(missing=missing, tmp=tmp_path) for c in command))
    assert res.exit_code != 0
    assert "memory://***@" in _no_secret(res, tmp_path)


def test_prep_info_on_a_missing_store_says_no_secret(store, tmp_path):
    from pipeline.cli import main as prep

    res = CliRunner().invoke(prep, ["info", store.replace("/store", "/missing")])
    assert res.exit_code != 0
    _no_secret(res)


def test_pretrain_records_no_secret_and_resumes(store, tmp_path):
    from model.training.checkpoint import load_checkpoint
    from model.training.config import TrainConfig
    from model.training.pretrain import pretrain

    cfg = TrainConfig(store=(store,), out=str(tmp_path / "pre"), exclude=(f"{store}:val",), steps=2, batch=1,
                      patch=(16, 16, 16), workers=0, device="cpu", val_every=0, ckpt_every=0)
    pretrain(cfg, stop_after=1, progress=False, log=lambda s: None)
    lines: list[str] = []
    result = pretrain(cfg, resume=True, progress=False, log=lines.append)
    assert result.step == 2 and any("resuming" in line for line in lines)
    ckpt = load_checkpoint(result.checkpoint)
    assert ckpt["config"]["exclude"] == [f"{store.replace('KEY:SECRET', '***')}:val"]
    for path in (tmp_path / "pre").rglob("*"):
        assert b"SECRET" not in path.read_bytes(), path


def test_study_writes_no_secret(store, tmp_path):
    study = tmp_path / "study"
    res = _train("study", store, "--task", "seg", "--out", study, "--init", "scratch", "--fractions", "1",
                 "--seeds", "0", "--steps", "1", "--no-figures", *SMALL)
    assert res.exit_code == 0, res.output
    _no_secret(res, tmp_path)
    assert json.loads((study / "study.json").read_text())["store"].startswith("memory://***@")
    assert any("memory://***@" in p.read_text() for p in (study / "logs").glob("*.log"))
    res = _train("study", store, "--task", "seg", "--out", study, "--init", "scratch", "--fractions", "1",
                 "--seeds", "0", "--steps", "1", "--no-figures", *SMALL)  # the same grid: a re-run is accepted
    assert res.exit_code == 0, res.output
