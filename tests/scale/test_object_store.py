"""A store in object storage: the sample 3DSeg-8 built into an S3 bucket (moto on loopback) by a real dask cluster
equals the local build array for array, plain zarr reads it, and pretraining and fine-tuning stream from it."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from catalog import load_catalog, load_domains
from scale_helpers import S3, SECRET, SHARED_FIXTURES, assert_same_arrays, store_arrays, tiny_pretrain, train_losses

pytestmark = [pytest.mark.slow, SHARED_FIXTURES]


def test_bucket_build_equals_local_build(s3: S3, bucket_build, local_build):
    arrays = store_arrays(bucket_build)  # plain zarr-python on the s3:// URL
    assert len(arrays) == 45 * 3 - 8  # image, label and foreground of every case; the 8 test cases have no label
    assert_same_arrays(store_arrays(local_build), arrays)
    # stored_bytes is what the store reports: chunk objects in the bucket, chunk files locally (same bytes)
    assert load_catalog(bucket_build).equals(load_catalog(local_build))
    assert load_domains(bucket_build).equals(load_domains(local_build))


def test_pretraining_streams_from_the_bucket(bucket_build, local_pretrain, tmp_path):
    logs: list[str] = []
    remote = tiny_pretrain(bucket_build, tmp_path / "remote", log=logs.append)
    assert remote.step == 2 and remote.summary["last_step"] == 2
    # The credentials live in the environment only: not in the run's files, its log or the bucket's catalog.
    import fsspec

    written = [p.read_bytes() for p in remote.run_dir.rglob("*") if p.is_file()]
    with fsspec.open(f"{bucket_build}/catalog.parquet", "rb") as fh:
        written.append(fh.read())
    assert written and not any(SECRET.encode() in blob for blob in written)
    assert logs and not any(SECRET in line for line in logs)
    assert train_losses(remote.run_dir) == train_losses(local_pretrain.run_dir)
    local = local_pretrain.net.state_dict()
    for key, value in remote.net.state_dict().items():
        assert torch.equal(value, local[key]), key


def test_finetune_reads_its_cases_from_the_bucket(bucket_build, local_build, tmp_path):
    """`med3d-train finetune seg` on the bucket's spleen domain trains on the same patches as on the local build."""
    from click.testing import CliRunner

    from model.cli import main

    def finetune(store: str, out: Path) -> dict[int, float]:
        res = CliRunner().invoke(main, ["finetune", "seg", store, "--domain", "spleen", "--out", str(out),
                                        "--steps", "2", "--patch", "16", "--device", "cpu", "--workers", "0",
                                        "--val-every", "0"],
                                 catch_exceptions=False)
        assert res.exit_code == 0, res.output
        return train_losses(out)

    remote = finetune(bucket_build, tmp_path / "remote")
    assert sorted(remote) == [1, 2] and remote == finetune(local_build, tmp_path / "local")
