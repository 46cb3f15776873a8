"""``med3d-train``: pretraining and weight export from the command line (thin: parses, then calls the Python API).

torch is imported inside the commands, so ``med3d-train --help`` answers at once.

    med3d-train pretrain STORE [STORE ...] --out RUN_DIR [--depth 10] [--steps N] [--batch B]
        [--patch 64|32,128,128] ...
    med3d-train export RUN_DIR/checkpoint.pt --format medicalnet OUT.pth      (and its card OUT.json)
    med3d-train export RUN_DIR --format safetensors OUT_DIR                    (model.safetensors, README.md)
    med3d-train export FINETUNE_RUN --format onnx|torchscript OUT.onnx|OUT.pt  (the whole network)
    med3d-train export RUN_DIR --format nnunet --plans PLANS.json OUT.pth     (nnUNetv2_train -pretrained_weights)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from model.cli_types import EncoderChoice, PatchSize, loader_error

__all__ = ["main"]


class _TrainGroup(click.Group):
    """Says no credential of a store URL (``s3://KEY:SECRET@...``): every line, error and traceback redacted."""

    def invoke(self, ctx: click.Context) -> Any:
        from catalog.redact import redacted_cli

        with redacted_cli():
            return super().invoke(ctx)


@click.group(cls=_TrainGroup, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
def main() -> None:
    """Med3D training: multi-domain pretraining, transfer (finetune, evaluate, predict, compare), export."""


# CLI option name -> TrainConfig field, where they differ.
_FIELD = {"depth": "encoder", "encoder_name": "encoder", "optimizer_name": "optimizer"}


@main.command()
@click.argument("stores", nargs=-1, required=True, metavar="STORE [STORE ...]")
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False), help="Run folder.")
@click.option("--depth", type=EncoderChoice("depth"), default="10", help="ResNet depth (encoder resnet<depth>).")
@click.option("--encoder", "encoder_name", type=EncoderChoice("name"), default=None,
              help="Encoder by registry name (e.g. preact_resnet200, resenc_f32-64-128-256_b1-3-4-6); overrides --depth.")
@click.option("--encoder-from-plans", "encoder_plans", type=click.Path(exists=True, dir_okay=False), default=None,
              metavar="PLANS.json", help="The ResEnc encoder an nnU-Net plans file's 3d_fullres network has (what "
              "export --format nnunet --plans needs); instead of --encoder.")
@click.option("--steps", type=click.IntRange(min=1), default=1000, help="Optimiser steps in all.")
@click.option("--batch", type=click.IntRange(min=1), default=2, help="Patches per step (per GPU under torchrun).")
@click.option("--patch", type=PatchSize(), default="64", help="Patch size: 64 or z,y,x (32,128,128).")
@click.option("--device", default=None, help="cpu, cuda, cuda:N. Default: CUDA when available.")
@click.option("--workers", type=click.IntRange(min=0), default=2, help="DataLoader workers per process.")
@click.option("--resume", is_flag=True, help="Continue RUN_DIR's checkpoint (its config wins over defaults).")
@click.option("--exclude", multiple=True, metavar="STORE[:SPLIT]",
              help="Keep this store's scans (of SPLIT) out of pretraining; repeatable.")
@click.option("--lr", type=float, default=1e-3, help="Peak learning rate.")
@click.option("--optimizer", "optimizer_name", type=click.Choice(["adam", "sgd"]), default="adam")
@click.option("--scheduler", type=click.Choice(["poly", "cosine", "constant"]), default="poly")
@click.option("--weight-decay", type=float, default=0.0)
@click.option("--loss", type=click.Choice(["ce", "ce+dice"]), default="ce")
@click.option("--domain-sampling", type=click.Choice(["size", "uniform"]), default="size",
              help="Pick a step's domain in proportion to its cases, or uniformly.")
@click.option("--channel", type=click.Choice(["first", "random"]), default="first",
              help="Channel fed from multi-channel domains.")
@click.option("--val-every", type=click.IntRange(min=0), default=500, help="Validate every N steps (0: never).")
@click.option("--val-max-cases", type=click.IntRange(min=0), default=0, help="Val cases per domain (0: all).")
@click.option("--ckpt-every", type=click.IntRange(min=0), default=500, help="Checkpoint every N steps.")
@click.option("--seed", type=int, default=0)
@click.option("--amp/--no-amp", default=None, help="bf16 autocast. Default: on for CUDA, off for CPU.")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the encoder.")
@click.option("--init", default="scratch", help="scratch, or encoder weights: MedicalNet/Kinetics .pth or ours.")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar.")
@click.pass_context
def pretrain(ctx: click.Context, stores: tuple[str, ...], out: str, **opts: Any) -> None:
    """Med3D multi-branch pretraining on the domains of one or more STOREs (train split; Dice on the val split).

    Domain names must be unique across the stores; a scan that several stores hold (same scan id) is trained
    once, from the first store given.

    Writes RUN_DIR/config.json, checkpoint.pt (every --ckpt-every steps and at the end) and metrics.jsonl.
    Under torchrun every process trains on its own patches of the same domain.
    """
    from model.training.config import TrainConfig
    from model.training.pretrain import CONFIG_FILE, PretrainError
    from model.training.pretrain import pretrain as run_pretrain
    from model.training.loop import DistEnv
    from model.nets.weights import WeightsMismatchError

    progress = opts.pop("progress")
    resume = opts.pop("resume")
    opts["compile"] = opts.pop("compile_")
    name = opts.pop("encoder_name")
    plans = opts.pop("encoder_plans")
    if plans:
        if name:
            raise click.UsageError("give --encoder or --encoder-from-plans, not both")
        from model.export.nnunet_plans import encoder_for_plans

        try:
            name = encoder_for_plans(plans)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--encoder-from-plans") from None
        click.echo(f"encoder {name}: the residual encoder of {plans} (3d_fullres)")
    depth = opts.pop("depth")
    explicit = {k for k in ctx.params if ctx.get_parameter_source(k) not in (ParameterSource.DEFAULT, None)}
    values: dict[str, Any] = {_FIELD.get(k, k): v for k, v in opts.items()}
    values["encoder"] = name or f"resnet{depth}"
    values["exclude"] = tuple(values["exclude"])
    given = {_FIELD.get(k, k.rstrip("_")) for k in explicit} & set(values)
    saved = Path(out) / CONFIG_FILE
    try:
        if resume and saved.is_file():
            try:  # a damaged config.json is the file's fault, not the command line's: one line naming it
                run_cfg = TrainConfig.read_json(saved)
            except ValueError as exc:
                raise click.ClickException(f"{exc}; resume needs the run's config") from None
            # The run's own config, changed only where the user said so: defaults must not silently differ.
            cfg = run_cfg.replace(store=stores, out=out, **{k: values[k] for k in given})
        else:
            cfg = TrainConfig(store=stores, out=out, **values)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    try:
        result = run_pretrain(cfg, resume=resume, progress=progress, log=click.echo)
    except (PretrainError, WeightsMismatchError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from exc
    except OSError as exc:  # a damaged store met while training (read in a DataLoader worker)
        raise loader_error(exc) from exc
    if not DistEnv.from_environ().is_main:
        return
    click.echo(f"trained {result.step} steps; checkpoint {result.checkpoint}")
    val = result.summary.get("val")
    if val:
        dice = ", ".join(f"{d} {v:.3f}" for d, v in val["dice"].items())
        click.echo(f"val Dice at step {val['step']}: {dice}")


class _FormatChoice(click.Choice):
    """The export formats registered in :mod:`model.export.formats`, read when first needed."""

    def __init__(self) -> None:  # no super().__init__: ``choices`` is computed, not stored
        self.case_sensitive = True

    @property
    def choices(self) -> tuple[str, ...]:  # type: ignore[override]
        from model.export.formats import format_names

        return tuple(format_names())


@main.command()
@click.argument("checkpoint", type=click.Path(exists=True))
@click.argument("out", type=click.Path())
@click.option("--format", "fmt", type=_FormatChoice(), default="medicalnet",
              help="medicalnet: {'state_dict': {'module.*'}} OUT.pth, loadable by MedicalNet and MONAI. safetensors: "
                   "OUT_DIR/model.safetensors (or OUT.safetensors), card in its metadata, README.md model card "
                   "beside it. onnx, torchscript: a fine-tuned seg/classify RUN's whole network, its preprocessing "
                   "card embedded. nnunet: OUT.pth for nnUNetv2_train -pretrained_weights (ResEnc encoders, "
                   "needs --plans).")
@click.option("--card/--no-card", default=True,
              help="Also write OUT.json: architecture, per-domain spacing and intensity rule, case counts, the "
                   "run's config and metrics (read by `med3d-prep build-* --like` and `finetune --init`); "
                   "safetensors: the card in the metadata and the README.md.")
@click.option("--license", "license_", default="other",
              help="safetensors: the model card's license id (the weights inherit their datasets' terms).")
@click.option("--plans", type=click.Path(exists=True, dir_okay=False), default=None,
              help="nnunet: the nnU-Net plans file (nnUNet_preprocessed/DatasetXXX/PLANS_NAME.json) of the dataset "
                   "nnU-Net will train on.")
@click.option("--configuration", default="3d_fullres", show_default=True,
              help="nnunet: the plans' configuration nnU-Net will train.")
def export(checkpoint: str, out: str, fmt: str, card: bool, license_: str, plans: str | None,
           configuration: str) -> None:
    """Write the encoder of CHECKPOINT (a run's checkpoint.pt, or its RUN_DIR) to OUT, heads dropped, and its card
    (how its training data was preprocessed) to OUT with the suffix .json; with --format safetensors, OUT_DIR (or
    OUT.safetensors) gets the weights, the card in their metadata and a README.md model card. With --format onnx or
    torchscript, CHECKPOINT is a fine-tuning RUN (seg, classify) and OUT gets its whole network. With --format
    nnunet, OUT.pth holds nnU-Net's whole network for --plans, its encoder ours (nnUNetv2_train ...
    -pretrained_weights OUT.pth)."""
    from model.export.formats import ExportUsageError
    from model.export.formats import export as run_export

    try:
        lines = run_export(fmt, checkpoint, out, card=card, license=license_, log=click.echo, plans=plans,
                           configuration=configuration)
    except ExportUsageError as exc:
        raise click.UsageError(str(exc)) from exc
    except (ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from exc
    for line in lines:
        click.echo(line)


def _add_transfer_commands() -> None:
    from model.cli_finetune import finetune
    from model.cli_study import study
    from model.cli_transfer import compare, evaluate, plot, predict

    for command in (finetune, evaluate, predict, compare, plot, study):
        main.add_command(command)


_add_transfer_commands()


def entry() -> None:
    """The console script: :func:`main`, then an exit without the last cycle-collector passes
    (:func:`catalog.console.run_console`)."""
    from catalog.console import run_console

    run_console(main)


if __name__ == "__main__":
    entry()
