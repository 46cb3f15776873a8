"""Tasks sit on top (issue 20): training, evaluation and the run-folder reader see tasks only through
``model/task_api.py`` and never look one up, and no import circle joins tasks, training and evaluation. Every
import statement counts, those inside functions and under ``TYPE_CHECKING`` too."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.test_layering import import_circles  # the one circle finder (Tarjan)

ROOT = Path(__file__).resolve().parents[2]
BELOW_TASKS = ("model.training", "model.evaluation", "model.run_folder", "model.task_api", "model.data",
               "model.nets")
LOOKS_UP = ("model.cli", "model.cli_finetune", "model.cli_transfer", "model.cli_study", "model.api", "model.study",
            "model.export", "model.tasks")
"""Where a task may be found by name (get_task, all_tasks): the command line, the name-based API, the study, the
exports (which read a run folder as the command line does) and the registry itself."""


def _module(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """{module: modules of model/ it imports}, {module: names it imports from model.tasks.base}."""
    files = {_module(p): p for p in (ROOT / "model").rglob("*.py")}
    edges: dict[str, set[str]] = {}
    names: dict[str, set[str]] = {}
    for mod, path in files.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        out: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base
                                                                                                  else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
                if base == "model.tasks.base" or base == "model.tasks":
                    names.setdefault(mod, set()).update(a.name for a in node.names)
            out |= {t for t in targets if t in files and t != mod}
        edges[mod] = out
    return edges, names


def test_training_and_evaluation_never_import_tasks():
    edges, _ = _graph()
    bad = {m: sorted(t for t in ts if t.startswith(("model.tasks", "model.api", "model.cli", "model.study")))
           for m, ts in edges.items() if m.startswith(BELOW_TASKS)}
    assert not {m: t for m, t in bad.items() if t}


def test_no_import_circle_among_tasks_training_and_evaluation():
    edges, _ = _graph()
    ours = ("model.tasks", "model.training", "model.evaluation", "model.run_folder", "model.task_api", "model.api")
    mine = {m: {t for t in ts if t.startswith(ours)} for m, ts in edges.items() if m.startswith(ours)}
    assert import_circles(mine) == []


def test_only_the_command_line_study_and_api_look_tasks_up():
    _, names = _graph()
    lookups = {m for m, ns in names.items() if ns & {"get_task", "all_tasks"}}
    assert lookups and all(m.startswith(LOOKS_UP) for m in lookups), sorted(lookups)
