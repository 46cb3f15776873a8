"""Store URLs a build is given (issue 23, item 14).

``med3d-prep build-* RAW file:///new/folder`` crashed with an 82-line FileNotFoundError (fsspec creates no
folders), and ``memory://store`` built "7 converted" into the memory of a process that then ended. A ``file://``
URL is now the local folder it names; ``memory://`` is refused before anything is done, in one line (exit 2).
"""
from __future__ import annotations

import pytest
from click.testing import CliRunner

from catalog import load_catalog
from pipeline.cli import main
from pipeline.sample import write_lits_sample
from pipeline.store import UnusableStoreError, build_target

ARGS = ["--workers", "0", "--no-progress", "--chunks", "16"]


@pytest.fixture(scope="module")
def lits_raw(tmp_path_factory):
    raw = tmp_path_factory.mktemp("lits_raw") / "lits"
    write_lits_sample(raw)
    return raw


def test_a_file_url_builds_into_the_new_folder_it_names(lits_raw, tmp_path):
    store = tmp_path / "new" / "folder" / "store"
    res = CliRunner().invoke(main, ["build-lits", str(lits_raw), f"file://{store}", *ARGS])
    assert res.exit_code == 0, res.output
    assert "7 converted, 0 skipped" in res.output and "Traceback" not in res.output, res.output
    assert len(load_catalog(str(store))) == 7 and set(load_catalog(f"file://{store}")["status"]) == {"ok"}
    again = CliRunner().invoke(main, ["build-lits", str(lits_raw), str(store), *ARGS])  # the same store
    assert "0 converted, 7 skipped" in again.output, again.output


def test_a_memory_store_is_refused_in_one_line_before_any_work(lits_raw, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(main, ["build-lits", str(lits_raw), "memory://store", *ARGS])
    assert res.exit_code == 2, res.output
    errors = [line for line in res.output.splitlines() if line.startswith("Error: ")]
    assert errors == [res.output.strip().splitlines()[-1]] and "Traceback" not in res.output, res.output
    assert errors[0].startswith("Error: memory://store: a memory:// store lives in the memory of the process")
    assert "converted" not in res.output and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("given, local", [("file:///data/store", "/data/store"),
                                          ("file://localhost/data/store", "/data/store"),
                                          ("file://store", "store"), ("data/store", "data/store"),
                                          ("s3://bucket/store", "s3://bucket/store")])
def test_build_target(given, local):
    assert build_target(given) == local


def test_build_target_refuses_memory():
    with pytest.raises(UnusableStoreError, match="memory://x: a memory:// store"):
        build_target("memory://x")
