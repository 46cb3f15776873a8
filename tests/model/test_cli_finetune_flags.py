"""``med3d-train finetune TASK``: each task's command takes the common options and its own (issue 20); the
command lines of the Makefile demo and of earlier releases still parse to the same values. Parsing only: nothing
is trained."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from model.cli import main

ROOT = Path(__file__).resolve().parents[2]


def _parse(args: list[str]) -> dict:
    """The parameters ``med3d-train finetune TASK ...`` would call its task with."""
    group = main.get_command(main.make_context("med3d-train", list(args)), "finetune")
    command = group.get_command(group.make_context("finetune", args[1:]), args[1])
    return command.make_context(args[1], args[2:]).params


def test_the_makefile_demo_command_lines_parse():
    text = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    lines = [re.sub(r"\$\(\w+\)", "X", m) for m in re.findall(r"med3d-train (finetune [^\n]+)", text)]
    assert {shlex.split(c)[1] for c in lines} == {"liver", "seg", "classify"}
    for line in lines:
        params = _parse(shlex.split(line))
        assert params["out"].startswith("X/runs/") and params["device"] == "cpu"
    liver = _parse(shlex.split(next(c for c in lines if c.startswith("finetune liver"))))
    assert (liver["patch"], liver["coarse_shape"], liver["aspp_rates"]) == ((16, 32, 32), (16, 32, 32), (1, 2, 3))


@pytest.mark.parametrize("task, own, others", [
    ("seg", ["--domain", "--decoder", "--channels", "--splits", "--patch", "--fg-fraction"],
     ["--labels", "--shape", "--coarse-shape", "--aspp-rates", "--crop"]),
    ("classify", ["--labels", "--shape", "--crop", "--crop-margin", "--channels"],
     ["--patch", "--decoder", "--coarse-shape", "--fg-fraction"]),
    ("liver", ["--coarse-shape", "--aspp-rates", "--roi-margin", "--patch", "--rotate"],
     ["--labels", "--decoder", "--channels", "--shape"]),
    ("nodule", [], ["--patch", "--labels", "--decoder", "--rotate", "--shape"]),
])
def test_help_lists_the_common_options_and_the_tasks_own_only(task, own, others):
    res = CliRunner().invoke(main, ["finetune", task, "--help"])
    assert res.exit_code == 0, res.output
    flags = set(re.findall(r"(--[a-z][a-z-]+)", res.output))
    assert {"--out", "--init", "--steps", "--batch", "--lr", "--resume"} <= flags
    assert set(own) <= flags and not set(others) & flags, sorted(flags)


def test_another_tasks_flag_at_its_old_default_is_accepted_and_otherwise_refused(tmp_path):
    params = _parse(["finetune", "lung", "s", "--out", "o", "--channels", "first", "--shape", "64", "--decoder",
                     "med3d"])
    assert params["earlier_channels"] == "first" and params["patch"] == (64, 64, 64)
    for flag, value, why in (("--channels", "all", "finetune lung reads one channel"),
                             ("--shape", "32", "finetune lung has no such option")):
        res = CliRunner().invoke(main, ["finetune", "lung", "s", "--out", str(tmp_path / "r"), flag, value])
        assert res.exit_code == 2 and why in res.output and not (tmp_path / "r").exists(), res.output


def test_finetune_lists_the_tasks():
    res = CliRunner().invoke(main, ["finetune", "--help"])
    assert res.exit_code == 0
    assert all(t in res.output for t in ("classify", "liver", "lung", "nodule", "seg"))
