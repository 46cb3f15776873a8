"""A task added as one file in a package of its own, found through its ``med3d.tasks`` entry point, with no file of
the project changed: finetune -> evaluate -> predict -> compare on it from the command line, and its own flag in
``finetune blob --help`` in a fresh process.

The package is written to ``tmp_path`` as ``pip install`` would leave it (the module, and a ``.dist-info`` folder
whose ``entry_points.txt`` is how Python finds entry points), which is much faster than installing it; its
``pyproject.toml`` is the one a user would publish.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from model.cli import main

BLOB_TASK = '''\
"""finetune blob: a plug-in task of med3d (one file): segment the one foreground class of one domain."""

from dataclasses import dataclass

from model.task_api import TaskStoreError
from model.tasks.base import BinarySegTask
from model.tasks.lung import whole_volume_dice
from model.training.finetune_config import FinetuneConfig, PatchOptions, option


@dataclass(frozen=True, kw_only=True)
class BlobConfig(FinetuneConfig, PatchOptions):
    domain: str = option("alpha", "The store's domain to segment.")
    width: int = option(8, "Channels of each decoder stage.")


class BlobTask(BinarySegTask):
    name = "blob"
    help = "one foreground class of one domain (a plug-in task)"
    config_type = BlobConfig

    def check_store(self, store, options=None):
        from catalog import load_domains

        domain = (options or {}).get("domain", "alpha")
        if domain not in set(load_domains(store)["domain"]):
            raise TaskStoreError(f"{store}: no domain {domain!r}")

    def data(self, cfg, split):
        from model.data.task_streams import task_data

        return task_data(cfg.store, split, cfg.domain)

    def run_info(self, cfg):
        return {"domain": cfg.domain}

    def head(self, cfg):
        return "seg_med3d"

    def net_options(self, cfg, in_chans):
        return {"decoder_widths": [cfg.width] * 3, "in_chans": in_chans}

    def num_classes(self, train, cfg):
        return 2

    def loader(self, cfg, train, run_dir, *, start, steps, env, progress):
        from model.training.finetune_data import patch_loader

        return patch_loader(cfg, train, start=start, steps=steps, env=env)

    def validator(self, cfg, data, run_dir, *, device, amp):
        return whole_volume_dice(cfg, data, 2, device=device, amp=amp)

    def segmenter(self, run, spec, *, device="cpu", amp=False, batch=2, overlap=None):
        from model.evaluation.inference import PatchSegmenter
        from model.run_folder import load_stage

        net, cfg = load_stage(run, "main", device, config_type=BlobConfig)
        return PatchSegmenter(net, cfg.patch, 2, overlap=cfg.overlap if overlap is None else overlap,
                              batch=batch, device=device, amp=amp)
'''

PYPROJECT = '''\
[project]
name = "med3d-blob"
version = "0.1"

[project.entry-points."med3d.tasks"]
blob = "blob_task:BlobTask"
'''


@pytest.fixture
def blob_package(tmp_path, monkeypatch):
    """The plug-in, importable and discoverable in this process (and, through PYTHONPATH, in subprocesses); the
    registry is restored afterwards."""
    import model.tasks.base as registry

    site = tmp_path / "site"
    (site / "med3d_blob-0.1.dist-info").mkdir(parents=True)
    (site / "blob_task.py").write_text(BLOB_TASK)
    (tmp_path / "pyproject.toml").write_text(PYPROJECT)  # what the package publishes; pip writes the two below
    (site / "med3d_blob-0.1.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: med3d-blob\n"
                                                                "Version: 0.1\n")
    (site / "med3d_blob-0.1.dist-info" / "entry_points.txt").write_text(
        '[med3d.tasks]\nblob = blob_task:BlobTask\n')
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(registry, "_TASKS", dict(registry.all_tasks()))
    monkeypatch.setattr(registry, "_PLUGINS_LOADED", [])
    monkeypatch.delitem(sys.modules, "blob_task", raising=False)
    return site


def test_a_plugin_task_trains_evaluates_predicts_and_compares(blob_package, tiny_store, tmp_path):
    from catalog import load_catalog, select

    run, cli = tmp_path / "run", CliRunner()
    res = cli.invoke(main, ["finetune", "blob", tiny_store, "--out", str(run), "--steps", "2", "--batch", "1",
                            "--patch", "16", "--width", "4", "--workers", "0", "--device", "cpu", "--val-every", "2",
                            "--ckpt-every", "0", "--no-progress"])
    import traceback
    assert res.exit_code == 0, res.output + "".join(traceback.format_exception(*res.exc_info))
    spec = json.loads((run / "finetune.json").read_text())
    assert (spec["task"], spec["domain"], spec["metric"], spec["eval_split"]) == ("blob", "alpha", "dice", "test")
    import torch

    ckpt = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True, mmap=True)
    assert ckpt["net"] == {"head": "seg_med3d", "encoder": "resnet10", "num_classes": 2,
                           "options": {"decoder_widths": [4, 4, 4], "in_chans": 1}}
    assert ckpt["config"]["width"] == 4 and "shape" not in ckpt["config"]  # its own options, not every task's

    res = cli.invoke(main, ["evaluate", str(run), tiny_store, "--split", "val", "--no-progress"])
    assert res.exit_code == 0, res.output
    summary = json.loads((run / "eval" / "val" / "summary.json").read_text())
    val = select(load_catalog(tiny_store), domain="alpha", split="val")
    assert summary["task"] == "blob" and summary["cases"] == len(val) and 0 <= summary["metric"] <= 1

    scan = Path(val["source_image"].iloc[0])
    res = cli.invoke(main, ["predict", str(run), str(scan), "--out", str(tmp_path / "masks")])
    assert res.exit_code == 0, res.output
    assert [p.name for p in (tmp_path / "masks").iterdir()] == [scan.name.replace("_img.nii.gz", "_img_mask.nii.gz")]

    res = cli.invoke(main, ["compare", str(run), "--out", str(tmp_path / "cmp")])
    assert res.exit_code == 0, res.output
    assert "blob" in (tmp_path / "cmp" / "compare.md").read_text()


def test_the_plugin_task_has_its_command_and_flags_in_a_fresh_process(blob_package):
    import os

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blob_package), str(root), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-m", "model.cli", "finetune", "blob", "--help"], capture_output=True,
                         text=True, env=env, cwd=root, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "--width" in out.stdout and "--domain" in out.stdout and "--patch" in out.stdout
    assert "--labels" not in out.stdout and "--decoder" not in out.stdout  # other tasks' options are not its
