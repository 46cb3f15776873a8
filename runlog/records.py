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

    A line that is not a record (not JSON, JSON that is not an object, a ``step`` that is not a whole number, a
    number JSON cannot hold such as ``1e400``) is skipped; how many were skipped is said once as a warning naming
    the file, so resume, plot, report, compare and study read what is readable of a damaged log."""
    import warnings

    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    rows, bad = [], []
    for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line, parse_constant=_reject_constant)
        except (ValueError, RecursionError):
            bad.append(n)
            continue
        step = rec.get("step") if isinstance(rec, dict) else None
        if not isinstance(rec, dict) or isinstance(step, bool) or not isinstance(step, int) \
                or any(isinstance(v, float) and not math.isfinite(v) for v in rec.values()):
            bad.append(n)
            continue
        rows.append(rec)
    if bad:
        warnings.warn(f"{path}: skipped {len(bad)} line(s) that are not metric records (line "
                      f"{', '.join(map(str, bad[:5]))}{' ...' if len(bad) > 5 else ''}); the log is damaged",
                      stacklevel=2)
    return [r for r in rows if kind is None or r.get("kind") == kind]


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")
