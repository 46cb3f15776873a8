"""Patch-read latency and DataLoader throughput from a Med3D store, against zarr-python and the NIfTI sources.

    python benchmarks/loader.py [--store PATH] [--n 50] [--workdir DIR] [--keep] [--s3]

Without ``--store`` it writes three CT-like phantoms of about 256×320×320 voxels (int16 HU: body, lungs, liver
with a tumour, spine, smooth texture, white scanner noise of 20 HU in soft tissue and up to 35 HU in air as in
the bench sample CTs, -2048 padding outside a circular field of view) as .nii.gz and .nii, and builds a store
from the .nii.gz files with ``pipeline.job.build`` and the default PrepConfig.
Then, on the same seeded random 128³ patch positions:

1. per-patch latency (median / p90 / CPU ms, one channel, float16): our direct chunk reader and zarr-python's
   slicing on the default store (raw image chunks), and the NIfTI sources
   (SimpleITK full read of .nii.gz + slice; SimpleITK streaming extract of .nii; numpy memmap of .nii, which
   is what nibabel does). NIfTI rows are raw HU: they skip the normalization the store
   already holds, so they are lower bounds for a NIfTI-based loader.
2. loader throughput (patches/s) of ``model.data.make_loader`` with 0, 1 and 2 workers, batch 2 of 128³.
3. image codecs (:data:`CODECS`: raw, or a Blosc codec, level, byte or bit shuffle): encode and decode ms
   per 64³ chunk and compressed size on the z-scored float16 chunks of full-size bench CTs (``med3d-prep sample --size bench``:
   512×512×120 with realistic noise; built once from ``--bench-data`` or read from ``--bench-store``), and the
   random patch read / 2-worker loader throughput on the store above rewritten with each codec by
   ``pipeline.store.write_case``; then chunk shapes with the default codec (bytes, chunk files, reads).

Files are freshly written, so reads come from a warm page cache: the figures are CPU costs, not disk costs.
Methods are interleaved patch by patch and CPU time is reported beside wall time, so that other processes on a
shared machine skew the comparison less; the loader rows are wall-clock and carry the load average.
"""
from __future__ import annotations

import argparse
import os
import shutil
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from catalog.store_format import IMAGE, case_array_path, chunk_files  # noqa: E402
from loader_reads import PATCH, direct_fn, loader_rate, measure, rewrite, zarr_fn  # noqa: E402

SHAPES = [(256, 320, 320), (240, 320, 304), (272, 304, 320)]
#: Blosc candidates (codec, level, shuffle) compared on noisy CT: encode / decode per chunk, size, patch reads.
#: ("raw", 0, ...) is Blosc level 0: frames that hold the chunk's bytes as they are (the default for images).
CODECS = [("raw", 0, "byte"), ("lz4hc", 5, "byte"), ("lz4hc", 1, "byte"), ("lz4", 5, "byte"), ("lz4", 5, "bit"),
          ("zstd", 1, "byte"), ("zstd", 3, "bit"), ("blosclz", 5, "byte")]
#: Chunk shapes compared with the default codec.
CHUNK_SHAPES = [(64, 64, 64), (32, 32, 32), (64, 128, 128)]


def phantom(shape: tuple[int, int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A CT-like volume (int16 HU, (Z, Y, X)) and its label (uint8: 1 liver, 2 tumour)."""
    import torch

    rng = np.random.default_rng(seed)
    Z, Y, X = shape
    z = np.linspace(-1, 1, Z, dtype=np.float32)[:, None, None]
    y = np.linspace(-1, 1, Y, dtype=np.float32)[None, :, None]
    x = np.linspace(-1, 1, X, dtype=np.float32)[None, None, :]
    j = rng.uniform(-0.05, 0.05, 8).astype(np.float32)

    def ellipsoid(c, r):
        return ((z - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((x - c[2]) / r[2]) ** 2 < 1

    hu = np.full(shape, -1000.0, np.float32)
    hu[np.broadcast_to(((y - j[0]) / 0.75) ** 2 + ((x - j[1]) / 0.9) ** 2 < 1, shape)] = 40.0
    for side in (-0.45, 0.45):
        hu[ellipsoid((-0.55 + j[2], -0.1, side), (0.45, 0.45, 0.3))] = -850.0
    liver = ellipsoid((0.25 + j[3], 0.0, -0.35 + j[4]), (0.35, 0.4, 0.35))
    tumour = ellipsoid((0.3 + j[5], 0.05, -0.4), (0.08, 0.08, 0.08))
    hu[liver] = 60.0
    hu[tumour] = 30.0
    hu[np.broadcast_to(((y - 0.55) / 0.08) ** 2 + (x / 0.08) ** 2 < 1, shape)] = 400.0
    # Scanner noise as in the bench sample CTs (pipeline.sample.phantom.CT_NOISE_SD): 20 HU in soft tissue,
    # 25 in bone, 30 in lung, 35 in the air around the body; white Gaussian, the hardest case for a codec.
    sd = np.select([hu < -900, hu < -500, hu > 300], [35.0, 30.0, 25.0], 20.0).astype(np.float32)
    coarse = torch.from_numpy(rng.standard_normal((1, 1, Z // 16, Y // 16, X // 16)).astype(np.float32))
    texture = torch.nn.functional.interpolate(coarse, size=shape, mode="trilinear")[0, 0].numpy()
    hu += np.where(hu > -900, 20.0 * texture, 0.0)
    hu += rng.standard_normal(shape, dtype=np.float32) * sd
    np.maximum(hu, -1024.0, out=hu)  # scanners clip at -1024 HU
    hu[np.broadcast_to(y ** 2 + x ** 2 > 1.0, shape)] = -2048.0  # outside the scanner's field of view
    label = liver.astype(np.uint8)
    label[tumour] = 2
    return hu.astype(np.int16), label


def write_sources(workdir: Path) -> tuple[list, object]:
    import SimpleITK as sitk

    from pipeline.config import Case, DomainSpec

    spec = DomainSpec(name="bench_ct", source_dataset="phantom", modality="CT", channel_names=("CT",),
                      labels={0: "background", 1: "liver", 2: "tumour"})
    cases = []
    for i, shape in enumerate(SHAPES):
        hu, label = phantom(shape, seed=i)
        paths = {}
        for name, arr in (("image", hu), ("label", label)):
            img = sitk.GetImageFromArray(arr)
            for ext in (".nii.gz", ".nii"):
                paths[name + ext] = str(workdir / f"case{i}_{name}{ext}")
                sitk.WriteImage(img, paths[name + ext])
        cases.append(Case(domain=spec.name, case_id=f"case{i}", scan_id=f"phantom:{i}", patient_id=f"p{i}",
                          images=(paths["image.nii.gz"],), label=paths["label.nii.gz"]))
        print(f"  wrote case{i} {shape}", flush=True)
    return cases, spec


def patch_positions(index, n: int, seed: int) -> list[tuple[object, tuple[int, int, int]]]:
    """n (case, start) pairs with the 128³ box inside the volume (volumes smaller than the patch are skipped)."""
    rng = np.random.default_rng(seed)
    cases = [c for cs in index.cases.values() for c in cs if all(s >= p for s, p in zip(c.shape, PATCH))]
    out = []
    for _ in range(n):
        case = cases[int(rng.integers(len(cases)))]
        out.append((case, tuple(int(rng.integers(0, s - p + 1)) for s, p in zip(case.shape, PATCH))))
    return out


def nifti_fns(sources: dict[str, str]) -> dict[str, Callable]:
    """Readers of the raw sources (store path -> .nii.gz); .nii siblings are used when they exist."""
    import SimpleITK as sitk

    def gz_full(case, start):
        img = sitk.ReadImage(sources[case.store_path])  # keep a reference: the view does not own the buffer
        z, y, x = start
        return np.array(sitk.GetArrayViewFromImage(img)[z:z + PATCH[0], y:y + PATCH[1], x:x + PATCH[2]], np.float32)

    def nii_stream(case, start):
        reader = sitk.ImageFileReader()
        reader.SetFileName(sources[case.store_path].removesuffix(".gz"))
        reader.SetExtractIndex([int(v) for v in reversed(start)])
        reader.SetExtractSize(list(reversed(PATCH)))
        return sitk.GetArrayFromImage(reader.Execute()).astype(np.float32)

    maps = {}

    def nii_memmap(case, start):
        path = sources[case.store_path].removesuffix(".gz")
        if path not in maps:
            with open(path, "rb") as fh:
                hdr = fh.read(348)
            dims = struct.unpack("<8h", hdr[40:56])
            dtype = {4: np.int16, 2: np.uint8, 16: np.float32}[struct.unpack("<h", hdr[70:72])[0]]
            offset = int(struct.unpack("<f", hdr[108:112])[0])
            maps[path] = np.memmap(path, dtype=np.dtype(dtype).newbyteorder("<"), mode="r", offset=offset,
                                   shape=(dims[3], dims[2], dims[1]))
        z, y, x = start
        return np.array(maps[path][z:z + PATCH[0], y:y + PATCH[1], x:x + PATCH[2]], np.float32)

    fns = {"NIfTI .nii.gz, SimpleITK full read + slice": gz_full}
    if all(os.path.exists(p.removesuffix(".gz")) and p.endswith(".gz") for p in sources.values()):
        fns["NIfTI .nii, SimpleITK streaming extract"] = nii_stream
        fns["NIfTI .nii, numpy memmap (nibabel's way)"] = nii_memmap
    return fns


def item_cost(store: str, index, n_batches: int) -> tuple[float, float]:
    """(wall ms, CPU ms) per patch of ``PretrainStream.batch`` in this process: sampling, image + label reads,
    float32 / int64 tensors (whose first touch of fresh memory is part of the cost)."""
    from model.data import PatchConfig, PretrainStream

    stream = PretrainStream(store, index, PatchConfig(patch=PATCH, batch=2, seed=1))
    stream.batch(0)
    c, t = time.process_time(), time.perf_counter()
    for step in range(1, n_batches + 1):
        stream.batch(step)
    n = 2 * n_batches
    return (time.perf_counter() - t) / n * 1e3, (time.process_time() - c) / n * 1e3


def bench_ct_chunks(bench_store: str | None, data: Path, work: Path, n_cases: int, chunk=(64, 64, 64)):
    """64³ chunks of z-scored float16 CT from the bench sample (512×512×120 with realistic scanner noise), as
    the store holds them: edge chunks padded with the fill value 0. From ``bench_store`` when given (a store of
    those CTs, e.g. ``prep.py --keep``), else the first ``n_cases`` bench cases are built into ``work``."""
    import zarr

    from pipeline.config import PrepConfig
    from pipeline.job import build
    from pipeline.sources.msd import scan_msd

    if bench_store is None:
        if not (data / "msd" / "Task03_Liver" / "dataset.json").exists():
            from pipeline.sample.msd import write_msd_sample

            print(f"writing 8 full-size CT cases to {data / 'msd'} (once)...", flush=True)
            write_msd_sample(data / "msd", seed=0, size="bench", tasks=["Task03_Liver"])
        found, _ = scan_msd(data / "msd", ["Task03_Liver"])
        spec, cases = found[0]
        bench_store = str(work / "bench_ct_store")
        res = build([(spec, [c for c in cases if c.label][:n_cases])], bench_store, PrepConfig(val_fraction=0.0),
                    workers=0, progress=False, log=lambda s: None)
        if not res.ok:
            raise SystemExit(res.summary())
    root = zarr.open_group(bench_store, mode="r")
    paths = sorted(f"{d}/{c}" for d in root.group_keys() for c in root[d].group_keys())[:n_cases]
    chunks = []
    for path in paths:
        image = root[path][IMAGE][0]
        image = np.pad(image, [(0, -n % c) for n, c in zip(image.shape, chunk)])
        for z, y, x in np.ndindex(*(n // c for n, c in zip(image.shape, chunk))):
            chunks.append(np.ascontiguousarray(image[z * chunk[0]:(z + 1) * chunk[0], y * chunk[1]:(y + 1) * chunk[1],
                                                     x * chunk[2]:(x + 1) * chunk[2]]))
    return paths, chunks


def codec_costs(chunks: list[np.ndarray], codecs, decodes: int = 5) -> dict[tuple, tuple[float, float, float]]:
    """(median encode ms, median decode ms, compressed / raw bytes) per codec over ``chunks``, one Blosc thread,
    codecs interleaved chunk by chunk (so load from other processes hits them alike): one encode and
    ``decodes`` decodes of each chunk."""
    import numcodecs
    import numcodecs.blosc

    numcodecs.blosc.use_threads = False  # as in a dask worker thread or a DataLoader worker
    shuffles = {"byte": numcodecs.Blosc.SHUFFLE, "bit": numcodecs.Blosc.BITSHUFFLE}
    blosc = {c: numcodecs.Blosc(cname="lz4" if c[0] == "raw" else c[0], clevel=c[1], shuffle=shuffles[c[2]])
             for c in codecs}
    enc: dict[tuple, list[float]] = {c: [] for c in codecs}
    dec: dict[tuple, list[float]] = {c: [] for c in codecs}
    blobs: dict[tuple, list[bytes]] = {c: [] for c in codecs}
    for chunk in chunks:
        for c, codec in blosc.items():
            t = time.perf_counter()
            blobs[c].append(codec.encode(chunk))
            enc[c].append(time.perf_counter() - t)
    buf = np.empty(chunks[0].size, chunks[0].dtype)
    for _ in range(decodes):
        for i in range(len(chunks)):
            for c, codec in blosc.items():
                t = time.perf_counter()
                codec.decode(blobs[c][i], out=buf)
                dec[c].append(time.perf_counter() - t)
    raw = sum(c.nbytes for c in chunks)
    return {c: (float(np.median(enc[c]) * 1e3), float(np.median(dec[c]) * 1e3),
                sum(map(len, blobs[c])) / raw) for c in codecs}


def image_bytes(store: str, index) -> tuple[int, int]:
    """Stored bytes and chunk files of the image arrays."""
    total = files = 0
    for cs in index.cases.values():
        for c in cs:
            chunks = list(chunk_files(case_array_path(store, c.store_path, IMAGE)))
            files += len(chunks)
            total += sum(os.path.getsize(path) for path in chunks)
    return total, files


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", help="an existing store (default: write a phantom store)")
    ap.add_argument("--n", type=int, default=50, help="random patches per method (and batches per loader run)")
    ap.add_argument("--workdir", type=Path, help="where to write phantoms and stores (default: a temp folder)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    ap.add_argument("--cases", type=int, default=3, help="with --store: use this many of its largest cases")
    ap.add_argument("--bench-store", help="codec table: a store built from the bench CTs (default: build "
                    "--bench-cases of them from --bench-data)")
    ap.add_argument("--bench-data", type=Path, default=Path("data/bench"),
                    help="where `med3d-prep sample --size bench` CTs are (written there once if missing)")
    ap.add_argument("--bench-cases", type=int, default=2, help="bench CT cases whose chunks the codecs encode")
    ap.add_argument("--codecs-only", action="store_true", help="print only the codec and chunk-shape tables")
    ap.add_argument("--s3", action="store_true", help="print only the table of patch reads from a loopback S3 "
                    "bucket (moto) next to local folders, raw and lz4hc image chunks (benchmarks/loader_s3.py)")
    args = ap.parse_args()

    import numcodecs.blosc
    import torch

    from catalog import load_catalog
    from model.data import StoreIndex

    numcodecs.blosc.set_nthreads(1)  # one core per reader, as in a DataLoader worker
    torch.set_num_threads(1)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="med3d-loader-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        store = args.store
        if store is None:
            from pipeline.config import PrepConfig
            from pipeline.job import build

            print(f"writing {len(SHAPES)} phantoms to {work}", flush=True)
            cases, spec = write_sources(work)
            store = str(work / "store")
            t = time.perf_counter()
            res = build([(spec, cases)], store, PrepConfig(val_fraction=0.0), workers=0, progress=False,
                        log=lambda s: None)
            if not res.ok:
                raise SystemExit(res.summary())
            print(f"  built {store} in {time.perf_counter() - t:.0f} s", flush=True)
        index = StoreIndex.from_store(store, "train")
        big = sorted((c for cs in index.cases.values() for c in cs), key=lambda c: -int(np.prod(c.shape)))
        keep = {c.store_path for c in big[: args.cases]}
        index = StoreIndex(store=store, split="train", num_classes=index.num_classes,
                           cases={d: tuple(c for c in cs if c.store_path in keep)
                                  for d, cs in index.cases.items() if any(c.store_path in keep for c in cs)})
        cat = load_catalog(store).set_index("store_path")
        sources = {c.store_path: cat.loc[c.store_path, "source_image"] for cs in index.cases.values() for c in cs}
        positions = patch_positions(index, args.n, seed=0)
        meta = __import__("zarr").open_array(case_array_path(store, positions[0][0].store_path, IMAGE), mode="r")
        print(f"\nstore {store}: {len(index)} training cases; image chunks {meta.chunks}, {meta.dtype}; "
              f"{os.cpu_count()} cores; {args.n} random {PATCH} patches per row\n")
        if args.s3:
            from loader_s3 import s3_table

            s3_table(store, index, positions, args.n, work)
            return

        fns = {f"direct chunk reader (catalog.chunk_read), images {_codec_name(store, positions)}":
               direct_fn(store),
               "zarr-python 3.1 slicing (its default thread pool)": zarr_fn(store)}
        every = {}
        if all(os.path.exists(p) for p in sources.values()):
            for name, fn in nifti_fns(sources).items():
                fns[name] = fn
                if "full read" in name:
                    every[name] = max(1, args.n // 5)
        else:
            print("NIfTI sources not found: their rows are skipped")
        if not _has("nibabel"):
            print("nibabel is not installed: the numpy memmap row reads .nii the way nibabel does")
        if not args.codecs_only:
            print("| read one 128³ patch (float16 / int16 HU) | median ms | p90 ms | median CPU ms |\n"
                  "|---|---|---|---|")
            for name, (med, p90, cpu) in measure(fns, positions, every).items():
                n = len(positions[::every.get(name, 1)])
                print(f"| {name}{f' ({n} patches)' if n < len(positions) else ''} | {med:.2f} | {p90:.2f} "
                      f"| {cpu:.2f} |")

            print(f"\n| DataLoader (make_loader, batch 2 of 128³, fg 1/3), load average {os.getloadavg()[0]:.1f} "
                  "| patches/s |\n|---|---|")
            for w in (0, 1, 2):
                print(f"| {w} worker{'s' if w != 1 else ''} | {loader_rate(store, index, w, args.n):.1f} |",
                      flush=True)
            wall, cpu = item_cost(store, index, args.n)
            print(f"\none PretrainStream item in-process (image + label, float32 + int64): {wall:.2f} ms wall, "
                  f"{cpu:.2f} ms CPU per patch")

        from pipeline.config import PrepConfig

        default = PrepConfig()
        default_codec = ("raw", 0, "byte") if default.image_codec == "raw" else \
            (default.image_codec, default.clevel, "byte")
        codecs = CODECS if default_codec in CODECS else [default_codec, *CODECS]
        print(f"\ncodecs: encoding the chunks of {args.bench_cases} bench CT case(s)...", flush=True)
        paths, chunks = bench_ct_chunks(args.bench_store, args.bench_data, work, args.bench_cases)
        costs = codec_costs(chunks, codecs)
        per_case = len(chunks) / len(paths)

        raw = sum(int(np.prod(c.shape)) * 2 for cs in index.cases.values() for c in cs)
        variants = {}
        for chunk_shape, codec in [((64, 64, 64), c) for c in codecs] + \
                [(s, default_codec) for s in CHUNK_SHAPES if s != (64, 64, 64)]:
            vstore = str(work / f"store_{'_'.join(map(str, codec))}_{'x'.join(map(str, chunk_shape))}")
            variants[(chunk_shape, codec)] = (vstore, rewrite(store, index, vstore, chunk_shape, codec))
        direct = measure({k: direct_fn(v[0]) for k, v in variants.items()}, positions)
        via_zarr = measure({k: zarr_fn(v[0]) for k, v in variants.items()}, positions[: max(2, args.n // 2)])
        rates = {k: loader_rate(v[0], v[1], 2, args.n) for k, v in variants.items()}

        print(f"\nBlosc codecs on z-scored float16 64³ chunks of noisy CT ({len(chunks)} chunks of {len(paths)} "
              f"bench case(s), {', '.join(p.rsplit('/', 1)[-1] for p in paths)}; one Blosc thread; medians of "
              f"{len(chunks)} encodes and {5 * len(chunks)} decodes). Patch reads: the store above rewritten with "
              f"each codec, chunks 64³. Load average {os.getloadavg()[0]:.1f}.\n")
        print("| Blosc (codec:level shuffle) | encode ms / chunk | encode s / bench case | decode ms / chunk "
              "| size vs float16 | patch read direct median / p90 / CPU ms | zarr median ms "
              "| loader 2 workers, patches/s |\n|---|---|---|---|---|---|---|---|")
        for codec in codecs:
            e, d, ratio = costs[codec]
            med, p90, cpu = direct[((64, 64, 64), codec)]
            mark = " (default)" if codec == default_codec else ""
            print(f"| {codec[0]}:{codec[1]} {codec[2]}{mark} | {e:.2f} | {e * per_case / 1e3:.2f} | {d:.3f} | "
                  f"{ratio:.3f} | {med:.2f} / {p90:.2f} / {cpu:.2f} | {via_zarr[((64, 64, 64), codec)][0]:.2f} "
                  f"| {rates[((64, 64, 64), codec)]:.1f} |", flush=True)

        print(f"\nChunk shapes with the default image codec ({default_codec[0]}:{default_codec[1]}), "
              "on the store above:\n")
        print("| chunks (z, y, x) | image MiB | vs float16 | chunk files | direct median / p90 / CPU ms "
              "| zarr median ms | loader 2 workers, patches/s |\n|---|---|---|---|---|---|---|")
        for (chunk_shape, codec), (vstore, vindex) in variants.items():
            if codec != default_codec:
                continue
            nbytes, files = image_bytes(vstore, vindex)
            med, p90, cpu = direct[(chunk_shape, codec)]
            print(f"| {chunk_shape} | {nbytes / 2**20:.1f} | {nbytes / raw:.2f} | {files} | "
                  f"{med:.2f} / {p90:.2f} / {cpu:.2f} | {via_zarr[(chunk_shape, codec)][0]:.2f} "
                  f"| {rates[(chunk_shape, codec)]:.1f} |", flush=True)
        print(f"\nload average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


def _codec_name(store: str, positions) -> str:
    import zarr

    conf = zarr.open_array(case_array_path(store, positions[0][0].store_path, IMAGE), mode="r").metadata.to_dict()
    blosc = conf["codecs"][-1].get("configuration", {})
    return "raw (Blosc level 0)" if blosc.get("clevel") == 0 else f"{blosc.get('cname')}:{blosc.get('clevel')}"


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


if __name__ == "__main__":
    main()
