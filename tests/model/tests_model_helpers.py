"""Helpers shared by the training and transfer tests: tiny synthetic stores built with the real pipeline
(imported by conftest.py: a module of its own, since every tests/ folder's conftest is a module named "conftest").
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

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




def tiny_pretrain(folder: Path) -> str:
    """A one-step ResNet-10 pretraining run on a fresh synthetic store; returns its checkpoint path."""
    from model.training.config import TrainConfig
    from model.training.pretrain import pretrain

    store = _build_store(folder / "raw", folder / "store", {"alpha": [0, 1, 2]}, seed=5, scan_prefix="pre-")
    cfg = TrainConfig(store=store, out=str(folder / "run"), encoder="resnet10", steps=1, batch=1,
                      patch=(16, 16, 16), workers=0, device="cpu", val_every=0, ckpt_every=0)
    return str(pretrain(cfg, progress=False, log=lambda s: None).checkpoint)
