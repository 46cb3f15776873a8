"""Tables and cards are written atomically with the usual permissions: readable by other users and by cluster
workers under another uid (mkstemp alone leaves 0600)."""

from __future__ import annotations

import os
import stat

import pandas as pd
import pytest

from catalog.atomic import usual_mode, write_atomic
from catalog.card import write_card
from catalog.io import write_parquet_atomic


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_tables_and_cards_get_the_usual_mode_not_0600(tmp_path):
    umask = os.umask(0)
    os.umask(umask)
    assert usual_mode() == 0o666 & ~umask  # what open(path, "w") gives; 0644 under the common umask 022
    table = tmp_path / "store" / "catalog.parquet"
    write_parquet_atomic(pd.DataFrame({"a": [1, 2]}), str(table))
    card = write_card({"format": "med3d-card"}, tmp_path / "w.json")
    assert _mode(table) == usual_mode() and _mode(card) == usual_mode()
    assert _mode(table) & 0o044 == 0o044 & ~umask  # group and others may read it unless the umask says no
    assert pd.read_parquet(table)["a"].tolist() == [1, 2]
    assert sorted(p.name for p in table.parent.iterdir()) == ["catalog.parquet"]  # no temporary file left


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "t.json"
    path.write_text("old")

    def fail(tmp: str) -> None:
        with open(tmp, "w") as fh:
            fh.write("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, fail, ".json")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["t.json"]
