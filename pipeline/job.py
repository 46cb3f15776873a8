"""The build job: scan → plan → convert → catalog.

Every per-case step is a pure function from ``convert``/``geometry``; here they become tasks
(:class:`~pipeline.executor.Task`, deterministic keys, estimated memory) with resume and failure accounting,
run by :func:`pipeline.executor.run_tasks`, the only code that knows about dask.
"""
from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from catalog import assign_splits, load_catalog, load_domains, save_catalog, save_domains
from catalog.splits import duplicate_scans
from volume import geometry
from volume.diagnose import unreadable_file
from volume.integrity import check_resampled_voxels

from .config import Case, DomainSpec, PrepConfig
from .convert import case_params_hash, check_case_headers, convert_or_fail, failed_row, is_up_to_date
from .store import build_target, domain_plan, freeze_plan, open_root
from .executor import Task, dask_client, run_tasks
from .sources.naming import check_store_domains
from .verify import case_damage, requested

_BASE_OVERHEAD = 150 * 2**20



@dataclass
class CaseHeader:
    """What the plan needs of one case, from headers only."""

    spacing_zyx: tuple[float, float, float]
    size_zyx: tuple[int, int, int]
    n_channels: int
    component_bytes: int
    error: str = ""


@dataclass
class BuildResult:
    store: str
    catalog: pd.DataFrame
    converted: int = 0
    skipped: int = 0
    failed: list[dict[str, Any]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    target_spacing: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    duplicates: list[list[str]] = field(default_factory=list)
    verified: int = 0
    """Unchanged cases whose files ``--verify`` found intact."""
    damaged: list[str] = field(default_factory=list)
    """``domain/case: what is damaged`` of the stored cases ``--verify`` found damaged (converted again)."""
    """Groups of ``domain/case_id`` holding the same image bytes (one scan under several names), each group
    kept in one split."""

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        lines = [
            f"store {self.store}: {self.converted} converted, {self.skipped} skipped (unchanged), "
            f"{len(self.failed)} failed in {self.elapsed_s:.1f} s"
        ]
        for dom, sp in sorted(self.target_spacing.items()):
            lines.append(f"  {dom}: target spacing (z, y, x) = {tuple(round(s, 4) for s in sp)} mm")
        if self.verified or self.damaged:
            lines.append(f"  verify: {self.verified} stored case(s) intact, {len(self.damaged)} damaged and "
                         "converted again")
            lines += [f"  DAMAGED {d}" for d in self.damaged]
        if self.duplicates:
            shown = "; ".join(" = ".join(g) for g in self.duplicates[:5])
            more = f" (and {len(self.duplicates) - 5} more)" if len(self.duplicates) > 5 else ""
            lines.append(f"  {len(self.duplicates)} scan(s) stored under more than one name (identical image "
                         f"files), each kept in one split: {shown}{more}")
        for row in self.failed:
            lines.append(f"  FAILED {row['domain']}/{row['case_id']}: {row['error']}")
        return "\n".join(lines)


def read_case_header(case: Case, max_voxels: int | None = None) -> CaseHeader:
    """Header-only geometry of a case in canonical (z, y, x) axes; errors are returned, not raised. A case whose
    files fail the header checks (``convert.check_case_headers``) gets its error here, before any voxel read,
    and does not enter the plan."""
    try:
        check_case_headers(case, max_voxels)
        hdr = geometry.read_header(case.images[0])
        if case.spacing_override is not None:
            hdr = geometry.Header(**{**vars(hdr), "spacing": tuple(float(s) for s in case.spacing_override)})
        n_channels = sum(geometry.read_header(p).n_channels for p in case.images[1:]) + hdr.n_channels
        return CaseHeader(hdr.canonical_spacing_zyx(), hdr.canonical_size_zyx(), n_channels, hdr.component_bytes)
    except ValueError as exc:
        return CaseHeader((0.0, 0.0, 0.0), (0, 0, 0), 0, 0, error=str(exc))
    except Exception as exc:  # a damaged header field no check foresaw must not abort the build
        return CaseHeader((0.0, 0.0, 0.0), (0, 0, 0), 0, 0, error=unreadable_file(case.images[0], exc))


def estimate_memory(h: CaseHeader, target_zyx: tuple[float, float, float]) -> int:
    """Peak bytes of converting a case: source volume + its clamped copy per channel, the float32 resampled
    channel, the output array, and the label at both grids (uint8)."""
    n_src = int(np.prod(h.size_zyx))
    n_tgt = int(np.prod([n * s / t for n, s, t in zip(h.size_zyx, h.spacing_zyx, target_zyx)]))
    per_channel = n_src * (2 * h.component_bytes) + n_tgt * (4 + 4)
    out = n_tgt * 4 * h.n_channels
    label = n_src * 4 + n_tgt * 2
    return int(_BASE_OVERHEAD + h.n_channels * n_src * h.component_bytes + per_channel + out + label)


def plan_target_spacing(headers: list[CaseHeader], rule: str = "median") -> tuple[float, float, float]:
    spacings = [h.spacing_zyx for h in headers if not h.error]
    if rule == "median":
        return geometry.median_spacing(spacings)
    if rule == "mean":
        return tuple(float(round(v, 6)) for v in np.mean(np.asarray(spacings), axis=0))
    raise ValueError(f"unknown spacing rule {rule!r} (median or mean)")


def build(
    domains: list[tuple[DomainSpec, list[Case]]],
    store: str,
    cfg: PrepConfig,
    *,
    workers: int | None = None,
    scheduler: str | None = None,
    spacing_rule: str = "median",
    replan: bool = False,
    target_spacing: dict[str, tuple[float, float, float]] | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    storage_options: dict | None = None,
    verify: bool | None = None,
) -> BuildResult:
    """Build (or update) a store from cases. ``workers=0`` runs in this process without dask (debugging).

    The target spacing of a domain is planned from the headers of its labelled cases (all cases when none is
    labelled), with spacing overrides applied: ``spacing_rule`` "median" per axis (3DSeg-8) or "mean" (LiTS).
    ``target_spacing`` (domain → (z, y, x) mm) overrides the planned spacing of the named domains.
    ``verify`` (default: the command's ``--verify``) checks the files of every unchanged case and rebuilds the
    damaged ones (:mod:`pipeline.verify`).
    """
    t0 = time.perf_counter()
    verify = requested() if verify is None else verify
    store = build_target(store)  # file:// as a folder; memory:// refused (it would not outlive the build)
    check_store_domains(store, [spec for spec, _ in domains])  # before anything is written, for every caller
    root = open_root(store, storage_options=storage_options)
    all_cases = [(spec, c) for spec, cases in domains for c in cases]
    specs = {spec.name: spec for spec, _ in domains}
    result = BuildResult(store=store, catalog=pd.DataFrame())
    rows: list[dict[str, Any]] = []

    # A re-run costs what finding the unchanged cases costs. In a domain whose plan is frozen and kept (no
    # --replan, no given spacing) the target spacing is known, so each case is checked against its completion
    # marker first: an unchanged case needs no header read and no worker. Headers are read, and a cluster
    # started, only for the cases that remain (in a domain planned now: all of its cases).
    frozen = _frozen_spacings(root, specs, replan, target_spacing)
    pending = _skip_unchanged(root, all_cases, frozen, cfg, verify, result, rows)
    cluster = not (workers == 0 and not scheduler) and bool(pending)
    with (dask_client(workers, scheduler) if cluster else contextlib.nullcontext(None)) as client:
        headers = _read_headers([c for _, c in pending], cfg, client)
        targets = _plan_targets(root, specs, pending, headers, rule=spacing_rule, given=target_spacing or {},
                                replan=replan, log=log)
        result.target_spacing = dict(targets)
        tasks = _conversion_tasks(root, pending, headers, targets, frozen, cfg, store, storage_options, verify,
                                  result, rows)
        log(f"{len(all_cases)} cases: {result.skipped} unchanged (skipped), {len(tasks)} to convert")
        rows.extend(run_tasks(tasks, client=client, workers=workers, progress=progress, log=log))

    result.converted = sum(1 for r in rows if r["status"] == "ok") - result.skipped
    result.failed = [r for r in rows if r["status"] != "ok"]
    result.catalog = write_catalog(store, rows, specs, targets, cfg)
    result.duplicates = duplicate_scans(result.catalog[result.catalog["domain"].isin(list(specs))])
    result.elapsed_s = time.perf_counter() - t0
    return result


def _frozen_spacings(root, specs: dict[str, DomainSpec], replan: bool,
                     given: dict[str, tuple[float, float, float]] | None) -> dict[str, tuple[float, float, float]]:
    """Target spacing of each domain whose frozen plan this build keeps (no --replan, no spacing given)."""
    frozen: dict[str, tuple[float, float, float]] = {}
    for name in specs:
        plan = None if replan or name in (given or {}) else domain_plan(root, name)
        if plan:
            frozen[name] = tuple(plan["target_spacing"])
    return frozen


def _skip_unchanged(root, all_cases: list[tuple[DomainSpec, Case]], frozen: dict[str, tuple[float, float, float]],
                    cfg: PrepConfig, verify: bool, result: BuildResult, rows: list[dict[str, Any]]
                    ) -> list[tuple[DomainSpec, Case]]:
    """Rows of the unchanged cases of frozen domains appended to ``rows``; the cases still to look at."""
    pending = []
    for spec, case in all_cases:
        if spec.name in frozen:
            row = _unchanged(root, case, case_params_hash(case, cfg, frozen[spec.name], spec), verify, result)
            if row is not None:
                _keep(row, case, result, rows)
                continue
        pending.append((spec, case))
    return pending


def _keep(row: dict[str, Any], case: Case, result: BuildResult, rows: list[dict[str, Any]]) -> None:
    # A source may fix another split on a later scan (e.g. a VISCERAL test set drawn from more volumes) without
    # the case's bytes changing: the hint of this scan wins.
    rows.append({**row, "split": case.split_hint or ""})
    result.skipped += 1


def _read_headers(cases: list[Case], cfg: PrepConfig, client) -> list[CaseHeader]:
    """Every case's header, on the cluster when there is one."""
    read_header = functools.partial(read_case_header, max_voxels=cfg.max_voxels)
    if client is None:
        return [read_header(c) for c in cases]
    return client.gather(client.map(read_header, cases, pure=False))


def _plan_targets(root, specs: dict[str, DomainSpec], pending: list[tuple[DomainSpec, Case]],
                  headers: list[CaseHeader], *, rule: str, given: dict[str, tuple[float, float, float]],
                  replan: bool, log: Callable[[str], None]) -> dict[str, tuple[float, float, float]]:
    """Target spacing per domain, planned from the readable headers of its labelled cases (all its readable
    cases when none is labelled), or frozen, or given."""
    targets: dict[str, tuple[float, float, float]] = {}
    for name, spec in specs.items():
        hs = [h for (s, c), h in zip(pending, headers) if s.name == name and c.has_label_source and not h.error]
        hs = hs or [h for (s, _), h in zip(pending, headers) if s.name == name and not h.error]
        target = plan_domain(root, spec, hs, rule=rule, given=given.get(name), replan=replan, log=log)
        if target is not None:
            targets[name] = target
    return targets


def _conversion_tasks(root, pending: list[tuple[DomainSpec, Case]], headers: list[CaseHeader],
                      targets: dict[str, tuple[float, float, float]], frozen: dict[str, tuple[float, float, float]],
                      cfg: PrepConfig, store: str, storage_options: dict | None, verify: bool,
                      result: BuildResult, rows: list[dict[str, Any]]) -> list[Task]:
    """A conversion task per case to convert; failed rows (unreadable header, a grid too large) and the rows
    of unchanged cases of replanned domains go to ``rows``."""
    tasks = []
    for (spec, case), hdr in zip(pending, headers):
        if hdr.error or spec.name not in targets:
            rows.append(failed_row(case, spec, "", hdr.error or "no readable case in its domain"))
            continue
        target = targets[spec.name]
        phash = case_params_hash(case, cfg, target, spec)
        try:  # a spacing far from the plan's makes a grid that does not fit: refused before any voxel read
            check_resampled_voxels(case.images[0], hdr.size_zyx, hdr.spacing_zyx, target, hdr.n_channels,
                                   cfg.max_voxels)
        except ValueError as exc:
            rows.append(failed_row(case, spec, "", str(exc)))
            continue
        row = None if spec.name in frozen else _unchanged(root, case, phash, verify, result)  # --replan
        if row is not None:
            _keep(row, case, result, rows)
            continue
        tasks.append(Task(
            key=f"convert-{case.domain}-{case.case_id}-{phash}",
            fn=convert_or_fail, args=(case, spec, target, cfg, store, phash, storage_options),
            memory=estimate_memory(hdr, target),
            on_crash=functools.partial(_crashed_row, case, spec, phash),
        ))
    return tasks


def _unchanged(root, case: Case, phash: str, verify: bool, result: BuildResult) -> dict[str, Any] | None:
    """The stored row of an unchanged case (``convert.is_up_to_date``); with ``verify``, None for a case whose
    files are damaged, which is noted in ``result.damaged`` and converted again."""
    row = is_up_to_date(root, case, phash)
    if row is not None:  # the case's own (absolute) paths: a store built before recorded them relative
        row = {**row, "source_image": ";".join(case.images), "source_label": ";".join(case.label_files)}
    if row is not None and verify:
        problem = case_damage(root, case.store_path)
        if problem:
            result.damaged.append(f"{case.domain}/{case.case_id}: {problem}")
            return None
    if verify:
        result.verified += row is not None
    return row


def plan_domain(root, spec: DomainSpec, headers: list[CaseHeader], *, rule: str, given=None, replan: bool = False,
                log: Callable[[str], None] = print) -> tuple[float, float, float] | None:
    """A domain's target spacing (z, y, x) mm: ``given``, else the store's frozen plan (unless ``replan``), else
    planned from ``headers`` by ``rule`` and frozen. None when there is nothing to plan from."""
    frozen = None if replan or given is not None else domain_plan(root, spec.name)
    if frozen:
        log(f"{spec.name}: using the frozen plan's target spacing {tuple(frozen['target_spacing'])} mm "
            f"(planned from {frozen['n_cases']} cases; --replan recomputes it)")
        return tuple(frozen["target_spacing"])
    if given is None and not headers:
        return None
    target = tuple(float(v) for v in given) if given is not None else plan_target_spacing(headers, rule)
    freeze_plan(root, spec.name, {
        "target_spacing": list(target), "rule": "given" if given is not None else rule, "n_cases": len(headers),
        "source_dataset": spec.source_dataset, "modality": spec.modality,
        "channel_names": list(spec.channel_names), "labels": {str(k): v for k, v in spec.labels.items()},
    })
    return target


def _crashed_row(case: Case, spec: DomainSpec, phash: str, message: str) -> dict[str, Any]:
    return failed_row(case, spec, phash, f"{case.images[0]}: {message}")


def write_catalog(store: str, rows: list[dict[str, Any]], specs: dict[str, DomainSpec],
                  targets: dict[str, tuple[float, float, float]], cfg: PrepConfig) -> pd.DataFrame:
    """Replace the catalog rows and domain rows of ``specs``' domains (other domains are kept); rows with an
    empty split get one from :func:`catalog.assign_splits`. Returns the written catalog."""
    new = pd.DataFrame(rows) if rows else pd.DataFrame(columns=["domain", "case_id", "split", "status"])
    old = load_catalog(store, missing_ok=True)
    keep = old[~old["domain"].isin(list(specs))]
    cat = pd.concat([keep, new], ignore_index=True) if len(keep) else new
    if "has_label" not in cat:
        cat["has_label"] = False
    cat["has_label"] = cat["has_label"].fillna(False).astype(bool)
    cat["split"] = cat["split"].fillna("")
    cat["split"] = assign_splits(cat, cfg.val_fraction, cfg.split_seed)
    cat = save_catalog(store, cat)

    dom_rows = []
    try:
        old_domains = load_domains(store)
        dom_rows = old_domains[~old_domains["domain"].isin(list(specs))].to_dict("records")
    except FileNotFoundError:
        pass
    for name, spec in specs.items():
        sub = cat[cat["domain"] == name]
        dom_rows.append({
            "domain": name, "source_dataset": spec.source_dataset, "modality": spec.modality,
            "n_channels": len(spec.channel_names), "channel_names": list(spec.channel_names),
            "labels": [spec.labels.get(i, "") for i in range(spec.num_classes)],
            "num_classes": spec.num_classes, "target_spacing": list(targets.get(name, ())),
            "n_volumes": int((sub["status"] == "ok").sum()), "n_failed": int((sub["status"] != "ok").sum()),
        })
    save_domains(store, pd.DataFrame(dom_rows))
    return cat
