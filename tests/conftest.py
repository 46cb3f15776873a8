"""Shared fixtures: where the real data lies, and small helpers for building stores in tests."""
from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "data" / "real"


@pytest.fixture(scope="session")
def real_dir() -> Path:
    if not REAL.is_dir():
        pytest.skip(f"real data not found at {REAL} (expected ../shared/data/real beside the project)")
    return REAL
