"""``med3d-train finetune TASK STORE --out RUN ...``: one subcommand per task (thin: parse, call the API).

    med3d-train finetune liver  LITS_STORE     --out RUN --init scratch|RUN_OR_CKPT|medicalnet.pth|kinetics.pth
    med3d-train finetune lung   VISCERAL_STORE --out RUN --init ...
    med3d-train finetune nodule LIDC_STORE     --out RUN --init ...
    med3d-train finetune seg    ANY_SEG_STORE  --out RUN [--domain D] [--decoder med3d|unet] [--channels all] ...
    med3d-train finetune classify ANY_STORE    --out RUN --labels labels.csv [--shape 64,64,64] [--crop mask]

Each task's command takes the options every task shares (:data:`COMMON`) and the task's own: the fields of its
config made with :func:`model.training.finetune_config.option` (:func:`task_params`), so ``finetune seg --help``
lists seg's options only, and a plug-in task (entry point ``med3d.tasks``) gets its command and flags with no
change here.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import click

from model.cli_types import EncoderChoice, loader_error

__all__ = ["COMMON", "check_earlier", "earlier_params", "finetune", "finetune_kwargs", "task_params"]


class Numbers(click.ParamType):
    """Comma-separated numbers as a tuple (``64,128,128``; ``x`` separates too); for a field of three sizes one
    number means a cube (``--patch 64``). Ranges are the config's to check."""

    name = "numbers"

    def __init__(self, kind: type, cube: bool) -> None:
        self.kind, self.cube = kind, cube

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[Any, ...]:
        if isinstance(value, tuple):
            return value
        try:
            out = tuple(self.kind(v) for v in str(value).replace("x", ",").split(",") if v.strip())
        except ValueError:
            self.fail(f"{value!r}: give comma-separated {'integers' if self.kind is int else 'numbers'}", param, ctx)
        return out * 3 if self.cube and len(out) == 1 else out


def _param_type(field: dataclasses.Field) -> Any:
    """The click type of a config field, from its annotation (a string: the modules use postponed annotations)."""
    kind = (field.type.__name__ if isinstance(field.type, type) else str(field.type)).replace(" ", "")
    choices = field.metadata.get("choices")
    if choices:
        return click.Choice(list(choices))
    if kind.startswith("tuple["):
        parts = kind[len("tuple["):-1].split(",")
        return Numbers(float if parts[0] == "float" else int, cube=parts == ["int"] * 3)
    return {"int": int, "float": float, "bool": bool}.get(kind.split("|")[0], str)


def _shown(default: Any) -> Any:
    return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in default) if isinstance(default, tuple) \
        else default


def task_params(config_type: type, *, shared: type | None = None) -> list[click.Option]:
    """The flags of a task config's own fields (those made with ``option``, not of ``shared``, by default the
    options every task shares), each setting the field of its name."""
    from model.training.finetune_config import FinetuneConfig

    common = {f.name for f in dataclasses.fields(shared or FinetuneConfig)}
    out = []
    for f in dataclasses.fields(config_type):
        if f.name in common or "help" not in f.metadata:
            continue
        flag = f.metadata.get("flag") or f"--{f.name.replace('_', '-')}"
        show = f.metadata.get("show_default", True)
        out.append(click.Option([flag, f.name], type=_param_type(f), default=_shown(f.default),
                                show_default=show if isinstance(show, str) else bool(show),
                                help=f.metadata["help"]))
    return out


_EARLIER_FLAGS: dict[str, tuple[str, Any, Any]] = {
    # field: (flag, the default it had, its type), for every task's option that every task took before tasks
    # owned their options (issue 20)
    "domain": ("--domain", None, str), "decoder": ("--decoder", "med3d", str), "channels": ("--channels", "first", str),
    "labels": ("--labels", None, str), "splits": ("--splits", None, str),
    "shape": ("--shape", (64, 64, 64), Numbers(int, cube=True)), "crop": ("--crop", "none", str),
    "crop_margin_mm": ("--crop-margin", 10.0, float), "fg_fraction": ("--fg-fraction", 1 / 3, float),
    "patch": ("--patch", (64, 64, 64), Numbers(int, cube=True)),
    "coarse_shape": ("--coarse-shape", (64, 128, 128), Numbers(int, cube=True)),
    "aspp_rates": ("--aspp-rates", (2, 4, 6, 8, 12), Numbers(int, cube=False)),
    "roi_margin_mm": ("--roi-margin", (5.0, 25.0), Numbers(float, cube=False)),
    "rotate_deg": ("--rotate", 15.0, float), "translate": ("--translate", 0.1, float),
}
"""Command lines written before tasks owned their options gave any task every flag: a flag the task does not
take is still accepted, hidden, at the value it had by default (it changed nothing), and refused otherwise."""


def earlier_params(own: set[str]) -> list[click.Option]:
    """Hidden options for the flags of :data:`_EARLIER_FLAGS` whose fields are not in ``own``."""
    return [click.Option([flag, f"earlier_{name}"], type=kind, default=None, hidden=True, expose_value=True)
            for name, (flag, _, kind) in _EARLIER_FLAGS.items() if name not in own]


def check_earlier(command: str, opts: dict[str, Any]) -> None:
    """Pop the hidden flags of :data:`_EARLIER_FLAGS`; a value other than the one it had by default is refused."""
    for key in [k for k in opts if k.startswith("earlier_")]:
        value, (flag, default, _) = opts.pop(key), _EARLIER_FLAGS[key[len("earlier_"):]]
        if value is None or value == default:
            continue
        what = "reads one channel" if flag == "--channels" else "has no such option"
        raise click.UsageError(f"{flag} {_shown(value)}: {command} {what} (see `med3d-train {command} --help`)")


def _common() -> list[click.Parameter]:
    return [
        click.Option(["--out", "-o"], required=True, type=click.Path(file_okay=False), help="Run folder."),
        click.Option(["--init"], default="scratch", show_default=True,
                     help="scratch, a run folder or checkpoint of ours, or a MedicalNet / Kinetics .pth."),
        click.Option(["--depth"], type=EncoderChoice("depth"), default=None,
                     help="ResNet depth. Default: the --init weights' depth (10 from scratch)."),
        click.Option(["--encoder", "encoder_name"], type=EncoderChoice("name"), default=None,
                     help="Encoder by registry name (resnet50, resenc_m, ...); overrides --depth. Default: the "
                          "--init weights' encoder (resnet10 from scratch)."),
        click.Option(["--stage"], default="both", show_default=True,
                     help="Tasks of several stages (liver: coarse, fine): train one stage, or both in turn."),
        click.Option(["--steps"], type=click.IntRange(min=1), default=1000, show_default=True,
                     help="Steps per stage."),
        click.Option(["--batch"], type=click.IntRange(min=1), default=2, show_default=True),
        click.Option(["--lr"], type=float, default=None,
                     help="Default: the paper's 1e-3 from pretrained weights, 1e-2 from scratch."),
        click.Option(["--loss"], type=click.Choice(["ce", "ce+dice"]), default=None,
                     help="Default: the task's (seg: ce+dice; the paper's tasks: ce)."),
        click.Option(["--val-every"], type=click.IntRange(min=0), default=200, show_default=True),
        click.Option(["--val-max-cases"], type=click.IntRange(min=0), default=0, show_default=True),
        click.Option(["--ckpt-every"], type=click.IntRange(min=0), default=200, show_default=True),
        click.Option(["--seed"], type=int, default=0, show_default=True),
        click.Option(["--device"], default=None, help="cpu, cuda, cuda:N. Default: CUDA when available."),
        click.Option(["--workers"], type=click.IntRange(min=0), default=2, show_default=True),
        click.Option(["--amp/--no-amp"], default=None, help="bf16 autocast. Default: on for CUDA, off for CPU."),
        click.Option(["--compile", "compile_"], is_flag=True, help="torch.compile the network."),
        click.Option(["--resume"], is_flag=True, help="Continue the run's checkpoints exactly."),
        click.Option(["--progress/--no-progress"], default=True),
        click.Option(["--verbose", "-v"], is_flag=True,
                     help="Print the whole weight-loading report (every dropped key); OUT/init_report.json has it "
                          "anyway."),
    ]


COMMON = _common()
"""The options of ``finetune TASK`` that every task takes (parameters; each command gets copies)."""


def finetune_kwargs(opts: dict[str, Any]) -> dict[str, Any]:
    """finetune's (and study's) command-line options as config fields: options left unset dropped, ``--encoder``
    (or ``--depth``, the ResNet shorthand) as the encoder."""
    kw = dict(opts)
    depth, name = kw.pop("depth", None), kw.pop("encoder_name", None)
    kw["compile"] = kw.pop("compile_", False)
    kw["encoder"] = name or (f"resnet{depth}" if depth else None)
    for name in ("loss", "domain"):
        if kw.get(name, 0) is None:
            del kw[name]
    return kw


# finetune's CLI parameter -> the config field it sets, where the names differ.
_FIELD = {"depth": "encoder", "encoder_name": "encoder", "compile_": "compile"}
_NOT_CONFIG = {"task", "store", "out", "stage"}  # fields the command's arguments set


def _options_of_the_run(out: str, config_type: type, stages: tuple[str, ...], kw: dict[str, Any]) -> None:
    """``--resume``: the options the command line left at their defaults take the run's own values (its first
    stage's ``config.json``), as ``pretrain --resume`` does, so a run started with ``--steps 6 --patch 32``
    resumes with ``--resume`` alone; what the user did give still wins (and is checked against the checkpoint)."""
    from pathlib import Path

    from click.core import ParameterSource

    from catalog.values import read_json
    from model.training.finetune_config import EARLIER_FIELDS

    folders = [Path(out) if st == "main" else Path(out) / st for st in stages]
    saved = next((f / "config.json" for f in folders if (f / "config.json").is_file()), None)
    if saved is None:
        return
    try:
        config = read_json(saved)
    except ValueError as exc:  # not JSON, a 5000-digit number, nesting deeper than the recursion limit
        raise click.ClickException(f"{exc}; resume needs the run's config") from None
    if not isinstance(config, dict):
        raise click.ClickException(f"{saved}: not a run config (a JSON object of its task's config fields)")
    own = {f.name for f in dataclasses.fields(config_type)}
    unknown = sorted(set(config) - own - EARLIER_FIELDS)
    if unknown:
        raise click.ClickException(f"{saved}: unknown fields {unknown}; was it written by another med3d version?")
    try:  # every value of the file checked here, so an error names the file ("amp": "no", "device": "meta")
        config_type.from_dict(config)
    except (ValueError, TypeError) as exc:
        raise click.ClickException(f"{saved}: {exc}") from None
    ctx = click.get_current_context()
    given = {_FIELD.get(name, name) for name in ctx.params
             if ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, None)}
    for field, value in config.items():  # every field, also those without an option (decoder_widths...)
        if field in own and field not in given and field not in _NOT_CONFIG:
            kw[field] = tuple(value) if isinstance(value, list) else value


def _run(task_name: str, store: str, out: str, **opts: Any) -> None:
    from model.api import finetune as run_finetune
    from model.nets.weights import WeightsMismatchError
    from model.task_api import FinetuneError
    from model.tasks.base import get_task

    task = get_task(task_name)
    progress, resume, stage, verbose = opts.pop("progress"), opts.pop("resume"), opts.pop("stage"), opts.pop("verbose")
    kw = finetune_kwargs(opts)
    if stage != "both" and stage not in task.stages:
        raise click.UsageError(f"--stage: task {task.name} has stages {', '.join(task.stages)} (or both), got "
                               f"{stage!r}")
    if resume:
        _options_of_the_run(out, task.config_type, task.stages, kw)
    try:
        results = run_finetune(task.name, store, out, stage=stage, resume=resume, progress=progress, log=click.echo,
                               verbose=verbose, **kw)
    except (FinetuneError, WeightsMismatchError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from exc
    except ValueError as exc:  # a config field out of range
        raise click.UsageError(str(exc)) from exc
    except OSError as exc:  # a damaged store met while training (read in a DataLoader worker)
        raise loader_error(exc) from exc
    for r in results:
        val = r.summary.get("val") or {}
        note = f"; {task.metric} on {val.get('split')} {val['metric']:.4f}" if val.get("metric") is not None else ""
        click.echo(f"{r.run_dir}: {r.step} steps, checkpoint {r.checkpoint}{note}")


def task_command(task: Any) -> click.Command:
    """``finetune TASK``: STORE, the common options and the task's own."""
    import copy

    def callback(**opts: Any) -> None:
        check_earlier(f"finetune {task.name}", opts)
        _run(task.name, opts.pop("store"), opts.pop("out"), **opts)

    common = [copy.copy(p) for p in COMMON]
    for p in common:
        if p.name == "stage":
            p.help = (f"Train one stage ({', '.join(task.stages)}), or all in turn." if len(task.stages) > 1 else
                      f"The task's one stage ({task.stages[0]}), or both: the same.")
    params = [click.Argument(["store"]), *common, *task_params(task.config_type),
              *earlier_params({f.name for f in dataclasses.fields(task.config_type)})]
    return click.Command(task.name, callback=callback, params=params, short_help=task.help,
                         help=f"Fine-tune an encoder for {task.name} on STORE: {task.help}.\n\nWrites "
                              "OUT/finetune.json and, per stage, config.json, checkpoint.pt and metrics.jsonl "
                              f"({'OUT/' + ', OUT/'.join(task.stages) if len(task.stages) > 1 else 'in OUT'}). "
                              "Measure it with `med3d-train evaluate OUT STORE`.")


class _TaskGroup(click.Group):
    """The subcommands are the tasks, built when asked for (a plug-in task's too)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(_tasks())

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        task = _tasks().get(name)
        return task_command(task) if task is not None else None


def _tasks() -> dict[str, Any]:
    from model.task_api import FinetuneError
    from model.tasks.base import all_tasks

    try:
        return all_tasks()
    except FinetuneError as exc:  # a plug-in that does not load
        raise click.ClickException(str(exc)) from exc


@click.group(cls=_TaskGroup)
def finetune() -> None:
    """Fine-tune an encoder for a TASK on a STORE: `med3d-train finetune TASK STORE --out RUN [options]`;
    `med3d-train finetune TASK --help` lists that task's options."""
