"""Patch reads and loader throughput from a loopback S3 bucket next to the local store (``loader.py --s3``).

The store's cases are written, by the pipeline's writer, into a bucket of a moto S3 server on 127.0.0.1 (the
server of the tests, ``tests/scale/s3_loopback.py``) once with raw image chunks (Blosc level 0, the default) and
once with ``lz4hc:5``, and into local folders with the same two codecs. The same seeded 128³ patches are read from
all four, and ``make_loader`` runs on each with 0 and 2 workers.

What this measures is the client's cost per request (zarr-python + s3fs + botocore; each 128³ patch is 27 chunk
GETs of 64³) and the bytes each codec puts through the connection, on a server that answers from memory: a real
bucket adds its first-byte latency (tens of ms) and a bandwidth limit per connection, which scale with the bytes,
so the byte column is the one to carry over. Needs the test extra (``pip install -e '.[test]'``: moto, s3fs).
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from catalog.store_format import IMAGE, META_FILE  # noqa: E402

CODECS = {"raw (default)": ("raw", 0, "byte"), "lz4hc:5": ("lz4hc", 5, "byte")}


def _moto():
    """A moto S3 server on loopback with the environment pointing every S3 client at it; the server's handle."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "scale"))
    from s3_loopback import MotoServer

    server = MotoServer()
    os.environ.update({"AWS_ACCESS_KEY_ID": "loopback-bench", "AWS_SECRET_ACCESS_KEY": "loopback-bench",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL_S3": server.url})
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    s3fs.S3FileSystem().mkdir("med3d-bench")
    return server


def _bucket_bytes(url: str) -> int:
    import fsspec

    fs, path = fsspec.core.url_to_fs(url)
    return int(sum(size for key, size in fs.du(path, total=False).items() if f"/{IMAGE}/" in key))


def _local_bytes(store: str) -> int:
    total = 0
    for folder, _, names in os.walk(store):
        if f"{os.sep}{IMAGE}{os.sep}" in folder + os.sep:
            total += sum(os.path.getsize(os.path.join(folder, n)) for n in names if n != META_FILE)
    return total


def s3_table(store: str, index, positions, n: int, work: Path) -> None:
    """Print the local-versus-bucket table for raw and lz4hc image chunks (see the module doc)."""
    from loader_reads import direct_fn, loader_rate, measure, rewrite

    try:
        server = _moto()
    except ImportError as exc:
        print(f"\n--s3 needs the test extra (pip install -e '.[test]'): {exc}")
        return
    try:
        variants = {}
        for label, codec in CODECS.items():
            local = str(work / f"s3bench_local_{codec[0]}")
            variants[("local", label)] = (local, rewrite(store, index, local, (64, 64, 64), codec))
            url = f"s3://med3d-bench/{codec[0]}"
            t = time.perf_counter()
            variants[("S3", label)] = (url, rewrite(store, index, url, (64, 64, 64), codec))
            print(f"  wrote {url} in {time.perf_counter() - t:.1f} s", flush=True)
        few = positions[: max(4, n // 2)]
        reads = measure({k: direct_fn(v[0]) for k, v in variants.items()}, few)
        print(f"\nPatch reads from a loopback S3 bucket (moto on 127.0.0.1) and from local folders, the same "
              f"{len(few)} random 128³ patches (27 chunks of 64³ each); loaders with batch 2, {n} batches. "
              f"Load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores.\n")
        print("| where | image chunks | image MiB | patch read median / p90 / CPU ms | loader 0 workers, patches/s "
              "| loader 2 workers, patches/s |\n|---|---|---|---|---|---|")
        for (where, label), (path, vindex) in variants.items():
            nbytes = _bucket_bytes(path) if where == "S3" else _local_bytes(path)
            med, p90, cpu = reads[(where, label)]
            r0 = loader_rate(path, vindex, 0, n)
            r2 = loader_rate(path, vindex, 2, n)
            print(f"| {where} | {label} | {nbytes / 2**20:.1f} | {med:.1f} / {p90:.1f} / {cpu:.1f} | {r0:.1f} "
                  f"| {r2:.1f} |", flush=True)
    finally:
        server.stop()
