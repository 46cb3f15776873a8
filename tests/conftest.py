"""Shared fixtures: where the real data lies, and small helpers for building stores in tests."""
from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
REAL = DATA / "real"
"""Small real scans in their datasets' own layouts (MSD, LIDC-IDRI, an abdominal CT); provenance and licences in
tests/data/real/README.md."""


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (``make test`` runs ``-n 2``), each worker process computes on one thread, itself and the
    processes its tests start: two workers with two threads each on two cores spend their time in OpenMP's
    spin-waits. Alone (no xdist), torch keeps its default."""
    import os

    if os.environ.get("PYTEST_XDIST_WORKER"):
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[name] = "1"
        import torch

        torch.set_num_threads(1)


@pytest.fixture(scope="session")
def real_dir() -> Path:
    if not REAL.is_dir():
        pytest.skip(f"real data not found at {REAL} (it ships with the repository: restore tests/data/real, "
                    f"see tests/data/real/README.md)")
    return REAL
