"""What ``loader.py`` and ``loader_s3.py`` both run: the patch readers (our direct chunk reader, zarr-python),
the interleaved timing of readers, the loader's throughput and the store rewritten with another codec."""
from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

PATCH = (128, 128, 128)

Timing = tuple[float, float, float]


def measure(fns: dict[str, Callable], positions, every: dict[str, int] | None = None) -> dict[str, Timing]:
    """(median ms, p90 ms, median CPU ms) per method, methods interleaved position by position so that load
    from other processes on a shared machine hits them alike. CPU time is the whole process's (all threads).
    ``every[name] = k`` times that method on every k-th position only (slow methods)."""
    every = every or {}
    for fn in fns.values():
        fn(*positions[0])  # warm-up: metadata, buffers, file cache
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for i, (case, start) in enumerate(positions):
        for name, fn in fns.items():
            if i % every.get(name, 1):
                continue
            c, t = time.process_time(), time.perf_counter()
            fn(case, start)
            wall[name].append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c)
    return {k: (float(np.median(wall[k]) * 1e3), float(np.percentile(wall[k], 90) * 1e3),
                float(np.median(cpu[k]) * 1e3)) for k in fns}


def direct_fn(store: str):
    from catalog.chunk_read import ChunkedArrayReader
    from catalog.store_format import IMAGE, case_array_path

    readers, buf = {}, np.empty((1, *PATCH), np.float16)

    def read(case, start):
        r = readers.get(case.store_path) or readers.setdefault(
            case.store_path, ChunkedArrayReader(case_array_path(store, case.store_path, IMAGE)))
        return r.read((0, *start), (1, *(s + p for s, p in zip(start, PATCH))), out=buf)
    return read


def zarr_fn(store: str):
    import zarr

    from catalog.store_format import IMAGE, case_array_path

    arrays = {}

    def read(case, start):
        a = arrays.get(case.store_path) or arrays.setdefault(
            case.store_path, zarr.open_array(case_array_path(store, case.store_path, IMAGE), mode="r"))
        z, y, x = start
        return a[0, z:z + PATCH[0], y:y + PATCH[1], x:x + PATCH[2]]
    return read


def loader_rate(store: str, index, workers: int, n_batches: int) -> float:
    from model.data import PatchConfig, make_loader

    cfg = PatchConfig(patch=PATCH, batch=2, seed=1)
    warm = 2 * max(workers, 1)
    it = iter(make_loader(store, index, cfg, start_step=0, num_steps=warm + n_batches, workers=workers))
    for _ in range(warm):
        next(it)
    t = time.perf_counter()
    count = sum(1 for _ in it)
    return count * cfg.batch / (time.perf_counter() - t)


def rewrite(src: str, index, out: str, chunks, codec: tuple[str, int, str]):
    """The store's cases rewritten with another chunk shape / codec (name, level, shuffle) by the pipeline's
    writer."""
    import zarr

    from catalog.store_format import FOREGROUND, IMAGE, LABEL
    from model.data import StoreIndex
    from pipeline.config import PrepConfig
    from pipeline.store import open_root, write_case

    import pipeline.store
    from zarr.codecs import BloscCodec

    cname, clevel, shuffle = codec
    if cname == "raw":
        cfg = PrepConfig(chunks=chunks, image_codec="raw")
    else:
        cfg = PrepConfig(chunks=chunks, image_codec=cname, codec=cname, clevel=clevel)
    # The store writes byte shuffle; other shuffles are written by swapping its compressor for this call.
    own = pipeline.store.compressor
    if shuffle != "byte":
        pipeline.store.compressor = lambda cfg, image=False: BloscCodec(
            cname=cname, clevel=clevel, shuffle={"byte": "shuffle", "bit": "bitshuffle"}[shuffle])
    try:
        root = open_root(out)
        for cs in index.cases.values():
            for c in cs:
                grp = zarr.open_group(f"{src}/{c.store_path}", mode="r")
                write_case(root, c.store_path, grp[IMAGE][...], grp[LABEL][...], grp[FOREGROUND][...],
                           None, cfg, marker={"benchmark": True})
    finally:
        pipeline.store.compressor = own
    return StoreIndex(store=out, split=index.split, cases=index.cases, num_classes=index.num_classes)
