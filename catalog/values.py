"""Rules on the plain values that files handed between people and versions hold: a weights card, a run's recipe, a
run's ``config.json`` (issue 23). Such a file may be damaged or crafted, so its JSON must parse within bounds and
each value must be of its field's type, finite and in range; what is not is one line naming the file and the field
(a ``ValueError``), never a traceback and never a build or a run of absurd sizes.

Torch-free and store-free: both halves of the project and ``volume/`` use these rules.
"""
from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
import re
from pathlib import Path
from typing import Any

__all__ = ["MAX_INT", "MAX_SPACING_MM", "MIN_SPACING_MM", "JsonFileError", "check_fields", "device_problem",
           "finite_number", "parse_json", "read_json", "show", "type_problem"]

MIN_SPACING_MM = 0.01
MAX_SPACING_MM = 50.0
"""Voxel sizes a scan can have: 10 µm (micro-CT) to 5 cm (the thickest slices of a scout). Outside, a header is
damaged (``volume.value_checks`` refuses it) and so is a card or recipe asking for it: 300 mm makes a 1×1×1 volume
that lost its labels, 1e-6 mm a resampled grid of petabytes."""

MAX_INT = 2 ** 63 - 1
"""The largest whole number a config field may hold (a signed 64-bit integer: what torch and numpy count in)."""

_DEVICE = re.compile(r"cpu|cuda(:\d{1,3})?")


class JsonFileError(ValueError):
    """A file that is not readable JSON; the message names the file."""


def parse_json(text: str | bytes, where: str | os.PathLike[str], what: str = "JSON") -> Any:
    """``json.loads(text)``; anything that is not JSON within Python's limits (malformed text, a number of more
    than 4300 digits, nesting deeper than the recursion limit) is a one-line :class:`JsonFileError`:
    ``WHERE: not readable WHAT (why)``."""
    try:
        return json.loads(text)
    except RecursionError:
        why = "nested too deeply to be a Med3D file"
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, and (Python >= 3.11) a 4301-digit integer
        why = ("a number of more than 4300 digits: no Med3D file holds one" if "4300 digits" in str(exc)
               else " ".join(str(exc).split()))
    raise JsonFileError(f"{where}: not {'an' if what[0] in 'AEIOU' else 'a'} readable {what} ({why})")


def read_json(path: str | os.PathLike[str], what: str = "JSON") -> Any:
    """The JSON content of ``path``; an unreadable file or text that :func:`parse_json` refuses is a one-line
    :class:`JsonFileError` naming the file."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise JsonFileError(f"{path}: cannot read it ({exc})") from None
    return parse_json(data, path, what)


def show(value: Any, limit: int = 60) -> str:
    """``repr(value)`` for a message, short: a huge integer by its digit count (its repr could fail), long texts
    and lists cut."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT:
        return f"a {int(abs(value).bit_length() * 0.30103) + 1}-digit integer"
    if isinstance(value, (list, tuple, dict)) and len(value) > 8:
        return f"a {type(value).__name__} of {len(value)} items"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def finite_number(value: Any, *, integer: bool = False) -> bool:
    """Whether ``value`` is a number (not a bool), finite, within :data:`MAX_INT` in size, and whole when
    ``integer``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return False
    if isinstance(value, numbers.Integral):
        return abs(int(value)) <= MAX_INT
    return not integer and math.isfinite(float(value))


def device_problem(value: Any) -> str | None:
    """Why ``value`` is not a device a run can train or infer on (``cpu``, ``cuda``, ``cuda:N``), or None."""
    if value is None or (isinstance(value, str) and _DEVICE.fullmatch(value)):
        return None
    return f"device must be cpu, cuda or cuda:N, got {show(value)}"


# What each field type of a config dataclass accepts (annotations are strings: ``from __future__ import
# annotations``), and how a message says it.
_SCALARS = {
    "int": (lambda v: finite_number(v, integer=True), "a whole number"),
    "float": (finite_number, "a finite number"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "str": (lambda v: isinstance(v, (str, os.PathLike)), "a text"),
    "None": (lambda v: v is None, "null"),
}


def _accepts(value: Any, kind: str) -> bool:
    kind = kind.strip()
    if kind in _SCALARS:
        return _SCALARS[kind][0](value)
    match = re.fullmatch(r"tuple\[(.*)\]", kind)
    if not match:
        return True  # a type these rules do not know: the class checks it
    if not isinstance(value, (list, tuple)):
        return False
    parts = [p.strip() for p in match.group(1).split(",")]
    if len(parts) == 2 and parts[1] == "...":
        return all(_accepts(v, parts[0]) for v in value)
    return len(value) == len(parts) and all(_accepts(v, p) for v, p in zip(value, parts))


def _says(kind: str) -> str:
    kind = kind.strip()
    if kind in _SCALARS:
        return _SCALARS[kind][1]
    match = re.fullmatch(r"tuple\[(.*)\]", kind)
    if not match:
        return kind
    parts = [p.strip() for p in match.group(1).split(",")]
    if len(parts) == 2 and parts[1] == "...":
        return f"a list of {_says(parts[0]).removeprefix('a ')}s"
    word = {2: "two", 3: "three"}.get(len(parts), str(len(parts)))
    return f"a list of {word} {_says(parts[0]).removeprefix('a ')}s"


def type_problem(name: str, value: Any, annotation: str) -> str | None:
    """Why ``value`` does not fit a field ``name`` annotated ``annotation`` (``"int"``, ``"float | None"``,
    ``"tuple[int, int, int]"``...), or None. Whole numbers fit float fields; lists fit tuple fields."""
    kinds = annotation.split("|")
    if any(_accepts(value, k) for k in kinds):
        return None
    return f"{name} must be {' or '.join(_says(k) for k in kinds)}, got {show(value)}"


def check_fields(obj: Any, annotations: dict[str, str] | None = None) -> None:
    """Raise ``ValueError`` naming the first field of the dataclass ``obj`` whose value does not fit its type
    (:func:`type_problem`; ``annotations`` replaces some fields' types). Call it first in ``__post_init__``, before
    any value is converted: ``int(inf)`` is an OverflowError, ``"no"`` a true ``amp``."""
    for f in dataclasses.fields(obj):
        annotation = (annotations or {}).get(f.name, f.type)
        problem = type_problem(f.name, getattr(obj, f.name), str(annotation))
        if problem:
            raise ValueError(problem)
