"""Reading and writing the catalog (catalog.parquet, domains.parquet) next to the store's arrays."""
from __future__ import annotations

import os

import pandas as pd

from .atomic import write_atomic
from .names import check_table_names
from .retry import is_transient, retry_call
from .schema import CATALOG_COLUMNS, DOMAIN_COLUMNS, NODULE_COLUMNS, conform, frame_from_arrow
from .store_format import is_local, local_path, store_join

CATALOG_FILE = "catalog.parquet"
COLUMNWISE_FROM_ROWS = 1000
DOMAINS_FILE = "domains.parquet"


def write_parquet_atomic(df: pd.DataFrame, path: str) -> None:
    """Write a parquet file so that readers see the old file or the new one, never half of one.

    Locally: a temporary file in the same folder, then os.replace. On object stores a single PUT is atomic.
    """
    if not is_local(path):
        retry_call(lambda: df.to_parquet(path, index=False), path)
        return
    write_atomic(path.removeprefix("file://"), lambda tmp: df.to_parquet(tmp, index=False), ".parquet")


def _exists(path: str) -> bool:
    if is_local(path):
        return os.path.exists(path.removeprefix("file://"))
    import fsspec

    fs, p = fsspec.core.url_to_fs(path)
    return retry_call(lambda: fs.exists(p), path)


def _read_parquet(path: str, columns: dict[str, str] | None = None) -> pd.DataFrame:
    """A parquet table, or a ValueError naming the file when it is not one (damaged, cut short, another
    format): the caller's users get one line, not pyarrow's traceback. A remote read that meets a transient
    error (503, reset connection) is retried (:mod:`catalog.retry`), and raised as it is when the tries run out:
    the file is not damaged then, the backend is."""
    if is_local(path) and os.path.exists(local_path(path)) and not os.path.isfile(local_path(path)):
        raise ValueError(f"{path}: not a regular file (a device such as /dev/zero, a pipe or a folder): the store "
                         "is damaged; rebuild the store (med3d-prep build-*) or copy the file again")
    try:
        if not is_local(path):
            return retry_call(lambda: pd.read_parquet(path), path)
        import pyarrow.parquet as pq

        table = pq.read_table(local_path(path))
        # column-wise lists pay from about a thousand rows; below, conform's row-by-row path is quicker
        return frame_from_arrow(table, columns or {}) if table.num_rows >= COLUMNWISE_FROM_ROWS else table.to_pandas()
    except (OSError, ValueError) as exc:
        if isinstance(exc, FileNotFoundError) or is_transient(exc):
            raise
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"{path}: not a readable parquet table ({why}): the file is damaged; rebuild the "
                         "store (med3d-prep build-*) or copy the file again") from None


def _write_if_changed(df: pd.DataFrame, path: str, columns: dict[str, str]) -> None:
    """Write unless the file already holds exactly this table: a re-run that changed nothing touches nothing."""
    if _exists(path):
        try:
            old = conform(_read_parquet(path, columns), columns, path, fill_missing=False)
            if old.equals(df):
                return
        except (ValueError, OSError):
            pass  # unreadable or from another version: rewrite it
    write_parquet_atomic(df, path)


def save_catalog(store: str, df: pd.DataFrame) -> pd.DataFrame:
    """Validate and write the catalog (sorted by domain, case). Returns the conformed table."""
    df = conform(df, CATALOG_COLUMNS, "catalog", fill_missing=True)
    check_table_names(df, "catalog", names=("domain", "case_id"), store_path=True)
    dup = df[df.duplicated(["domain", "case_id"], keep=False)]
    if len(dup):
        raise ValueError(f"catalog: duplicate cases {dup[['domain', 'case_id']].values.tolist()[:5]}")
    df = df.sort_values(["domain", "case_id"]).reset_index(drop=True)
    _write_if_changed(df, store_join(store, CATALOG_FILE), CATALOG_COLUMNS)
    return df


def load_catalog(store: str, *, missing_ok: bool = False) -> pd.DataFrame:
    """The store's catalog, schema-checked. ``missing_ok`` returns an empty catalog for a new store."""
    path = store_join(str(store), CATALOG_FILE)
    if not _exists(path):
        if missing_ok:
            return conform(pd.DataFrame(), CATALOG_COLUMNS, "catalog", fill_missing=True)
        raise FileNotFoundError(
            f"{path}: no catalog; is {store} a med3d store? Build one with `med3d-prep build-3dseg8`."
        )
    df = conform(_read_parquet(path, CATALOG_COLUMNS), CATALOG_COLUMNS, path, fill_missing=False)
    check_table_names(df, path, names=("domain", "case_id"), store_path=True)
    return df


def save_domains(store: str, df: pd.DataFrame) -> pd.DataFrame:
    df = conform(df, DOMAIN_COLUMNS, "domains", fill_missing=True).sort_values("domain").reset_index(drop=True)
    _write_if_changed(df, store_join(store, DOMAINS_FILE), DOMAIN_COLUMNS)
    return df


def load_domains(store: str) -> pd.DataFrame:
    path = store_join(str(store), DOMAINS_FILE)
    if not _exists(path):
        raise FileNotFoundError(f"{path}: no domains table; is {store} a med3d store?")
    df = conform(_read_parquet(path, DOMAIN_COLUMNS), DOMAIN_COLUMNS, path, fill_missing=False)
    check_table_names(df, path, names=("domain",))
    return df


def extra_table_path(store: str, name: str) -> str:
    """Path of an extra per-store table (e.g. ``nodules`` for LIDC stores)."""
    return store_join(str(store), f"{name}.parquet")


NODULES_TABLE = "nodules"


def save_nodules(store: str, df: pd.DataFrame) -> pd.DataFrame:
    """Validate and write ``STORE/nodules.parquet`` (sorted by patient, series, nodule index) unless it already
    holds exactly this table. Returns the conformed table."""
    df = conform(df, NODULE_COLUMNS, "nodules", fill_missing=True)
    df = df.sort_values(["patient_id", "series_uid", "nodule_index"]).reset_index(drop=True)
    _write_if_changed(df, extra_table_path(store, NODULES_TABLE), NODULE_COLUMNS)
    return df


def load_nodules(store: str, *, missing_ok: bool = False) -> pd.DataFrame | None:
    """The nodules table of an LIDC store, schema-checked; None (``missing_ok``) or FileNotFoundError when the
    store has none. Join it to the catalog on ``case_id`` for the crops' benign/malignant labels."""
    path = extra_table_path(str(store), NODULES_TABLE)
    if not _exists(path):
        if missing_ok:
            return None
        raise FileNotFoundError(f"{path}: no nodules table; build one with `med3d-prep build-lidc`.")
    df = conform(_read_parquet(path, NODULE_COLUMNS), NODULE_COLUMNS, path, fill_missing=False)
    check_table_names(df, path, names=("case_id",), empty_ok=("case_id",))
    return df
