"""The one export entry point: ``med3d-train export RUN --format NAME OUT`` calls :func:`export` here, which hands
the request to the format registered under NAME. Adding a format is one file: a module that defines a function
``(ExportRequest) -> list[str]`` (the lines to print) decorated with :func:`register_format`, named in
:data:`FORMAT_MODULES` (or found through the entry-point group ``med3d.export_formats``).

Formats shipped:

========================== ========================================================= ================================
name                       writes                                                    module
========================== ========================================================= ================================
``medicalnet``             the encoder as MedicalNet's ``{"state_dict"}`` ``.pth``    :mod:`model.export.encoder_files`
                           (ResNets), and its card ``OUT.json``
``safetensors``            the encoder, its card in the metadata, a model card       :mod:`model.export.encoder_files`
``onnx``, ``torchscript``  a fine-tuned seg/classify run's whole network             :mod:`model.export.onnx_export`
``nnunet``                 a checkpoint nnU-Net's ``-pretrained_weights`` loads       :mod:`model.export.nnunet_format`
========================== ========================================================= ================================

A format raises :class:`ExportUsageError` for a wrong request and ``ValueError`` (or ``FileNotFoundError``) for a
failure, each one line; the command line prints it. Nothing heavy is imported before a format is chosen.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ENTRY_POINT_GROUP", "FORMAT_MODULES", "ExportRequest", "ExportUsageError", "export", "format_names",
           "register_format"]

ENTRY_POINT_GROUP = "med3d.export_formats"
FORMAT_MODULES = ("model.export.encoder_files", "model.export.onnx_export", "model.export.nnunet_format")
"""Modules of the shipped formats, imported by name when a format is first looked up."""


class ExportUsageError(ValueError):
    """The command line asked for something the format cannot do (a wrong OUT name, a missing option): the
    command prints it as a usage error (exit status 2); other ``ValueError``s are failures (exit status 1)."""


@dataclass(frozen=True)
class ExportRequest:
    """What ``export`` was asked for. Formats read the fields they need and ignore the rest.

    Attributes:
        source: a run folder or a checkpoint file (``RUN/checkpoint.pt``).
        out: where to write.
        card: also write the weights card (formats that have one).
        license: the model card's licence id (safetensors).
        options: format-specific options (``plans``, ``configuration`` for nnunet), None when not given.
        log: where progress lines go.
    """

    source: Path
    out: Path
    card: bool = True
    license: str = "other"
    options: dict[str, str | None] = field(default_factory=dict)
    log: Callable[[str], None] = print

    @property
    def checkpoint(self) -> Path:
        """The checkpoint file: ``source`` itself, or ``source/checkpoint.pt`` for a run folder."""
        return self.source / "checkpoint.pt" if self.source.is_dir() else self.source


Exporter = Callable[[ExportRequest], list[str]]
_FORMATS: dict[str, tuple[Exporter, str]] = {}
_loaded = False


def register_format(name: str, help: str) -> Callable[[Exporter], Exporter]:
    """Decorator registering an exporter under ``name`` (a ``--format`` choice) with one line of ``help``."""

    def add(fn: Exporter) -> Exporter:
        if name in _FORMATS and _FORMATS[name][0] is not fn:
            raise ValueError(f"export format {name!r} is already registered by {_FORMATS[name][0].__module__}")
        _FORMATS[name] = (fn, help)
        return fn

    return add


def _load() -> None:
    global _loaded
    if _loaded:
        return
    for module in FORMAT_MODULES:
        importlib.import_module(module)
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        ep.load()  # the module registers its formats
    _loaded = True


def format_names() -> list[str]:
    """Every ``--format`` choice, shipped ones first."""
    _load()
    return list(_FORMATS)


def format_help() -> str:
    _load()
    return " ".join(f"{name}: {help}" for name, (_, help) in _FORMATS.items())


def export(fmt: str, source: str | os.PathLike[str], out: str | os.PathLike[str], *, card: bool = True,
           license: str = "other", log: Callable[[str], None] = print, **options: str | None) -> list[str]:
    """Export ``source`` (a run folder or checkpoint) to ``out`` in format ``fmt``; returns the lines that say
    what was written. Raises ValueError naming the choices for an unknown format."""
    _load()
    if fmt not in _FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of: {', '.join(_FORMATS)}")
    request = ExportRequest(Path(source), Path(out), card=card, license=license, options=dict(options), log=log)
    return _FORMATS[fmt][0](request)
