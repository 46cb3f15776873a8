"""Any Medical Segmentation Decathlon task folder (all ten, or a task in MSD layout made by someone else) → the
Case records of :func:`pipeline.sources.msd.read_task`, the per-task source ``build-3dseg8`` uses.

``build-3dseg8`` stays the paper's exact selection of eight tasks; ``build-msd`` takes whatever task folders a
root holds (``Task06_Lung``, ``Task10_Colon``...). Domain names: the 3DSeg-8 name for those eight (so both
commands build the same domain from the same folder), otherwise the folder's name after ``TaskNN_`` in
snake case (``Task06_Lung`` → ``lung``, ``Task500_MyOrgan`` → ``my_organ``).
"""
from __future__ import annotations

import re
from pathlib import Path

from ..config import Case, DomainSpec
from .msd import TASKS_3DSEG8, read_task
from .naming import check_domain_name, check_unique_domains, snake_case

_TASK = re.compile(r"^Task\d+_(?P<name>.+)$")


def msd_domain_name(task: str) -> str:
    """Store domain of an MSD task folder name (see the module docstring)."""
    if task in TASKS_3DSEG8:
        return TASKS_3DSEG8[task]
    m = _TASK.match(task)
    return check_domain_name(snake_case(m["name"] if m else task), task)


def _task_folders(root: Path) -> list[Path]:
    """The folders under ``root`` that hold a dataset.json, by name (``._`` junk and plain files skipped)."""
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
                  and (p / "dataset.json").is_file())


def scan_msd_tasks(root: str | Path, tasks: list[str] | None = None
                   ) -> tuple[list[tuple[DomainSpec, list[Case]]], list[str]]:
    """The MSD task folders under ``root`` (or ``root`` itself when it holds a dataset.json) with their cases.

    ``tasks`` picks folders by name (``Task06_Lung``) or domain name (``lung``); None takes every folder under
    ``root`` that holds a dataset.json. Returns (found tasks, requested names not found).
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: not a folder; pass a TaskNN_Name folder or the folder that holds them")
    folders = [root] if (root / "dataset.json").is_file() else _task_folders(root)
    if not folders:
        raise ValueError(f"{root}: no task folder with a dataset.json (TaskNN_Name/dataset.json) found")
    chosen, missing = folders, []
    if tasks:
        by_name = {p.name: p for p in folders}
        by_domain = {msd_domain_name(p.name): p for p in folders}
        chosen = []
        for name in (t.strip() for t in tasks):
            folder = by_name.get(name) or by_domain.get(name.lower())
            if folder is None:
                missing.append(name)
            elif folder not in chosen:
                chosen.append(folder)
    found = [read_task(folder, domain=msd_domain_name(folder.name)) for folder in chosen]
    check_unique_domains(found)
    return found, missing
