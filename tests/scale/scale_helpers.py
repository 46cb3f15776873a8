"""Helpers of the object-store tests (the fixtures are in conftest.py): the loopback S3 handle, reading every
array of a store, a tiny pretraining run and its losses."""
from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

from s3_loopback import FaultProxy, MotoServer

BUCKET = "med3d-test"
SECRET = "loopback-secret-7f3a"
"""The session's AWS secret key: tests check it reaches no file a run or a build writes."""

SHARED_FIXTURES = pytest.mark.xdist_group("scale")
"""Every test of this folder carries it: ``make test`` runs ``-n 2 --dist loadgroup``, which sends them all to one
xdist worker, so the session fixtures (S3 server, dask cluster, the sample's local and bucket builds, a
pretraining: ~20 s) are made once, not once in each worker."""


class S3:
    """The loopback S3 of a test session: ``url(name)`` is a store URL in the bucket."""

    def __init__(self, moto: MotoServer, proxy: FaultProxy) -> None:
        self.moto, self.proxy = moto, proxy

    @staticmethod
    def url(name: str) -> str:
        return f"s3://{BUCKET}/{name}"

    @contextlib.contextmanager
    def via_proxy(self, **environ: str):
        """This process's S3 clients (new ones) talk to the fault proxy, with ``environ`` set too; the proxy is
        disarmed and the clients forgotten again on the way out."""
        try:
            with pytest.MonkeyPatch.context() as mp:
                for key, value in {"AWS_ENDPOINT_URL_S3": self.proxy.url, **environ}.items():
                    mp.setenv(key, value)
                forget_s3_clients()
                yield self.proxy
        finally:
            self.proxy.arm(0.0, 0)
            forget_s3_clients()


def forget_s3_clients() -> None:
    """Close and drop the cached s3fs clients, so that the next one reads the environment again (endpoint, retry
    settings). zarr's clients live on zarr's event loop, the others on fsspec's."""
    import fsspec.asyn
    import s3fs
    from zarr.core.sync import sync

    for fs in list(s3fs.S3FileSystem._cache.values()):
        creator = getattr(fs, "_s3creator", None)
        if creator is None:
            continue
        try:
            if fs.asynchronous:
                sync(creator.__aexit__(None, None, None))
            else:
                fsspec.asyn.sync(fs.loop, creator.__aexit__, None, None, None)
        except Exception:  # already closed, or its loop is gone: nothing left to close
            pass
    s3fs.S3FileSystem.clear_instance_cache()


def store_arrays(store: str) -> dict[str, np.ndarray]:
    """Every array of every case of a store, read with plain zarr-python (a local path or an s3:// URL)."""
    from concurrent.futures import ThreadPoolExecutor

    import warnings

    root = zarr.open_group(store, mode="r")
    with warnings.catch_warnings():  # zarr notes that catalog.parquet and domains.parquet are not zarr nodes
        warnings.filterwarnings("ignore", "Object at .* is not recognized as a component of a Zarr hierarchy")
        keys = [f"{domain}/{case}/{name}" for domain in root.group_keys() for case in root[domain].group_keys()
                for name in root[f"{domain}/{case}"].array_keys()]
    with ThreadPoolExecutor(4) as pool:  # requests to the bucket overlap, as zarr's do within one array
        return dict(zip(keys, pool.map(lambda key: root[key][...], keys)))


def assert_same_arrays(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]), key


def tiny_pretrain(store: str, out: Path, *, resume: bool = False, log=lambda s: None, **changes: Any):
    """A few steps of resnet10 pretraining on the sample store: 16³ patches, batch 1, no loader workers."""
    from model.training.config import TrainConfig
    from model.training.pretrain import pretrain

    kw = dict(store=store, out=str(out), encoder="resnet10", patch=(16, 16, 16), batch=1, steps=2, lr=1e-3,
              workers=0, val_every=0, ckpt_every=0, log_every=1, device="cpu", seed=0)
    kw.update(changes)
    return pretrain(TrainConfig(**kw), resume=resume, progress=False, log=log)


def train_losses(run_dir: Path | str) -> dict[int, float]:
    """step -> loss of the run's ``metrics.jsonl`` train records."""
    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {r["step"]: r["loss"] for r in rows if r.get("kind") == "train"}
