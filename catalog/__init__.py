"""The pandas catalog of a Med3D store: schema, parquet io, queries, patient-level splits.

>>> from catalog import load_catalog, select
>>> cat = load_catalog("data/store")
>>> train = select(cat, domain="hippocampus", split="train")
"""
from .io import (
    load_catalog, load_domains, load_nodules, save_catalog, save_domains, save_nodules, write_parquet_atomic,
)
from .queries import select, scan_ids
from .schema import CATALOG_COLUMNS, DOMAIN_COLUMNS, NODULE_COLUMNS
from .splits import assign_splits, patient_splits

__all__ = [
    "CATALOG_COLUMNS", "DOMAIN_COLUMNS", "NODULE_COLUMNS", "assign_splits", "load_catalog", "load_domains",
    "load_nodules", "patient_splits", "save_catalog", "save_domains", "save_nodules", "scan_ids", "select",
    "write_parquet_atomic",
]
