"""Shared fixtures for the training tests: tiny stores built with the real pipeline from synthetic NIfTI files.

Two domains: ``alpha`` (2 classes: one bright ellipsoid) and ``beta`` (3 classes: a bright and a dark
ellipsoid), 6 cases each of 24–32 voxels per side at 1 mm, so resampling keeps sizes and a small network can
learn the structures in a few dozen steps.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

DOMAINS = {"alpha": {0: "background", 1: "blob"}, "beta": {0: "background", 1: "bright", 2: "dark"}}
N_CASES = 6


def _ellipsoid(shape: tuple[int, int, int], centre: np.ndarray, radii: np.ndarray) -> np.ndarray:
    zz, yy, xx = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    d = ((zz - centre[0]) / radii[0]) ** 2 + ((yy - centre[1]) / radii[1]) ** 2 + ((xx - centre[2]) / radii[2]) ** 2
    return d <= 1.0


def _write_case(folder: Path, name: str, domain: str, rng: np.random.Generator) -> tuple[str, str]:
    import SimpleITK as sitk

    shape = tuple(int(s) for s in rng.integers(24, 33, size=3))
    image = rng.normal(0.0, 0.3, size=shape).astype(np.float32)
    label = np.zeros(shape, np.uint8)
    n_fg = 1 if domain == "alpha" else 2
    for cls in range(1, n_fg + 1):
        radii = rng.uniform(4.0, 7.0, size=3)
        centre = np.array([rng.uniform(r + 1, s - r - 2) for r, s in zip(radii, shape)])
        mask = _ellipsoid(shape, centre, radii) & (label == 0)
        label[mask] = cls
        image[mask] += 3.0 if cls == 1 else -3.0
    paths = []
    for arr, suffix in ((image, "img"), (label, "seg")):
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing((1.0, 1.0, 1.0))
        path = folder / f"{name}_{suffix}.nii.gz"
        sitk.WriteImage(img, str(path))
        paths.append(str(path))
    return paths[0], paths[1]


def _build_store(folder: Path, store: Path, cases_per_domain: dict[str, list[int]], seed: int,
                 scan_prefix: str = "") -> str:
    from pipeline.config import Case, DomainSpec, PrepConfig
    from pipeline.job import build

    folder.mkdir(parents=True, exist_ok=True)
    domains = []
    for d_index, (domain, labels) in enumerate(DOMAINS.items()):
        if domain not in cases_per_domain:
            continue
        spec = DomainSpec(name=domain, source_dataset=f"synthetic_{domain}", modality="MR", channel_names=("MR",),
                          labels=labels)
        cases = []
        for i in cases_per_domain[domain]:
            rng = np.random.default_rng([seed, d_index, i])
            img, seg = _write_case(folder, f"{domain}_{i:02d}", domain, rng)
            cases.append(Case(domain=domain, case_id=f"{domain}_{i:02d}", scan_id=f"{scan_prefix}{domain}:{i}",
                              patient_id=f"{domain}_p{i:02d}", images=(img,), label=seg))
        domains.append((spec, cases))
    result = build(domains, str(store), PrepConfig(chunks=(16, 16, 16), val_fraction=0.3), workers=0,
                   progress=False, log=lambda s: None)
    assert result.ok, result.summary()
    return str(store)


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A store with domains alpha (2 classes) and beta (3 classes), 6 cases each, train and val splits."""
    root = tmp_path_factory.mktemp("tiny_store")
    return _build_store(root / "raw", root / "store", {d: list(range(N_CASES)) for d in DOMAINS}, seed=7)


@pytest.fixture(scope="session")
def other_store(tmp_path_factory: pytest.TempPathFactory, tiny_store: str) -> str:
    """A second store whose two alpha cases are the same scans (same scan ids) as two of ``tiny_store``'s train
    cases, like MSD liver_N and LiTS volume-N: excluding it must keep those scans out of pretraining."""
    from catalog import load_catalog, select

    train = select(load_catalog(tiny_store), domain="alpha", split="train")
    ids = sorted(int(s.split(":")[1]) for s in train["scan_id"])[:2]
    root = tmp_path_factory.mktemp("other_store")
    return _build_store(root / "raw", root / "store", {"alpha": ids}, seed=7)


@pytest.fixture
def fast_config(tiny_store: str):
    """Factory of TrainConfigs small enough for CPU tests: resnet10, 24³ patches, batch 2, no DataLoader workers,
    no validation, on ``tiny_store``. Call it as ``fast_config(out, **changes)``."""
    from model.training.config import TrainConfig

    def make(out, **changes):
        kw = dict(store=tiny_store, out=str(out), encoder="resnet10", patch=(24, 24, 24), batch=2, steps=4,
                  lr=1e-3, workers=0, val_every=0, ckpt_every=0, log_every=1, device="cpu", seed=0)
        kw.update(changes)
        return TrainConfig(**kw)

    return make
