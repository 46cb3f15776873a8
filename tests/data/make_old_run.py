"""Write ``tests/data/old_run.tar.xz``: a ``finetune seg`` run folder as the release before issue 20 wrote it, kept so
that ``tests/model/test_old_run.py`` can check that run folders written before tasks owned their options (a flat
config with every task's fields, no ``net`` record in the checkpoint) still load and evaluate the same.

It was run ONCE, with the code of commit ba51707 (before the change), from the repository root::

    PYTHONPATH=$PWD python tests/data/make_old_run.py

The run: ``med3d-train finetune seg`` on the ``alpha`` domain of the tests' tiny synthetic store (built as
``tests/model/conftest.py`` builds it), ResNet-10, U-Net decoder of widths 8, 2 steps. To keep the fixture small
(ResNet-10's 14 M parameters are 57 MB), each tensor of the checkpoint (weights, optimiser state) with
more than 4096 values is replaced by its first slice along the output channels, repeated: the keys, shapes, config and every other entry are as the release wrote
them, and the folder is kept as ``old_run.tar.xz`` (repeated slices compress to almost nothing; the test
unpacks it). ``expected_summary.json`` is what that release's ``med3d-train evaluate`` measured on the store's val split.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
OUT = Path(tempfile.gettempdir()) / "med3d_old_run"


def _shrink(path: Path) -> None:
    def small(obj):
        if isinstance(obj, torch.Tensor):
            return obj[:1].expand(obj.shape).contiguous() if obj.dim() > 1 and obj.numel() > 4096 else obj
        if isinstance(obj, dict):
            return {k: small(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [small(v) for v in obj]
        return obj

    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    torch.save(small(ckpt), path)


def main() -> None:
    sys.path.insert(0, str(ROOT / "tests" / "model"))
    from tests_model_helpers import DOMAINS, N_CASES, _build_store

    with tempfile.TemporaryDirectory() as tmp:
        store = _build_store(Path(tmp) / "raw", Path(tmp) / "store", {d: list(range(N_CASES)) for d in DOMAINS},
                             seed=7)
        run = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "model.cli", "finetune", "seg", store, "--out", str(run), "--domain", "alpha",
               "--decoder", "unet", "--steps", "2", "--batch", "1", "--patch", "16", "--workers", "0",
               "--device", "cpu", "--val-every", "0", "--ckpt-every", "0", "--no-progress"]
        subprocess.run(cmd, check=True, cwd=ROOT)
        _shrink(run / "checkpoint.pt")
        shutil.rmtree(OUT, ignore_errors=True)
        shutil.copytree(run, OUT)
        out = subprocess.run([sys.executable, "-m", "model.cli", "evaluate", str(OUT), store, "--split", "val",
                              "--no-progress"], cwd=ROOT, capture_output=True, text=True)
        print(out.stdout, out.stderr)
        print(out.stdout)
        summary = json.loads((OUT / "eval" / "val" / "summary.json").read_text())
        shutil.rmtree(OUT / "eval")
        (OUT / "expected_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        with tarfile.open(ROOT / "tests" / "data" / "old_run.tar.xz", "w:xz") as tar:
            tar.add(OUT, arcname="old_run")
        shutil.rmtree(OUT)


if __name__ == "__main__":
    main()
