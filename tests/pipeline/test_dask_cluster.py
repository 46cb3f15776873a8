"""The build on a real dask cluster (scheduler + two worker processes on loopback) equals the local build."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from catalog import load_catalog
from pipeline.cli import main

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def dask_cluster(tmp_path):
    bindir = Path(sys.executable).parent
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "DASK_DISTRIBUTED__WORKER__DAEMON": "False"}
    procs = [subprocess.Popen(
        [str(bindir / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=tmp_path,
    )]
    for i in range(2):
        procs.append(subprocess.Popen(
            [str(bindir / "dask"), "worker", address, "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1",
             "--name", f"w{i}", "--resources", f"MEM={2 * 2**30}", "--memory-limit", "4GiB"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=tmp_path,
        ))
    try:
        from distributed import Client

        deadline = time.time() + 60
        while True:
            try:
                with Client(address, timeout=5) as c:
                    c.wait_for_workers(2, timeout=max(1, deadline - time.time()))
                break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.5)
        yield address
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


def _arrays(store: str) -> dict[str, np.ndarray]:
    root = zarr.open_group(store, mode="r")
    out = {}
    for domain in root.group_keys():
        for case in root[domain].group_keys():
            for name in ("image", "label", "foreground"):
                out[f"{domain}/{case}/{name}"] = root[f"{domain}/{case}/{name}"][...]
    return out


def test_scheduler_build_equals_local_build(dask_cluster, real_dir, tmp_path):
    runner = CliRunner()
    msd = str(real_dir / "msd")
    local, remote = str(tmp_path / "local"), str(tmp_path / "remote")
    res = runner.invoke(main, ["build-3dseg8", msd, local, "--workers", "2", "--no-progress"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(main, ["build-3dseg8", msd, remote, "--scheduler", dask_cluster, "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "4 converted" in res.output
    a, b = _arrays(local), _arrays(remote)
    assert sorted(a) == sorted(b) and len(a) == 12
    for key in a:
        assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]), key
    ca, cb = load_catalog(local), load_catalog(remote)
    assert ca.equals(cb)
