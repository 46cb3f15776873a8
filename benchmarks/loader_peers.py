"""Our patch loader beside nnU-Net v2's and MONAI's, with the same sampling and the same augmentation (#22 item 2).

    python benchmarks/loader_peers.py [--data data/bench] [--work data/loader_peers] [--batches 12] [--repeat 3]
    python benchmarks/loader_peers.py --quick        # 2 cases, 64³ patches: a check that every column runs

Needs nnU-Net v2 and MONAI beside the project (they are not in its extras: nnunetv2's dependencies pull a CUDA
torch through timm -> torchvision). A separate environment that keeps the CPU torch:

    python3 -m venv /work/bench-venv && /work/bench-venv/bin/pip install torch==2.13.0
    /work/bench-venv/bin/pip install -e . psutil monai
    /work/bench-venv/bin/pip install --no-deps nnunetv2 batchgeneratorsv2 batchgenerators acvl-utils \\
        dynamic-network-architectures
    /work/bench-venv/bin/pip install scikit-image einops blosc2 connected-components-3d threadpoolctl future \\
        scikit-learn graphviz tifffile requests yacs seaborn imagecodecs
    /work/bench-venv/bin/python benchmarks/loader_peers.py

The same cases for all three: the full-size CT cases of ``benchmarks/prep.py`` (512x512x120 int16, written once
by ``med3d-prep sample --size bench``). What each loader starts from is what its users keep on disk:

- **med3d**: the store ``build-3dseg8`` writes (resampled to the domain's median spacing, z-scored float16, raw
  64³ chunks), read by ``model.data.patches.PretrainStream`` in a torch DataLoader, augmented in the workers by
  ``model.data.augment_affine`` (one resampling for rotation + scaling + mirroring, then brightness, contrast,
  gamma);
- **nnU-Net**: its ``3d_fullres`` preprocessed folder of the same cases (``nnUNetv2_plan_and_preprocess``),
  read by ``nnUNetDataLoader`` (the larger initial patch nnU-Net crops for rotation) with batchgeneratorsv2's
  SpatialTransform + MultiplicativeBrightness + Contrast + Gamma + Mirror, in ``NonDetMultiThreadedAugmenter``
  processes, as ``nnUNetTrainer`` does;
- **MONAI**: the NIfTI files, ``LoadImaged`` + ``EnsureChannelFirstd`` + ``ScaleIntensityRanged`` +
  ``FgBgToIndicesd`` (the foreground found once per volume, as MONAI advises) + ``RandCropByPosNegLabeld`` +
  ``RandAffined`` (rotation and scaling together, p 0.36 = 1 - 0.8²) + ``RandFlipd`` x3 +
  ``RandScaleIntensityd`` + ``RandAdjustContrastd`` in a torch DataLoader, with ``CacheDataset`` (the loaded volumes kept in memory) and with plain ``Dataset``
  (each item re-reads its .nii.gz). MONAI reads the original grid (no ``Spacingd``), which spares it a resampling
  our store and nnU-Net's folder already hold: its figures are upper bounds.

The augmentation set is nnU-Net's default minus what the others lack (Gaussian noise, blur, low-resolution
simulation, inverted gamma): rotation ±30° p 0.2, scaling 0.7-1.4 p 0.2, mirroring each axis p 0.5, brightness
x0.75-1.25 p 0.15, contrast x0.75-1.25 p 0.15, gamma 0.7-1.5 p 0.3. Foreground oversampling: a third of the
patches centred on foreground everywhere (nnU-Net 0.33, MONAI pos 1 : neg 2, ours ``fg_fraction`` 1/3). Batch 2.

Each cell: a loader is started (its start-up timed separately), 2 batches drawn to warm it, then ``--batches``
batches timed; patches/s = 2 x batches / seconds. Rounds interleaved; medians; torch and BLAS at one thread per
process. Prints a markdown table with the load average.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from prep import _ensure_data, nnunet_layout  # noqa: E402

DATASET_ID = 902


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = "1"


# --- our loader ----------------------------------------------------------------------------------------------

class _Augmented:
    """An iterable over PretrainStream's batches, augmented in the loader's workers (a picklable wrapper)."""

    def __init__(self, stream, spec, spacing):
        self.stream, self.spec, self.spacing = stream, spec, spacing

    def __iter__(self) -> Iterator[dict]:
        from model.data.augment_affine import apply_augment, augment_params

        for batch in self.stream:
            p = augment_params(self.spec, 0, int(batch["step"]), batch["image"].shape[0],
                               shape=tuple(batch["image"].shape[2:]), spacing=self.spacing)
            batch["image"], batch["label"] = apply_augment(batch["image"], batch["label"], p, inplace=True)
            yield batch


def ours(store: Path, patch: int, workers: int) -> Iterator:
    import torch
    from torch.utils.data import DataLoader, IterableDataset

    from model.data.augment_affine import AugmentSpec
    from model.data.patches import PatchConfig, PretrainStream, StoreIndex

    index = StoreIndex.from_store(store, split="train")
    stream = PretrainStream(store, index, PatchConfig(patch=(patch,) * 3, batch=2, fg_fraction=1 / 3))

    class DS(IterableDataset):
        def __init__(self):
            self.inner = _Augmented(stream, AugmentSpec(), None)

        def __iter__(self):
            return iter(self.inner)

    kw = {"persistent_workers": True, "prefetch_factor": 2, "worker_init_fn": lambda _: torch.set_num_threads(1)} \
        if workers else {}
    return iter(DataLoader(DS(), batch_size=None, num_workers=workers, **kw))


# --- nnU-Net v2 ----------------------------------------------------------------------------------------------

def nnunet_env(work: Path) -> dict[str, str]:
    return {**os.environ, "nnUNet_raw": str(work / "nnunet_raw"), "nnUNet_preprocessed": str(work / "nnunet_pre"),
            "nnUNet_results": str(work / "nnunet_results")}


def nnunet(work: Path, patch: int, workers: int) -> Iterator:
    from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
    from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
    from batchgeneratorsv2.transforms.intensity.brightness import MultiplicativeBrightnessTransform
    from batchgeneratorsv2.transforms.intensity.contrast import BGContrast, ContrastTransform
    from batchgeneratorsv2.transforms.intensity.gamma import GammaTransform
    from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
    from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
    from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
    from batchgeneratorsv2.transforms.utils.random import RandomTransform
    from batchgeneratorsv2.transforms.utils.remove_label import RemoveLabelTansform
    from nnunetv2.training.data_augmentation.compute_initial_patch_size import get_patch_size
    from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    pre = next((work / "nnunet_pre").glob(f"Dataset{DATASET_ID}_*"))
    plans = PlansManager(json.loads((pre / "nnUNetPlans.json").read_text()))
    labels = plans.get_label_manager(json.loads((pre / "dataset.json").read_text()))
    folder = pre / "nnUNetPlans_3d_fullres"
    dataset = infer_dataset_class(str(folder))(str(folder))
    rot = (-30 / 360 * 2 * np.pi, 30 / 360 * 2 * np.pi)
    size = (patch,) * 3
    initial = get_patch_size(size, rot, rot, rot, (0.85, 1.25))
    transforms = ComposeTransforms([
        SpatialTransform(size, patch_center_dist_from_border=0, random_crop=False, p_elastic_deform=0,
                         p_rotation=0.2, rotation=rot, p_scaling=0.2, scaling=(0.7, 1.4),
                         p_synchronize_scaling_across_axes=1, bg_style_seg_sampling=False,
                         border_mode_seg="constant", padding_value_seg=-1),
        RandomTransform(MultiplicativeBrightnessTransform(multiplier_range=BGContrast((0.75, 1.25)),
                                                          synchronize_channels=False, p_per_channel=1), 0.15),
        RandomTransform(ContrastTransform(contrast_range=BGContrast((0.75, 1.25)), preserve_range=True,
                                          synchronize_channels=False, p_per_channel=1), 0.15),
        RandomTransform(GammaTransform(gamma=BGContrast((0.7, 1.5)), p_invert_image=0, synchronize_channels=False,
                                       p_per_channel=1, p_retain_stats=1), 0.3),
        MirrorTransform(allowed_axes=(0, 1, 2)),
        RemoveLabelTansform(-1, 0),
    ])
    dl = nnUNetDataLoader(dataset, 2, initial, size, labels, oversample_foreground_percent=0.33,
                          sampling_probabilities=None, pad_sides=None, transforms=transforms)
    if workers == 0:
        return iter(SingleThreadedAugmenter(dl, None))
    return iter(NonDetMultiThreadedAugmenter(data_loader=dl, transform=None, num_processes=workers,
                                             num_cached=max(6, workers // 2), seeds=None, pin_memory=False,
                                             wait_time=0.002))


# --- MONAI ---------------------------------------------------------------------------------------------------

def monai(files: list[dict], patch: int, workers: int, cache: bool) -> Iterator:
    import torch
    from monai import transforms as mt
    from monai.data import CacheDataset, DataLoader, Dataset

    keys = ["image", "label"]
    load = [mt.LoadImaged(keys=keys, image_only=True), mt.EnsureChannelFirstd(keys=keys),
            mt.ScaleIntensityRanged(keys="image", a_min=-1000, a_max=1000, b_min=-1, b_max=1, clip=True),
            # MONAI's own advice for RandCropByPosNegLabeld: find the foreground / background voxels once (cached
            # with the volume by CacheDataset) instead of on every crop.
            mt.FgBgToIndicesd(keys="label", fg_postfix="_fg", bg_postfix="_bg")]
    rand = [mt.RandCropByPosNegLabeld(keys=keys, label_key="label", spatial_size=(patch,) * 3, pos=1, neg=2,
                                      num_samples=1, allow_smaller=True, fg_indices_key="label_fg",
                                      bg_indices_key="label_bg"),
            mt.SpatialPadd(keys=keys, spatial_size=(patch,) * 3),
            mt.RandAffined(keys=keys, prob=0.36, rotate_range=(np.pi / 6,) * 3, scale_range=(0.3,) * 3,
                           mode=("bilinear", "nearest"), padding_mode="zeros"),
            mt.RandFlipd(keys=keys, prob=0.5, spatial_axis=0), mt.RandFlipd(keys=keys, prob=0.5, spatial_axis=1),
            mt.RandFlipd(keys=keys, prob=0.5, spatial_axis=2),
            mt.RandScaleIntensityd(keys="image", factors=0.25, prob=0.15),
            mt.RandAdjustContrastd(keys="image", gamma=(0.7, 1.5), prob=0.3)]
    if cache:
        ds = CacheDataset(files, mt.Compose(load + rand), cache_rate=1.0, num_workers=1, progress=False)
    else:
        ds = Dataset(files, mt.Compose(load + rand))
    kw = {"persistent_workers": True, "worker_init_fn": lambda _: torch.set_num_threads(1)} if workers else {}
    sampler = torch.utils.data.RandomSampler(ds, replacement=True, num_samples=10**6)
    return iter(DataLoader(ds, batch_size=2, sampler=sampler, num_workers=workers, **kw))


# --- set-up and timing ---------------------------------------------------------------------------------------

def prepare(data: Path, work: Path, n_cases: int) -> tuple[Path, list[dict]]:
    """Our store, nnU-Net's preprocessed folder and MONAI's file list, of the same ``n_cases`` training cases."""
    msd = _ensure_data(data, 0)
    task = work / "msd" / "Task03_Liver"
    if not (task / "dataset.json").is_file():
        meta = json.loads((msd / "Task03_Liver" / "dataset.json").read_text())
        meta["training"] = meta["training"][:n_cases]
        meta["test"], meta["numTraining"], meta["numTest"] = [], n_cases, 0
        for sub in ("imagesTr", "labelsTr"):
            (task / sub).mkdir(parents=True, exist_ok=True)
        for pair in meta["training"]:
            for key in ("image", "label"):
                dst = task / pair[key]
                if not dst.exists():
                    dst.symlink_to((msd / "Task03_Liver" / pair[key]).resolve())
        (task / "dataset.json").write_text(json.dumps(meta))
    store = work / "store"
    if not (store / "catalog.parquet").is_file():
        subprocess.run([sys.executable, "-m", "pipeline.cli", "build-3dseg8", str(work / "msd"), str(store),
                        "--tasks", "Task03_Liver", "--no-progress"], check=True, cwd=ROOT)
    env = nnunet_env(work)
    if not list((work / "nnunet_pre").glob(f"Dataset{DATASET_ID}_*/nnUNetPlans_3d_fullres")):
        nnunet_layout(task, work / "nnunet_raw", DATASET_ID)
        exe = Path(sys.executable).parent / "nnUNetv2_plan_and_preprocess"
        subprocess.run([str(exe), "-d", str(DATASET_ID), "-c", "3d_fullres", "-np", "2", "-npfp", "2", "--no_pbar"],
                       check=True, env=env, stdout=subprocess.DEVNULL)
    meta = json.loads((task / "dataset.json").read_text())
    files = [{"image": str((task / p["image"]).resolve()), "label": str((task / p["label"]).resolve())}
             for p in meta["training"]]
    return store, files


def rate(make: Callable[[], Iterator], batches: int) -> tuple[float, float]:
    """(start-up s, patches/s) of one loader: its first two batches, then ``batches`` timed."""
    t0 = time.perf_counter()
    it = make()
    for _ in range(2):
        next(it)
    start = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(batches):
        b = next(it)
    elapsed = time.perf_counter() - t0
    image = b["image"] if "image" in b else b["data"]  # nnU-Net's batches: data, target
    assert tuple(image.shape[0:2]) == (2, 1), image.shape
    del it
    return start, 2 * batches / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT / "data" / "bench")
    ap.add_argument("--work", type=Path, default=ROOT / "data" / "loader_peers")
    ap.add_argument("--cases", type=int, default=6)
    ap.add_argument("--patch", type=int, default=128)
    ap.add_argument("--batches", type=int, default=12)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--quick", action="store_true", help="2 cases, 64³ patches, 4 batches, 1 round")
    args = ap.parse_args()
    if args.quick:
        args.cases, args.patch, args.batches, args.repeat = 2, 64, 4, 1
        args.work = args.work.with_name(args.work.name + "_quick")
    _one_thread()
    os.environ.update({k: v for k, v in nnunet_env(args.work).items() if k.startswith("nnUNet")})
    store, files = prepare(args.data, args.work, args.cases)
    workers = [int(w) for w in args.workers.split(",")]
    methods: dict[str, Callable[[int], Callable[[], Iterator]]] = {
        "med3d store": lambda w: lambda: ours(store, args.patch, w),
        "nnU-Net v2": lambda w: lambda: nnunet(args.work, args.patch, w),
        "MONAI CacheDataset": lambda w: lambda: monai(files, args.patch, w, cache=True),
        "MONAI Dataset": lambda w: lambda: monai(files, args.patch, w, cache=False),
    }
    results: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for r in range(args.repeat):
        for w in workers:
            for name, make in methods.items():
                results.setdefault((name, w), []).append(rate(make(w), args.batches))
                print(f"round {r + 1}, {name}, {w} worker(s): {results[(name, w)][-1][1]:.2f} patches/s",
                      file=sys.stderr, flush=True)
    import monai as monai_pkg
    import nnunetv2  # noqa: F401
    from importlib.metadata import version

    print(f"\n{args.cases} CT cases (512x512x120 source), {args.patch}³ patches, batch 2, a third centred on "
          f"foreground, the same augmentation; median of {args.repeat} interleaved rounds of {args.batches} batches; "
          f"nnU-Net {version('nnunetv2')}, batchgeneratorsv2 {version('batchgeneratorsv2')}, MONAI "
          f"{monai_pkg.__version__}; {os.cpu_count()} cores, load average "
          f"{', '.join(f'{v:.1f}' for v in os.getloadavg())}\n")
    print("| loader | workers | patches/s | vs nnU-Net | vs MONAI (cached) | start-up s |\n|---|---|---|---|---|---|")
    for (name, w), vals in results.items():
        med = float(np.median([v[1] for v in vals]))
        nn = float(np.median([v[1] for v in results[("nnU-Net v2", w)]]))
        mo = float(np.median([v[1] for v in results[("MONAI CacheDataset", w)]]))
        print(f"| {name} | {w} | {med:.2f} | {med / nn:.2f}x | {med / mo:.2f}x | "
              f"{np.median([v[0] for v in vals]):.1f} |")


if __name__ == "__main__":
    main()
