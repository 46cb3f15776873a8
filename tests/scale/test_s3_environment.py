"""The object-store tests do not depend on the caller's environment: an ``FSSPEC_S3_ENDPOINT_URL``, an
``AWS_PROFILE``, an AWS or fsspec config file or an HTTP proxy set in the user's shell must not steer the
loopback S3 clients elsewhere, in this process or in the processes the tests start (the ``s3`` fixture)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from scale_helpers import BUCKET, S3, SHARED_FIXTURES

pytestmark = SHARED_FIXTURES

ROOT = Path(__file__).resolve().parents[2]
NOWHERE = "http://127.0.0.1:9"
"""The discard port on loopback: nothing answers there, so a client sent there fails."""


def test_the_bucket_is_reached_from_this_process_and_a_child(s3: S3):
    import s3fs
    import zarr

    s3fs.S3FileSystem().pipe(f"{BUCKET}/env/probe.txt", b"loopback")
    zarr.create_array(s3.url("env/z"), shape=(4,), dtype="uint8", fill_value=7, zarr_format=3)
    child = subprocess.run(
        [sys.executable, "-c", "import s3fs, zarr; import sys; "
         f"print(s3fs.S3FileSystem().cat('{BUCKET}/env/probe.txt').decode(), "
         f"int(zarr.open_array('{s3.url('env/z')}', mode='r')[...].sum()))"],
        capture_output=True, text=True, timeout=120)
    assert child.returncode == 0 and child.stdout.split() == ["loopback", "28"], child.stderr[-2000:]


def test_the_s3_fixture_ignores_the_callers_environment(tmp_path):
    """The test above, run by a pytest started with every way an environment can point S3 clients elsewhere."""
    conf = tmp_path / "fsspec"
    conf.mkdir()
    (conf / "s3.json").write_text('{"s3": {"endpoint_url": "%s", "key": "wrong", "secret": "wrong"}}' % NOWHERE)
    aws_config = tmp_path / "aws_config"
    aws_config.write_text(f"[default]\nendpoint_url = {NOWHERE}\nregion = mars-north-1\n"
                          f"[profile nope]\nendpoint_url = {NOWHERE}\n")
    aws_creds = tmp_path / "aws_credentials"
    aws_creds.write_text("[default]\naws_access_key_id = wrong\naws_secret_access_key = wrong\n")
    hostile = {"FSSPEC_S3_ENDPOINT_URL": NOWHERE, "FSSPEC_S3": '{"key": "wrong"}', "FSSPEC_CONFIG_DIR": str(conf),
               "AWS_PROFILE": "nope", "AWS_DEFAULT_PROFILE": "nope", "AWS_ENDPOINT_URL": NOWHERE,
               "AWS_ENDPOINT_URL_S3": NOWHERE, "AWS_CONFIG_FILE": str(aws_config),
               "AWS_SHARED_CREDENTIALS_FILE": str(aws_creds), "AWS_DEFAULT_REGION": "mars-north-1",
               "AWS_REGION": "mars-north-1", "AWS_ACCESS_KEY_ID": "wrong", "AWS_SECRET_ACCESS_KEY": "wrong",
               "AWS_SESSION_TOKEN": "wrong", "AWS_MAX_ATTEMPTS": "1", "MED3D_RETRY_TRIES": "1",
               "HTTP_PROXY": NOWHERE, "http_proxy": NOWHERE, "HTTPS_PROXY": NOWHERE, "ALL_PROXY": NOWHERE}
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=",
         f"{Path(__file__).relative_to(ROOT)}::test_the_bucket_is_reached_from_this_process_and_a_child"],
        cwd=ROOT, env={**os.environ, **hostile}, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "1 passed" in res.stdout, res.stdout[-3000:] + res.stderr[-2000:]
