"""Running finetune from the command line and measuring it: ``--resume`` takes the run's own options where the
command line leaves the defaults, as ``pretrain --resume`` does (what the user gives still has to fit the
checkpoint); evaluate says which checkpoint of an unfinished run it measured; a damaged store met by a loader
worker is one line, not the worker's traceback."""

from __future__ import annotations

import json

from click.testing import CliRunner

from model.cli import main
from model.training.checkpoint import load_checkpoint
from model.api import finetune


def test_resume_alone_continues_a_run_started_with_other_options(tiny_store, tmp_path):
    run = tmp_path / "run"
    opts = dict(domain="alpha", steps=4, batch=1, patch=(16, 16, 16), decoder="unet", decoder_widths=(8, 8, 8),
                workers=0, device="cpu", ckpt_every=2, val_every=0, scheduler="constant")
    finetune("seg", tiny_store, str(run), stop_after=2, progress=False, log=lambda s: None, **opts)
    assert load_checkpoint(run / "checkpoint.pt")["step"] == 2
    res = CliRunner().invoke(main, ["finetune", "seg", tiny_store, "--out", str(run), "--resume", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "resuming" in res.output and "at step 2 of 4" in res.output
    ckpt = load_checkpoint(run / "checkpoint.pt")
    assert ckpt["step"] == 4 and ckpt["config"]["patch"] == [16, 16, 16] and ckpt["config"]["decoder"] == "unet"
    # what is given is still checked against the checkpoint
    res = CliRunner().invoke(main, ["finetune", "seg", tiny_store, "--out", str(run), "--resume", "--patch", "24",
                                    "--no-progress"])
    assert res.exit_code == 1 and "patch" in res.output
    # the constant schedule may grow: --steps given on the command line wins over the saved 4
    res = CliRunner().invoke(main, ["finetune", "seg", tiny_store, "--out", str(run), "--resume", "--steps", "5",
                                    "--no-progress"])
    assert res.exit_code == 0, res.output
    assert load_checkpoint(run / "checkpoint.pt")["step"] == 5
    assert json.loads((run / "config.json").read_text())["steps"] == 5
    # a crafted config.json: one line naming it, not a traceback
    for crafted in ({"steps": 5, "evil": 1}, ["not", "an", "object"]):
        saved = json.loads((run / "config.json").read_text())
        (run / "config.json").write_text(json.dumps(crafted))
        res = CliRunner().invoke(main, ["finetune", "seg", tiny_store, "--out", str(run), "--resume",
                                        "--no-progress"])
        assert res.exit_code == 1 and str(run / "config.json") in res.output and "Traceback" not in res.output
        (run / "config.json").write_text(json.dumps(saved))


def test_evaluate_says_which_checkpoint_it_measured_of_an_unfinished_run(tiny_store, tmp_path):
    import pytest

    from model.api import evaluate

    run = tmp_path / "run"
    opts = dict(domain="alpha", steps=4, batch=1, patch=(16, 16, 16), decoder_widths=(8, 8, 8), workers=0,
                device="cpu", ckpt_every=2, val_every=0)
    finetune("seg", tiny_store, str(run), stop_after=2, progress=False, log=lambda s: None, **opts)
    lines: list[str] = []
    summary = evaluate(run, tiny_store, split="val", progress=False, log=lines.append)
    assert summary["checkpoint_steps"] == {"main": [2, 4]}
    assert any("is at step 2 of 4: the run is still training or stopped" in line for line in lines)
    assert json.loads((run / "eval" / "val" / "summary.json").read_text())["checkpoint_steps"] == {"main": [2, 4]}
    (run / "checkpoint.pt").unlink()
    with pytest.raises(FileNotFoundError, match="has written no checkpoint of its main stage"):
        evaluate(run, tiny_store, split="val", progress=False, log=lines.append)


def test_a_damaged_chunk_met_by_a_loader_worker_is_one_line(tiny_store, tmp_path):
    import shutil

    store = tmp_path / "store"
    shutil.copytree(tiny_store, store)
    for chunk in store.glob("alpha/*/image/c/**/*"):
        if chunk.is_file():
            chunk.write_bytes(chunk.read_bytes()[: chunk.stat().st_size // 2])
    res = CliRunner().invoke(main, ["finetune", "seg", str(store), "--domain", "alpha", "--out", str(tmp_path / "r"),
                                    "--steps", "2", "--batch", "1", "--patch", "16", "--device", "cpu", "--workers",
                                    "1", "--val-every", "0", "--no-progress"])
    assert res.exit_code == 1
    [error] = [line for line in res.output.splitlines() if line.startswith("Error:")]
    assert "chunk file is truncated" in error and "--verify" in error and not error.startswith("Error: OSError")
    assert "Traceback" not in res.output
