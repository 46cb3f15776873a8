"""The layers import downwards only: ``catalog/`` (with the store format), ``volume/`` (one scan: headers,
geometry, normalization) and ``runlog/`` below both halves, ``pipeline/`` (raw -> store) and ``model/`` (store ->
weights) never import each other, and the report page (with its training curves) needs no torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _imported_roots(package: str) -> dict[str, set[str]]:
    """{module file: top-level packages it imports}, every import statement, lazy ones inside functions too."""
    out = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        roots = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                roots |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                roots.add(node.module.split(".")[0])
        out[str(path.relative_to(ROOT))] = roots
    return out


@pytest.mark.parametrize("package, forbidden", [
    ("pipeline", {"model"}),
    ("model", {"pipeline"}),
    ("catalog", {"model", "pipeline", "volume", "torch"}),
    ("volume", {"model", "pipeline", "runlog", "torch", "dask", "zarr"}),
    ("runlog", {"model", "pipeline", "catalog", "torch"}),
])
def test_no_upward_imports(package, forbidden):
    bad = {f: sorted(roots & forbidden) for f, roots in _imported_roots(package).items() if roots & forbidden}
    assert not bad, f"{package}/ must not import {sorted(forbidden)}: {bad}"


def test_report_and_prep_cli_load_without_torch():
    code = ("import sys; import pipeline.cli, pipeline.report, runlog.plot; "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def test_networks_know_nothing_of_training_or_the_store():
    """model/nets/ (networks, weight files) imports no training loop, data stream or store code."""
    bad = {}
    for path in sorted((ROOT / "model" / "nets").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            for name in names:
                if name.startswith(("model.training", "model.data", "model.evaluation", "catalog", "pipeline")):
                    bad.setdefault(str(path.relative_to(ROOT)), []).append(name)
    assert not bad, bad
