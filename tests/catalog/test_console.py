"""The console scripts end by freezing what is alive (``gc.freeze``), so the interpreter's exit skips its
cycle-collector passes over the loaded modules (0.27 s of med3d-prep's exit, 0.35 s of med3d-train's)."""
from __future__ import annotations

import gc
import json
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from catalog.console import run_console

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("ending", [SystemExit(0), SystemExit(2), ValueError("bad")])
def test_the_collector_is_frozen_after_the_command_however_it_ends(monkeypatch, ending) -> None:
    calls: list[str] = []
    monkeypatch.setattr(gc, "freeze", lambda: calls.append("freeze"))

    def command() -> None:
        calls.append("command")
        raise ending

    with pytest.raises(type(ending)):
        run_console(command)
    assert calls == ["command", "freeze"]


def test_both_console_scripts_run_through_it() -> None:
    scripts = {ep.name: ep.value for ep in entry_points(group="console_scripts")}
    assert scripts["med3d-prep"] == "pipeline.cli:entry" and scripts["med3d-train"] == "model.cli:entry"


def test_a_command_run_as_a_script_finishes_its_files_and_atexit_handlers(tmp_path) -> None:
    """`python -m pipeline.cli` goes through the same entry: the command's files are complete, the atexit handlers
    ran (one is registered before the command; it sees the frozen objects), the exit status is the command's."""
    code = ("import atexit, gc, sys\n"
            "atexit.register(lambda: print('frozen', gc.get_freeze_count() > 0, flush=True))\n"
            "import runpy; runpy.run_module('pipeline.cli', run_name='__main__')\n")
    out = subprocess.run([sys.executable, "-c", code, "sample", str(tmp_path / "raw"), "--only", "lits"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines()[-2:] == [f"lits: 13 files under {tmp_path / 'raw' / 'lits'}", "frozen True"]
    written = sorted(p.name for p in (tmp_path / "raw" / "lits").iterdir() if not p.name.startswith("."))
    assert len(written) == 13 and "SAMPLE.json" in written and json.loads(
        (tmp_path / "raw" / "lits" / "SAMPLE.json").read_text())["lits"]
    bad = subprocess.run([sys.executable, "-m", "pipeline.cli", "build-3dseg8", str(tmp_path / "nowhere"),
                          str(tmp_path / "store")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "nowhere" in bad.stderr
