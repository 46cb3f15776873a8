"""Transient object-store errors (503, dropped connections) cost retries, not the run: the retry policy of
catalog/retry.py, each zarr request on an s3:// store retried on its own (catalog/remote_store.py), and the build
and pretraining finishing with the clean run's results behind a proxy that fails a fifth of the requests."""
from __future__ import annotations

import errno
import logging

import numpy as np
import pytest
import torch
import zarr

from catalog import load_catalog
from catalog.retry import RetryPolicy, is_transient, policy_from_env, retry_call
from scale_helpers import S3, SHARED_FIXTURES, assert_same_arrays, store_arrays, tiny_pretrain, train_losses

pytestmark = SHARED_FIXTURES


class _ClientError(Exception):
    """Shaped like botocore's ClientError: a parsed response with the HTTP status and the error code."""

    def __init__(self, status: int, code: str) -> None:
        super().__init__(f"An error occurred ({code})")
        self.response = {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}


def _raised_from(outer: Exception, cause: Exception) -> Exception:
    try:
        raise outer from cause
    except Exception as exc:
        return exc


def test_transient_errors_are_told_from_permanent_ones():
    for exc in (ConnectionResetError(), TimeoutError(), OSError(errno.EBUSY, "503 SlowDown (s3fs)"),
                _ClientError(503, "ServiceUnavailable"), _ClientError(500, "InternalError"),
                _ClientError(429, "TooManyRequests"), type("ServerDisconnectedError", (Exception,), {})(),
                _raised_from(ValueError("wrapped"), _ClientError(503, "SlowDown"))):
        assert is_transient(exc), exc
    for exc in (FileNotFoundError("no such key"), PermissionError("AccessDenied"), ValueError("bad"),
                KeyError("x"), _ClientError(403, "AccessDenied"), _ClientError(404, "NoSuchKey"),
                _raised_from(FileNotFoundError("missing"), TimeoutError())):
        assert not is_transient(exc), exc


def test_retry_call_backs_off_exponentially_and_gives_up_after_the_tries(monkeypatch):
    waits: list[float] = []
    monkeypatch.setattr("catalog.retry.time.sleep", waits.append)
    policy = RetryPolicy(tries=4, first_wait_s=0.5, max_wait_s=1.5, jitter=0)
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionResetError("reset by peer")
        return "ok"

    assert retry_call(flaky, "s3://b/k", policy) == "ok" and len(calls) == 3 and waits == [0.5, 1.0]
    calls.clear(), waits.clear()

    def always_503() -> None:
        calls.append(1)
        raise _ClientError(503, "SlowDown")

    with pytest.raises(_ClientError):
        retry_call(always_503, "s3://b/k", policy)
    assert len(calls) == 4 and waits == [0.5, 1.0, 1.5] and policy.max_total_wait_s() == 3.0
    calls.clear(), waits.clear()

    def missing() -> None:
        calls.append(1)
        raise FileNotFoundError("s3://b/k")

    with pytest.raises(FileNotFoundError):
        retry_call(missing, "s3://b/k", policy)
    assert len(calls) == 1 and waits == []  # a permanent error is raised at once


def test_policy_from_env_reads_tries_and_first_wait():
    assert policy_from_env({"MED3D_RETRY_TRIES": "3", "MED3D_RETRY_WAIT_S": "0.05"}) == \
        RetryPolicy(tries=3, first_wait_s=0.05)
    assert policy_from_env({}) == RetryPolicy()
    with pytest.raises(ValueError, match="MED3D_RETRY_TRIES"):
        policy_from_env({"MED3D_RETRY_TRIES": "many"})
    with pytest.raises(ValueError, match="at least 1"):
        policy_from_env({"MED3D_RETRY_TRIES": "0"})


@pytest.mark.slow
def test_each_request_retries_when_the_backend_does_not(s3: S3, local_build, caplog):
    """With botocore told to make one attempt (s3fs does not retry a 503 ServiceUnavailable either), every
    request of a case write and of the patch reader fails once and gets through on our retry; plain zarr, which
    does not retry, fails on the same faults."""
    from catalog.chunk_read import ChunkedArrayReader
    from pipeline.config import PrepConfig
    from pipeline.store import open_root, write_case

    src = zarr.open_group(local_build, mode="r")["spleen/spleen_2"]
    arrays = {name: src[name][...] for name in ("image", "label", "foreground")}
    url = s3.url("one-case")
    caplog.set_level(logging.WARNING, logger="med3d.retry")
    with s3.via_proxy(AWS_MAX_ATTEMPTS="1") as proxy:
        proxy.arm(1.0, 10_000, per_key=1)  # every distinct request fails once with 503, then gets through
        root = open_root(url)
        write_case(root, "spleen/spleen_2", arrays["image"], arrays["label"], arrays["foreground"],
                   {"note": "retried"}, PrepConfig(), {"params_hash": "x"})
        # Some faults meet s3fs's own fallbacks (a failed HEAD becomes a listing) before ours: not one retry each.
        assert sum(proxy.faults.values()) >= 20 and len(caplog.records) >= 20

        proxy.arm(1.0, 10_000, per_key=1)
        with pytest.raises(OSError):  # the control: zarr-python alone gives up at the first 503
            zarr.open_array(f"{url}/spleen/spleen_2/image", mode="r")[...]
        proxy.arm(1.0, 10_000, per_key=1)
        caplog.clear()
        for name, want in arrays.items():
            reader = ChunkedArrayReader(f"{url}/spleen/spleen_2/{name}")
            assert not reader.direct
            got = reader.read_all()
            assert got.dtype == want.dtype and np.array_equal(got, want), name
        assert sum(proxy.faults.values()) >= 6 and len(caplog.records) >= 6


@pytest.mark.slow
def test_build_and_pretraining_finish_identically_behind_failing_requests(
        s3: S3, dask_scheduler, sample_cases, local_build, bucket_build, local_pretrain, tmp_path):
    """A fifth of the requests answered 503 or dropped (bounded in number, none failed twice): the
    dask build (one domain, to stay quick) equals the local build and pretraining streamed from the bucket
    equals the local run, loss for loss and weight for weight."""
    from pipeline.config import PrepConfig
    from pipeline.job import build

    domains = ("spleen",)
    url = s3.url("faulty")
    with s3.via_proxy() as proxy:
        # Bounded: each fault costs the backend's own retry wait (botocore: up to 1 s at the first retry).
        proxy.arm(0.2, 8, seed=1, reset_share=0.25, per_key=1)
        result = build([d for d in sample_cases if d[0].name in domains], url, PrepConfig(),
                       scheduler=dask_scheduler, progress=False, log=lambda s: None,
                       storage_options={"endpoint_url": proxy.url})  # the dask workers' way to the proxy
        assert result.ok and result.converted == 5, result.summary()
        assert sum(proxy.faults.values()) == 8 and proxy.faults["reset"] > 0
        proxy.arm(0.2, 4, seed=2, reset_share=0.25, per_key=1)
        run = tiny_pretrain(bucket_build, tmp_path / "faulty")
        assert sum(proxy.faults.values()) == 4
    local = {k: v for k, v in store_arrays(local_build).items() if k.split("/")[0] in domains}
    assert_same_arrays(local, store_arrays(url))
    want = load_catalog(local_build)
    assert load_catalog(url).equals(want[want["domain"].isin(domains)].reset_index(drop=True))
    assert train_losses(run.run_dir) == train_losses(local_pretrain.run_dir)
    ref = local_pretrain.net.state_dict()
    for key, value in run.net.state_dict().items():
        assert torch.equal(value, ref[key]), key
