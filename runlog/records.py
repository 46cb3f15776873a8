"""The metrics log of a run: one JSON object per line in ``RUN/metrics.jsonl``.

Every record has ``kind`` (``"train"``, ``"val"``...), ``step`` and ``time`` (Unix seconds). JSON has no NaN:
non-finite floats are written as ``null`` (the standard library would write the token ``NaN``, which jq and
other strict readers reject).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["METRICS_FILE", "json_safe", "read_metrics"]

METRICS_FILE = "metrics.jsonl"


def json_safe(v: Any) -> Any:
    """``v`` with only strict-JSON values: non-finite floats -> None, numpy (or torch) scalars -> Python numbers,
    tuples -> lists, mapping keys -> str. Other values are returned as they are."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, Mapping):
        return {str(k): json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_safe(x) for x in v]
    if not isinstance(v, (str, bytes, int, float, bool)) and v is not None and hasattr(v, "item") \
            and getattr(v, "ndim", None) == 0:
        return json_safe(v.item())  # a numpy or torch scalar
    return v


def read_metrics(run_dir: str | Path, kind: str | None = None) -> list[dict[str, Any]]:
    """The records of ``RUN_DIR/metrics.jsonl`` (optionally of one ``kind``), in order; [] without the file.

    A line that is not JSON raises ValueError naming the file and the line number."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{n}: not a JSON record ({exc.msg}); the run's metrics log is damaged") from None
    return [r for r in rows if kind is None or r.get("kind") == kind]
