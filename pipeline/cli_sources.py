"""`med3d-prep build-msd | build-nnunet | build-totalseg`: more pretraining domains (thin: parse, call the API).

Each command turns its layout into ``(DomainSpec, [Case])`` with a source module and hands them to
``pipeline.job.build``, like ``build-3dseg8``: the same conversion, plan, resume and failure handling.

:mod:`pipeline.cli` registers :data:`SOURCE_COMMANDS` on ``med3d-prep`` with the common build options
(``--workers``, ``--dtype``...) and ``--like`` of :mod:`pipeline.cli_options`, which both modules use; this one
never imports the CLI (that was a circle).
"""
from __future__ import annotations

import click

__all__ = ["SOURCE_COMMANDS", "build_msd", "build_nnunet", "build_totalseg"]


def _csv(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def scanned(scan, *args, **kwargs):
    """``scan(*args, **kwargs)``, a source's scan of its raw layout; its ValueError (a layout it cannot read)
    becomes a one-line usage error."""
    try:
        return scan(*args, **kwargs)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None


def scanned_tasks(scan, root, tasks, none_found: str):
    """The ``(found, missing)`` task folders of an MSD-style ``scan(root, tasks)``: the missing ones are listed,
    none found is a usage error (``none_found``, "under ROOT" appended)."""
    found, missing = scanned(scan, root, tasks)
    if missing:
        click.echo(f"not found under {root} (skipped): {', '.join(missing)}")
    if not found:
        raise click.UsageError(f"{none_found} under {root}")
    return found, missing


def _build(found, store, *, workers, scheduler, dtype, chunks, image_codec, codec, replan, no_progress,
           max_voxels, like, like_domain, missing: list[str] | None = None) -> None:
    from .cli_options import config_from_options, finish, like_config
    from .job import build

    click.echo("building: " + ", ".join(f"{spec.source_dataset} as {spec.name} ({len(c)} cases)"
                                        for spec, c in found))
    like_cfg, spacing = like_config(like, like_domain, [spec for spec, _ in found])
    cfg = config_from_options(dtype, chunks, codec, max_voxels, image_codec=image_codec, like=like_cfg)
    result = build(found, store, cfg, workers=workers, scheduler=scheduler, replan=replan, target_spacing=spacing,
                   progress=not no_progress, log=click.echo)
    result.missing = missing or []
    finish(result)


@click.argument("root", type=click.Path(exists=True, file_okay=False))
@click.argument("store")
@click.option("--tasks", default=None, help="Comma-separated task folders or domain names, e.g. "
              "Task06_Lung,Task10_Colon (default: every folder under ROOT with a dataset.json).")
def build_msd(root, store, tasks, **common) -> None:
    """Build any MSD task folders under ROOT (or ROOT itself, a TaskNN_Name folder) into STORE.

    The per-task source of build-3dseg8 (which stays the paper's eight tasks); domains: the 3DSeg-8 names for
    those eight, otherwise the folder name after TaskNN_ in snake case (Task06_Lung -> lung).
    """
    from .sources.msd_tasks import scan_msd_tasks

    found, missing = scanned_tasks(scan_msd_tasks, root, _csv(tasks), "none of the requested tasks is")
    _build(found, store, missing=missing, **common)


@click.argument("dataset", type=click.Path(exists=True, file_okay=False))
@click.argument("store")
@click.option("--domain", default=None, help="Domain name in the store (default: the folder name after "
              "DatasetNNN_ in lower case, Dataset220_KiTS2023 -> kits2023).")
def build_nnunet(dataset, store, domain, **common) -> None:
    """Build an nnU-Net v2 raw dataset folder (DATASET = nnUNet_raw/DatasetNNN_Name) into STORE.

    Reads dataset.json (channel_names, labels, file_ending), imagesTr/<case>_XXXX<ending> (one file per
    channel), labelsTr/<case><ending>, and imagesTs/ as the unlabelled test split.
    """
    from .sources.nnunet import scan_nnunet

    spec, cases, notes = scanned(scan_nnunet, dataset, domain)
    for note in notes:
        click.echo(note)
    _build([(spec, cases)], store, **common)


@click.argument("root", type=click.Path(exists=True, file_okay=False))
@click.argument("store")
@click.option("--classes", default=None, metavar="A,B,...",
              help="Classes to compose, label values 1..N in this order (file names in <subject>/segmentations/).")
@click.option("--groups", default=None, metavar="G[,G...]",
              help="Class groups instead: organs, vertebrae, cardiac, muscles, ribs (TotalSegmentator v2's five "
                   "parts) or all (the 117 classes with TotalSegmentator's own values).")
@click.option("--domain", default="totalseg", show_default=True, help="Domain name in the store.")
def build_totalseg(root, store, classes, groups, domain, **common) -> None:
    """Build a TotalSegmentator dataset (ROOT/<subject>/ct.nii.gz + segmentations/<class>.nii.gz, meta.csv)
    into STORE, one label per subject composed from the chosen class masks.

    The dataset's train/val/test split (meta.csv) is kept. A missing mask file of a chosen class fails its
    subject (TotalSegmentator writes every class file, empty when the structure is absent).
    """
    from .sources.totalseg import scan_totalseg

    spec, cases, notes = scanned(scan_totalseg, root, _csv(classes), _csv(groups), domain=domain)
    for note in notes:
        click.echo(note)
    click.echo(f"classes: {', '.join(f'{v} {n}' for v, n in spec.labels.items() if v)}")
    _build([(spec, cases)], store, **common)


SOURCE_COMMANDS = {"build-msd": build_msd, "build-nnunet": build_nnunet, "build-totalseg": build_totalseg}
"""Command name → callback (with its arguments and own options attached); the common options come from the CLI."""
