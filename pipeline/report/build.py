"""``med3d-prep report STORE OUT_DIR``: a static HTML page of a store's contents with PNG figures.

Statistics come from the catalog (cheap at any store size); only the montages read arrays, a bounded seeded
sample of cases per domain (``montage_cases``) and three planes of each. Layout of OUT_DIR::

    index.html                     the page (relative links only: open it from disk)
    figures/<nn>_<domain>_*.png    spacing, shapes, intensities, label fractions, montage per domain
    figures/nodules.png            LIDC stores: nodule crops with their ratings
    runs/{loss,val,throughput}.png with ``runs``: the training curves (runlog.plot)
"""
from __future__ import annotations

import datetime as _dt
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from catalog import load_catalog, load_domains, load_nodules
from runlog.plot import plot_runs, save_figure

from . import figures as F
from . import html as H
from .montage import montage_figure, read_planes, sample_cases

FIGURES = "figures"
READ_ERRORS = (KeyError, FileNotFoundError, OSError, ValueError)


@dataclass(frozen=True)
class ReportResult:
    """What :func:`build_report` wrote: the page, every PNG it links (absolute paths), the time it took."""

    index: Path
    figures: list[Path]
    seconds: float


def _slug(i: int, name: str) -> str:
    return f"{i:02d}_{re.sub(r'[^A-Za-z0-9_-]+', '_', name)[:40]}"


class _Writer:
    """Saves figures under OUT_DIR (Agg canvas), closes them, remembers the paths."""

    def __init__(self, out: Path, dpi: int) -> None:
        self.out, self.dpi, self.paths = out, dpi, []

    def save(self, fig: Figure, rel: str) -> str:
        self.paths.append(save_figure(fig, self.out / rel, self.dpi))
        return rel


def _domains_table(doms: pd.DataFrame, cat: pd.DataFrame, anchors: dict[str, str]) -> str:
    """domains.parquet as a table, with the ok volumes per split; each domain links to its section."""
    shown = doms.copy()
    ok = cat[cat["status"] == "ok"]
    for split in ("train", "val", "test", "unannotated"):
        counts = ok[ok["split"] == split].groupby("domain").size()
        if counts.sum():
            shown[split] = [int(counts.get(d, 0)) for d in shown["domain"]]
    shown["target_spacing"] = [" × ".join(f"{v:g}" for v in s) + " mm" for s in shown["target_spacing"]]
    shown = shown.rename(columns={"source_dataset": "dataset", "n_channels": "channels", "channel_names": "names",
                                  "num_classes": "classes", "target_spacing": "target (z, y, x)",
                                  "n_volumes": "volumes", "n_failed": "failed"})
    return H.table(shown, anchors=anchors)


def _title(row: pd.Series, channel_names: Sequence[str]) -> str:
    ch = f", channel {channel_names[0]}" if len(channel_names) > 1 else ""
    return f"{row['case_id']} ({row['split']}{ch})"


def _montage(store: str, ok: pd.DataFrame, domain: str, labels: Sequence[str], channel_names: Sequence[str],
             n: int, seed: int, w: _Writer, slug: str) -> str:
    picked = sample_cases(ok, n, seed, domain)
    cases, problems = [], []
    for _, row in picked.iterrows():
        try:
            planes = read_planes(store, row["store_path"],
                                 class_voxels=dict(zip(row["label_values"], row["label_voxels"])))
        except READ_ERRORS as exc:
            problems.append(f"{row['case_id']}: cannot read {row['store_path']}: {exc}")
            continue
        cases.append((planes, f"{_title(row, channel_names)}, planes through the {planes.centre_from}"))
    if not cases and not problems:
        return ""
    rel = w.save(montage_figure(cases, labels), f"{FIGURES}/{slug}_montage.png")
    caption = (f"{len(cases)} of {len(ok)} cases (seed {seed}) as stored: axial, coronal, sagittal planes "
               "(z upwards; x towards the patient's left, radiological view), label overlaid.")
    return H.figure(rel, caption) + "".join(H.paragraph(p, "warn") for p in problems)


def _domain_section(store: str, i: int, domain: str, cat: pd.DataFrame, dom: pd.Series | None, *,
                    montage_cases: int, seed: int, w: _Writer) -> H.Section:
    slug = _slug(i, domain)
    rows = cat[cat["domain"] == domain]
    ok, failed = rows[rows["status"] == "ok"], rows[rows["status"] != "ok"]
    labels = list(dom["labels"]) if dom is not None else []
    channels = list(dom["channel_names"]) if dom is not None else []
    target = list(dom["target_spacing"]) if dom is not None else (list(ok["target_spacing"].iloc[0]) if len(ok)
                                                                      else [])
    splits = ", ".join(f"{s} {n}" for s, n in ok["split"].value_counts().sort_index().items())
    parts = [H.paragraph(f"{len(ok)} volumes ok, {len(failed)} failed; "
                         f"modality {dom['modality'] if dom is not None else '?'}; "
                         f"channels {', '.join(channels) or '?'}; splits: {splits or 'none'}; target spacing "
                         f"{' × '.join(f'{v:g}' for v in target)} mm (z, y, x).")]
    if len(failed):
        parts.append(f'<p class="warn"><a href="#failed">{len(failed)} failed case(s)</a>: see their errors.</p>')
    if len(ok):
        parts.append("<h3>Spacing and shapes</h3>")
        parts.append(H.figure(w.save(F.spacing_figure(ok, target), f"{FIGURES}/{slug}_spacing.png"),
                              "Original voxel spacing of each volume (catalog orig_spacing, file axis order); "
                              "red star: the domain's target spacing."))
        parts.append(H.figure(w.save(F.shape_figure(ok), f"{FIGURES}/{slug}_shapes.png"),
                              "Original (orig_shape) and resampled, stored (shape) sizes in voxels."))
        parts.append("<h3>Intensities before normalization</h3>")
        parts.append(H.figure(w.save(F.intensity_figure(ok, channels), f"{FIGURES}/{slug}_intensity.png"),
                              "Per volume: p0.5 to p99.5 (bar) and mean (dot) in source units (HU for CT); red: "
                              f"robust z-score above {F.ROBUST_Z} (median / MAD over the domain)."))
        outliers = F.intensity_table(ok, channels)
        outliers = outliers[outliers["outlier"] != ""]
        if len(outliers):
            parts.append(H.paragraph(f"{len(outliers)} intensity outlier(s):", "warn") + H.table(outliers,
                                                                                                 max_rows=50))
        if ok["has_label"].any():
            parts.append("<h3>Label voxel fractions</h3>")
            parts.append(H.figure(w.save(F.label_fraction_figure(ok, labels), f"{FIGURES}/{slug}_labels.png"),
                                  "Share of each labelled volume's stored voxels per class (label_voxels / "
                                  "prod(shape))."))
        montage = _montage(store, ok, domain, labels, channels, montage_cases, seed, w, slug)
        if montage:
            parts.append("<h3>Montage</h3>" + montage)
    return H.Section(slug, domain, "\n".join(parts))


def _failed_section(cat: pd.DataFrame) -> H.Section:
    failed = cat[cat["status"] != "ok"]
    body = H.paragraph(f"{len(failed)} case(s) did not convert; a re-run of the build converts only these (and "
                       "any missing ones) once their files are fixed.", "warn")
    body += H.table(failed[["domain", "case_id", "source_image", "error"]], max_rows=1000, wide=("error",))
    return H.Section("failed", f"Failed cases ({len(failed)})", body)


def _nodule_section(store: str, cat: pd.DataFrame, nodules: pd.DataFrame, labels: Sequence[str], *,
                    nodule_cases: int, seed: int, w: _Writer) -> H.Section:
    from pipeline.info import nodules_summary

    parts = [H.table(nodules_summary(store))]
    ok = cat[cat["status"] == "ok"].set_index("case_id")
    crops = nodules[(nodules["case_id"] != "") & nodules["case_id"].isin(ok.index)].reset_index(drop=True)
    picked = crops.iloc[np.sort(np.random.default_rng(seed).permutation(len(crops))[:max(nodule_cases, 0)])]
    cases, problems = [], []
    for _, nod in picked.iterrows():
        rating = ", ".join(str(v) for v in nod["malignancy"]) or "none"
        diameter = f", {nod['diameter_mm']:.1f} mm" if np.isfinite(nod["diameter_mm"]) else ""
        title = f"{nod['case_id']} ({nod['split']})\n{nod['label'] or 'unrated'}: ratings {rating}{diameter}"
        try:
            cases.append((read_planes(store, ok.loc[nod["case_id"], "store_path"], centre="volume"), title))
        except READ_ERRORS as exc:
            problems.append(f"{nod['case_id']}: cannot read the crop: {exc}")
    if cases:
        rel = w.save(montage_figure(cases, labels), f"{FIGURES}/nodules.png")
        parts.append(H.figure(rel, f"{len(cases)} of {len(crops)} nodule crops (seed {seed}): mid planes of the "
                                   "stored crop, readers' consensus mask overlaid; malignancy ratings 1-5, label "
                                   "from their median (> 3: malignant)."))
        cols = ["case_id", "split", "label", "malignancy", "malignancy_median", "diameter_mm", "n_readers",
                "fraction_outside"]
        parts.append(H.table(picked[cols]))
    parts += [H.paragraph(p, "warn") for p in problems]
    return H.Section("nodules", "LIDC nodules", "\n".join(parts))


def _runs_section(runs: Sequence[str], w: _Writer) -> H.Section:
    paths = plot_runs(runs, w.out / "runs", dpi=w.dpi)
    w.paths.extend(paths.values())
    captions = {"loss": "Training loss per step (faint: raw, bold: smoothed).",
                "val": "Validation: pretraining Dice per domain and mean; fine-tuning metric on its split.",
                "throughput": "Patches per second and the share of each step spent waiting for data."}
    body = H.paragraph("Runs: " + ", ".join(str(r) for r in runs))
    body += "".join(H.figure(f"runs/{p.name}", captions[k]) for k, p in paths.items())
    return H.Section("runs", "Training runs", body)


def _study_section(i: int, study: Path, w: _Writer) -> H.Section:
    """A ``med3d-train study`` folder: its summary table (mean, 95 % interval, difference to scratch, steps to
    target) and its two figures, copied beside the page."""
    import shutil

    slug = _slug(i, study.name)
    (w.out / "studies" / slug).mkdir(parents=True, exist_ok=True)
    parts = [H.paragraph(f"Study {study}: every cell a finetune run measured on one fixed held-out split.")]
    summary = study / "summary.csv"
    if summary.is_file():
        frame = pd.read_csv(summary)
        parts.append(H.table(frame.round(4)))
    else:
        parts.append(H.paragraph("No finished cell yet (no summary.csv).", "warn"))
    captions = {"label_efficiency.png": "Test metric against labelled training patients: mean over seeds and its "
                                        "95 % Student-t interval, per init.",
                "convergence.png": "Validation metric against step, mean over seeds, per training fraction."}
    for name, caption in captions.items():
        if (study / name).is_file():
            dest = w.out / "studies" / slug / name
            shutil.copyfile(study / name, dest)
            w.paths.append(dest)
            parts.append(H.figure(f"studies/{slug}/{name}", caption))
    return H.Section(f"study-{slug}", f"Study: {study.name}", "\n".join(parts))


def build_report(store: str, out_dir: str | os.PathLike[str], *, runs: Sequence[str] = (), montage_cases: int = 4,
                 nodule_cases: int = 12, seed: int = 0, dpi: int = 90,
                 log: Callable[[str], None] | None = None) -> ReportResult:
    """Write OUT_DIR/index.html and its figures for ``store`` (see the module docstring).

    ``montage_cases``: cases per domain drawn (seeded by ``seed`` and the domain) for the montages;
    ``nodule_cases``: LIDC crops shown; ``runs``: run folders whose curves the page includes. Raises
    FileNotFoundError when ``store`` has no catalog, ValueError for a run folder without metrics.
    """
    t0 = time.perf_counter()
    log = log or (lambda s: None)
    cat, doms = load_catalog(store), load_domains(store)
    nodules = load_nodules(store, missing_ok=True)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    w = _Writer(out, dpi)
    by_domain = doms.set_index("domain")
    names = list(dict.fromkeys([*doms["domain"], *sorted(set(cat["domain"]) - set(doms["domain"]))]))
    n_ok, n_failed = int((cat["status"] == "ok").sum()), int((cat["status"] != "ok").sum())
    summary = H.paragraph(f"{len(names)} domain(s), {n_ok} volumes ok, {n_failed} failed.")
    if n_failed:
        summary += f'<p class="warn"><a href="#failed">{n_failed} failed case(s)</a> with their errors.</p>'
    summary += _domains_table(doms, cat, {d: _slug(i, d) for i, d in enumerate(names)})
    sections = [H.Section("domains", "Domains", summary)]
    for i, domain in enumerate(names):
        log(f"report: {domain}")
        dom = by_domain.loc[domain] if domain in by_domain.index else None
        sections.append(_domain_section(store, i, domain, cat, dom, montage_cases=montage_cases, seed=seed, w=w))
    if n_failed:
        sections.append(_failed_section(cat))
    if nodules is not None:
        lidc = by_domain.loc["lidc"]["labels"] if "lidc" in by_domain.index else ["", "nodule"]
        sections.append(_nodule_section(store, cat, nodules, list(lidc), nodule_cases=nodule_cases, seed=seed,
                                        w=w))
    studies = [Path(r) for r in runs if (Path(r) / "study.json").is_file()]
    runs = [r for r in runs if Path(r) not in studies]
    if runs:
        log("report: training curves")
        sections.append(_runs_section(runs, w))
    for i, study in enumerate(studies):
        log(f"report: study {study}")
        sections.append(_study_section(i, study, w))
    stamp = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    text = H.page(f"Med3D store report: {Path(str(store)).name}", f"{store} · generated {stamp}", sections)
    index = out / "index.html"
    tmp = out / ".index.html.tmp"
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, index)
    return ReportResult(index=index, figures=list(w.paths), seconds=time.perf_counter() - t0)
