"""CSV tables for people: no cell a spreadsheet would run as a formula.

Excel, LibreOffice and Google Sheets read a cell that begins with ``=``, ``+``, ``-`` or ``@`` (or a tab or a
carriage return before one) as a formula: ``=HYPERLINK(...)`` becomes a link and ``=cmd|' /C calc'!A0`` a
command, from a class name in a label table, a case id or a scan's file name. :func:`spreadsheet_safe` prefixes
such a text cell with ``'`` (the OWASP rule; a spreadsheet shows the text, without the quote) and leaves
numbers alone, text that spells a number too (``-1``, ``+2.5e-3``): those are no formula, and a negative class
stays ``-1``. Every CSV table the project writes for people goes through it; tables the project reads back
itself as input (split and label tables) are written as they are.

>>> import pandas as pd
>>> safe = spreadsheet_safe(pd.DataFrame({"case_id": ['=HYPERLINK("x")', "-1", "a"], "p": [-0.5, 1.0, 2.0]}))
>>> safe["case_id"].tolist(), safe["p"].tolist()
(['\\'=HYPERLINK("x")', '-1', 'a'], [-0.5, 1.0, 2.0])
"""
from __future__ import annotations

import re
from typing import Any

import pandas as pd

__all__ = ["FORMULA_STARTS", "spreadsheet_safe", "spreadsheet_text"]

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
"""First characters that make a spreadsheet read a cell as a formula (OWASP, "CSV injection")."""

_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def spreadsheet_text(value: Any) -> Any:
    """``value`` with a ``'`` in front when it is text that a spreadsheet would run as a formula; anything else
    (numbers, text spelling a number, missing values) as it is."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS) and not _NUMBER.fullmatch(value):
        return "'" + value
    return value


def spreadsheet_safe(df: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``df`` whose text cells and column names pass :func:`spreadsheet_text`; numeric columns are
    untouched. Write it with ``.to_csv``."""
    out = df.copy()
    for i in range(out.shape[1]):  # by position: column names may repeat
        column = out.iloc[:, i]
        if pd.api.types.is_object_dtype(column.dtype) or pd.api.types.is_string_dtype(column.dtype):
            out.isetitem(i, column.map(spreadsheet_text))
    out.columns = [spreadsheet_text(c) for c in out.columns]
    return out
