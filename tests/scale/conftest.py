"""Session fixtures of the object-store tests: a moto S3 server and a fault proxy on loopback, a real local dask
cluster, the tiny 3DSeg-8 sample and its local build.

Credentials and the endpoint reach every client the way they reach a user's: through the backend's environment
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL_S3``), set here for the session and inherited by
the dask workers. The endpoint is the server itself; :meth:`S3.via_proxy` points this process at the fault proxy
(dask workers get it as the build's ``storage_options``). Whatever the caller's environment says about S3 (an
``FSSPEC_S3_ENDPOINT_URL``, an ``AWS_PROFILE``, config files, proxies) is removed first
(:func:`isolate_s3_environment`), so the tests measure the project, not the shell they were started from.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from s3_loopback import FaultProxy, MotoServer
from scale_helpers import BUCKET, S3, SECRET, forget_s3_clients, tiny_pretrain


_CALLER_PREFIXES = ("AWS_", "FSSPEC_", "BOTO_", "MED3D_RETRY_")
"""Environment variables that steer S3 clients (endpoint, profile, region, credentials, config files, retries):
botocore reads ``AWS_*`` and ``BOTO_CONFIG``, fsspec turns ``FSSPEC_<PROTOCOL>_<ARG>`` into default arguments of
every filesystem, our retry layer reads ``MED3D_RETRY_*``."""
_PROXIES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


def isolate_s3_environment(mp: pytest.MonkeyPatch, empty_dir: Path) -> None:
    """Make this process and the processes it starts from now on ignore the caller's S3 settings: drop every
    variable of :data:`_CALLER_PREFIXES` and the HTTP proxies (the server is on loopback), point botocore's and
    fsspec's config files at ``empty_dir`` (so ``~/.aws`` and ``~/.config/fsspec`` are not read either), and
    empty fsspec's configuration, which fsspec read from the environment when it was imported."""
    import fsspec.config

    for key in list(os.environ):
        if key.upper().startswith(_CALLER_PREFIXES) or key.upper() in _PROXIES:
            mp.delenv(key)
    mp.setenv("AWS_CONFIG_FILE", str(empty_dir / "aws_config"))  # absent files: no profile, no endpoint
    mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty_dir / "aws_credentials"))
    mp.setenv("FSSPEC_CONFIG_DIR", str(empty_dir))
    mp.setattr(fsspec.config, "conf", {})


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """The loopback S3 server and fault proxy, with this session's environment isolated from the caller's (set
    before the server starts, so it and every process started later inherit it)."""
    with pytest.MonkeyPatch.context() as mp:
        isolate_s3_environment(mp, tmp_path_factory.mktemp("no_s3_config"))
        moto = MotoServer()
        proxy = FaultProxy(("127.0.0.1", moto.port))
        for key, value in {"AWS_ACCESS_KEY_ID": "loopback-test", "AWS_SECRET_ACCESS_KEY": SECRET,
                           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL_S3": moto.url,
                           "MED3D_RETRY_WAIT_S": "0.01"}.items():
            mp.setenv(key, value)
        forget_s3_clients()
        import s3fs

        s3fs.S3FileSystem().mkdir(BUCKET)
        try:
            yield S3(moto, proxy)
        finally:
            forget_s3_clients()
            proxy.stop()
            moto.stop()


@pytest.fixture(scope="session")
def dask_scheduler(s3):
    """A real dask cluster: a scheduler and two single-threaded worker processes on loopback (started after the
    S3 environment is set, which the workers inherit)."""
    from pipeline.executor import local_cluster

    with local_cluster(2, 2 * 2**30) as cluster:
        yield cluster.scheduler_address


@pytest.fixture(scope="session")
def sample_cases(tmp_path_factory):
    """The tiny 3DSeg-8 sample (8 MSD tasks) as scanned cases."""
    from pipeline.sample import write_msd_sample
    from pipeline.sources.msd import scan_msd

    raw = tmp_path_factory.mktemp("sample_raw")
    write_msd_sample(raw, seed=0, size="tiny")
    found, missing = scan_msd(raw)
    assert missing == []
    return found


@pytest.fixture(scope="session")
def local_build(sample_cases, tmp_path_factory) -> str:
    """The sample built into a local folder in this process: the reference of every bucket build."""
    from pipeline.config import PrepConfig
    from pipeline.job import build

    store = str(tmp_path_factory.mktemp("local_build") / "store")
    result = build(sample_cases, store, PrepConfig(), workers=0, progress=False, log=lambda s: None)
    assert result.ok and result.converted == 45, result.summary()
    return store


@pytest.fixture(scope="session")
def bucket_build(s3, dask_scheduler, sample_cases) -> str:
    """The sample built into the bucket by the dask cluster: its URL."""
    from pipeline.config import PrepConfig
    from pipeline.job import build

    url = s3.url("clean")
    result = build(sample_cases, url, PrepConfig(), scheduler=dask_scheduler, progress=False, log=lambda s: None)
    assert result.ok and result.converted == 45, result.summary()
    return url


@pytest.fixture(scope="session")
def local_pretrain(local_build, tmp_path_factory):
    """:func:`tiny_pretrain` on the local build: the losses and weights every streamed run must reproduce."""
    return tiny_pretrain(local_build, tmp_path_factory.mktemp("local_pretrain") / "run")
