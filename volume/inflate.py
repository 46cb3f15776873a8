"""Which deflate library decompresses ``.nii.gz`` files: the fastest one installed.

Inflating gzip is most of a NIfTI read (a 512² CT series is tens of MB compressed). ``python-isal`` (Intel's ISA-L)
inflates ~2x faster than the standard ``zlib`` on these files, ``zlib-ng`` nearly as fast; both expose zlib's
``decompressobj`` (``decompress(data, max_length)``, ``unconsumed_tail``, ``unused_data``, ``eof``, ``flush``) and
check every gzip member's CRC-32 and length the same way, so the bytes read are identical whichever is used
(tests/pipeline/test_inflate.py compares them). Order: isal, zlib-ng, zlib; ``MED3D_INFLATE=zlib|isal|zlib-ng``
forces one (a missing one is an error naming the package to install).
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

__all__ = ["INFLATE_ENV", "deflate_module"]

INFLATE_ENV = "MED3D_INFLATE"
_MODULES = {"isal": ("isal.isal_zlib", "isal"), "zlib-ng": ("zlib_ng.zlib_ng", "zlib-ng"), "zlib": ("zlib", None)}
_cache: dict[str, ModuleType] = {}


def deflate_module(name: str | None = None) -> ModuleType:
    """The module inflating gzip streams: ``name`` (or ``$MED3D_INFLATE``) when given, else the fastest installed.
    It has ``decompressobj(wbits)`` and ``error`` as :mod:`zlib` does."""
    name = name or os.environ.get(INFLATE_ENV) or ""
    if name in _cache:
        return _cache[name]
    if name and name not in _MODULES:
        raise ValueError(f"{INFLATE_ENV}={name!r}: choose one of {', '.join(_MODULES)}")
    for key in [name] if name else list(_MODULES):
        module, package = _MODULES[key]
        try:
            _cache[name] = importlib.import_module(module)
            return _cache[name]
        except ImportError:
            if name:
                raise ValueError(f"{INFLATE_ENV}={name}: the package is not installed (pip install {package})") \
                    from None
    raise AssertionError("the standard zlib is always there")  # pragma: no cover
