"""Crafted stores and checkpoints met by ``med3d-train`` (issue 23, items 6 and 7).

A chunk file linked to ``/dev/zero`` was read as zeros: finetune trained and evaluate measured on them with exit
status 0; an image ``zarr.json`` claiming 10¹² voxels was believed over the catalog. A checkpoint holding a
stride-0 view of 2·10⁹ elements (8 bytes on disk) asked for 16 GB on ``--resume``, and tensors of other shapes
than the network's gave RuntimeError tracebacks. Each is now refused with one line naming the file and the key
or field, exit status 1, nothing written outside the command's own folder, no input changed. Where allocation is
the point the command runs in a subprocess under a 4 GiB address-space limit, so a regression fails the test
instead of eating the machine.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parents[2]
TRAIN = {"steps": 1, "batch": 1, "workers": 0, "device": "cpu", "ckpt_every": 0, "val_every": 0, "progress": False,
         "log": lambda s: None}
HUGE = 2_000_000_000


@pytest.fixture(scope="module")
def seg_run(real_dir, tmp_path_factory) -> dict:
    """The four real hippocampus cases built into a store in 16³ chunks, and a one-step seg run on it."""
    from model.api import finetune
    from pipeline.config import PrepConfig
    from pipeline.job import build
    from pipeline.sources.msd import scan_msd

    root = tmp_path_factory.mktemp("hostile_stores")
    found, _ = scan_msd(real_dir / "msd")
    store = str(root / "store")
    assert build(found, store, PrepConfig(chunks=(16, 16, 16)), workers=0, progress=False,
                 log=lambda s: None).failed == []
    finetune("seg", store, str(root / "seg"), patch=(16, 16, 16), decoder_widths=(8, 8, 8), **TRAIN)
    return {"store": Path(store), "seg": root / "seg"}


def _files(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink()}


def _cli(*args: object):
    from model.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


def _guarded_cli(*args: object, limit: int = 4 << 30) -> subprocess.CompletedProcess:
    """``med3d-train ARGS`` in a fresh interpreter under an address-space limit."""
    prog = textwrap.dedent(f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
        from model.cli import main
        sys.exit(main({[str(a) for a in args]!r}, standalone_mode=True))
        """)
    return subprocess.run([sys.executable, "-c", prog], cwd=ROOT, capture_output=True, text=True, timeout=600)


def _one_line(code: int, output: str, *names: object, after_log: bool = False) -> str:
    """The refusal: exit status 1, one ``Error:`` line naming each of ``names``, no traceback; ``after_log``: the
    command may have said what it started before (finetune's first line)."""
    assert code == 1, output[-3000:]
    lines = output.strip().splitlines()
    errors = [line for line in lines if line.startswith("Error: ")]
    assert len(errors) == 1 and errors[0] == lines[-1] and "Traceback" not in output, output[-3000:]
    assert after_log or len(lines) == 1, output[-3000:]
    for name in names:
        assert str(name) in lines[-1], (name, lines[-1])
    return lines[-1]


def _store_copy(seg_run: dict, tmp_path: Path) -> Path:
    store = tmp_path / "store"
    shutil.copytree(seg_run["store"], store, symlinks=True)
    return store


def _cases(store: Path, split: str) -> list[str]:
    from catalog import load_catalog

    cat = load_catalog(str(store))
    return sorted(cat.loc[cat["split"] == split, "store_path"])


def _link_chunks_to_dev_zero(store: Path, store_path: str) -> Path:
    """Every image chunk file of a case replaced by a link to /dev/zero; returns the first (in sorted order)."""
    chunks = sorted(p for p in (store / store_path / "image" / "c").rglob("*") if p.is_file())
    for chunk in chunks:
        chunk.unlink()
        chunk.symlink_to("/dev/zero")
    return chunks[0]


# ------------------------------------------------------------------------------------------ item 6: stores
def test_finetune_refuses_a_chunk_linked_to_dev_zero(seg_run, tmp_path):
    store = _store_copy(seg_run, tmp_path)
    for case in _cases(store, "train"):
        _link_chunks_to_dev_zero(store, case)
    before = _files(store)
    res = _cli("finetune", "seg", store, "--out", tmp_path / "out", "--steps", 1, "--batch", 1, "--patch", 16,
               "--workers", 0, "--val-every", 0, "--ckpt-every", 0, "--no-progress")
    line = _one_line(res.exit_code, res.output, "a symbolic link that leaves the store (to /dev/zero)", "--verify",
                     after_log=True)
    assert str(store) in line and "/image/c/" in line
    assert _files(store) == before and not (tmp_path / "out" / "checkpoint.pt").exists()


def test_evaluate_refuses_a_chunk_linked_to_dev_zero(seg_run, tmp_path):
    store = _store_copy(seg_run, tmp_path)
    split = json.loads((seg_run["seg"] / "finetune.json").read_text())["eval_split"]
    case = _cases(store, split)[0]
    _link_chunks_to_dev_zero(store, case)
    run = tmp_path / "run"
    shutil.copytree(seg_run["seg"], run)
    res = _cli("evaluate", run, store, "--no-progress")
    line = _one_line(res.exit_code, res.output, f"{store}/{case}/image/c/", "leaves the store (to /dev/zero)")
    assert "--verify" in line


def test_evaluate_refuses_an_image_whose_metadata_claims_a_trillion_voxels(seg_run, tmp_path):
    store = _store_copy(seg_run, tmp_path)
    split = json.loads((seg_run["seg"] / "finetune.json").read_text())["eval_split"]
    case = _cases(store, split)[0]
    meta_path = store / case / "image" / "zarr.json"
    meta = json.loads(meta_path.read_text())
    catalog_shape = list(meta["shape"])
    meta["shape"] = [1, 10_000, 10_000, 10_000]
    meta_path.write_text(json.dumps(meta))
    run = tmp_path / "run"
    shutil.copytree(seg_run["seg"], run)
    res = _guarded_cli("evaluate", run, store, "--no-progress")
    _one_line(res.returncode, res.stdout + res.stderr, meta_path, "shape [1, 10000, 10000, 10000] differs from the "
              f"catalog row of {case}'s {catalog_shape}")


# ------------------------------------------------------------------------------------- item 7: checkpoints
def _crafted_run(seg_run: dict, tmp_path: Path, change) -> Path:
    run = tmp_path / "run"
    shutil.copytree(seg_run["seg"], run)
    path = run / "checkpoint.pt"
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    change(ckpt)
    torch.save(ckpt, path)
    return run


def _resume(run: Path, store: Path):
    return _guarded_cli("finetune", "seg", store, "--out", run, "--resume", "--workers", 0,
                        "--no-progress")


def test_resume_refuses_a_stride_zero_tensor_of_two_billion_elements(seg_run, tmp_path):
    def change(ckpt):
        ckpt["rng"]["python"]["state"] = torch.zeros(1, dtype=torch.int64).expand(HUGE)

    run = _crafted_run(seg_run, tmp_path, change)
    # the 16 GB tensor is 8 bytes on disk
    assert (run / "checkpoint.pt").stat().st_size < (seg_run["seg"] / "checkpoint.pt").stat().st_size + (1 << 20)
    before = _files(run)
    res = _resume(run, seg_run["store"])
    _one_line(res.returncode, res.stdout + res.stderr, run / "checkpoint.pt",
              f"rng.python.state: {HUGE:,} elements over 8 bytes of storage")
    assert _files(run) == before


@pytest.mark.parametrize("where, key", [("model", "head.out.weight"), ("optimizer", "optimizer.state.0.exp_avg"),
                                        ("numpy", "rng.numpy.key")])
def test_resume_refuses_tensors_of_other_shapes_naming_the_key(seg_run, tmp_path, where, key):
    model_key = None

    def change(ckpt):
        nonlocal model_key
        if where == "model":
            model_key = sorted(ckpt["model"])[-1]
            ckpt["model"][model_key] = torch.zeros(3, 3)
        elif where == "optimizer":
            ckpt["optimizer"]["state"][0]["exp_avg"] = torch.zeros(5, 7)
        else:
            ckpt["rng"]["numpy"]["key"] = torch.zeros(10, dtype=torch.int64)

    run = _crafted_run(seg_run, tmp_path, change)
    before = _files(run)
    res = _cli("finetune", "seg", seg_run["store"], "--out", run, "--resume", "--workers", 0,
               "--no-progress")
    name = f"model.{model_key}" if where == "model" else key
    line = _one_line(res.exit_code, res.output, run / "checkpoint.pt", f"{name}: ")
    assert "shape" in line or "generator state" in line
    assert _files(run) == before


def test_evaluate_refuses_a_checkpoint_whose_config_asks_for_a_billion_classes(seg_run, tmp_path):
    """evaluate builds the network from the checkpoint's own record: it is checked on the meta device first."""
    def change(ckpt):
        ckpt["num_classes"] = ckpt["net"]["num_classes"] = 1_000_000_000

    run = _crafted_run(seg_run, tmp_path, change)
    res = _guarded_cli("evaluate", run, seg_run["store"], "--no-progress")
    _one_line(res.returncode, res.stdout + res.stderr, run / "checkpoint.pt", "shape [", "1000000000")
    assert not (run / "eval").exists()


def test_evaluate_refuses_a_stride_zero_weight(seg_run, tmp_path):
    def change(ckpt):
        key = sorted(ckpt["model"])[0]
        ckpt["model"][key] = torch.zeros(1).expand(HUGE)

    run = _crafted_run(seg_run, tmp_path, change)
    res = _cli("evaluate", run, seg_run["store"], "--no-progress")
    _one_line(res.exit_code, res.output, run / "checkpoint.pt", f"{HUGE:,} elements over 4 bytes of storage")


# ----------------------------------------------------------------------------- item 13: relative source paths
@pytest.fixture(scope="module")
def lits_relative(tmp_path_factory) -> dict:
    """The LiTS sample built into a store from a relative raw path (``build-lits raw/lits store`` in its own
    folder), and a one-step seg run on it."""
    import os

    from model.api import finetune
    from pipeline.cli import main as prep
    from pipeline.sample import write_lits_sample

    work = tmp_path_factory.mktemp("relative_build")
    write_lits_sample(work / "raw" / "lits")
    here = os.getcwd()
    os.chdir(work)
    try:
        res = CliRunner().invoke(prep, ["build-lits", "raw/lits", "store", "--workers", "0", "--no-progress",
                                        "--chunks", "16"])
    finally:
        os.chdir(here)
    assert res.exit_code == 0, res.output
    finetune("seg", str(work / "store"), str(work / "seg"), patch=(16, 16, 16), **TRAIN)
    return {"work": work, "store": work / "store", "seg": work / "seg"}


def test_a_store_built_from_a_relative_path_is_evaluated_from_another_folder(lits_relative, tmp_path, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(lits_relative["seg"], run)
    monkeypatch.chdir(tmp_path)
    res = _cli("evaluate", run, lits_relative["store"], "--no-progress")
    assert res.exit_code == 0, res.output
    assert (run / "eval").is_dir() and "Traceback" not in res.output


def test_an_old_store_of_relative_paths_is_one_line_naming_the_column_and_the_fix(lits_relative, tmp_path,
                                                                                   monkeypatch):
    """A store built before paths were recorded absolute: which folder its paths were relative to is unknown."""
    import os

    from catalog import load_catalog, save_catalog

    store = _store_copy(lits_relative, tmp_path)
    cat = load_catalog(str(store))
    cat["source_label"] = [os.path.relpath(p, lits_relative["work"]) if p else p for p in cat["source_label"]]
    save_catalog(str(store), cat)
    run = tmp_path / "run"
    shutil.copytree(lits_relative["seg"], run)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    before = _files(tmp_path)
    res = _cli("evaluate", run, store, "--no-progress")
    line = _one_line(res.exit_code, res.output, f"{store}/catalog.parquet: source_label of ",
                     "is the relative path 'raw/lits/segmentation-", "rebuild it", "from the folder it was built in")
    assert _files(tmp_path) == before and not (run / "eval").exists(), line
    monkeypatch.chdir(lits_relative["work"])  # from the folder it was built in, the same store is measured
    assert _cli("evaluate", run, store, "--no-progress").exit_code == 0
