"""A store in object storage: the sample 3DSeg-8 built into an S3 bucket (moto on loopback) by a real dask cluster
equals the local build array for array, plain zarr reads it, and pretraining streams from it."""
from __future__ import annotations

import time

import pytest
import torch

from catalog import load_catalog, load_domains
from conftest import S3, assert_same_arrays, store_arrays, tiny_pretrain, train_losses

pytestmark = pytest.mark.slow


def test_bucket_build_equals_local_build_and_pretraining_streams_from_it(s3: S3, dask_scheduler, sample_cases,
                                                                         local_build, tmp_path):
    from pipeline.config import PrepConfig
    from pipeline.job import build

    url = s3.url("clean")
    t0 = time.perf_counter()
    result = build(sample_cases, url, PrepConfig(), scheduler=dask_scheduler, progress=False, log=lambda s: None)
    print(f"bucket build: {time.perf_counter() - t0:.1f} s, {dict(s3.proxy.requests)} requests")
    assert result.ok and result.converted == 45, result.summary()

    assert_same_arrays(store_arrays(local_build), store_arrays(url))
    assert load_catalog(url).drop(columns=["stored_bytes"]).equals(load_catalog(local_build).drop(columns=["stored_bytes"]))
    assert load_domains(url).equals(load_domains(local_build))

    t0 = time.perf_counter()
    remote = tiny_pretrain(url, tmp_path / "remote")
    print(f"pretrain from the bucket: {time.perf_counter() - t0:.1f} s")
    local = tiny_pretrain(local_build, tmp_path / "local")
    assert remote.step == 2 and train_losses(remote.run_dir) == train_losses(local.run_dir)
    for key, value in local.net.state_dict().items():
        assert torch.equal(value, remote.net.state_dict()[key]), key
