"""Shared fixtures for the training tests: tiny stores built with the real pipeline from synthetic NIfTI files.

Two domains: ``alpha`` (2 classes: one bright ellipsoid) and ``beta`` (3 classes: a bright and a dark
ellipsoid), 6 cases each of 24–32 voxels per side at 1 mm, so resampling keeps sizes and a small network can
learn the structures in a few dozen steps.
"""

from __future__ import annotations

import pytest

from tests_model_helpers import DOMAINS, N_CASES, _build_store


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
