"""The catalog's fast read (issue 22: 100,000 rows under a second) gives what the row-by-row read gave.

Two shortcuts, each checked against the plain rule it stands in for:

- list columns are made Python lists column-wise from the parquet's arrow arrays (``schema.frame_from_arrow``),
  not row by row (``schema.conform``): same values, same Python types, and the same refusals where a column is
  not plainly of its kind (nulls inside a list, floats in an int list);
- the name check screens whole columns in C and applies the exact rule only to suspect rows
  (``names._suspect_rows``): every name the exact rule refuses is refused with the same message, in the same
  (first) row.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from catalog.names import UnsafeNameError, check_table_names, unsafe_name
from catalog.schema import conform, frame_from_arrow

KINDS = {"name": "str", "ints": "list[int]", "floats": "list[float]", "strs": "list[str]", "fixed": "list[float]"}


def _both(table: pa.Table, tmp_path) -> tuple[pd.DataFrame, pd.DataFrame]:
    path = tmp_path / "t.parquet"
    pq.write_table(table, path)
    slow = conform(pd.read_parquet(path), KINDS, "t", fill_missing=False)
    fast = conform(frame_from_arrow(pq.read_table(path), KINDS), KINDS, "t", fill_missing=False)
    return slow, fast


def _same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    assert list(a.columns) == list(b.columns) and len(a) == len(b)
    for col in a.columns:
        for x, y in zip(a[col], b[col]):
            assert x == y and type(x) is type(y), (col, x, y)
            if isinstance(x, list):
                assert [type(v) for v in x] == [type(v) for v in y], (col, x, y)


def test_list_columns_read_column_wise_equal_the_row_by_row_read(tmp_path) -> None:
    table = pa.table({
        "name": ["a", "b", "c", "d"],
        "ints": pa.array([[1, 2], [], None, [2**40]], pa.list_(pa.int64())),  # variable, empty, null list
        "floats": pa.array([[0.5], [1.25, 2.0], [], [float("nan")]], pa.list_(pa.float32())),
        "strs": pa.array([["CT"], ["T1", "T2"], None, []], pa.list_(pa.string())),
        "fixed": pa.array([[1.0, 0.7, 0.7], [2.5, 1.0, 1.0], [3.0, 3.0, 3.0], [0.1, 0.2, 0.3]],
                          pa.list_(pa.float64())),
    })
    slow, fast = _both(table, tmp_path)
    assert fast["ints"].tolist() == [[1, 2], [], [], [2**40]] and fast["strs"][2] == []
    assert fast["fixed"][0] == [1.0, 0.7, 0.7] and type(fast["fixed"][0][1]) is float
    assert np.isnan(fast["floats"][3][0]) and np.isnan(slow["floats"][3][0])
    _same(slow.drop(columns="floats"), fast.drop(columns="floats"))
    assert fast["floats"][:3].tolist() == slow["floats"][:3].tolist() == [[0.5], [1.25, 2.0], []]


def test_columns_not_plainly_of_their_kind_take_the_row_by_row_path(tmp_path) -> None:
    # nulls inside a list, floats where ints belong, ints where floats belong: conform decides, as before
    table = pa.table({
        "name": ["a", "b"],
        "ints": pa.array([[1.0, 2.0], [3.0]], pa.list_(pa.float64())),
        "floats": pa.array([[1, 2], [3]], pa.list_(pa.int32())),
        "strs": pa.array([["x", None], ["y"]], pa.list_(pa.string())),
        "fixed": pa.array([[1.0, None, 2.0], [1.0, 2.0, 3.0]], pa.list_(pa.float64())),
    })
    path = tmp_path / "t.parquet"
    pq.write_table(table, path)
    df = frame_from_arrow(pq.read_table(path), KINDS)
    assert df.attrs["med3d_typed_lists"] == {}
    slow = conform(pd.read_parquet(path), KINDS, "t", fill_missing=False)
    fast = conform(df, KINDS, "t", fill_missing=False)
    assert [repr(v) for v in fast["strs"]] == [repr(v) for v in slow["strs"]] == ["['x', 'None']", "['y']"]
    assert repr(fast["fixed"][0]) == repr(slow["fixed"][0]) == "[1.0, nan, 2.0]"
    table = table.drop_columns(["strs", "fixed"]).append_column("strs", pa.array([["x"], ["y"]])) \
        .append_column("fixed", pa.array([[1.0], [2.0]]))
    slow, fast = _both(table, tmp_path)
    _same(slow, fast)
    assert fast["ints"].tolist() == [[1, 2], [3]] and type(fast["floats"][0][0]) is float


def _exact(df: pd.DataFrame, names: tuple[str, ...], empty_ok: set[str], store_path: bool) -> str | None:
    """The plain rule, row by row (what check_table_names did before the screen): the first refusal's row and
    column, or None."""
    for i, rec in enumerate(df.to_dict("records")):
        for col in names:
            if col in empty_ok and rec[col] == "":
                continue
            if unsafe_name(rec[col]):
                return f"row {i}: {col} {rec[col]!r}"
        if store_path and rec["store_path"] != f"{rec['domain']}/{rec['case_id']}":
            return f"row {i}: store_path {rec['store_path']!r}"
    return None


NASTY = ["..", ".", "", "  ", "a/b", "/etc", "a\\b", "x\n", "\x7f", "ZARR.JSON", "catalog.parquet", "é" * 128,
         "é" * 127, "a" * 255, "a" * 256, "\u00a0", None, 7, float("nan"), "ok", "hippocampus_001 "]


@pytest.mark.parametrize("value", NASTY, ids=[repr(v)[:20] for v in NASTY])
@pytest.mark.parametrize("column", ["case_id", "domain", "store_path", "note"])
def test_the_screen_refuses_exactly_what_the_row_by_row_rule_refuses(value, column, monkeypatch) -> None:
    import catalog.names as names

    monkeypatch.setattr(names, "SCREEN_FROM_ROWS", 10)  # screen this 50-row table
    rows = [{"domain": "hip", "case_id": f"c{i}", "store_path": f"hip/c{i}", "note": ""} for i in range(50)]
    df = pd.DataFrame(rows, dtype=object)
    df.loc[37, column] = value
    if column != "store_path":
        df.loc[37, "store_path"] = f"{df.loc[37, 'domain']}/{df.loc[37, 'case_id']}"
    want = _exact(df, ("domain", "case_id", "note"), {"note"}, True)
    if want is None:
        check_table_names(df, "t", names=("domain", "case_id", "note"), store_path=True, empty_ok=("note",))
        return
    with pytest.raises(UnsafeNameError) as err:
        check_table_names(df, "t", names=("domain", "case_id", "note"), store_path=True, empty_ok=("note",))
    assert f"t: row 37 " in str(err.value) and want.split(": ", 1)[1] in str(err.value)


def test_a_hundred_thousand_clean_rows_need_no_row_by_row_check(monkeypatch) -> None:
    import catalog.names as names

    n = 100_000
    df = pd.DataFrame({"domain": ["spleen"] * n, "case_id": [f"case_{i:06d}" for i in range(n)]})
    df["store_path"] = "spleen/" + df["case_id"]
    monkeypatch.setattr(names, "unsafe_name", lambda v: pytest.fail(f"row-by-row check of {v!r}"))
    check_table_names(df, "t", names=("domain", "case_id"), store_path=True)


def test_lists_are_made_with_the_cycle_collector_paused_and_its_state_restored(tmp_path, monkeypatch) -> None:
    """Half a 100,000-row open was the collector walking the lists made so far: they are made with it off,
    and it is left as it was found (on stays on, off stays off), also when a column is refused."""
    import gc

    import catalog.schema as schema

    seen = []
    real = schema._arrow_lists
    monkeypatch.setattr(schema, "_arrow_lists", lambda *a: seen.append(gc.isenabled()) or real(*a))
    monkeypatch.setattr(schema, "_as_list", lambda v, e, real=schema._as_list: seen.append(gc.isenabled()) or real(v, e))
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"name": ["a"], "ints": pa.array([[1, 2]], pa.list_(pa.int64()))}), path)
    kinds = {"name": "str", "ints": "list[int]"}
    assert gc.isenabled()
    df = conform(frame_from_arrow(pq.read_table(path), kinds), kinds, "t", fill_missing=False)
    conform(pd.DataFrame({"name": ["b"], "ints": [[3]]}), kinds, "t", fill_missing=False)  # the row-by-row path
    assert df["ints"][0] == [1, 2] and seen == [False, False] and gc.isenabled()
    with pytest.raises(ValueError, match="cannot be read as list\\[int\\]"):
        conform(pd.DataFrame({"name": ["c"], "ints": [["x"]]}), kinds, "t", fill_missing=False)
    assert gc.isenabled()
    gc.disable()
    try:
        conform(pd.DataFrame({"name": ["d"], "ints": [[4]]}), kinds, "t", fill_missing=False)
        assert not gc.isenabled()
    finally:
        gc.enable()
