"""One writer per run folder (issue 23, item 3): ``RUN/.lock`` while pretrain, finetune or a study writes it.

A lock held by a live process refuses the second run with one line naming the lock, its pid and host, before
anything is written; a lock whose process is gone is taken over and said so; two finetunes into one ``--out`` at
once: exactly one runs. The lock goes when the run ends, by error too.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from model.training.run_lock import LOCK_FILE, RunLockedError, acquire_run_lock, run_lock

SEG = dict(domain="alpha", steps=2, batch=1, patch=(16, 16, 16), decoder_widths=(8, 8, 8), workers=0,
           device="cpu", ckpt_every=0, val_every=0, progress=False)


@pytest.fixture
def live_pid():
    """The pid of a running process (``sleep 30``), stopped at the end."""
    proc = subprocess.Popen(["sleep", "30"])
    yield proc.pid
    proc.kill()
    proc.wait()


@pytest.fixture
def dead_pid() -> int:
    """The pid of a process of this host that has ended."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _lock(folder: Path, pid: int, host: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    path.write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(), "started": "2025-01-01T00:00:00",
                                "command": "med3d-train finetune seg STORE --out RUN"}))
    return path


def _files(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------------------------- the lock
def test_lock_is_created_exclusively_and_released(tmp_path):
    lines: list[str] = []
    with run_lock(tmp_path / "run", log=lines.append) as lock:
        record = json.loads((tmp_path / "run" / LOCK_FILE).read_text())
        assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
        assert record["started"] and record["command"] and record["token"] == lock.token
        with pytest.raises(RunLockedError, match=rf"pid {os.getpid()} on host {socket.gethostname()}"):
            acquire_run_lock(tmp_path / "run")  # this process is alive: never stale
    assert not (tmp_path / "run").exists()  # created by the lock, left empty: removed again
    assert lines == []
    with pytest.raises(KeyError):
        with run_lock(tmp_path / "kept"):
            (tmp_path / "kept" / "x").write_text("x")
            raise KeyError("boom")
    assert sorted(p.name for p in (tmp_path / "kept").iterdir()) == ["x"]  # released on error too
    assert acquire_run_lock(tmp_path / "rank1", enabled=False) is None and not (tmp_path / "rank1").exists()


def test_lock_of_another_host_or_without_a_pid_is_trusted(tmp_path, dead_pid):
    _lock(tmp_path, dead_pid, host="some-other-node")
    with pytest.raises(RunLockedError, match=f"pid {dead_pid} on host some-other-node.*delete"):
        acquire_run_lock(tmp_path)
    (tmp_path / LOCK_FILE).write_text("")  # its writer died between creating and writing it
    with pytest.raises(RunLockedError, match=r"pid \? on host \?"):
        acquire_run_lock(tmp_path)


def test_a_lock_of_another_run_is_not_removed_by_this_one(tmp_path):
    lock = acquire_run_lock(tmp_path)
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": 1, "host": "x", "token": "theirs"}))
    lock.release()
    assert json.loads((tmp_path / LOCK_FILE).read_text())["token"] == "theirs"


# ------------------------------------------------------------------------------------------------ finetune
def test_finetune_into_a_folder_locked_by_a_live_process_is_refused(tiny_store, tmp_path, live_pid):
    from model.cli import main

    run = tmp_path / "run"
    lock = _lock(run, live_pid)
    before = _files(run)
    res = CliRunner().invoke(main, ["finetune", "seg", tiny_store, "--out", str(run), "--domain", "alpha",
                                    "--steps", "2", "--workers", "0", "--device", "cpu", "--no-progress"])
    assert res.exit_code == 1, res.output
    [line] = res.output.strip().splitlines()
    assert str(lock) in line and f"pid {live_pid}" in line and socket.gethostname() in line, line
    assert _files(run) == before  # nothing written, the lock left as it was


def test_stale_lock_is_taken_over_and_said(tiny_store, tmp_path, dead_pid):
    from model.api import finetune

    run = tmp_path / "run"
    lock = _lock(run, dead_pid)
    lines: list[str] = []
    [result] = finetune("seg", tiny_store, str(run), log=lines.append, **SEG)
    assert result.step == 2
    said = [line for line in lines if "stale lock" in line]
    assert len(said) == 1 and str(lock) in said[0] and f"pid {dead_pid}" in said[0], lines
    assert not lock.exists()  # released at the end


def test_two_finetunes_into_one_folder_at_once_exactly_one_runs(tiny_store, tmp_path):
    from model.task_api import FinetuneError
    from model.api import finetune

    run = tmp_path / "run"
    holding, refused = threading.Event(), threading.Event()
    outcome: dict[str, object] = {}

    def first_log(line: str) -> None:  # the first run pauses while it holds the lock, until the second is refused
        if (run / LOCK_FILE).exists() and not holding.is_set():
            holding.set()
            refused.wait(120)

    def first() -> None:
        try:
            outcome["first"] = finetune("seg", tiny_store, str(run), log=first_log, **SEG)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            outcome["first"] = exc
        finally:
            holding.set()  # ended without pausing (no lock): the second run starts now

    thread = threading.Thread(target=first)
    thread.start()
    assert holding.wait(120)
    try:
        with pytest.raises(FinetuneError, match=rf"{LOCK_FILE}.*locked by pid {os.getpid()}"):
            finetune("seg", tiny_store, str(run), log=lambda s: None, **SEG)
    finally:
        refused.set()
        thread.join(300)
    [result] = outcome["first"]
    assert result.step == 2 and not (run / LOCK_FILE).exists()


def test_lock_is_released_when_finetune_is_refused_after_taking_it(tiny_store, tmp_path):
    from model.task_api import FinetuneError
    from model.api import finetune

    run = tmp_path / "run"
    finetune("seg", tiny_store, str(run), log=lambda s: None, **SEG)
    before = _files(run)
    with pytest.raises(FinetuneError, match="choose another --out"):  # finetune.json of another encoder
        finetune("seg", tiny_store, str(run), log=lambda s: None, **{**SEG, "encoder": "resnet18"})
    assert _files(run) == before and not (run / LOCK_FILE).exists()


# ------------------------------------------------------------------------------------------ pretrain, study
def test_pretrain_into_a_locked_folder_is_refused_and_a_stale_lock_taken_over(fast_config, tmp_path, live_pid,
                                                                                dead_pid):
    from model.training.pretrain import PretrainError, pretrain

    run = tmp_path / "run"
    lock = _lock(run, live_pid)
    before = _files(run)
    with pytest.raises(PretrainError, match=rf"{LOCK_FILE}.*pid {live_pid} on host"):
        pretrain(fast_config(run, steps=1, patch=(16, 16, 16)), progress=False, log=lambda s: None)
    assert _files(run) == before
    _lock(run, dead_pid)
    lines: list[str] = []
    result = pretrain(fast_config(run, steps=1, patch=(16, 16, 16)), progress=False, log=lines.append)
    assert result.step == 1 and any("stale lock" in line for line in lines) and not lock.exists()


def test_study_into_a_locked_folder_is_refused(tiny_store, tmp_path, live_pid):
    from model.cli import main

    study = tmp_path / "study"
    lock = _lock(study, live_pid)
    res = CliRunner().invoke(main, ["study", tiny_store, "--task", "seg", "--out", str(study), "--init", "scratch",
                                    "--fractions", "1", "--seeds", "0", "--domain", "alpha", "--steps", "1"])
    assert res.exit_code == 1, res.output
    [line] = res.output.strip().splitlines()
    assert str(lock) in line and f"pid {live_pid}" in line, line
    assert sorted(p.name for p in study.iterdir()) == [LOCK_FILE]
