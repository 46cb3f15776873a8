"""``med3d-train study``: the label-efficiency and convergence study as one resumable command (thin: parse, call
:func:`model.study.runner.run_study`).

    med3d-train study STORE --task seg --out STUDY --init scratch --init med3d=runs/pretrain \\
        --fractions 0.05,0.1,0.25,1 --seeds 0,1,2 --holdout 50,10 --steps 400 --patch 32 --decoder unet

Every other option is finetune's and applies to every cell.
"""

from __future__ import annotations

from typing import Any

import click

__all__ = ["study"]

_NOT_STUDY = {"task", "store", "out", "init", "seed", "resume", "stage", "progress", "verbose", "splits"}
"""finetune parameters the study sets itself (or that make no sense for it)."""


def _floats(value: str, name: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r}: give comma-separated numbers, e.g. 0.1,0.25,1", param_hint=name) from None


def _seeds(value: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r}: give comma-separated integers, e.g. 0,1,2", param_hint="--seeds") \
            from None


def _holdout(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        test, val = (int(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r}: give TEST,VAL patient counts, e.g. 50,10", param_hint="--holdout") \
            from None
    if test < 1 or val < 0:
        raise click.BadParameter(f"{value!r}: at least one test patient, val >= 0", param_hint="--holdout")
    return test, val


def _study(store: str, task: str, out: str, inits: tuple[str, ...], fractions: str, seeds: str,
           holdout: str | None, figures: bool, **opts: Any) -> None:
    """Label efficiency and convergence of INITs on STORE: each cell (init x fraction x seed) is a finetune run in
    OUT/runs/<init>/f<fraction>/s<seed> on that fraction of the training patients (nested, stratified by class
    for classify), measured by evaluate on one fixed held-out split. Re-run the same command to finish a
    killed study; finished cells are never re-trained. Writes OUT/study.csv, summary.csv, summary.md,
    label_efficiency.png and convergence.png."""
    from model.cli_finetune import check_earlier, finetune_kwargs
    from model.study.grid import StudyError, StudyGrid, init_name
    from model.study.runner import run_study

    check_earlier("study", opts)
    kw = finetune_kwargs(opts)
    labels = kw.pop("labels", "") or ""
    options = {k: v for k, v in kw.items() if v is not None}
    try:
        grid = StudyGrid(task=task, store=store, inits=tuple(init_name(i) for i in inits),
                         fractions=_floats(fractions, "--fractions"), seeds=_seeds(seeds), holdout=_holdout(holdout),
                         labels=labels, options=options)
        run_study(grid, out, log=click.echo, figures=figures)
    except StudyError as exc:
        raise click.ClickException(str(exc)) from exc
    for name in ("summary.md", "study.csv", "label_efficiency.png", "convergence.png"):
        click.echo(f"wrote {out}/{name}")
    from pathlib import Path

    click.echo((Path(out) / "summary.md").read_text())


def _finetune_params() -> list[click.Parameter]:
    """finetune's common options and those of the study's tasks (seg, classify), each once."""
    import copy

    import dataclasses

    from model.cli_finetune import COMMON, earlier_params, task_params
    from model.tasks.base import get_task

    types = [get_task(t).config_type for t in ("seg", "classify")]
    params: dict[str, click.Parameter] = {}
    for p in [*COMMON, *(q for t in types for q in task_params(t))]:
        params.setdefault(str(p.name), copy.copy(p))
    own = {f.name for t in types for f in dataclasses.fields(t)}
    return [*params.values(), *earlier_params(own)]  # liver's flags, which study took before tasks had their own


def _make_command() -> click.Command:
    params: list[click.Parameter] = [
        click.Argument(["store"]),
        click.Option(["--task"], type=click.Choice(["seg", "classify"]), required=True,
                     help="seg (any segmentation store) or classify (with --labels)."),
        click.Option(["--out", "-o"], required=True, type=click.Path(file_okay=False), help="Study folder."),
        click.Option(["--init", "inits"], multiple=True, required=True,
                     help="scratch, or NAME=weights (a run folder, checkpoint, exported .pth); repeatable."),
        click.Option(["--fractions"], default="0.1,0.25,0.5,1", show_default=True,
                     help="Fractions of the training patients, nested per seed."),
        click.Option(["--seeds"], default="0,1,2", show_default=True, help="Seeds (subset draw and training)."),
        click.Option(["--holdout"], default=None, metavar="TEST,VAL",
                     help="Hold out TEST and VAL patients (fixed for the whole study) from every labelled patient; "
                          "default: the store's (or label table's) own splits."),
        click.Option(["--figures/--no-figures"], default=True, show_default=True),
    ]
    params += [p for p in _finetune_params() if p.name not in _NOT_STUDY]
    return click.Command("study", callback=_study, params=params, help=_study.__doc__)


study = _make_command()
