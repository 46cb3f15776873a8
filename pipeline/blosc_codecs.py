"""The Blosc codecs a store's chunks may use: one list for the build's configuration (:class:`PrepConfig`) and
the ``--codec`` / ``--image-codec`` choices of ``med3d-prep``. A leaf module (no numpy, no pandas), so that the
CLI can build its options without importing the pipeline."""
from __future__ import annotations

__all__ = ["CODECS", "IMAGE_CODECS"]

CODECS = ("zstd", "lz4", "lz4hc", "blosclz", "zlib")
"""Blosc compressors (``numcodecs.Blosc`` cname) for labels and foreground samples, and for images."""

IMAGE_CODECS = ("raw", *CODECS)
"""Image chunks: ``raw`` (Blosc level 0, the direct reader's fast path) or one of :data:`CODECS`."""
