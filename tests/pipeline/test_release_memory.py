"""Worker memory. After each task a worker hands the heap memory the task freed back to the OS (glibc's
malloc_trim): without it, what one case freed stayed resident into the next, and a worker's peak RSS grew with the
number of cases it had converted (benchmarks/scale_build.py, 2 workers: 596-600 -> 655-682 MiB from 6 to 96 CT
cases before, 595 -> 633-642 MiB after). And the workers allocate from one malloc arena (session 10)."""
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


ARENAS = textwrap.dedent("""
    import ctypes, os, sys, tempfile
    import numpy as np
    from distributed import Client
    from pipeline.executor import local_cluster, one_malloc_arena

    if sys.argv[1] == "one":
        assert one_malloc_arena()

    def allocate():  # on the worker's task thread, as a case conversion
        return int(sum(np.ones(2**20 + i, np.uint8).sum() for i in range(50)))

    def arenas():  # glibc's malloc_info lists one <heap> per arena
        libc = ctypes.CDLL("libc.so.6")
        libc.fopen.restype = ctypes.c_void_p
        libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
        libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
        libc.fclose.argtypes = [ctypes.c_void_p]
        fd, path = tempfile.mkstemp()
        os.close(fd)
        fh = libc.fopen(path.encode(), b"w")
        libc.malloc_info(0, fh)
        libc.fclose(fh)
        with open(path) as f:
            text = f.read()
        os.remove(path)
        return text.count("<heap nr=")

    with local_cluster(1) as cluster, Client(cluster) as client:
        assert client.submit(allocate, pure=False).result() > 0
        profiling = client.run(lambda: __import__("dask").config.get("distributed.worker.profile.enabled"))
        print(next(iter(client.run(arenas).values())), next(iter(profiling.values())))
""")


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's arenas, forked workers")
def test_forked_workers_allocate_from_one_arena_and_do_not_profile() -> None:
    """``med3d-prep`` asks glibc for one malloc arena before any thread exists; the local cluster's forked workers
    inherit it, so a case converted on a worker's task thread comes from the main arena (one bench CT's own peak
    was ~482 or ~533 MiB from run to run with an arena of its own). Without the call, the task thread gets an
    arena of its own: the check tells the two apart. The workers' profiler is off (no dashboard shows it)."""
    def run(mode: str) -> list[str]:
        out = subprocess.run([sys.executable, "-c", ARENAS, mode], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout.split()

    assert run("one") == ["1", "False"]
    heaps, profiling = run("default")
    assert int(heaps) >= 2 and profiling == "False"


def test_the_prep_console_script_asks_for_one_arena_before_the_command(monkeypatch, tmp_path) -> None:
    """The console script's entry, before the click group runs (so before any thread); the group called from
    Python leaves the caller's allocator alone."""
    import catalog.console
    import pipeline.cli as cli

    calls: list[str] = []
    monkeypatch.setattr(executor, "one_malloc_arena", lambda: calls.append("arena") or True)
    monkeypatch.setattr(catalog.console, "run_console", lambda command: calls.append(command.name))
    cli.entry()
    assert calls == ["arena", "main"]
    from click.testing import CliRunner

    calls.clear()
    res = CliRunner().invoke(cli.main, ["sample", str(tmp_path / "raw"), "--only", "lits"])
    assert res.exit_code == 0 and (tmp_path / "raw" / "lits").is_dir() and calls == []
