"""Shared fixtures: where the real data lies, and small helpers for building stores in tests."""
from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
REAL = DATA / "real"
"""Small real scans in their datasets' own layouts (MSD, LIDC-IDRI, an abdominal CT); provenance and licences in
tests/data/real/README.md."""


@pytest.fixture(scope="session")
def real_dir() -> Path:
    if not REAL.is_dir():
        pytest.skip(f"real data not found at {REAL} (it ships with the repository: restore tests/data/real, "
                    f"see tests/data/real/README.md)")
    return REAL
