"""`med3d-prep`: raw public datasets → zarr store + parquet catalog. Thin: click parses, the API works."""
from __future__ import annotations

import json
from pathlib import Path

import click

from .blosc_codecs import IMAGE_CODECS
from .cli_options import common_options, config_from_options, finish, like_config, like_options, parse_window

class _PrepGroup(click.Group):
    """Turns a build's refusal to overwrite another dataset's domain, or to write a store that would not outlive
    it (``memory://``), and an unknown ``MED3D_WORKER_START`` (checked before any command runs) into a usage
    error (one line, exit 2), and
    says no credential of a store URL (``s3://KEY:SECRET@...``): every line, error and traceback redacted."""

    def invoke(self, ctx: click.Context):
        from catalog.redact import redacted_cli
        from .executor import WorkerStartError, worker_start_method
        from .sources.naming import StoreDomainError
        from .store import UnusableStoreError

        with redacted_cli():
            try:
                worker_start_method()
                return super().invoke(ctx)
            except (StoreDomainError, UnusableStoreError, WorkerStartError) as exc:
                raise click.UsageError(str(exc), ctx) from None


@click.group(cls=_PrepGroup, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Convert raw medical datasets into a Med3D zarr store with a pandas catalog."""


@main.command()
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--size", type=click.Choice(["tiny", "bench"]), default="tiny", show_default=True)
@click.option("--only", type=click.Choice(["all", "msd", "lits", "lidc", "visceral", "nnunet"]), default="all",
              show_default=True, help="Which sources to write (nnunet: the MSD hippocampus task in nnU-Net v2 "
                                      "layout, with the MSD sample it is made from).")
def sample(out: Path, seed: int, size: str, only: str) -> None:
    """Write miniature raw datasets in the real layouts under OUT (OUT/msd, OUT/lits, OUT/lidc, OUT/visceral,
    OUT/nnunet)."""
    from .sample import write_all

    try:
        written = write_all(out, seed=seed, size=size, only=only)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    for name, paths in written.items():  # a writer may return folders (LIDC: one per patient)
        files = sum(1 for p in paths for f in (p.rglob("*") if p.is_dir() else [p]) if f.is_file())
        click.echo(f"{name}: {files} files under {out / name}")


@main.command("build-3dseg8")
@click.argument("msd_root", type=click.Path(exists=True, file_okay=False))
@click.argument("store")
@click.option("--tasks", default=None, help="Comma-separated subset, e.g. Task04_Hippocampus,Task09_Spleen.")
@common_options
@like_options
def build_3dseg8(msd_root, store, tasks, workers, scheduler, dtype, chunks, image_codec, codec, replan,
                 no_progress, max_voxels, like, like_domain) -> None:
    """Build the eight 3DSeg-8 MSD tasks found under MSD_ROOT into STORE."""
    from .cli_sources import scanned_tasks
    from .job import build
    from .sources.msd import scan_msd

    found, missing = scanned_tasks(scan_msd, msd_root, tasks.split(",") if tasks else None,
                                   "no 3DSeg-8 task folder")
    click.echo("building: " + ", ".join(f"{spec.source_dataset} ({len(c)} cases)" for spec, c in found))
    like_cfg, spacing = like_config(like, like_domain, [spec for spec, _ in found])
    cfg = config_from_options(dtype, chunks, codec, max_voxels, image_codec=image_codec, like=like_cfg)
    result = build(found, store, cfg, workers=workers, scheduler=scheduler, replan=replan, target_spacing=spacing,
                   progress=not no_progress, log=click.echo)
    result.missing = missing
    finish(result)


@main.command("build-lits")
@click.argument("lits_root", type=click.Path(exists=True, file_okay=False))
@click.argument("store")
@click.option("--spacing-override", "spacing_csv", type=click.Path(exists=True, dir_okay=False), default=None,
              help="CSV with columns case (or file), spacing_x, spacing_y, spacing_z (mm, file axis order); "
                   "replaces those volumes' header spacing.")
@click.option("--window", default="-200,250", show_default=True, metavar="LO,HI",
              help="CT window in HU (clip before the z-score, instead of the 0.5/99.5 percentiles).")
@common_options
@like_options
def build_lits(lits_root, store, spacing_csv, window, workers, scheduler, dtype, chunks, image_codec, codec,
               replan, no_progress, max_voxels, like, like_domain) -> None:
    """Build LiTS (volume-N.nii + segmentation-N.nii, test-volume-N.nii) under LITS_ROOT into STORE.

    Target spacing: the training volumes' mean. Headers without usable spacing (LiTS 28-47) get the mean of
    the training volumes with usable spacing and are flagged in the catalog's spacing_flag column.
    """
    from .job import build
    from .sources.lits import read_spacing_csv, scan_lits

    try:
        table = read_spacing_csv(spacing_csv) if spacing_csv else None
        spec, cases, notes = scan_lits(lits_root, table)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    for note in notes:
        click.echo(note)
    n_test = sum(1 for c in cases if c.split_hint == "test")
    click.echo(f"building: LiTS ({len(cases) - n_test} training, {n_test} test volumes)")
    like_cfg, spacing = like_config(like, like_domain, [spec])
    cfg = config_from_options(dtype, chunks, codec, max_voxels, image_codec=image_codec, ct_window=parse_window(window),
                  like=like_cfg)
    result = build([(spec, cases)], store, cfg, workers=workers, scheduler=scheduler, spacing_rule="mean",
                   replan=replan, target_spacing=spacing, progress=not no_progress, log=click.echo)
    finish(result)


@main.command("build-visceral")
@click.argument("visceral_root", type=click.Path(exists=True, file_okay=False))
@click.argument("store")
@click.option("--lung-labels", type=click.Choice(["merged", "separate"]), default="merged", show_default=True,
              help="merged: both lungs 1; separate: right lung (RadLex 1302) 1, left lung (1326) 2.")
@click.option("--test-volumes", type=click.IntRange(min=1), default=8, show_default=True,
              help="Size of the fixed test split (paper: 8 of 80; scaled down for small sets).")
@common_options
@like_options
def build_visceral(visceral_root, store, lung_labels, test_volumes, workers, scheduler, dtype, chunks,
                   image_codec, codec, replan, no_progress, max_voxels, like, like_domain) -> None:
    """Build VISCERAL Anatomy volumes (all four modalities) with lung labels under VISCERAL_ROOT into STORE.

    Volumes without masks of both lungs are stored unlabelled in split "unannotated".
    """
    from .job import build
    from .sources.visceral import scan_visceral

    cfg = config_from_options(dtype, chunks, codec, max_voxels, image_codec=image_codec)
    try:
        spec, cases, notes = scan_visceral(visceral_root, lung_labels=lung_labels, n_test=test_volumes,
                                           seed=cfg.split_seed)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    for note in notes:
        click.echo(note)
    like_cfg, spacing = like_config(like, like_domain, [spec])
    if like_cfg:
        cfg = config_from_options(dtype, chunks, codec, max_voxels, image_codec=image_codec, like=like_cfg)
    result = build([(spec, cases)], store, cfg, workers=workers, scheduler=scheduler, replan=replan,
                   target_spacing=spacing, progress=not no_progress, log=click.echo)
    finish(result)


@main.command("build-lidc")
@click.argument("lidc_root", type=click.Path(exists=True, file_okay=False))
@click.argument("store")
@click.option("--min-readers", type=click.IntRange(min=1), default=3, show_default=True,
              help="A nodule gets a crop when at least this many readers contoured it (>= 3 mm), as in LUNA16.")
@click.option("--crop-mm", type=click.FloatRange(min=0, min_open=True), default=48.0, show_default=True,
              help="Edge of the cubic crop centred on the nodule (mm).")
@click.option("--crop-spacing", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
              help="Isotropic voxel size of the crop (mm).")
@click.option("--test-fraction", type=click.FloatRange(min=0, max=1, max_open=True), default=None,
              help="Share of patients in the test split (default 99/1149, the paper's 1,050/99 nodules).")
@common_options
def build_lidc(lidc_root, store, min_readers, crop_mm, crop_spacing, test_fraction, workers, scheduler, dtype,
               chunks, image_codec, codec, replan, no_progress, max_voxels) -> None:
    """Build LIDC-IDRI (LIDC-IDRI-NNNN/<study>/<series>/*.dcm + reader XML) under LIDC_ROOT into STORE.

    One case per nodule contoured by at least --min-readers readers: a crop of --crop-mm around it, z-scored
    with its series' statistics, with the readers' consensus mask as label. STORE/nodules.parquet lists every
    nodule (ratings, benign/malignant label, split). Series without reader XML are counted and skipped.
    """
    from .job_lidc import build_lidc as build
    from .sources.lidc import LidcParams

    kw = {"test_fraction": test_fraction} if test_fraction is not None else {}
    try:
        params = LidcParams(min_readers=min_readers, crop_mm=crop_mm, crop_spacing=crop_spacing, **kw)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if replan:
        click.echo("--replan has no effect for LIDC: crops have a fixed spacing (--crop-spacing)")
    cfg = config_from_options(dtype, chunks, codec, max_voxels, image_codec=image_codec)
    result = build(lidc_root, store, cfg, params, workers=workers, scheduler=scheduler,
                   progress=not no_progress, log=click.echo)
    finish(result)


@main.command("build-medmnist")
@click.argument("npz", type=click.Path(exists=True, dir_okay=False))
@click.argument("store", type=click.Path(file_okay=False))
@click.option("--flag", default=None, help="The 3D MedMNIST set (organmnist3d, nodulemnist3d, adrenalmnist3d, "
              "fracturemnist3d, vesselmnist3d, synapsemnist3d); default: read from the file name.")
@click.option("--image-codec", type=click.Choice(IMAGE_CODECS), default="lz4hc", show_default=True,
              help="Image chunks' codec (volumes are read whole, once per run; shape masks compress ~30x).")
def build_medmnist(npz, store, flag, image_codec) -> None:
    """Build a 3D MedMNIST file (FLAG.npz 28³, FLAG_64.npz 64³) into a new STORE with STORE/labels.csv
    (case_id, label, split: the file's classes and splits) for `med3d-train finetune classify`.

    Image: each volume z-scored with its own mean and std (no clip), float32; `value × std + mean` (catalog
    columns) gives the file's uint8 volume back. Spacing: unknown, 1 mm recorded (spacing_flag no_spacing:1mm).
    A non-empty STORE is refused unless it was built from the same file (then it is left as it is).
    """
    from .job_medmnist import build_medmnist as build
    from .sources.medmnist import MedmnistError

    try:
        click.echo(build(npz, store, flag=flag, image_codec=image_codec, log=click.echo).summary())
    except MedmnistError as exc:
        raise click.UsageError(str(exc)) from None


def _add_source_commands() -> None:
    """build-msd, build-nnunet, build-totalseg (pipeline/cli_sources.py), with the common and --like options."""
    from .cli_sources import SOURCE_COMMANDS

    for name, callback in SOURCE_COMMANDS.items():
        main.command(name)(common_options(like_options(callback)))


_add_source_commands()


@main.command()
@click.argument("store")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def info(store: str, as_json: bool) -> None:
    """Per domain: volumes, failed, modality, channels, target spacing, median shape, store bytes; for an LIDC
    store also the nodules per split (benign / malignant / unlabelled among the selected ones)."""
    from .info import human_bytes, nodules_summary, store_summary

    try:
        table = store_summary(store)
        nodules = nodules_summary(store)
    except (FileNotFoundError, ValueError) as exc:  # ValueError: a damaged or crafted catalog, named
        raise click.UsageError(str(exc)) from None
    if as_json:
        records = table.to_dict("records")
        for rec in records:
            if rec["domain"] == "lidc" and nodules is not None:
                rec["nodules"] = nodules.to_dict("records")
        click.echo(json.dumps(records, indent=2))
        return
    shown = table.copy()
    shown["store_bytes"] = shown["store_bytes"].map(human_bytes)
    click.echo(shown.to_string(index=False))
    click.echo(f"total: {int(table['volumes'].sum())} volumes, {int(table['failed'].sum())} failed, "
               f"{human_bytes(table['store_bytes'].sum())}")
    if nodules is not None:
        click.echo("\nLIDC nodules (selected: contoured by enough readers to get a crop):")
        click.echo(nodules.to_string(index=False))


@main.command("ngff")
@click.argument("store")
def ngff(store: str) -> None:
    """Add OME-Zarr (NGFF 0.5) metadata to the cases of STORE built before builds wrote it, so OME-Zarr readers
    (napari, ome-zarr-models, ngff-zarr) open each case group at its size in millimetres, with its label as a
    label image. No chunk is rewritten; running it again changes nothing."""
    from .ngff import add_ngff

    try:
        add_ngff(store, log=click.echo)
    except (FileNotFoundError, ValueError) as exc:
        raise click.UsageError(str(exc)) from None


@main.command()
@click.argument("store")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.argument("more_runs", nargs=-1, metavar="", type=click.Path(exists=True, file_okay=False))
@click.option("--runs", multiple=True, type=click.Path(exists=True, file_okay=False),
              help="Run folders whose loss / Dice / throughput curves the page includes, and study folders "
                   "(med3d-train study) whose table and figures it shows: --runs RUN [RUN ...].")
@click.option("--montage-cases", type=click.IntRange(min=0), default=4, show_default=True,
              help="Cases per domain drawn (seeded) for the mid-slice montages.")
@click.option("--nodule-cases", type=click.IntRange(min=0), default=12, show_default=True,
              help="LIDC stores: nodule crops shown with their ratings.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the montage samples.")
@click.option("--dpi", type=click.IntRange(min=30, max=300), default=90, show_default=True)
def report(store, out_dir, more_runs, runs, montage_cases, nodule_cases, seed, dpi) -> None:
    """A static HTML report of STORE in OUT_DIR (index.html + PNG figures; open it in any browser).

    Per domain: original spacings against the target, original and resampled shapes, intensities before
    normalization, label voxel fractions, a montage of a few cases as stored with their labels, the failed
    cases; LIDC nodule crops with their ratings; with --runs, the runs' training curves.
    """
    from .report import build_report

    if more_runs and not runs:
        raise click.UsageError(f"unexpected argument {more_runs[0]!r}: run folders go after --runs")
    try:
        result = build_report(store, out_dir, runs=[*runs, *more_runs], montage_cases=montage_cases,
                              nodule_cases=nodule_cases, seed=seed, dpi=dpi, log=click.echo)
    except (FileNotFoundError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"wrote {result.index} ({len(result.figures)} figures, {result.seconds:.1f} s)")


def entry() -> None:
    """The console script: one malloc arena for the process before any thread exists, which the local cluster's
    forked workers inherit (:func:`pipeline.executor.one_malloc_arena`: steadier peak memory), then :func:`main`,
    then an exit without the last cycle-collector passes (:func:`catalog.console.run_console`). Both are settings
    of the whole process, so they are made here and not when the click group is called from Python."""
    from catalog.console import run_console

    from .executor import one_malloc_arena

    one_malloc_arena()
    run_console(main)


if __name__ == "__main__":
    entry()
