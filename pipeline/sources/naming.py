"""Domain names of the store, shared by the sources that take any dataset (build-msd, build-nnunet,
build-totalseg): how a dataset folder becomes a name, and the checks that keep two datasets out of one domain.

A domain name is a store folder and a key of the trainer's branches, so it is plain: ``[a-z0-9_]+``, starting
with a letter or digit.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..config import DomainSpec

DOMAIN_NAME = re.compile(r"^[a-z0-9][a-z0-9_]*$")


def check_domain_name(name: str, where: str) -> str:
    """``name`` when it is a valid domain name; ValueError naming ``where`` it came from otherwise."""
    if not DOMAIN_NAME.match(name or ""):
        raise ValueError(f"{where}: domain name {name!r} is not lower-case [a-z0-9_] (starting with a letter or "
                         "digit); give one with --domain")
    return name


def snake_case(name: str) -> str:
    """``HepaticVessel`` → ``hepatic_vessel``, ``KiTS2023`` → ``ki_ts2023``: CamelCase words split, then lower
    case; anything outside [a-z0-9] becomes ``_``."""
    words = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name)
    return re.sub(r"[^a-z0-9]+", "_", words.lower()).strip("_")


def plain_name(name: str) -> str:
    """``KiTS2023`` → ``kits2023``: lower case, anything outside [a-z0-9] becomes ``_`` (no word splitting)."""
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def check_unique_domains(specs: Iterable[tuple[DomainSpec, object]]) -> None:
    """Refuse two datasets of one build that would share a domain (their cases would overwrite each other)."""
    seen: dict[str, str] = {}
    for spec, _ in specs:
        if spec.name in seen:
            raise ValueError(f"{seen[spec.name]} and {spec.source_dataset} would both become domain {spec.name!r}; "
                             "build them into different stores")
        seen[spec.name] = spec.source_dataset


class StoreDomainError(ValueError):
    """A build would overwrite a domain the store holds from another dataset or with other labels."""


def check_store_domains(store: str, specs: Iterable[DomainSpec]) -> None:
    """Refuse to build a domain that ``store`` already holds from another dataset (the build would replace that
    domain's cases and catalog rows with this dataset's) or with other labels. Rebuilding the same dataset with
    the same labels is a resume."""
    from catalog import load_domains

    try:
        built = load_domains(store).set_index("domain")
    except FileNotFoundError:
        return
    for spec in specs:
        if spec.name not in built.index:
            continue
        other = built.loc[spec.name, "source_dataset"]
        if other != spec.source_dataset:
            raise StoreDomainError(f"{store} already holds domain {spec.name!r} built from {other}; {spec.source_dataset} "
                             "would replace it. Choose another name with --domain, or another store")
        # A case's params hash covers its label values and mask files, not which mask paints which value: a
        # new class order (or renamed labels) would leave the built cases in place with the old meaning.
        old = [str(n) for n in built.loc[spec.name, "labels"]]
        new = [spec.labels.get(i, "") for i in range(spec.num_classes)]
        if old != new:
            raise StoreDomainError(f"{store}: domain {spec.name!r} was built with labels {old}, this build has {new}; "
                             "build into another store (or another --domain)")


def read_json_object(path: Path, missing: str) -> dict[str, Any]:
    """A dataset's ``dataset.json`` as a dict; ValueError naming the file when it is missing (``missing`` says
    what the folder should hold), not JSON, or not an object."""
    if not path.is_file():
        raise ValueError(f"{path}: missing; {missing}")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    except RecursionError:
        raise ValueError(f"{path}: JSON nested too deeply to be a dataset description (arrays or objects inside "
                         "each other thousands of levels deep): replace the file with the dataset's own") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}): replace the file with the "
                         "dataset's own") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(meta).__name__}")
    return meta


def file_inside(folder: Path, rel: object, meta_path: Path, where: str, kind: str = "dataset folder") -> str:
    """The file an entry of ``meta_path`` (a dataset.json) names, relative to the dataset ``folder``; refused
    (ValueError naming the file and entry) when it is not a relative path or leaves the folder (an absolute
    path, ``../``). One rule for every source that lists files in a JSON file (MSD, nnU-Net).

    The check is lexical (``..`` components), so an ``imagesTr`` that is a symbolic link to another disk still
    works, while an entry naming a file outside the folder is refused. Links are then resolved without failing
    on a loop (``os.path.realpath``): the file checks of the build say what a looping link is, for that case.
    """
    if not isinstance(rel, str) or not rel.strip():
        raise ValueError(f"{meta_path}: {where}: expected a relative file path like ./imagesTr/x.nii.gz, "
                         f"got {rel!r}")
    inside = os.path.normpath(rel.removeprefix("./"))
    if os.path.isabs(inside) or inside == ".." or inside.startswith(".." + os.sep):
        raise ValueError(f"{meta_path}: {where}: {rel!r} points outside the {kind} {folder}; "
                         "dataset.json paths must stay inside it (move the files in, or link a folder in)")
    return os.path.realpath(folder / inside)
