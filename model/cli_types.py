"""Click parameter types shared by the ``med3d-train`` commands (kept apart from :mod:`model.cli` so that the
command modules can import them while ``python -m model.cli`` runs as ``__main__``)."""

from __future__ import annotations

import re
from typing import Any

import click

__all__ = ["EncoderChoice", "PatchSize", "loader_error"]


def loader_error(exc: BaseException) -> click.ClickException:
    """A one-line error for an ``OSError`` of training, such as a damaged chunk met by a DataLoader worker: torch
    re-raises it with the worker's whole traceback in the message, whose last line is the original message."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    last = lines[-1] if lines else type(exc).__name__
    return click.ClickException(re.sub(r"^\w+(Error|Exception): ", "", last))


class EncoderChoice(click.Choice):
    """Choices read from the encoder registry (``model.nets.encoders.ENCODERS``) when first needed (that import
    pulls in torch).

    ``kind="depth"``: the depths of plain ResNets (``10``, ``50``, ...); ``kind="name"``: every registry name.
    """

    def __init__(self, kind: str) -> None:  # no super().__init__: ``choices`` is computed, not stored
        self.kind = kind
        self.case_sensitive = True

    @property
    def choices(self) -> tuple[str, ...]:  # type: ignore[override]
        from model.nets.encoders import ENCODERS

        if self.kind == "name":
            return tuple(ENCODERS)
        depths = [m.group(1) for n in ENCODERS if (m := re.fullmatch(r"resnet(\d+)", n))]
        return tuple(sorted(depths, key=int))

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        """A registry name, or a parametric one (``resenc_f32-64-128-256_b1-3-4-6``) whose family builds it."""
        if self.kind == "name" and isinstance(value, str) and value not in self.choices:
            from model.nets.encoders import ENCODERS

            try:
                ENCODERS[value]
            except ValueError as exc:
                self.fail(str(exc), param, ctx)
            except KeyError:
                self.fail(f"{value!r} is not one of {', '.join(map(repr, self.choices))}, nor a parametric name "
                          f"such as {', '.join(ENCODERS.patterns())}", param, ctx)
            return value
        return super().convert(value, param, ctx)


class PatchSize(click.ParamType):
    """``64`` -> (64, 64, 64); ``32,128,128`` -> (32, 128, 128) in (z, y, x) voxels."""

    name = "patch"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> tuple[int, int, int]:
        if isinstance(value, tuple):
            return value
        try:
            sizes = [int(v) for v in str(value).replace("x", ",").split(",")]
        except ValueError:
            self.fail(f"{value!r} is not a size: give one int (64) or three (32,128,128)", param, ctx)
        if len(sizes) == 1:
            sizes *= 3
        if len(sizes) != 3 or min(sizes) < 8:
            self.fail(f"{value!r}: give one size or three (z,y,x), each at least 8", param, ctx)
        return tuple(sizes)  # type: ignore[return-value]
