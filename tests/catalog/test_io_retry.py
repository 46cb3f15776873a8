"""Catalog tables on an object store: a transient error (503, reset connection) is retried, not taken for a
damaged file; a damaged file is still one line naming it."""

from __future__ import annotations

import pandas as pd
import pytest

import catalog.io as cio
from catalog import load_catalog, save_catalog


@pytest.fixture
def remote_store(monkeypatch):
    import fsspec

    monkeypatch.setenv("MED3D_RETRY_WAIT_S", "0.001")
    store = "memory://retry-test/store"
    rows = pd.DataFrame([{"domain": "heart", "case_id": "la_003", "store_path": "heart/la_003", "status": "ok",
                          "split": "train", "has_label": True}])
    save_catalog(store, rows)
    yield store
    fsspec.filesystem("memory").rm("retry-test", recursive=True)


def _flaky(monkeypatch, fail: int, exc: Exception) -> list[int]:
    real, calls = pd.read_parquet, []

    def read(path, *a, **k):
        calls.append(1)
        if len(calls) <= fail:
            raise exc
        return real(path, *a, **k)

    monkeypatch.setattr(cio.pd, "read_parquet", read)
    return calls


def test_a_transient_read_error_is_retried(remote_store, monkeypatch):
    calls = _flaky(monkeypatch, 2, ConnectionResetError(104, "Connection reset by peer"))
    cat = load_catalog(remote_store)
    assert len(calls) == 3 and cat["case_id"].tolist() == ["la_003"]


def test_a_lasting_backend_failure_is_raised_as_it_is_not_as_a_damaged_file(remote_store, monkeypatch):
    monkeypatch.setenv("MED3D_RETRY_TRIES", "3")
    calls = _flaky(monkeypatch, 99, ConnectionResetError(104, "Connection reset by peer"))
    with pytest.raises(ConnectionResetError):
        load_catalog(remote_store)
    assert len(calls) == 3


def test_a_damaged_remote_table_is_one_line_naming_it(remote_store, monkeypatch):
    import fsspec

    with fsspec.open(f"{remote_store}/catalog.parquet", "wb") as fh:
        fh.write(b"PAR1 cut short")
    calls = _flaky(monkeypatch, 0, OSError("unused"))
    with pytest.raises(ValueError, match="catalog.parquet: not a readable parquet table .* damaged"):
        load_catalog(remote_store)
    assert len(calls) == 1  # a damaged file is not retried
