"""A worker process killed mid-case (SIGKILL, as the OOM killer would) neither loses nor duplicates a case.

A real local cluster of two worker processes builds the four real MSD hippocampus cases, a few small synthetic
ones and one large synthetic case (128×192×192, written in 16³ chunks, so its zarr write alone takes about a
second). The test waits until that case's chunks are being written, finds the worker running it with
``client.processing()`` and SIGKILLs that process: no hook in the job's code is needed. Killed once, the case runs
again on another worker and succeeds; killed on both tries, it becomes a failed row saying the worker died.
Either way every other case converts, the nanny restarts the killed workers, and a re-run converts only what is
missing.
"""
from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import zarr

from catalog import load_catalog, select
from pipeline.config import Case, DomainSpec, PrepConfig
from pipeline.executor import local_cluster
from pipeline.job import build
from pipeline.sources.msd import scan_msd
from pipeline.store import case_marker, open_root

from helpers import write_nifti

pytestmark = pytest.mark.slow

BIG = DomainSpec(name="big", source_dataset="toy", modality="MR", channel_names=("MR",), labels={0: "bg", 1: "a"})
TOY = DomainSpec(name="toy", source_dataset="toy", modality="MR", channel_names=("MR",), labels={0: "bg", 1: "a"})
BIG_SHAPE = (128, 192, 192)
CFG = PrepConfig(chunks=(16, 16, 16))


def _case(folder: Path, spec: DomainSpec, i: int, shape: tuple[int, int, int]) -> Case:
    rng = np.random.default_rng(i)
    img = rng.integers(0, 1000, shape, dtype=np.int16)
    lab = np.zeros(shape, np.uint8)
    lab[tuple(slice(n // 4, n // 2) for n in shape)] = 1
    ip = write_nifti(folder / f"{spec.name}_{i}.nii", img)
    lp = write_nifti(folder / f"{spec.name}_{i}_seg.nii", lab)
    return Case(domain=spec.name, case_id=f"{spec.name}_{i:03d}", scan_id=f"{spec.name}:{i}",
                patient_id=f"{spec.name}{i}", images=(ip,), label=lp)


@pytest.fixture()
def domains(real_dir, tmp_path) -> list[tuple[DomainSpec, list[Case]]]:
    raw = tmp_path / "raw"
    raw.mkdir()
    msd, _ = scan_msd(real_dir / "msd")
    # The big case comes first, so it starts at once; the others keep the second worker busy meanwhile.
    return [(BIG, [_case(raw, BIG, 0, BIG_SHAPE)]),
            *msd,
            (TOY, [_case(raw, TOY, i, (40, 48, 48)) for i in range(1, 7)])]


@pytest.fixture()
def cluster():
    from distributed import Client

    with local_cluster(2, memory_per_worker=2 * 2**30) as cl, Client(cl) as client:
        client.wait_for_workers(2, timeout=60)
        yield cl.scheduler_address, client


def _image_chunks(case_dir: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(case_dir / "image" / "c"))


def _wait_for_write(case_dir: Path, previous: tuple[int, int] | None, timeout: float = 120.0) -> tuple[int, int]:
    """Wait until a (new) attempt at the case is writing its image chunks; returns that attempt's identity (the
    inode and mtime of ``image/zarr.json``, which every attempt rewrites)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            st = (case_dir / "image" / "zarr.json").stat()
            ident = (st.st_ino, st.st_mtime_ns)
        except FileNotFoundError:
            ident = None
        if ident is not None and ident != previous and _image_chunks(case_dir) >= 16:
            return ident
        time.sleep(0.01)
    raise AssertionError(f"no attempt at {case_dir} started writing within {timeout:.0f} s")


def _kill_worker_running(client, key_prefix: str) -> int:
    """SIGKILL the worker process that runs the task whose key starts with ``key_prefix``; returns its pid."""
    where = [addr for addr, keys in client.processing().items() if any(str(k).startswith(key_prefix) for k in keys)]
    assert len(where) == 1, f"{key_prefix} is processing on {where}"
    pid = client.run(os.getpid, workers=where)[where[0]]
    os.kill(pid, signal.SIGKILL)
    return pid


def _command_line() -> bytes:
    with open("/proc/self/cmdline", "rb") as fh:
        return fh.read()


def _build(domains, store, scheduler, logs):
    return build(domains, store, CFG, scheduler=scheduler, progress=False, log=logs.append)


@pytest.mark.parametrize("kills", [1, 2])
def test_worker_killed_mid_case(domains, cluster, tmp_path, kills):
    scheduler, client = cluster
    store = str(tmp_path / "store")
    big_dir = Path(store) / "big" / "big_000"
    n_cases = sum(len(cases) for _, cases in domains)
    first_pids = set(client.run(os.getpid).values())

    logs: list[str] = []
    killed, attempt = [], None
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(_build, domains, store, scheduler, logs)
        for _ in range(kills):
            attempt = _wait_for_write(big_dir, attempt)
            assert case_marker(open_root(store, mode="r"), "big/big_000") is None
            killed.append(_kill_worker_running(client, "convert-big-big_000-"))
        result = running.result(timeout=300)

    # the build returned, one row per case, each ok or failed with a message naming the file and the cause
    cat = load_catalog(store)
    assert len(cat) == n_cases
    assert not cat.duplicated(["domain", "case_id"]).any()
    assert set(cat["status"]) <= {"ok", "failed"}
    others = cat[cat["domain"] != "big"]
    assert (others["status"] == "ok").all(), others[["case_id", "error"]]
    big = cat[cat["domain"] == "big"].iloc[0]
    root = open_root(store, mode="r")
    if kills == 1:  # retried once on another worker: converted, complete and whole
        assert result.ok and result.converted == n_cases, result.summary()
        assert big["status"] == "ok" and case_marker(root, "big/big_000") is not None
        image = zarr.open_array(store, path="big/big_000/image", mode="r")[0]
        blocks = image.reshape(8, 16, 12, 16, 12, 16)
        assert (blocks != 0).any(axis=(1, 3, 5)).all()  # no chunk of the killed attempt is missing
    else:  # died on both tries: a failed row, nothing of it counted complete, the others converted
        assert result.converted == n_cases - 1 and len(result.failed) == 1, result.summary()
        assert big["status"] == "failed"
        assert big["error"].startswith(str(big_dir.parents[2] / "raw" / "big_0.nii") + ": ")
        assert "worker process died while converting this case (2 tries" in big["error"]
        assert "out of memory?" in big["error"]
        assert "FAILED big/big_000: " in result.summary()
        assert case_marker(root, "big/big_000") is None and _image_chunks(big_dir) > 0  # partial, not counted
        assert "big" not in set(select(cat)["domain"])

    # the nanny restarted each killed worker, and the job went on with two workers
    client.wait_for_workers(2, timeout=60)
    pids = set(client.run(os.getpid).values())
    assert len(set(killed)) == kills and killed[0] in first_pids  # a second kill may hit the restarted worker
    assert len(pids) == 2 and not pids & set(killed)
    # forked, the first workers and the restarted ones alike (a spawned worker runs `python -c "from
    # multiprocessing.spawn import spawn_main..."`, a forked one keeps this process's command line)
    assert set(client.run(_command_line).values()) == {_command_line()}

    # a re-run converts only what is missing
    again = _build(domains, store, scheduler, [])
    assert again.ok, again.summary()
    assert (again.converted, again.skipped) == ((0, n_cases) if kills == 1 else (1, n_cases - 1))
    cat = load_catalog(store)
    assert len(cat) == n_cases and not cat.duplicated(["domain", "case_id"]).any()
    assert (cat["status"] == "ok").all() and case_marker(root, "big/big_000") is not None
