"""A study's grid (task, store, inits × fractions × seeds, the finetune options) and its plan: the fixed evaluation
split and the training patients of every cell, all checked before any training.

The grid is written to ``STUDY/study.json`` on the first run; a re-run with other grid options is refused, naming
what differs (the runtime options ``device``, ``workers``, ``amp``, ``compile``, ``ckpt_every`` may change). More
seeds or more inits (a superset of the saved ones) extend the study: the finished cells stay, the new are new cells.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from model.study.subsets import SubsetError, holdout, nested_subsets

__all__ = ["GRID_FILE", "Cell", "Plan", "StudyError", "StudyGrid", "init_name", "plan_study"]

GRID_FILE = "study.json"
RUNTIME_OPTIONS = frozenset({"device", "workers", "amp", "compile", "ckpt_every", "log_every"})
"""finetune options a re-run may change: they do not change what a cell trains."""
STUDY_TASKS = ("seg", "classify")


class StudyError(ValueError):
    """The study cannot run as asked; the message says what to change. Raised before any training."""


def init_name(init: str) -> tuple[str, str]:
    """``(name, weights)`` of an ``--init`` value: ``scratch``, ``NAME=PATH``, or a path (named by its file or
    folder name without the suffix). A name becomes a folder: letters, digits, ``._-`` only."""
    name, sep, path = init.partition("=")
    if not sep:
        path = init
        name = "scratch" if init == "scratch" else Path(init.rstrip("/")).stem or "init"
        if name == "checkpoint":  # RUN/checkpoint.pt: the run's folder names it
            name = Path(init).resolve().parent.name
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name) or name in (".", ".."):
        raise StudyError(f"--init {init}: the name {name!r} must be letters, digits, '.', '_' or '-' (give "
                         "NAME=PATH)")
    if path != "scratch" and not Path(path).exists():
        raise StudyError(f"--init {init}: {path} does not exist (give scratch, a run folder or a weights file)")
    return name, path


@dataclass(frozen=True)
class StudyGrid:
    task: str
    store: str
    inits: tuple[tuple[str, str], ...]
    """``(name, weights)`` pairs; weights ``scratch`` or a path."""
    fractions: tuple[float, ...]
    seeds: tuple[int, ...]
    holdout: tuple[int, int] | None = None
    """``(test, val)`` patients the study holds out itself; None: the store's (or the label table's) splits."""
    labels: str = ""
    """classify: the label table of the whole pool."""
    options: dict[str, Any] = field(default_factory=dict)
    """finetune options of every cell (steps, batch, patch, lr, domain, decoder, shape...)."""

    def __post_init__(self) -> None:
        if self.task not in STUDY_TASKS:
            raise StudyError(f"study runs the one-stage tasks {', '.join(STUDY_TASKS)}, not {self.task!r}")
        if not self.inits:
            raise StudyError("give at least one --init (scratch, or pretrained weights)")
        names = [n for n, _ in self.inits]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise StudyError(f"--init names {twice} are given twice; name them apart with NAME=PATH")
        if not self.fractions or any(not (math.isfinite(f) and 0 < f <= 1) for f in self.fractions):
            raise StudyError(f"--fractions must be in (0, 1], got {list(self.fractions)}")
        for what, values in (("--fractions", self.fractions), ("--seeds", self.seeds)):
            dup = sorted({v for v in values if list(values).count(v) > 1})
            if dup:
                raise StudyError(f"{what}: {dup} given twice")
        if not self.seeds:
            raise StudyError("give at least one seed")
        if self.task == "classify" and not self.labels:
            raise StudyError("study --task classify needs --labels TABLE.csv (case_id, label, optional split)")

    def to_dict(self) -> dict[str, Any]:
        """The grid as ``study.json`` records it: tuples as lists, credentials in URLs redacted."""
        from catalog.redact import redact_urls

        return redact_urls(json.loads(json.dumps(asdict(self))))  # tuples -> lists, as read back

    def grown(self, saved: dict[str, Any]) -> list[str]:
        """The keys (``seeds``, ``inits``) where this grid asks for everything ``saved`` holds and more. Each
        seed's subsets are drawn from that seed alone and each init's cells are its own, so the finished cells
        stay what they were and the new ones are new cells."""
        mine = self.to_dict()
        out = []
        for key in ("seeds", "inits"):
            old, new = saved.get(key), mine.get(key)
            if isinstance(old, list) and isinstance(new, list):
                as_set = (lambda v: {json.dumps(x) for x in v})
                if as_set(old) < as_set(new):
                    out.append(key)
        return out

    def task_options(self) -> dict[str, Any]:
        """The options of :attr:`options` that the task's config has (the command line gives those of every
        study task; study.json files written before tasks owned their options hold every task's)."""
        import dataclasses

        from model.tasks.base import get_task

        fields = {f.name for f in dataclasses.fields(get_task(self.task).config_type)}
        return {k: v for k, v in self.options.items() if k in fields}

    def differences(self, saved: dict[str, Any]) -> list[str]:
        """Keys where ``saved`` (a study.json) and this grid differ, runtime options and options the task does
        not take left out."""
        import dataclasses

        from catalog.redact import redact_urls
        from model.tasks.base import get_task

        mine, saved = self.to_dict(), redact_urls(saved)
        keys = sorted((set(mine) | set(saved)) - {"options"})
        grown = self.grown(saved)
        diff = [k for k in keys if mine.get(k) != saved.get(k) and k not in grown]
        a, b = mine.get("options", {}), saved.get("options") or {}
        fields = {f.name for f in dataclasses.fields(get_task(self.task).config_type)}
        diff += [f"--{k.replace('_', '-')}" for k in sorted((set(a) | set(b)) & fields)
                 if k not in RUNTIME_OPTIONS and a.get(k) != b.get(k)]
        return diff


@dataclass(frozen=True)
class Cell:
    init: str
    weights: str
    fraction: float
    seed: int

    @property
    def key(self) -> str:
        return f"{self.init}/f{self.fraction:g}/s{self.seed}"


@dataclass
class Plan:
    """What every cell trains on. ``cases``: one row per case of the pool (``store_path``, ``case_id``,
    ``scan_id``, ``patient``, ``label`` (classify), ``split``: its fixed split, train for the training pool);
    ``subsets``: the training patients of each ``(fraction, seed)``."""

    grid: StudyGrid
    cases: pd.DataFrame
    subsets: dict[tuple[float, int], list[str]]
    eval_split: str

    def cells(self) -> list[Cell]:
        """Seed by seed, each seed's fractions in turn, each with every init: a study stopped early has every
        fraction and init with fewer seeds, rather than some fractions with none."""
        return [Cell(name, weights, f, s) for s in self.grid.seeds for f in self.grid.fractions
                for name, weights in self.grid.inits]

    def table(self, fraction: float, seed: int) -> pd.DataFrame:
        """The cases of one cell: its training patients' cases and every val and test case."""
        chosen = set(self.subsets[(fraction, seed)])
        keep = self.cases["split"].ne("train") | self.cases["patient"].isin(chosen)
        return self.cases[keep]


def _pool(grid: StudyGrid) -> pd.DataFrame:
    """The labelled cases the study draws from, with their patient and (classify) class and given split."""
    from catalog import load_catalog, select

    cat = load_catalog(grid.store)
    if grid.task == "classify":
        from model.data.classify_table import LabelTableError, match_table

        try:
            table = match_table(grid.labels, grid.store, crop=str(grid.options.get("crop", "none")))
        except LabelTableError as exc:
            raise StudyError(str(exc)) from exc
        rows = table.rows[["store_path", "case_id", "scan_id", "label", "split"]].copy()
    else:
        from catalog import load_domains

        domain = grid.options.get("domain")
        domains = list(load_domains(grid.store)["domain"])
        if domain is None and len(domains) != 1:
            raise StudyError(f"{grid.store} holds domains {domains}; choose one with --domain")
        rows = select(cat, domain=domain or domains[0], labelled=True)[["store_path", "case_id", "scan_id",
                                                                       "split"]].copy()
        rows["label"] = 0
        if rows.empty:
            raise StudyError(f"{grid.store}: no ok, labelled case to segment (build it with its masks)")
    patient = cat.set_index("store_path")["patient_id"].astype(str)
    rows["patient"] = rows["store_path"].map(patient).fillna(rows["scan_id"]).astype(str)
    rows["split"] = rows["split"].astype(str)
    return rows.sort_values("store_path").reset_index(drop=True)


def _patient_classes(rows: pd.DataFrame) -> dict[str, Any]:
    return {str(p): str(g["label"].iloc[0]) for p, g in rows.groupby("patient")}


def plan_study(grid: StudyGrid) -> Plan:
    """The study's fixed splits and nested training subsets; every refusal (:class:`StudyError`) before any
    training: no labels, a fraction leaving a class (or the pool) without a patient, an init that saw an
    evaluation scan."""
    rows = _pool(grid)
    if grid.holdout is not None:
        try:
            fixed = holdout(_patient_classes(rows), *grid.holdout)
        except SubsetError as exc:
            raise StudyError(str(exc)) from exc
        rows["split"] = rows["patient"].map(fixed)
    rows = rows[rows["split"].isin(["train", "val", "test"])].reset_index(drop=True)
    mixed = rows.groupby("patient")["split"].nunique()
    if (mixed > 1).any():
        raise StudyError(f"{grid.store}: patients {list(mixed[mixed > 1].index[:5])} have cases in several splits; "
                         "give --holdout TEST,VAL to draw patient-level splits")
    eval_split = "test" if rows["split"].eq("test").any() else "val"
    if not rows["split"].eq(eval_split).any():
        raise StudyError(f"{grid.store}: no labelled val or test case to measure on; give --holdout TEST,VAL")
    train = rows[rows["split"].eq("train")]
    try:
        subsets = nested_subsets(_patient_classes(train), grid.fractions, grid.seeds)
    except SubsetError as exc:
        raise StudyError(f"{grid.store}: {exc}") from exc
    _check_inits(grid, set(rows.loc[rows["split"].eq(eval_split), "scan_id"].astype(str)), eval_split)
    return Plan(grid, rows, subsets, eval_split)


def _check_inits(grid: StudyGrid, eval_ids: set[str], split: str) -> None:
    """Refuse weights trained on a scan the study measures on (the finetune leakage check, done for every init
    before the first cell)."""
    from model.training.finetune import init_record

    for name, weights in grid.inits:
        try:
            record = init_record(weights)
        except (OSError, ValueError) as exc:
            raise StudyError(f"--init {name}={weights}: {exc}") from exc
        seen = sorted(eval_ids & set(record["scan_ids"] or []))
        if seen:
            raise StudyError(f"--init {name}={weights} was trained on {len(seen)} scan(s) of the study's {split} "
                             f"split ({', '.join(seen[:5])}); pretrain with --exclude {grid.store} or drop that init")


def read_saved_grid(study: Path) -> dict[str, Any] | None:
    path = study / GRID_FILE
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text())
    except ValueError as exc:
        raise StudyError(f"{path}: not readable JSON ({exc}); it records the study's grid") from exc
    if not isinstance(saved, dict):
        raise StudyError(f"{path}: not a study grid (a JSON object)")
    return saved
