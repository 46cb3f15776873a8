"""Store -> tensors: the case index of a store, the direct chunk reader, and the patch streams that feed training.

``model.data`` re-exports the patch-streaming API of :mod:`model.data.patches` (``StoreIndex``, ``make_loader``,
``read_volume``...).
"""
from .patches import (SPLITS, CaseEntry, PatchConfig, PatchSpec, PretrainStream, StoreIndex, domain_for_step,
                      make_loader, parse_exclude, read_volume, sample_patch_spec)

__all__ = ["SPLITS", "CaseEntry", "PatchConfig", "PatchSpec", "PretrainStream", "StoreIndex", "domain_for_step",
           "make_loader", "parse_exclude", "read_volume", "sample_patch_spec"]
