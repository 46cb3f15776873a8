"""``med3d-train finetune | evaluate | predict | compare``: the transfer commands (thin: parse, call the API).

    med3d-train finetune liver  LITS_STORE     --out RUN --init scratch|RUN_OR_CKPT|medicalnet.pth|kinetics.pth
    med3d-train finetune lung   VISCERAL_STORE --out RUN --init ...
    med3d-train finetune nodule LIDC_STORE     --out RUN --init ...
    med3d-train finetune seg    ANY_SEG_STORE  --out RUN [--domain D] [--decoder med3d|unet] [--channels all] ...
    med3d-train finetune classify ANY_STORE    --out RUN --labels labels.csv [--shape 64,64,64] [--crop mask]
    med3d-train evaluate RUN STORE [--split val|test]
    med3d-train predict  RUN scan.nii.gz|FOLDER|imagesTs [more...] --out DIR
    med3d-train compare  RUN [RUN ...] [--out DIR]
    med3d-train plot     RUN [RUN ...] [--out DIR]
"""

from __future__ import annotations

import math
from typing import Any

import click

from model.cli_types import EncoderChoice, PatchSize, loader_error

__all__ = ["compare", "evaluate", "finetune", "finetune_kwargs", "plot", "predict"]


def _ints(value: str, name: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in value.replace("x", ",").split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r}: give comma-separated integers", param_hint=name) from None


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


def _task_names() -> list[str]:
    from model.tasks import TASKS

    return list(TASKS)


def _tasks_help() -> str:
    from model.tasks import TASKS

    return "; ".join(f"{name}: {task.help}" for name, task in TASKS.items())


@click.command(epilog="Tasks: " + _tasks_help())
@click.argument("task", type=click.Choice(_task_names()))
@click.argument("store")
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False), help="Run folder.")
@click.option("--init", default="scratch", show_default=True,
              help="scratch, a run folder or checkpoint of ours, or a MedicalNet / Kinetics .pth.")
@click.option("--depth", type=EncoderChoice("depth"), default=None,
              help="ResNet depth. Default: the --init weights' depth (10 from scratch).")
@click.option("--encoder", "encoder_name", type=EncoderChoice("name"), default=None,
              help="Encoder by registry name (resnet50, resenc_m, ...); overrides --depth. Default: the --init "
                   "weights' encoder (resnet10 from scratch).")
@click.option("--stage", default="both", show_default=True,
              help="Tasks of several stages (liver: coarse, fine): train one stage, or both in turn.")
@click.option("--domain", default=None, help="seg: the store's domain to train on (needed when it holds several).")
@click.option("--decoder", type=click.Choice(["med3d", "unet"]), default="med3d", show_default=True,
              help="seg: the paper's upsampling head on the dilated encoder, or a U-Net decoder with skip "
                   "connections from every encoder stage.")
@click.option("--channels", type=click.Choice(["first", "all"]), default="first", show_default=True,
              help="seg, classify: the first channel of a multi-channel domain (what the encoder was pretrained "
                   "on), or all of them (the first convolution takes every channel, initialised from the "
                   "pretrained one).")
@click.option("--labels", type=click.Path(dir_okay=False), default=None,
              help="classify: the label table (CSV: case_id or scan_id, label, optional split).")
@click.option("--splits", type=click.Path(dir_okay=False), default=None,
              help="seg: a split table (CSV: case_id, split = train|val|test) in place of the store's splits; cases "
                   "it does not list are not used.")
@click.option("--shape", default="64,64,64", show_default=True, help="classify: inputs resized to z,y,x.")
@click.option("--crop", type=click.Choice(["none", "mask"]), default="none", show_default=True,
              help="classify: the whole volume, or the mask's bounding box grown by --crop-margin.")
@click.option("--crop-margin", "crop_margin_mm", type=click.FloatRange(min=0), default=10.0, show_default=True,
              help="classify --crop mask: margin around the mask's box (mm per side).")
@click.option("--fg-fraction", type=click.FloatRange(0, 1), default=1 / 3, show_default="1/3",
              help="Patch tasks (lung, seg): share of patches centred on a labelled voxel.")
@click.option("--steps", type=click.IntRange(min=1), default=1000, show_default=True, help="Steps per stage.")
@click.option("--batch", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--patch", type=PatchSize(), default="64", show_default=True,
              help="Patch (lung, seg, liver fine): 64 or z,y,x.")
@click.option("--coarse-shape", default="64,128,128", show_default=True,
              help="Liver coarse stage: whole volumes resized to z,y,x.")
@click.option("--aspp-rates", default="2,4,6,8,12", show_default=True, help="Liver fine: DenseASPP dilation rates.")
@click.option("--roi-margin", default="5,25", show_default=True, help="Liver fine: random ROI margin lo,hi (mm).")
@click.option("--rotate", "rotate_deg", type=float, default=15.0, show_default=True,
              help="Augmentation: max rotation (degrees) about each axis; 0 disables.")
@click.option("--translate", type=float, default=0.1, show_default=True,
              help="Augmentation: max translation, fraction of the patch; 0 disables.")
@click.option("--lr", type=float, default=None, help="Default: the paper's 1e-3 from pretrained weights, 1e-2 from "
              "scratch.")
@click.option("--loss", type=click.Choice(["ce", "ce+dice"]), default=None,
              help="Default: the task's (seg: ce+dice; the paper's tasks: ce).")
@click.option("--val-every", type=click.IntRange(min=0), default=200, show_default=True)
@click.option("--val-max-cases", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--ckpt-every", type=click.IntRange(min=0), default=200, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default=None, help="cpu, cuda, cuda:N. Default: CUDA when available.")
@click.option("--workers", type=click.IntRange(min=0), default=2, show_default=True)
@click.option("--amp/--no-amp", default=None, help="bf16 autocast. Default: on for CUDA, off for CPU.")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the network.")
@click.option("--resume", is_flag=True, help="Continue the run's checkpoints exactly.")
@click.option("--progress/--no-progress", default=True)
@click.option("--verbose", "-v", is_flag=True,
              help="Print the whole weight-loading report (every dropped key); OUT/init_report.json has it anyway.")
def finetune(task: str, store: str, out: str, **opts: Any) -> None:
    """Fine-tune an encoder for TASK on STORE (see the task list below).

    Writes OUT/finetune.json and, per stage, config.json, checkpoint.pt and metrics.jsonl (liver: OUT/coarse,
    OUT/fine). Measure it with `med3d-train evaluate OUT STORE`.
    """
    from model.nets.weights import WeightsMismatchError
    from model.tasks import FinetuneError, get_task
    from model.training.finetune import finetune as run_finetune

    progress, resume, stage, verbose = opts.pop("progress"), opts.pop("resume"), opts.pop("stage"), opts.pop("verbose")
    kw = finetune_kwargs(opts)
    stages = get_task(task).stages
    if stage != "both" and stage not in stages:
        raise click.UsageError(f"--stage: task {task} has stages {', '.join(stages)} (or both), got {stage!r}")
    if resume:
        _options_of_the_run(out, stages, kw)
    try:
        results = run_finetune(task, store, out, stage=stage, resume=resume, progress=progress, log=click.echo,
                               verbose=verbose, **kw)
    except (FinetuneError, WeightsMismatchError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from exc
    except ValueError as exc:  # a FinetuneConfig field out of range
        raise click.UsageError(str(exc)) from exc
    except OSError as exc:  # a damaged store met while training (read in a DataLoader worker)
        raise loader_error(exc) from exc
    for r in results:
        val = r.summary.get("val") or {}
        what = get_task(task).metric
        note = f"; {what} on {val.get('split')} {val['metric']:.4f}" if val.get("metric") is not None else ""
        click.echo(f"{r.run_dir}: {r.step} steps, checkpoint {r.checkpoint}{note}")


def finetune_kwargs(opts: dict[str, Any]) -> dict[str, Any]:
    """finetune's (and study's) command-line options as :class:`FinetuneConfig` fields: options left unset
    dropped, sizes parsed."""
    kw = dict(opts)
    depth, name = kw.pop("depth", None), kw.pop("encoder_name", None)
    kw["compile"] = kw.pop("compile_", False)
    kw["encoder"] = name or (f"resnet{depth}" if depth else None)
    for name in ("loss", "domain", "labels", "splits"):
        if kw.get(name, 0) is None:
            del kw[name]
    kw["shape"] = _ints(kw["shape"], "--shape")
    kw["coarse_shape"] = _ints(kw["coarse_shape"], "--coarse-shape")
    kw["aspp_rates"] = _ints(kw["aspp_rates"], "--aspp-rates")
    try:
        kw["roi_margin_mm"] = tuple(float(v) for v in kw.pop("roi_margin").split(","))
    except ValueError:
        raise click.BadParameter("give lo,hi in mm", param_hint="--roi-margin") from None
    return kw


# finetune's CLI parameter -> the FinetuneConfig field it sets, where the names differ.
_FIELD = {"depth": "encoder", "encoder_name": "encoder", "compile_": "compile", "roi_margin": "roi_margin_mm"}
_NOT_CONFIG = {"task", "store", "out", "stage"}  # fields the command's arguments set


def _options_of_the_run(out: str, stages: tuple[str, ...], kw: dict[str, Any]) -> None:
    """``--resume``: the options the command line left at their defaults take the run's own values (its first
    stage's ``config.json``), as ``pretrain --resume`` does, so a run started with ``--steps 6 --patch 32``
    resumes with ``--resume`` alone; what the user did give still wins (and is checked against the checkpoint)."""
    import dataclasses
    from pathlib import Path

    from click.core import ParameterSource

    from catalog.values import read_json
    from model.training.finetune_config import FinetuneConfig

    folders = [Path(out) if st == "main" else Path(out) / st for st in stages]
    saved = next((f / "config.json" for f in folders if (f / "config.json").is_file()), None)
    if saved is None:
        return
    try:
        config = read_json(saved)
    except ValueError as exc:  # not JSON, a 5000-digit number, nesting deeper than the recursion limit
        raise click.ClickException(f"{exc}; resume needs the run's config") from None
    if not isinstance(config, dict):
        raise click.ClickException(f"{saved}: not a run config (a JSON object of FinetuneConfig fields)")
    unknown = sorted(set(config) - {f.name for f in dataclasses.fields(FinetuneConfig)})
    if unknown:
        raise click.ClickException(f"{saved}: unknown fields {unknown}; was it written by another med3d version?")
    try:  # every value of the file checked here, so an error names the file ("amp": "no", "device": "meta")
        FinetuneConfig.from_dict(config)
    except (ValueError, TypeError) as exc:
        raise click.ClickException(f"{saved}: {exc}") from None
    ctx = click.get_current_context()
    given = {_FIELD.get(name, name) for name in ctx.params
             if ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, None)}
    for field, value in config.items():  # every field, also those without an option (decoder_widths...)
        if field not in given and field not in _NOT_CONFIG:
            kw[field] = tuple(value) if isinstance(value, list) else value


@click.command()
@click.argument("run", type=click.Path(exists=True, file_okay=False))
@click.argument("store")
@click.option("--split", type=click.Choice(["train", "val", "test"]), default=None,
              help="Default: the run's, recorded in finetune.json (liver: val, since LiTS test labels are not public; "
                   "lung, nodule: test; seg: test when the store labels it, else val; classify: test when the "
                   "label table has test cases, else val).")
@click.option("--device", default="cpu", show_default=True)
@click.option("--amp/--no-amp", default=False, show_default=True)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Evaluate the first N cases only.")
@click.option("--progress/--no-progress", default=True)
def evaluate(run: str, store: str, split: str | None, device: str, amp: bool, limit: int | None,
             progress: bool) -> None:
    """Measure RUN on a split of STORE; writes RUN/eval/<split>/{cases.csv, summary.json, pred/}."""
    from model.evaluation.evaluate import evaluate as run_evaluate

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
def predict(run: str, scans: tuple[str, ...], out: str, modality: str | None, spacing: str | None, device: str,
            amp: bool, max_voxels: int | None, overwrite: bool, engine: str, onnx_file: str | None) -> None:
    """Segment raw SCANS (files or folders, an nnU-Net imagesTs folder too) with RUN; one mask per case in OUT,
    in that scan's own geometry (nnU-Net channel files CASE_0000... give CASE.nii.gz). A classify RUN writes
    OUT/predictions.csv instead: one row of class probabilities per scan.

    Every file passes the build's header checks first; a case that fails is skipped with a line naming the file,
    the others are predicted, and the exit status is then non-zero. An output that is an input file is refused,
    and one that exists already unless --overwrite, before anything is written."""
    from model.evaluation.predict import predict as run_predict
    from model.tasks import get_task
    from model.tasks.run import read_run

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
                         device=device, max_voxels=max_voxels, overwrite=overwrite, log=click.echo)
            return
        spec = read_run(run)
        if not get_task(spec["task"]).segmentation:  # classify: one row of class probabilities per scan
            get_task(spec["task"]).predict_scans(run, spec, scans, out, modality=modality, spacing_xyz=spacing_xyz,
                                                 device=device, amp=amp, max_voxels=max_voxels, overwrite=overwrite,
                                                 log=click.echo)
            return
        run_predict(run, scans, out, modality=modality, spacing_xyz=spacing_xyz, device=device, amp=amp,
                    max_voxels=max_voxels, overwrite=overwrite, log=click.echo)
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
