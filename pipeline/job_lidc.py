"""`build-lidc`: LIDC-IDRI series → nodule crops, catalog rows and ``STORE/nodules.parquet``.

The job's steps, on the machinery of :mod:`pipeline.job` (dask only through :func:`pipeline.executor.run_tasks`):

1. Scan (client side): every CT series under the root (``find_lidc_series``); patient-level splits over all
   patients found (:func:`catalog.patient_splits`: ~8.6 % test as in the paper's 1,050/99, a val share of the
   rest), so a patient's split does not depend on whether its series converted.
2. Resume (client side, headers and file stats only): a series whose record is complete with the same params
   hash and unchanged sources is skipped; its rows come from its record.
3. Convert: one task per remaining series with XML (:func:`pipeline.sources.lidc.convert_series_or_fail`);
   a series that fails gives one failed row, the others go on. Series without XML are logged and counted.
4. Catalog: the ``lidc`` rows of the catalog and domains tables are replaced, with every row carrying its
   patient's split; ``nodules.parquet`` gets one row per nodule of every converted series. Both are written
   atomically and only when their content changed.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from catalog import patient_splits, save_nodules

from .config import PrepConfig
from .executor import Task, run_tasks
from .job import BuildResult, write_catalog
from .sources.lidc import (
    DOMAIN, SPEC, LidcParams, SeriesResult, convert_series_or_fail, estimate_series_memory, series_failed,
    series_key, series_params_hash, series_up_to_date,
)
from .sources.lidc_series import find_lidc_series
from .sources.naming import check_store_domains
from .store import build_target, domain_plan, freeze_plan, open_root
from .verify import case_damage, requested


@dataclass
class LidcBuildResult(BuildResult):
    """A build's outcome; ``converted``/``skipped`` count series, ``failed`` holds the failed series' rows."""

    nodules: pd.DataFrame = field(default_factory=pd.DataFrame)
    series: int = 0
    no_xml: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    damaged: list[str] = field(default_factory=list)
    """``lidc/case: what is damaged`` of the stored crops ``--verify`` found damaged (their series converted
    again)."""

    def summary(self) -> str:
        ok = self.catalog[(self.catalog["domain"] == DOMAIN) & (self.catalog["status"] == "ok")] \
            if len(self.catalog) else self.catalog
        lines = [
            f"store {self.store}: {self.series} series: {self.converted} converted, {self.skipped} skipped "
            f"(unchanged), {len(self.failed)} failed, {len(self.no_xml)} without reader XML "
            f"in {self.elapsed_s:.1f} s",
            f"  {len(self.nodules)} nodules ({int(self.nodules['is_small'].sum()) if len(self.nodules) else 0} "
            f"< 3 mm), {len(ok)} nodule crops",
        ]
        lines += [f"  note: {n}" for n in self.notes]
        lines += [f"  DAMAGED {d} (its series converted again)" for d in self.damaged]
        lines += [f"  no XML: {d}" for d in self.no_xml]
        lines += [f"  FAILED {r['domain']}/{r['case_id']}: {r['error']}" for r in self.failed]
        return "\n".join(lines)


def build_lidc(
    lidc_root: str | Path,
    store: str,
    cfg: PrepConfig,
    params: LidcParams = LidcParams(),
    *,
    workers: int | None = None,
    scheduler: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    storage_options: dict | None = None,
    verify: bool | None = None,
) -> LidcBuildResult:
    """Build (or update) the ``lidc`` domain of ``store`` from the series under ``lidc_root``.

    ``workers=0`` runs in this process without dask. Raises FileNotFoundError when ``lidc_root`` is no folder.
    ``verify`` (default: the command's ``--verify``) checks the crops of every unchanged series and converts a
    series again when one of its crops is damaged (:mod:`pipeline.verify`).
    """
    t0 = time.perf_counter()
    verify = requested() if verify is None else verify
    store = build_target(store)  # file:// as a folder; memory:// refused (it would not outlive the build)
    refs = find_lidc_series(lidc_root)
    check_store_domains(store, [SPEC])  # before anything is written
    root = open_root(store, storage_options=storage_options)
    result = LidcBuildResult(store=store, catalog=pd.DataFrame(), series=len(refs))
    splits = patient_splits([r.patient_id for r in refs], test_fraction=params.test_fraction,
                            val_fraction=cfg.val_fraction, seed=cfg.split_seed, domain=DOMAIN)
    phash = series_params_hash(cfg, params)
    plan = _freeze_lidc_plan(root, params)
    done, tasks = _series_tasks(root, refs, params, cfg, store, phash, storage_options, verify, result)
    result.skipped = sum(1 for r in done if r.skipped)
    log(f"{len(refs)} series: {result.skipped} unchanged (skipped), {len(tasks)} to convert, "
        f"{len(result.no_xml)} without reader XML (no nodules)")
    done += run_tasks(tasks, workers=workers, scheduler=scheduler, progress=progress, log=log,
                      unit="series", desc="lidc")

    _collect(done, splits, store, cfg, plan, result)
    result.elapsed_s = time.perf_counter() - t0
    return result


def _freeze_lidc_plan(root, params: LidcParams) -> dict[str, Any]:
    """The ``lidc`` domain's plan, written only when it changes (a re-run touches nothing)."""
    plan = {
        "target_spacing": [params.crop_spacing] * 3, "rule": "nodule crops", "crop_mm": params.crop_mm,
        "min_readers": params.min_readers, "consensus_fraction": params.consensus_fraction,
        "source_dataset": SPEC.source_dataset, "modality": SPEC.modality,
        "channel_names": list(SPEC.channel_names), "labels": {str(k): v for k, v in SPEC.labels.items()},
    }
    if domain_plan(root, DOMAIN) != plan:
        freeze_plan(root, DOMAIN, plan)
    return plan


def _series_tasks(root, refs: list, params: LidcParams, cfg: PrepConfig, store: str, phash: str,
                  storage_options: dict | None, verify: bool, result: LidcBuildResult
                  ) -> tuple[list[SeriesResult], list[Task]]:
    """(results known without converting: unchanged series, duplicated folders; a conversion task per other
    series with reader XML). Series without XML are counted in ``result.no_xml``, damaged crops of unchanged
    series (``verify``) in ``result.damaged``."""
    done: list[SeriesResult] = []
    tasks: list[Task] = []
    seen: dict[str, str] = {}
    for ref in refs:
        key = series_key(ref)
        if key in seen:  # the same series uid in two folders (a copy): one of them would overwrite the other
            done.append(_duplicate(ref, key, seen[key], phash, done))
            continue
        seen[key] = str(ref.dicom_dir)
        if ref.xml_path is None:
            result.no_xml.append(str(ref.dicom_dir))
            continue
        stored = series_up_to_date(root, ref, phash)
        if stored is not None and verify:
            problems = [f"{DOMAIN}/{row['case_id']}: {p}" for row in stored.rows
                        if (p := case_damage(root, f"{DOMAIN}/{row['case_id']}"))]
            if problems:
                result.damaged += problems
                stored = None
        if stored is not None:
            done.append(stored)
            continue
        tasks.append(Task(
            key=f"lidc-{key}-{phash}", fn=convert_series_or_fail,
            args=(ref, params, cfg, store, phash, storage_options), memory=estimate_series_memory(ref),
            on_crash=lambda msg, ref=ref: series_failed(ref, phash, f"{ref.dicom_dir}: {msg}"),
        ))
    return done, tasks


def _duplicate(ref, key: str, first: str, phash: str, done: list[SeriesResult]) -> SeriesResult:
    """The failed result of a series whose uid another folder (``first``) holds too, keyed apart."""
    dup = series_failed(ref, phash, f"{ref.dicom_dir}: series {ref.series_uid} is also in {first}; keep one copy")
    n_dup = sum(1 for r in done if r.key.startswith(f"{key}_copy")) + 1
    dup.key = f"{key}_copy{n_dup}"
    dup.rows[0].update(case_id=dup.key, store_path=f"{DOMAIN}/{dup.key}")
    return dup


def _collect(done: list[SeriesResult], splits: dict[str, str], store: str, cfg: PrepConfig, plan: dict[str, Any],
             result: LidcBuildResult) -> None:
    """The series' rows and nodules with their patients' splits, into the catalog, nodules table and result."""
    rows, nodules = [], []
    for res in done:
        rows += [{**row, "split": splits[row["patient_id"]]} for row in res.rows]
        nodules += [{**nod, "split": splits[nod["patient_id"]]} for nod in res.nodules]
        result.notes += res.notes
    result.converted = sum(1 for r in done if not r.skipped and not r.failed)
    result.failed = [row for row in rows if row["status"] != "ok"]
    result.catalog = write_catalog(store, rows, {DOMAIN: SPEC}, {DOMAIN: tuple(plan["target_spacing"])}, cfg)
    result.nodules = save_nodules(store, pd.DataFrame(nodules))
