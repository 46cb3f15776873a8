"""After each task a worker hands the heap memory the task freed back to the OS (glibc's malloc_trim): without
it, what one case freed stayed resident into the next, and a worker's peak RSS grew with the number of cases it
had converted (benchmarks/scale_build.py, 2 workers: 596-600 -> 655-682 MiB from 6 to 96 CT cases before, 595 ->
633-642 MiB after)."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

import pipeline.executor as executor

FRAGMENTED = textwrap.dedent("""
    import os
    from pipeline.executor import release_freed_memory

    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    keep = []
    blocks = [bytes(4000) for _ in range(100_000)]  # 400 MB in heap blocks (below the mmap threshold)
    keep.append(bytes(4000))  # allocated last: the heap's top stays in use, so free() alone cannot shrink it
    del blocks
    before = rss()
    release_freed_memory()
    print(before, rss())
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_freed_heap_memory_goes_back_to_the_os() -> None:
    out = subprocess.run([sys.executable, "-c", FRAGMENTED], capture_output=True, text=True, check=True)
    before, after = map(int, out.stdout.split())
    assert before > 300 * 2**20, before  # free() kept the 400 MB resident
    assert after < before - 300 * 2**20, (before, after)


def test_a_task_releases_memory_also_when_it_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    monkeypatch.setattr(executor, "release_freed_memory", lambda: calls.append(1))
    assert executor._single_threaded(lambda x: x + 1, 1) == 2
    with pytest.raises(ZeroDivisionError):
        executor._single_threaded(lambda: 1 / 0)
    assert calls == [1, 1]


def test_worker_start_method_is_fork_on_linux_unless_told(monkeypatch) -> None:
    from pipeline.executor import START_METHOD_ENV, worker_start_method

    monkeypatch.delenv(START_METHOD_ENV, raising=False)
    monkeypatch.setattr(sys, "platform", "linux")
    assert worker_start_method() == "fork"
    monkeypatch.setattr(sys, "platform", "darwin")
    assert worker_start_method() == "spawn"
    monkeypatch.setenv(START_METHOD_ENV, " Spawn ")
    monkeypatch.setattr(sys, "platform", "linux")
    assert worker_start_method() == "spawn"
    monkeypatch.setenv(START_METHOD_ENV, "threads")
    with pytest.raises(ValueError, match="MED3D_WORKER_START='threads': use fork, spawn or forkserver"):
        worker_start_method()


def test_an_unknown_start_method_is_one_line_before_anything_is_written(tmp_path, monkeypatch) -> None:
    from click.testing import CliRunner

    from pipeline.cli import main

    monkeypatch.setenv("MED3D_WORKER_START", "bogus")
    store = tmp_path / "store"
    res = CliRunner().invoke(main, ["build-3dseg8", str(tmp_path / "nothing"), str(store), "--workers", "2"])
    assert res.exit_code == 2, res.output
    assert "Error: MED3D_WORKER_START='bogus': use fork, spawn or forkserver (or unset it)" in res.output
    assert "Traceback" not in res.output and not store.exists()
