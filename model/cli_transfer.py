"""``med3d-train evaluate | predict | compare | plot``: the commands that read fine-tuning runs (thin: parse, call
the API; ``finetune`` is :mod:`model.cli_finetune`).

    med3d-train evaluate RUN STORE [--split val|test]
    med3d-train predict  RUN scan.nii.gz|FOLDER|imagesTs [more...] --out DIR
    med3d-train compare  RUN [RUN ...] [--out DIR]
    med3d-train plot     RUN [RUN ...] [--out DIR]
"""

from __future__ import annotations

import math

import click

from model.cli_types import loader_error

__all__ = ["compare", "evaluate", "plot", "predict"]


def _voxel_count(value: str | None) -> int | None:
    """``--max-voxels``: a positive whole number, also as 2e9 or 2_000_000_000."""
    try:
        n = None if value is None else float(value.replace("_", "").replace(",", ""))
    except ValueError:
        n = math.nan
    if n is not None and not (math.isfinite(n) and n >= 1 and n == int(n)):
        raise click.BadParameter(f"{value!r}: give a positive whole number of voxels, e.g. 2e9",
                                 param_hint="--max-voxels")
    return None if n is None else int(n)


@click.command()
@click.argument("run", type=click.Path(exists=True, file_okay=False))
@click.argument("store")
@click.option("--split", type=click.Choice(["train", "val", "test"]), default=None,
              help="Default: the split the run's task chose to measure on, recorded in finetune.json (e.g. liver: "
                   "val, since LiTS test labels are not public; seg: test when the store labels it, else val).")
@click.option("--device", default="cpu", show_default=True)
@click.option("--amp/--no-amp", default=False, show_default=True)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Evaluate the first N cases only.")
@click.option("--progress/--no-progress", default=True)
def evaluate(run: str, store: str, split: str | None, device: str, amp: bool, limit: int | None,
             progress: bool) -> None:
    """Measure RUN on a split of STORE; writes RUN/eval/<split>/{cases.csv, summary.json, pred/}."""
    from model.api import evaluate as run_evaluate

    try:
        summary = run_evaluate(run, store, split=split, device=device, amp=amp, limit=limit, progress=progress,
                               log=click.echo)
    except (ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from exc
    except OSError as exc:  # a damaged store (catalog.chunk_read.DamagedStoreError), a damaged checkpoint
        raise loader_error(exc) from exc
    rows = [(k, v) for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    click.echo(f"| {summary['task']} on {summary['split']} | value |\n|---|---:|")
    for k, v in rows:
        click.echo(f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |")
    if "confusion" in summary:
        names = "/".join(map(str, summary.get("classes", ["benign", "malignant"])))
        click.echo(f"confusion (rows truth, columns predicted; {names}): {summary['confusion']}")


@click.command()
@click.argument("run", type=click.Path(exists=True, file_okay=False))
@click.argument("scans", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False), help="Folder for the masks.")
@click.option("--modality", type=click.Choice(["CT", "MR"]), default=None,
              help="Needed for runs trained on a mixed CT/MR store (VISCERAL).")
@click.option("--spacing", default=None, metavar="X,Y,Z",
              help="Spacing (mm, file axis order) for scans whose header has none (e.g. LiTS 28-47).")
@click.option("--device", default="cpu", show_default=True)
@click.option("--amp/--no-amp", default=False, show_default=True)
@click.option("--max-voxels", default=None, metavar="N", callback=lambda ctx, param, v: _voxel_count(v),
              help="Largest scan (voxels × channels, as stored and after resampling) to read, e.g. 2e9 (the "
                   "default, as the build's); a header announcing more is skipped as damaged before any read.")
@click.option("--overwrite", is_flag=True,
              help="Replace output files that exist already (an earlier predict's). Inputs are never replaced.")
@click.option("--engine", type=click.Choice(["torch", "onnx"]), default="torch", show_default=True,
              help="onnx: the run's network exported to ONNX and run by onnxruntime (seg and classify runs).")
@click.option("--onnx", "onnx_file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="With --engine onnx: this export of RUN (`export RUN --format onnx`). Default: export now.")
@click.option("--format", "output_format", type=click.Choice(["nifti", "dicom-seg"]), default="nifti",
              show_default=True, help="dicom-seg: a DICOM Segmentation object per DICOM series input "
              "(SERIESFOLDER_seg.dcm), one segment per class, referencing the source slices (pip install "
              "'med3d[dicom]').")
def predict(run: str, scans: tuple[str, ...], out: str, modality: str | None, spacing: str | None, device: str,
            amp: bool, max_voxels: int | None, overwrite: bool, engine: str, onnx_file: str | None,
            output_format: str) -> None:
    """Segment raw SCANS (files or folders, an nnU-Net imagesTs folder too) with RUN; one mask per case in OUT,
    in that scan's own geometry (nnU-Net channel files CASE_0000... give CASE.nii.gz). A classify RUN writes
    OUT/predictions.csv instead: one row of class probabilities per scan.

    Every file passes the build's header checks first; a case that fails is skipped with a line naming the file,
    the others are predicted, and the exit status is then non-zero. An output that is an input file is refused,
    and one that exists already unless --overwrite, before anything is written. A DICOM series is given as the
    folder of its slices; --format dicom-seg writes its mask as a DICOM SEG referencing them."""
    from model.api import predict as run_predict
    from model.api import run_task

    spacing_xyz = None
    if spacing is not None:
        try:
            spacing_xyz = tuple(float(v) for v in spacing.split(","))
        except ValueError:
            raise click.BadParameter("give three spacings in mm, e.g. 0.7,0.7,2.5", param_hint="--spacing") from None
        if len(spacing_xyz) != 3 or not all(math.isfinite(v) and v > 0 for v in spacing_xyz):
            raise click.BadParameter("give three positive spacings in mm, e.g. 0.7,0.7,2.5", param_hint="--spacing")
    if onnx_file is not None and engine != "onnx":
        raise click.UsageError("--onnx FILE needs --engine onnx")
    if engine == "onnx" and amp:
        raise click.UsageError("--amp is torch's autocast; the ONNX engine runs the exported float32 network")
    try:
        if engine == "onnx":
            from model.export.onnx_engine import predict_onnx

            predict_onnx(run, scans, out, onnx_file=onnx_file, modality=modality, spacing_xyz=spacing_xyz,
                         device=device, max_voxels=max_voxels, overwrite=overwrite, output_format=output_format,
                         log=click.echo)
            return
        segmentation = run_task(run).segmentation
        if output_format != "nifti" and not segmentation:
            raise click.UsageError(f"--format {output_format} writes masks; {run} is a classify run, whose "
                                   "predictions are a table (OUT/predictions.csv): leave --format out")
        extra = {"output_format": output_format} if segmentation else {}  # classify writes a table
        run_predict(run, scans, out, modality=modality, spacing_xyz=spacing_xyz, device=device, amp=amp,
                    max_voxels=max_voxels, overwrite=overwrite, log=click.echo, **extra)
    except (ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from exc


@click.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--out", "-o", default=".", show_default=True, type=click.Path(file_okay=False),
              help="Folder for compare.md and compare.csv.")
def compare(runs: tuple[str, ...], out: str) -> None:
    """The paper's table from finished RUNS: task x depth rows, scratch / Kinetics / MedicalNet / Med3D columns."""
    from model.evaluation.compare import collect_runs, compare_table, missing_runs, write_compare

    import warnings

    with warnings.catch_warnings(record=True) as caught:  # said once each as a line, not with source lines
        warnings.simplefilter("always")
        try:
            df = collect_runs(runs)
        except ValueError as exc:
            raise click.ClickException(str(exc)) from exc
        table = compare_table(df)
        fill = missing_runs(df)
        md, csv = write_compare(df, out)
    for message in dict.fromkeys(str(w.message) for w in caught):
        click.echo(f"note: {message}")
    click.echo(table.to_markdown() if _has_tabulate() else table.to_string())
    if fill:
        click.echo("\n".join(["", "Empty columns, and the commands that fill them:", *fill, ""]))
    click.echo(f"wrote {md} and {csv}")


@click.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--out", "-o", default=None, type=click.Path(file_okay=False),
              help="Folder for loss.png, val.png, throughput.png. Default: the first run folder.")
def plot(runs: tuple[str, ...], out: str | None) -> None:
    """Loss, validation (Dice / metric) and throughput curves of RUNS (pretrain or finetune folders) as PNG."""
    from runlog.plot import plot_runs

    try:
        paths = plot_runs(runs, out)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    for path in paths.values():
        click.echo(str(path))


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True
